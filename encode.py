"""
Encode a recorded dataset (see record.py for its format) once into cached latents that train.py
memory-maps, so training never touches a PNG or an autoencoder.

    python encode.py data/doom --vae pixels                        # no autoencoder, fully offline
    python encode.py data/doom --vae ../shared/weights/taesd       # TAESD, a local AutoencoderTiny folder
    python encode.py data/doom                                     # the Stable Diffusion VAE from the hub
    python encode.py data/doom --vae madebyollin/taesd --out data/doom-taesd

Autoencoders (`--vae`), all mapping an HxW RGB frame to a (C, H/8, W/8) latent:
  stabilityai/sd-vae-ft-mse   (default) a diffusers AutoencoderKL, hub id or local folder: the Stable
                              Diffusion VAE; latents are the posterior mean times its config's
                              scaling_factor (0.18215, chosen by SD's authors to give unit variance)
  an AutoencoderTiny          TAESD (hub id or folder): a distilled tiny encoder/decoder for the same
                              latent space, already scaled; many times faster, slightly blurrier
  pixels                      no network: a fixed space-to-depth reshape of 8x8 pixel blocks into 192
                              channels, values in [-1, 1]; exact, free, and fine for small game frames

Output, in DATASET/latents-<vae>/ unless --out says otherwise:
  latents.npy   float16 (N, C, H/8, W/8), every frame of every episode, episodes back to back
  actions.npy   float32 (N, A), row i = inputs.csv row of that frame (the action after it)
  meta.json     the autoencoder, frame and latent shapes, action names, latent mean/std, and the
                episodes: name, first row, length, split ("train" or "val": whole episodes held out)
meta.json is written last: a folder without it is an unfinished encode.
"""
import argparse
import json
import socket
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from record import DataError, list_episodes, read_episode

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
DOWNSAMPLE = 8  # every autoencoder here maps 8x8 pixels to one latent position (SD's VAE and TAESD do)

# -----------------------------------------------------------------------------
# Autoencoders


class Autoencoder:
    """uint8 frames (B, H, W, 3) <-> latents (B, C, H/8, W/8), whichever network (or none) is behind."""

    def __init__(self, name, device="cpu", dtype=torch.float32):
        self.name, self.device, self.dtype = name, torch.device(device), dtype
        self.kind, self.vae, self.scaling_factor = "pixels", None, 1.0
        if name != "pixels":
            self.vae, self.kind = load_vae(name)
            self.vae.to(self.device, dtype).eval().requires_grad_(False)
            # AutoencoderKL's config says how to scale latents to unit variance; TAESD outputs them scaled
            self.scaling_factor = self.vae.config.scaling_factor if self.kind == "kl" else 1.0

    @torch.no_grad()
    def encode(self, frames):
        x = torch.as_tensor(frames).to(self.device).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        x = x.to(self.dtype) / 127.5 - 1                                 # [-1, 1], what SD's VAE expects
        if self.kind == "pixels":
            return F.pixel_unshuffle(x, DOWNSAMPLE)                      # (B, 192, H/8, W/8)
        if self.kind == "kl":
            return self.vae.encode(x).latent_dist.mean * self.scaling_factor  # (B, 4, H/8, W/8)
        return self.vae.encode(x).latents                                # (B, 4, H/8, W/8)

    @torch.no_grad()
    def decode(self, latents):
        z = torch.as_tensor(latents).to(self.device, self.dtype)
        if self.kind == "pixels":
            x = F.pixel_shuffle(z, DOWNSAMPLE)                           # (B, 3, H, W)
        else:
            x = self.vae.decode(z / self.scaling_factor).sample          # (B, 3, H, W)
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu()                              # (B, H, W, 3) uint8


def load_vae(name):
    """A diffusers autoencoder from a local folder or a hub id; returns (module, "kl" | "tiny")."""
    import huggingface_hub
    from diffusers import AutoencoderKL, AutoencoderTiny
    from diffusers.utils import logging as diffusers_logging

    folder = Path(name)
    if folder.is_dir():
        config = folder / "config.json"
        if not config.exists():
            raise DataError(f"{folder} has no config.json; --vae needs a diffusers autoencoder folder, "
                            f"a hub id, or 'pixels'")
        tiny = json.loads(config.read_text()).get("_class_name") == "AutoencoderTiny"
    else:
        tiny = "taesd" in name.lower()  # hub ids: TAESD's repos are the AutoencoderTiny ones
    cls = AutoencoderTiny if tiny else AutoencoderKL
    kind = "tiny" if tiny else "kl"
    if folder.is_dir():
        return cls.from_pretrained(name), kind
    diffusers_logging.set_verbosity_error()  # the hub's own warnings would bury our one-line error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the local cache first: no network round trip once a model was downloaded
            return cls.from_pretrained(name, local_files_only=True), kind
        except (OSError, ValueError):
            pass
        try:
            # without a network the hub client retries for half a minute; a failed name lookup tells at once
            socket.getaddrinfo(urlparse(huggingface_hub.constants.ENDPOINT).hostname, 443)
            return cls.from_pretrained(name), kind
        except (OSError, ValueError) as e:  # offline, unknown id, or not a diffusers model
            raise DataError(f"could not load autoencoder {name!r} from the Hugging Face hub ({type(e).__name__}: "
                            f"no network, or no such model); use --vae pixels (no download), a local folder such "
                            f"as ../shared/weights/taesd, or run this once online to cache it") from None


