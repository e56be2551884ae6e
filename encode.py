"""
Encode a recorded dataset (record.py's format) once into the latents train.py reads: no PNG, no autoencoder.

    python encode.py data/doom --vae pixels                        # no autoencoder, fully offline
    python encode.py data/doom --vae ../shared/weights/taesd       # TAESD, a local AutoencoderTiny folder
    python encode.py data/doom                                     # the Stable Diffusion VAE from the hub
    python encode.py data/mygame --size 256x144 --batch-size 256   # your own footage, on a GPU

Autoencoders (--vae), each mapping an HxW RGB frame to a (C, H/8, W/8) latent:
  stabilityai/sd-vae-ft-mse  (default) the Stable Diffusion VAE, a diffusers AutoencoderKL (hub id or folder):
                             the posterior mean times its config's scaling_factor (0.18215, unit variance)
  TAESD                      an AutoencoderTiny (madebyollin/taesd or a folder): the same space, faster, blurrier
  pixels                     no network: each 8x8 block of pixels stacked into 192 channels in [-1, 1]; exact

Frames are brought to --size (multiples of 8; default: the first episode's size rounded down to them): the
centre of a frame at most 7 pixels larger is cut out, any other is fitted by record.fit, never stretched.

Output, in DATASET/latents-<vae>/ unless --out says otherwise:
  latents.npy   float16 (N, C, H/8, W/8), every frame of every episode, episodes back to back
  actions.npy   float32 (N, A), row i = the inputs.csv row of that frame (the action after it)
  meta.json     the autoencoder, sizes, input names, the latents' mean and std, and the episodes (name, first
                row, length, split: the last ~10% held out whole)
An interrupted encode (Ctrl-C, a crash, a kill) continues where it stopped when run again, to the same latents.
"""
import argparse
import json
import os
import socket
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from record import FPS, fit, list_episodes, open_image, read_episode

DOWNSAMPLE = 8     # every autoencoder here maps 8x8 pixels to one latent position (SD's VAE and TAESD do)
DECODE_BATCH = 32  # frames per decoder call: SD's VAE holds ~0.3 GB of activations per 256x256 frame
AHEAD = 2          # batches each reading thread keeps ready, so the autoencoder never waits for frames

# -----------------------------------------------------------------------------
# Autoencoders


