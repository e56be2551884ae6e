"""
Encode a recorded dataset (see record.py for its format) once into cached latents that train.py
memory-maps, so training never touches a PNG or an autoencoder.

    python encode.py data/doom --vae pixels                        # no autoencoder, fully offline
    python encode.py data/doom --vae ../shared/weights/taesd       # TAESD, a local AutoencoderTiny folder
    python encode.py data/doom                                     # the Stable Diffusion VAE from the hub
    python encode.py data/doom --vae madebyollin/taesd --out data/doom-taesd
    python encode.py data/mygame --size 256x144 --batch-size 256   # your own game's footage, on a GPU

Speed: frames are read and resized on --workers threads, several batches ahead, while the autoencoder
encodes large batches (--batch-size; 256 or more on a GPU) in bfloat16 on a GPU that has it (float32 on
a CPU, a GPU before Ampere and for pixels, or --dtype) with channels_last weights. The end prints the
throughput in frames/s and how much of the time went waiting for frames (if that is high, raise --workers).

Frame size: the encode size WxH (--size) must be multiples of 8. Frames at most 7 pixels larger each way
are cut to it around their centre, with no resampling; any other frame is fitted without distortion: its
centre is cut to the aspect ratio of WxH, then resized (record.fit). The default WxH is the frame size
rounded down to multiples of 8, so by default frames are only cropped, by at most 7 pixels each way.

Resuming: after every batch the latents are flushed and progress.json records how many frames are final.
An encode that was interrupted (Ctrl-C, a crash, a kill) continues from there when run again with the same
--vae, --size and --dtype, so finished episodes are never encoded again; with the same --batch-size it
produces exactly the latents of an uninterrupted run.

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
  progress.json while unfinished: the settings and how many frames are done (removed at the end)
meta.json is written last: a folder without it is an unfinished encode.
"""
import argparse
import itertools
import json
import math
import os
import socket
import sys
import time
import warnings
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from record import (FPS, IMAGE_ERRORS, DataError, check_episode, episode_folders, exit_stopped, fit, list_episodes,
                    number, parse_size, rgb)

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
VAE_CHOICES = "--vae needs the folder that `save_pretrained` wrote, a hub id, or 'pixels'"  # how errors end
DOWNSAMPLE = 8  # every autoencoder here maps 8x8 pixels to one latent position (SD's VAE and TAESD do)
DECODE_BATCH = 32  # frames per decoder call: SD's VAE holds ~0.3 GB of activations per 256x256 frame

# -----------------------------------------------------------------------------
# Autoencoders