# -----------------------------------------------------------------------------
# Encoding


def default_out(dataset, vae):
    tag = "pixels" if vae == "pixels" else Path(vae.rstrip("/")).name
    return Path(dataset) / f"latents-{tag}"


def encode_dataset(dataset, vae="pixels", out=None, val_episodes=None, batch_size=64, device="cpu"):
    """Encode every episode of `dataset` into `out`; returns the path of the written meta.json."""
    out = Path(out) if out else default_out(dataset, vae)
    if (out / "meta.json").exists():
        raise DataError(f"{out} already holds encoded latents; delete it or pass another --out")
    episodes = list_episodes(dataset)
    if val_episodes is None:  # hold out ~10% of the episodes, at least one when there are two or more
        val_episodes = max(1, round(0.1 * len(episodes))) if len(episodes) > 1 else 0
    if val_episodes >= len(episodes):
        raise DataError(f"--val-episodes {val_episodes} leaves no training episode ({len(episodes)} in "
                        f"{dataset}); record more episodes or lower --val-episodes")

    # first pass: validate every episode (cheap next to encoding) so bad data fails before any work
    infos, names, size = [], None, None
    for ep in episodes:
        frames, actions, ep_names, meta = read_episode(ep)
        if names is not None and ep_names != names:
            raise DataError(f"{ep} has input columns {ep_names} but earlier episodes have {names}; "
                            f"encode episodes with the same columns together")
        if size is not None and frames.shape[1:] != size:
            raise DataError(f"{ep} has {frames.shape[2]}x{frames.shape[1]} frames but earlier episodes have "
                            f"{size[1]}x{size[0]}; record all episodes at one --size")
        names, size = ep_names, frames.shape[1:]
        infos.append(dict(name=ep.name, length=len(frames), fps=meta.get("fps", 15)))
    H, W = size[:2]
    if H % DOWNSAMPLE or W % DOWNSAMPLE:
        raise DataError(f"frames are {W}x{H}, but autoencoders need sides that are multiples of "
                        f"{DOWNSAMPLE}; re-record with a --size such as {W // 8 * 8}x{H // 8 * 8}")

    ae = Autoencoder(vae, device, torch.float16 if torch.device(device).type == "cuda" else torch.float32)
    total = sum(i["length"] for i in infos)
    latent_shape = tuple(ae.encode(np.zeros((1, H, W, 3), np.uint8)).shape[1:])
    out.mkdir(parents=True, exist_ok=True)
    latents = np.lib.format.open_memmap(out / "latents.npy", "w+", np.float16, (total, *latent_shape))
    all_actions = np.zeros((total, len(names)), np.float32)

    row, t0 = 0, time.time()
    with tqdm(total=total, unit="frame", desc=f"encode ({vae})") as bar:
        for k, (ep, info) in enumerate(zip(episodes, infos)):
            frames, actions, _, _ = read_episode(ep)
            for i in range(0, len(frames), batch_size):
                z = ae.encode(frames[i:i + batch_size])
                latents[row + i:row + i + len(z)] = z.float().cpu().numpy().astype(np.float16)
                bar.update(len(z))
            all_actions[row:row + len(frames)] = actions
            info.update(start=row, split="val" if k >= len(episodes) - val_episodes else "train")
            row += len(frames)
    fps = total / (time.time() - t0)
    latents.flush()
    np.save(out / "actions.npy", all_actions)

    # statistics of the training latents: train.py rescales the data to zero mean and std sigma_data
    train_rows = np.concatenate([np.arange(i["start"], i["start"] + i["length"])
                                 for i in infos if i["split"] == "train"])
    sample = latents[train_rows[:: max(1, len(train_rows) // 2000)]].astype(np.float64)
    meta = dict(vae=vae, kind=ae.kind, scaling_factor=ae.scaling_factor, width=int(W), height=int(H),
                latent_shape=list(latent_shape), actions=names, fps=infos[0]["fps"],
                latent_mean=float(sample.mean()), latent_std=float(sample.std()),
                dataset=str(Path(dataset).resolve()), episodes=infos)
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / "meta.json")
    n_val = sum(i["split"] == "val" for i in infos)
    print(f"encoded {total} frames of {len(infos)} episodes ({n_val} held out for validation) at "
          f"{fps:.0f} frames/s into {out}  latents {latent_shape}")
    return out / "meta.json"


def load_latents(folder):
    """(latents memmap (N, C, h, w) float16, actions (N, A) float32, meta dict) of an encoded folder."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        hint = "" if not folder.exists() else " (an unfinished encode? run it again)"
        raise DataError(f"{folder} holds no encoded latents{hint}; run `python encode.py DATASET` first "
                        f"and pass its latents-* folder")
    meta = json.loads((folder / "meta.json").read_text())
    latents = np.load(folder / "latents.npy", mmap_mode="r")
    actions = np.load(folder / "actions.npy")
    return latents, actions, meta


# -----------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="folder of recorded episodes (see record.py)")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="'pixels', a diffusers autoencoder hub id, or a folder")
    parser.add_argument("--out", help="output folder (default DATASET/latents-<vae>)")
    parser.add_argument("--val-episodes", type=int, help="episodes held out for validation (default ~10%%)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per autoencoder call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    encode_dataset(args.dataset, args.vae, args.out, args.val_episodes, args.batch_size, args.device)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