def native_bf16(device):
    """A GPU that computes in bfloat16 in hardware (Ampere, 2020, or later); older ones only emulate it."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def load_vae(name):
    """A diffusers AutoencoderKL or AutoencoderTiny (TAESD) from a folder that save_pretrained wrote or a hub id."""
    from diffusers import AutoencoderKL, AutoencoderTiny
    from diffusers.utils import logging

    logging.set_verbosity_error()  # its advice (install accelerate, ...) would bury our one-line error
    config = Path(name) / "config.json"
    tiny = "AutoencoderTiny" in config.read_text() if config.is_file() else "taesd" in name.lower()
    offline = {}
    if not Path(name).exists():  # a hub id: offline, the hub client would retry for half a minute
        try:
            socket.getaddrinfo(os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("/")[2], 443)
        except OSError:
            offline = dict(local_files_only=True)  # a model downloaded before still loads from the cache
    try:
        return (AutoencoderTiny if tiny else AutoencoderKL).from_pretrained(name, **offline)
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot load the autoencoder {name!r} ({str(e).splitlines()[0]}); --vae takes a folder "
                         f"that save_pretrained wrote, a hub id (online the first time), or pixels") from None


class Autoencoder:
    """uint8 frames (B, H, W, 3) <-> latents (B, C, H/8, W/8), whichever network (or none) is behind."""

    def __init__(self, name, device="cpu", dtype=torch.float32):
        self.device, self.dtype, self.vae, self.scale = torch.device(device), dtype, None, 1.0
        if name != "pixels":
            self.vae = load_vae(name).to(self.device, dtype).eval().requires_grad_(False)
            self.scale = self.vae.config.scaling_factor  # SD's 0.18215; TAESD's latents come scaled (1.0)

    @torch.no_grad()
    def encode(self, frames):
        x = torch.as_tensor(frames).to(self.device, non_blocking=True)  # pinned frames copy asynchronously
        x = x.permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1             # (B, 3, H, W) in [-1, 1], as SD expects
        if self.vae is None:
            return F.pixel_unshuffle(x, DOWNSAMPLE)                      # (B, 192, H/8, W/8)
        out = self.vae.encode(x)                                         # TAESD's latents, or the KL's posterior
        return (out.latents if hasattr(out, "latents") else out.latent_dist.mean) * self.scale  # (B, 4, H/8, W/8)

    @torch.no_grad()
    def decode(self, latents):
        """Latents (N, C, h, w) -> uint8 (N, H, W, 3) on the CPU, DECODE_BATCH frames at a time."""
        out = []
        for i in range(0, len(latents), DECODE_BATCH):
            z = torch.as_tensor(latents[i:i + DECODE_BATCH]).to(self.device, self.dtype)
            x = F.pixel_shuffle(z, DOWNSAMPLE) if self.vae is None else self.vae.decode(z / self.scale).sample
            out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
        return torch.cat(out)                                            # (N, H, W, 3)


# -----------------------------------------------------------------------------
# Encoding: frames read and resized on threads, encoded in large batches, made final batch by batch


def to_size(image, size):
    """uint8 (H, W, 3) of a PIL image brought to size=(W, H) as the top of this file says (also record.replay's)."""
    (w, h), (W, H) = image.size, size
    if 0 <= w - W < DOWNSAMPLE and 0 <= h - H < DOWNSAMPLE:  # a few pixels too big: cut out the centre
        left, top = (w - W) // 2, (h - H) // 2
        return np.asarray(image.crop((left, top, left + W, top + H)))
    return fit(image, size)


def load_frames(jobs, size, pin):
    """uint8 (B, H, W, 3) tensor of the frames in jobs [(path, its episode's (w, h)), ...] at size=(W, H)."""
    batch = np.empty((len(jobs), size[1], size[0], 3), dtype=np.uint8)
    for i, (path, episode_size) in enumerate(jobs):
        image = open_image(path)
        if image.size != episode_size:
            raise SystemExit(f"{path} is {image.size[0]}x{image.size[1]}, but its episode's frames are "
                             f"{episode_size[0]}x{episode_size[1]}; replace it with a frame of that size")
        batch[i] = to_size(image, size)
    return torch.from_numpy(batch).pin_memory() if pin else torch.from_numpy(batch)


def encode_dataset(dataset, vae="pixels", out=None, val_episodes=None, batch_size=64, device="cpu", size=None,
                   workers=min(8, os.cpu_count())):
    """Encode every episode of `dataset` into `out`, continuing an unfinished encode there; returns `out`.
    size=(W, H), multiples of 8; val_episodes: held out for validation (default ~10%, one of two or more)."""
    vae = str(Path(vae).resolve()) if vae != "pixels" and Path(vae).is_dir() else vae  # found from anywhere
    out = Path(out or Path(dataset) / f"latents-{Path(vae.rstrip('/')).name}")
    if (out / "meta.json").exists():
        raise SystemExit(f"{out} already holds encoded latents; pass another --out (or delete it)")
    episodes = [read_episode(folder) for folder in list_episodes(dataset)]  # every episode checked first
    if val_episodes is None:
        val_episodes = max(1, round(0.1 * len(episodes))) if len(episodes) > 1 else 0
    if not 0 <= val_episodes < len(episodes):
        raise SystemExit(f"--val-episodes {val_episodes} leaves no training episode of the {len(episodes)} there are")
    infos, jobs, names = [], [], episodes[0][0]
    for k, (folder, (ep_names, actions, paths, meta)) in enumerate(zip(list_episodes(dataset), episodes)):
        if ep_names != names:
            raise SystemExit(f"{folder} has the input columns {ep_names} but {infos[0]['name']} has {names}; "
                             f"encode episodes with the same columns together")
        infos.append(dict(name=folder.name, start=len(jobs), length=len(paths),
                          split="val" if k >= len(episodes) - val_episodes else "train"))
        jobs += [(path, (meta["width"], meta["height"])) for path in paths]
    W, H = size or [side // DOWNSAMPLE * DOWNSAMPLE for side in jobs[0][1]]
    if W % DOWNSAMPLE or H % DOWNSAMPLE or not W or not H:
        raise SystemExit(f"--size {W}x{H}: autoencoders need sides that are multiples of {DOWNSAMPLE}")

    device = torch.device(device)
    ae = Autoencoder(vae, device, torch.bfloat16 if vae != "pixels" and native_bf16(device) else torch.float32)
    latent_shape = tuple(ae.encode(np.zeros((1, H, W, 3), np.uint8)).shape[1:])
    total, done, progress = len(jobs), 0, out / "progress.json"
    plan = dict(vae=vae, size=[W, H], episodes=[[i["name"], i["length"]] for i in infos], dtype=str(ae.dtype),
                batch_size=batch_size)  # what the latents depend on
    if progress.exists():  # rows [0, done) of latents.npy are final
        saved = json.loads(progress.read_text())
        if {k: saved.get(k) for k in plan} != plan:
            raise SystemExit(f"{out} holds an unfinished encode with another --vae, --size, --batch-size, device or "
                             f"episodes; run the command that began it to continue it, or delete {out} to start over")
        done, latents = saved["done"], np.load(out / "latents.npy", mmap_mode="r+")
        print(f"resuming {out} at frame {done} of {total}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        latents = np.lib.format.open_memmap(out / "latents.npy", "w+", np.float16, (total, *latent_shape))

    t0, starts = time.time(), list(range(done, total, batch_size))
    with ThreadPoolExecutor(workers) as pool, tqdm(total=total, initial=done, unit="frame", desc="encode") as bar:
        read = lambda k: pool.submit(load_frames, jobs[starts[k]:starts[k] + batch_size], (W, H),  # noqa: E731
                                     device.type == "cuda")
        ready = deque(read(k) for k in range(min(len(starts), workers * AHEAD)))
        for k, row in enumerate(starts):
            frames = ready.popleft().result()                                   # (B, H, W, 3) uint8
            if k + len(ready) + 1 < len(starts):
                ready.append(read(k + len(ready) + 1))
            latents[row:row + len(frames)] = ae.encode(frames).to(torch.float16).cpu().numpy()
            latents.flush()                                                     # on disk before progress says so
            write_json(progress, {**plan, "done": row + len(frames)})
            bar.update(len(frames))
    np.save(out / "actions.npy", np.concatenate([actions for _, actions, _, _ in episodes]).astype(np.float32))

    # mean and std of ~2000 training frames, 256 at a time in float64: train.py rescales the latents by them
    rows = np.concatenate([np.arange(i["start"], i["start"] + i["length"]) for i in infos if i["split"] == "train"])
    rows = rows[:: max(1, len(rows) // 2000)]
    chunks = lambda: (latents[rows[i:i + 256]].astype(np.float64) for i in range(0, len(rows), 256))  # noqa: E731
    count = len(rows) * np.prod(latent_shape)
    mean = sum(chunk.sum() for chunk in chunks()) / count
    std = np.sqrt(sum(((chunk - mean) ** 2).sum() for chunk in chunks()) / count)
    write_json(out / "meta.json", dict(vae=vae, width=W, height=H, latent_shape=list(latent_shape), actions=names,
                                       fps=FPS, latent_mean=float(mean), latent_std=float(std),
                                       dataset=str(Path(dataset).resolve()), episodes=infos))
    progress.unlink()                                                           # meta.json marks the encode done
    print(f"encoded {total} frames of {len(infos)} episodes ({val_episodes} held out) at {W}x{H} into {out}: "
          f"latents {latent_shape}, {(total - done) / (time.time() - t0):.0f} frames/s on {device}")
    return out


def write_json(path, obj):  # whole or not at all: a temporary file, then a rename
    Path(str(path) + ".tmp").write_text(json.dumps(obj, indent=1))
    os.replace(str(path) + ".tmp", path)


def data_key(meta, actions):
    """A checksum of what makes encoded data the same: the autoencoder, the episodes and every input (another
    recording has the same episode names and lengths, not the same inputs)."""
    return zlib.crc32(repr([meta["vae"], list(meta["latent_shape"]), meta["episodes"]]).encode() + actions.tobytes())


def load_latents(folder):
    """(latents memmap (N, C, h, w) float16, actions (N, A) float32, meta dict) of an encoded folder."""
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        inside = sorted(folder.glob("latents-*/meta.json"))
        hint = f" (pass {inside[0].parent}?)" if inside else ""
        raise SystemExit(f"{folder} holds no encoded latents{hint}; encode a recording with `python encode.py "
                         f"DATASET` and pass its latents-* folder")
    meta = json.loads((folder / "meta.json").read_text())
    return np.load(folder / "latents.npy", mmap_mode="r"), np.load(folder / "actions.npy"), meta


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="folder of recorded episodes (see record.py)")
    p.add_argument("--vae", default="stabilityai/sd-vae-ft-mse", help="pixels, a diffusers autoencoder's hub id, "
                                                                      "or a folder that save_pretrained wrote")
    p.add_argument("--out", help="output folder (default DATASET/latents-<vae>)")
    p.add_argument("--size", type=lambda s: tuple(map(int, s.split("x"))), help="WIDTHxHEIGHT, multiples of 8")
    p.add_argument("--val-episodes", type=int, help="episodes held out for validation (default ~10%%)")
    p.add_argument("--batch-size", type=int, default=64, help="frames per autoencoder call (256+ on a GPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count()), help="threads that read frames")
    args = p.parse_args(argv)
    try:
        encode_dataset(args.dataset, args.vae, args.out, args.val_episodes, args.batch_size, args.device,
                       args.size, args.workers)
    except KeyboardInterrupt:
        raise SystemExit("stopped: what is encoded is kept; run the same command again to continue") from None


if __name__ == "__main__":
    main()