class Autoencoder:
    """uint8 frames (B, H, W, 3) <-> latents (B, C, H/8, W/8), whichever network (or none) is behind."""

    def __init__(self, name, device="cpu", dtype=torch.float32):
        self.name, self.device, self.dtype = name, torch.device(device), dtype
        self.kind, self.vae, self.scaling_factor = "pixels", None, 1.0
        self.weights = 0  # a checksum of the weights as loaded (before the cast to dtype, which is checked apart)
        if name != "pixels":
            self.vae, self.kind = load_vae(name)
            for tensor in self.vae.state_dict().values():  # a --vae folder may hold another model by a resume
                self.weights = zlib.crc32(tensor.flatten().view(torch.uint8).numpy(), self.weights)
            self.vae.to(self.device, dtype).eval().requires_grad_(False)
            # AutoencoderKL's config says how to scale latents to unit variance; TAESD outputs them scaled
            self.scaling_factor = self.vae.config.scaling_factor if self.kind == "kl" else 1.0

    @torch.no_grad()
    def encode(self, frames):
        x = torch.as_tensor(frames).to(self.device, non_blocking=True)  # pinned frames copy asynchronously
        x = x.permute(0, 3, 1, 2)                                        # (B, 3, H, W) uint8
        x = x.to(self.dtype) / 127.5 - 1                                 # [-1, 1], what SD's VAE expects
        if self.kind == "pixels":
            return F.pixel_unshuffle(x, DOWNSAMPLE)                      # (B, 192, H/8, W/8)
        if self.kind == "kl":
            return self.vae.encode(x).latent_dist.mean * self.scaling_factor  # (B, 4, H/8, W/8)
        return self.vae.encode(x).latents                                # (B, 4, H/8, W/8)

    @torch.no_grad()
    def decode(self, latents):
        """Any number of latents (a 300-frame --eval rollout too), DECODE_BATCH frames at a time."""
        chunks = range(0, len(latents), DECODE_BATCH)
        return torch.cat([self.decode_batch(latents[i:i + DECODE_BATCH]) for i in chunks])

    def decode_batch(self, latents):
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

    diffusers_logging.set_verbosity_error()  # its warnings (install accelerate, ...) would bury our one-line error
    folder = Path(name)
    if folder.is_file():
        raise DataError(f"--vae {name} is a file; pass the folder that holds it and its config.json")
    if folder.is_dir():
        config = folder / "config.json"
        if not config.exists():
            raise DataError(f"{folder} has no config.json; --vae needs a diffusers autoencoder folder, "
                            f"a hub id, or 'pixels'")
        try:
            kind = json.loads(config.read_text()).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            kind = None
        if kind not in ("AutoencoderKL", "AutoencoderTiny"):  # diffusers would load another one with random weights
            raise DataError(f"{config} does not describe an AutoencoderKL or AutoencoderTiny (its \"_class_name\"); "
                            f"--vae needs a diffusers autoencoder folder, a hub id, or 'pixels'")
        tiny = kind == "AutoencoderTiny"
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id (owner/name)
        raise DataError(f"autoencoder folder {name} does not exist (seen from {Path.cwd()}); pass where it is, "
                        f"a hub id, or 'pixels'")
    else:
        tiny = "taesd" in name.lower()  # hub ids: TAESD's repos are the AutoencoderTiny ones
    cls = AutoencoderTiny if tiny else AutoencoderKL
    kind = "tiny" if tiny else "kl"
    if folder.is_dir():
        if not any(folder.glob("diffusion_pytorch_model.*")):  # before diffusers, which would log a page about it
            raise DataError(f"{folder} has no weights (diffusion_pytorch_model.safetensors); {VAE_CHOICES}")
        try:
            vae, info = cls.from_pretrained(name, output_loading_info=True)
        except (OSError, ValueError, TypeError, RuntimeError) as e:  # no weights, a config of another model or size
            raise DataError(f"{folder} cannot be loaded as a diffusers {cls.__name__} ({str(e).splitlines()[0]}); "
                            f"it needs its config.json and weights, as `save_pretrained` writes them") from None
        missing = info["missing_keys"]  # diffusers would fill them with random numbers, and say so in a log only
        if missing:
            raise DataError(f"{folder}'s weights lack {len(missing)} of the {cls.__name__}'s tensors (such as "
                            f"{sorted(missing)[0]}): they are of another model than its config.json describes; "
                            f"{VAE_CHOICES}")
        return vae, kind
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
# Encoding: frames read and resized on worker threads, encoded in large batches, checkpointed as it goes

WORKERS = min(8, os.cpu_count() or 1)  # threads that read and resize frames (Pillow lets go of the GIL meanwhile)
# the files of an unfinished encode: an --out holding only these (and hidden ones, such as .DS_Store) is resumed
OWN_FILES = {"latents.npy", "progress.json", "progress.tmp", "actions.npy", "meta.json.tmp"}
AHEAD = 2                              # batches each worker keeps ready, so the autoencoder never waits for one
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_out(dataset, vae):
    local = vae != "pixels" and Path(vae).is_dir()
    tag = "pixels" if vae == "pixels" else (Path(vae).resolve() if local else Path(vae.rstrip("/"))).name  # "." too
    return Path(dataset) / f"latents-{tag}"


def to_size(image, size):
    """uint8 (H, W, 3) of an RGB PIL image brought to size=(W, H) as the top of this file describes; also what
    sample.py does to the frames that record.replay renders, so that they match the encoded ones."""
    (w, h), (W, H) = image.size, size
    if 0 <= w - W < DOWNSAMPLE and 0 <= h - H < DOWNSAMPLE:                    # a few pixels too big: cut the centre
        left, top = (w - W) // 2, (h - H) // 2
        return np.asarray(image.crop((left, top, left + W, top + H)))
    return fit(image, size)


def load_frames(jobs, size, pin):
    """uint8 (B, H, W, 3) tensor of the frames in jobs [(path, expected (w, h)), ...], brought to size=(W, H)
    (to_size); pinned for a fast copy to the GPU if `pin`. Runs on a worker thread."""
    W, H = size
    batch = np.empty((len(jobs), H, W, 3), dtype=np.uint8)                  # (B, H, W, 3)
    for i, (path, (w, h)) in enumerate(jobs):
        try:
            with Image.open(path) as image:
                image = rgb(image)
        except IMAGE_ERRORS as e:
            raise DataError(f"{path} is corrupt or not an image ({e}); put a good copy of that frame there and "
                            f"run the same command again to continue (deleting the episode instead means "
                            f"deleting the output folder too, and encoding from the start)")
        if image.size != (w, h):
            raise DataError(f"{path} is {image.size[0]}x{image.size[1]} but its episode's frames are {w}x{h} (by "
                            f"its meta.json, or without a size there its first frame); all frames of an episode "
                            f"must have one size: replace this one (or fix width and height in meta.json)")
        batch[i] = to_size(image, size)
    batch = torch.from_numpy(batch)
    return batch.pin_memory() if pin else batch


def encode_dataset(dataset, vae="pixels", out=None, val_episodes=None, batch_size=64, device="cpu",
                   size=None, dtype=None, workers=WORKERS):
    """Encode every episode of `dataset` into `out`, continuing an unfinished encode there if it has the
    same settings; returns the path of the written meta.json. size=(W, H) multiples of 8, default: the
    frame size rounded down to them; dtype: a torch dtype, default bfloat16 for a network on a GPU that has
    it in hardware (native_bf16), else float32."""
    out = Path(out) if out else default_out(dataset, vae)
    if vae != "pixels" and Path(vae).is_dir():  # a local autoencoder: train.py and sample.py find it from anywhere
        vae = str(Path(vae).resolve())
    if (out / "meta.json").exists() and (out / "latents.npy").exists():
        encoded, now = set(), []
        try:
            encoded = {e["name"] for e in json.loads((out / "meta.json").read_text())["episodes"]}
            now = [ep.name for ep in list_episodes(dataset)]            # some encoded ones may be deleted since
        except (OSError, ValueError, KeyError, TypeError, DataError):
            pass                                                        # a damaged meta.json: just refuse
        new, n = [name for name in now if name not in encoded], len(now)
        such_as = Path(dataset) / f"{default_out(dataset, vae).name}-{n}"  # latents-pixels-7: of 7 episodes
        since = (f" of {len(encoded)} episode{'s' * (len(encoded) != 1)}, and {dataset} has {len(new)} more since "
                 f"({', '.join(new[:3])}{', ...' if len(new) > 3 else ''}): to train on all {n}, encode them into a "
                 f"new --out{'' if such_as.exists() else f', such as {such_as}'} (runs trained on {out} go on "
                 f"using it)" if new else "")
        raise DataError(f"{out} already holds encoded latents{since}; delete it or pass another --out")
    if out.exists() and not (out.is_dir() and {p.name for p in out.iterdir() if p.name[0] != "."} <= OWN_FILES):
        raise DataError(f"{out} exists and holds files that an encode did not write (an episode?); pass a new "
                        f"or empty --out, nothing in {out} is touched")
    episodes = list_episodes(dataset)
    if val_episodes is None:  # hold out ~10% of the episodes, at least one when there are two or more
        val_episodes = max(1, round(0.1 * len(episodes))) if len(episodes) > 1 else 0
    if val_episodes >= len(episodes):
        raise DataError(f"--val-episodes {val_episodes} leaves no training episode ({len(episodes)} in "
                        f"{dataset}); record more episodes or lower --val-episodes")

    # first pass: check every episode without decoding its frames, so bad data fails before any work
    infos, jobs, all_actions, names, frame_size = [], [], [], None, None
    for k, ep in enumerate(episodes):
        ep_names, actions, paths, meta = check_episode(ep)
        if names is not None and ep_names != names:
            raise DataError(f"{ep} has input columns {ep_names} but earlier episodes have {names}; "
                            f"encode episodes with the same columns together")
        ep_size = (meta["width"], meta["height"])
        if size is None and frame_size is not None and ep_size != frame_size:
            try:                                                        # the frames, or only meta.json, differ?
                with Image.open(paths[0]) as first:
                    real = first.size
            except IMAGE_ERRORS:
                real = ep_size                                          # a damaged frame: its own error comes later
            fix = ("pass --size to bring them all to one size" if real == ep_size else
                   f"its frames are {real[0]}x{real[1]}: fix width and height in {ep}/meta.json")
            raise DataError(f"{ep} is {ep_size[0]}x{ep_size[1]} by its meta.json, or without a size there its first "
                            f"frame, but {infos[-1]['name']} before it is {frame_size[0]}x{frame_size[1]}; {fix}")
        if infos and meta["fps"] != infos[0]["fps"]:
            raise DataError(f"{ep} is at {meta['fps']} fps but {infos[0]['name']} at {infos[0]['fps']}; one model "
                            f"learns one frame rate, so encode episodes of one rate together (record.py ingest "
                            f"brings footage to {FPS} fps)")
        names, frame_size = ep_names, ep_size
        infos.append(dict(name=ep.name, length=len(paths), fps=meta["fps"], start=len(jobs),
                          split="val" if k >= len(episodes) - val_episodes else "train"))
        jobs += [(path, ep_size) for path in paths]
        all_actions.append(actions)
    W, H = size or (frame_size[0] // DOWNSAMPLE * DOWNSAMPLE, frame_size[1] // DOWNSAMPLE * DOWNSAMPLE)
    if W % DOWNSAMPLE or H % DOWNSAMPLE or not W or not H:
        raise DataError(f"cannot encode at {W}x{H}: autoencoders need sides that are positive multiples of "
                        f"{DOWNSAMPLE}; pass a --size such as {max(8, W // 8 * 8)}x{max(8, H // 8 * 8)}")

    device = torch.device(device)
    if dtype is None:  # bf16 has fp32's range, so no overflow; pixels stay fp32 to round-trip exactly
        dtype = torch.bfloat16 if vae != "pixels" and native_bf16(device) else torch.float32
    ae = Autoencoder(vae, device, dtype)
    if ae.vae is not None:
        ae.vae.to(memory_format=torch.channels_last)   # our (B, H, W, 3) frames arrive in this layout anyway
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True          # all batches have one shape: let cuDNN time its convs once
    total = len(jobs)
    latent_shape = tuple(ae.encode(np.zeros((1, H, W, 3), np.uint8)).shape[1:])

    # resume: rows [0, done) of latents.npy are final once progress.json says so (written after a flush)
    # the inputs' checksum tells two recordings apart whose episodes have the same names and lengths (two Doom
    # recordings with other seeds): the rows already encoded must be of this very dataset
    inputs = zlib.crc32(np.concatenate(all_actions).astype(np.float32).tobytes())
    plan = dict(vae=vae, width=W, height=H, latent_shape=list(latent_shape), dtype=str(dtype),
                episodes=[[i["name"], i["length"]] for i in infos], inputs=inputs, weights=ae.weights)
    done, progress = 0, out / "progress.json"
    if progress.exists() and (out / "latents.npy").exists():
        start_over = f"delete {out} to start over"
        try:
            saved = json.loads(progress.read_text())
            done = int(saved["done"])
            np.load(out / "latents.npy", mmap_mode="r")                 # refuses a file cut short, which r+ grows
            latents = np.load(out / "latents.npy", mmap_mode="r+")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:  # 1e400 is inf
            raise DataError(f"{out} holds an unfinished encode that is damaged ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no details'}); {start_over}") from None
        saved.setdefault("inputs", inputs)  # an encode begun before progress.json recorded the checksums
        saved.setdefault("weights", ae.weights)
        if {k: saved.get(k) for k in plan} != plan:
            before = len(saved["episodes"]) if isinstance(saved.get("episodes"), list) else 0  # or edited
            what = {"episodes": f"episodes ({before} -> {len(plan['episodes'])}, or "
                                f"their lengths)", "inputs": "the episodes' inputs (another recording?)",
                    "weights": f"the autoencoder's weights (another model in {vae}?)"}
            changed = ", ".join(what.get(k, f"{k} {saved.get(k)} -> {plan[k]}")
                                for k in plan if saved.get(k) != plan[k] and k != "latent_shape")
            changed = changed or (f"latent_shape {saved.get('latent_shape')} -> {plan['latent_shape']} (another "
                                  f"autoencoder in {vae}?)")            # the same --vae folder, another model in it
            raise DataError(f"{out} holds an unfinished encode with other settings or episodes ({changed}); run it "
                            f"on the same recording with the same --vae, --size and --dtype to continue it, or "
                            f"{start_over}")
        if latents.shape != (total, *latent_shape) or latents.dtype != np.float16 or not 0 <= done <= total:
            raise DataError(f"{out} holds an unfinished encode whose latents.npy ({latents.dtype} {latents.shape}) "
                            f"does not fit its progress.json ({done} of {total} frames of {latent_shape}); "
                            f"{start_over}")
        print(f"resuming {out} at frame {done} of {total} "
              f"({sum(i['start'] + i['length'] <= done for i in infos)} of {len(infos)} episodes already encoded)")
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create {out} ({e.strerror}); pass an --out folder where you can write") from None
        latents = np.lib.format.open_memmap(out / "latents.npy", "w+", np.float16, (total, *latent_shape))

    row, waited, t0 = done, 0.0, time.time()
    starts = iter(range(done, total, batch_size))
    bar = tqdm(total=total, initial=done, unit="frame", desc=f"encode ({vae})", file=sys.stdout)  # stderr: errors
    pool = ThreadPoolExecutor(workers)

    def submit(start):
        return pool.submit(load_frames, jobs[start:start + batch_size], (W, H), device.type == "cuda")

    try:
        ready = deque(submit(start) for start in itertools.islice(starts, workers * AHEAD))
        while ready:
            t = time.time()
            frames = ready.popleft().result()                               # (B, H, W, 3) uint8
            waited += time.time() - t
            ready.extend(submit(start) for start in itertools.islice(starts, 1))
            z = ae.encode(frames)                                           # (B, C, h, w)
            latents[row:row + len(z)] = z.to(torch.float16).cpu().numpy()
            row += len(z)
            latents.flush()                                                 # on disk before progress says so
            progress.with_suffix(".tmp").write_text(json.dumps({**plan, "done": row}))
            progress.with_suffix(".tmp").replace(progress)
            bar.update(len(z))
    finally:
        pool.shutdown(cancel_futures=True)                                  # after an error, skip what was queued
        bar.close()
    seconds = time.time() - t0
    np.save(out / "actions.npy", np.concatenate(all_actions).astype(np.float32))

    # statistics of the training latents: train.py rescales the data to zero mean and std sigma_data
    train_rows = np.concatenate([np.arange(i["start"], i["start"] + i["length"])
                                 for i in infos if i["split"] == "train"])
    # ~2000 frames spread over the training episodes: mean and std to 3 digits, without reading all of them,
    # 256 frames at a time (in float64, 2000 frames of 256x144 would take 7 GB)
    rows = train_rows[:: max(1, len(train_rows) // 2000)]
    chunks = lambda: (latents[rows[i:i + 256]].astype(np.float64) for i in range(0, len(rows), 256))  # noqa: E731
    count = len(rows) * math.prod(latent_shape)
    mean = sum(chunk.sum() for chunk in chunks()) / count
    std = math.sqrt(sum(((chunk - mean) ** 2).sum() for chunk in chunks()) / count)
    meta = dict(vae=vae, kind=ae.kind, scaling_factor=ae.scaling_factor, width=int(W), height=int(H),
                latent_shape=list(latent_shape), actions=names, fps=infos[0]["fps"],
                latent_mean=float(mean), latent_std=float(std),
                dataset=str(Path(dataset).resolve()), episodes=infos)
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / "meta.json")
    progress.unlink(missing_ok=True)                                        # meta.json now marks the encode done
    n_val = sum(i["split"] == "val" for i in infos)
    speed = (total - done) / seconds if seconds else 0.0
    print(f"encoded {total} frames of {len(infos)} episode{'s' * (len(infos) != 1)} ({n_val} held out for "
          f"validation) into {out}, "
          f"{W}x{H} -> latents {latent_shape}: {speed:.1f} frames/s on {device} in {str(dtype)[6:]}, "
          f"{waited / max(seconds, 1e-9):.0%} of the time waiting for frames (if high, raise --workers)")
    return out / "meta.json"


def native_bf16(device, note=True):
    """Whether `device` computes in bfloat16 in hardware: a GPU from Ampere (A100, RTX 30xx; 2020) on, or an
    AMD one. Older GPUs (T4, V100) only emulate it, slowly, and torch.compile cannot generate their code for
    it, so on those the scripts stay in float32 and, with `note`, say so once."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    if getattr(torch.version, "hip", None) or torch.cuda.get_device_capability(device)[0] >= 8:
        return True
    if note:
        print(f"note: {torch.cuda.get_device_name(device)} has no bfloat16 in hardware (it came before Ampere), "
              f"so this runs in float32", file=sys.stderr)
    return False


def device(text):
    """An argparse type: a torch device that this machine has (argparse prints a one-line error otherwise)."""
    try:
        d = torch.device(text)
    except RuntimeError:
        d = None
    if d is None or d.type not in ("cpu", "cuda", "mps"):  # torch knows more kinds (meta, xpu) than this runs on
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:1 or mps")
    if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():  # none at all, or not that one
        raise argparse.ArgumentTypeError(f"{text}: torch finds {torch.cuda.device_count()} CUDA GPU(s) here "
                                         f"(torch {torch.__version__}); use --device cpu or another GPU")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no Apple GPU; use --device cpu")
    return text


def load_latents(folder):
    """(latents memmap (N, C, h, w) float16, actions (N, A) float32, meta dict) of an encoded folder."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        inside = sorted(p.name for p in folder.glob("latents-*") if (p / "meta.json").exists())
        hint = ""
        if inside:
            hint = f" (pass {folder / inside[0]}?)"
        elif (folder / "progress.json").exists():
            hint = " (an unfinished encode? run it again)"
        elif episode_folders(folder):
            hint = " (a recording, not yet encoded)"
        raise DataError(f"{folder} holds no encoded latents{hint}; run `python encode.py DATASET` first "
                        f"and pass its latents-* folder")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        latents = np.load(folder / "latents.npy", mmap_mode="r")
        actions = np.load(folder / "actions.npy")
        frames = sum(e["length"] for e in meta["episodes"])
        ends = np.cumsum([0] + [e["length"] for e in meta["episodes"]])
        problems = [  # what the later stages take for granted, in the order encode_dataset writes it
            (not len(latents) == len(actions) == frames,
             f"{len(latents)} latents, {len(actions)} rows of inputs and {frames} frames in meta.json"),
            (latents.ndim != 4 or list(latents.shape[1:]) != list(meta["latent_shape"]),
             f"latents.npy is {latents.shape[1:]} a frame, meta.json says {meta['latent_shape']}"),
            (actions.ndim != 2 or actions.shape[1] != len(meta["actions"]),
             f"actions.npy is {actions.shape}, for {len(meta['actions'])} input columns in meta.json"),
            ([e["start"] for e in meta["episodes"]] != list(ends[:-1]), "the episodes' starts do not follow on"),
            (meta["vae"] == "pixels" and meta["latent_shape"][0] != 3 * DOWNSAMPLE**2,
             f"pixels latents have {3 * DOWNSAMPLE**2} channels, not {meta['latent_shape'][0]}"),
            (not all(isinstance(meta[k], (int, float)) for k in ("latent_mean", "latent_std")),
             "its latent statistics are not numbers")]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # a missing, cut-short or foreign file
        why = str(e).split("\n")[0]
        raise DataError(f"{folder} is damaged ({type(e).__name__}: {why}); encode the "
                        f"recording again, or restore the folder from where it came") from None
    for problem, what in problems:
        if problem:
            raise DataError(f"{folder} is damaged: {what}; encode the recording again, or restore the folder from "
                            f"where it came")
    return latents, actions, meta


# -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="encode.py DATASET [--vae HUB_ID|FOLDER|pixels] [--size WxH] [--out OUT] "
                                           "... (--help lists every flag)")
    parser.add_argument("dataset", help="folder of recorded episodes (see record.py)")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="'pixels', a diffusers autoencoder hub id, or a folder")
    parser.add_argument("--out", help="output folder (default DATASET/latents-<vae>)")
    parser.add_argument("--val-episodes", type=number(int, inclusive=True),
                        help="episodes held out for validation (default: 10%% of them, at least 1 of 2 or more)")
    parser.add_argument("--batch-size", type=number(int), default=64,
                        help="frames per autoencoder call (GPU: 256 or more)")
    parser.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", help="encode at WIDTHxHEIGHT, multiples of 8 (default: the frame size rounded "
                                       "down to them); see the top of encode.py for how frames are fitted")
    parser.add_argument("--dtype", choices=list(DTYPES), help="autoencoder precision (default: bfloat16 on a GPU "
                                                              "from Ampere on or AMD; float32 otherwise, and always "
                                                              "for pixels)")
    parser.add_argument("--workers", type=number(int, high=64), default=WORKERS,
                        help="threads that read and resize frames")
    args = parser.parse_args(argv)
    encode_dataset(args.dataset, args.vae, args.out, args.val_episodes, args.batch_size, args.device,
                   parse_size(args.size) if args.size else None, DTYPES.get(args.dtype), args.workers)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        exit_stopped("stopped by Ctrl-C: what is encoded so far is kept; run the same command again to continue")
