"""
Train the world model on encoded latents (see encode.py). A plain torch loop.

    python train.py --data data/doom/latents-pixels --preset cpu          # the CPU quickstart
    python train.py --data data/wow/latents-sd-vae-ft-mse --preset base --compile   # one GPU
    python train.py --run runs/cpu --resume --steps 4000                  # continue (and extend) a run
    python train.py --data ... --preset cpu --ctx_noise 0 --run runs/no-ctx-noise   # a Config field

The run folder (--run, default runs/<preset>) receives:
  ckpt.pt          model, EMA, optimizer, config, step, args, running train loss, elapsed seconds and what the
                   data was (data_key): written atomically at each validation, and on Ctrl-C or kill (SIGTERM),
                   which finish the step, save and stop (one process; under torchrun the last one is kept)
  log.csv          step, lr, train_loss, val_loss, samples_per_s, mfu (GPU), elapsed_s (over resumes)
  preview_*.gif    at each validation, a rollout of the EMA model (right) beside the truth (left)
"""
import argparse
import copy
import csv
import itertools
import math
import os
import resource
import signal
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from encode import DOWNSAMPLE, Autoencoder, device, load_latents, native_bf16
from model import (CTX_SIGMA_EPS, PRESETS, Config, WorldModel, denormalize, diffusion_loss, make_config, normalize,
                   rollout)
from record import (SEED_MAX, STOP_SIGNALS, DataError, Stopped, exit_stopped, number, parse_with_given,
                    signals_restored, stops_held)

# training hyperparameters per preset; each is also a flag below
TRAIN_PRESETS = {
    "tiny": dict(batch_size=8, steps=200, lr=1e-3, warmup=20, eval_every=100),
    "cpu": dict(batch_size=32, steps=900, lr=1.5e-3, warmup=100, eval_every=300),  # 6 to 9 minutes on 2 cores
    "base": dict(batch_size=256, steps=100_000, lr=2e-4, warmup=5000, eval_every=5000),  # ~25 A100-hours
}

# -----------------------------------------------------------------------------
# Arguments


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="train.py --data LATENTS [--preset cpu] [--run RUN] [--resume] ... "
                                      "(--help lists every flag)")
    p.add_argument("--data", help="an encoded latents folder (encode.py's output)")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="model and training size")
    # --run_dir, because torchrun's own parser rejects a plain --run as an abbreviation of its --run-path
    p.add_argument("--run_dir", "--run-dir", "--run", dest="run",
                   help="run folder for checkpoints, logs and previews (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its checkpoint")
    p.add_argument("--steps", type=number(int), help="optimizer steps in total; with --resume, a larger number "
                   "extends the run and stretches the cosine over the new total, so the learning rate rises again")
    p.add_argument("--batch_size", "--batch-size", type=number(int), help="windows per optimizer step")
    p.add_argument("--lr", type=number(float), help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=number(int, inclusive=True), help="linear warmup steps before the cosine decay")
    p.add_argument("--eval_every", "--eval-every", type=number(int), help="steps between validation + checkpoint")
    p.add_argument("--min_lr_ratio", type=number(float, inclusive=True, high=1), default=0.1,
                   help="the cosine decays to lr * this")
    p.add_argument("--weight_decay", type=number(float, inclusive=True), default=0.01, help="AdamW weight decay")
    p.add_argument("--grad_clip", type=number(float), default=1.0, help="clip the gradient norm to this")
    p.add_argument("--ema", type=number(float, inclusive=True), default=0.999,
                   help="EMA decay of the weights used for sampling")
    p.add_argument("--eval_batches", type=number(int), default=8,
                   help=f"validation batches of {EVAL_BATCH} windows per evaluation")
    p.add_argument("--preview_frames", type=number(int), default=45, help="frames in each preview GIF (3 s at 15 FPS)")
    p.add_argument("--seed", type=number(int, inclusive=True, high=SEED_MAX), default=0)
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slow to start)")
    p.add_argument("--grad_accum", "--grad-accum", type=number(int), default=1, help="micro-batches per optimizer step")
    p.add_argument("--benchmark", type=number(int, inclusive=True), default=0, metavar="N",
                   help="time N training steps (no checkpoint, no data needed) and print samples/s, MFU, memory")
    # every model Config field is a flag too, under its own name: --dim 256 --ctx_noise 0 ..., except those that
    # come from the data; the latents' shape and the number of inputs are flags for --benchmark alone
    for f in fields(Config):
        if f.name in FROM_DATA and f.name not in BENCHMARK_SHAPE:
            continue
        kind = {bool: true_or_false, int: number(int), float: number(float, -math.inf)}[f.type]
        p.add_argument(f"--{f.name}", type=kind, help=f"model Config.{f.name} (see model.py)"
                       + (", for --benchmark; otherwise the data's" if f.name in BENCHMARK_SHAPE else ""))
    if int(os.environ.get("RANK", 0)):  # torchrun gives every rank the same flags: rank 0 alone says what is wrong
        p.error, p.print_help = (lambda message: sys.exit(2)), (lambda file=None: None)
    args, given = parse_with_given(p, argv)
    if args.ema >= 1:
        p.error(f"argument --ema: {args.ema} must be below 1 (0.999 averages the last ~1000 steps)")
    return args, {k: v for k, v in vars(args).items() if k in given}  # even at the default: --resume must not ignore


# the Config fields that train.py fills in from the encoded data; the first four size --benchmark's random data
BENCHMARK_SHAPE = ("latent_channels", "latent_height", "latent_width", "action_dim")
FROM_DATA = (*BENCHMARK_SHAPE, "latent_mean", "latent_std", "action_scale", "frame_shuffle")


# what --resume may change: where and how fast it runs, how long, how often it checkpoints and previews, where
# the data is now (checked to be the same data, see check_same_data), and the peak learning rate (to go on past a
# loss that blew up); the rest (model, optimizer, seed) comes from the checkpoint
RESUME_MAY_CHANGE = {"run", "resume", "steps", "device", "compile", "eval_every", "preview_frames", "data", "lr"}


def true_or_false(text):
    """An argparse type for the Config's switches: --motion false. A typo is an error, not a silent False."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is neither true nor false")


def check_config(cfg):
    """One line for model flags that do not fit each other or the data, instead of a shape error in torch."""
    p, q, h, w = cfg.patch_size, cfg.patch_size * cfg.ctx_pool, cfg.latent_height, cfg.latent_width
    if cfg.dim % cfg.heads:
        raise DataError(f"--dim {cfg.dim} does not split into --heads {cfg.heads} equal heads; pick a number of "
                        f"heads that divides it (head size 64 suits flash attention)")
    if cfg.rope and cfg.dim // cfg.heads % 4:
        raise DataError(f"--rope needs a head size (--dim / --heads = {cfg.dim // cfg.heads}) that divides by 4")
    if h % q or w % q:
        raise DataError(f"the latents are {h}x{w} positions, which --patch_size {p} x --ctx_pool {cfg.ctx_pool} "
                        f"does not divide; pick ones whose product divides both, or encode at another --size")
    if cfg.motion and min(h, w) * cfg.frame_shuffle < 2:  # it looks at the frame at half resolution
        raise DataError(f"the latents are {h}x{w} positions, too small for the motion, which needs 2 each way; "
                        f"encode at a larger --size, or train with --motion false")
    if int(cfg.dim * cfg.mlp_ratio) < 1:
        raise DataError(f"--mlp_ratio {cfg.mlp_ratio} leaves the MLP of --dim {cfg.dim} no width; use 4, as is usual")
    for name in ("action_dropout", "self_rollout"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise DataError(f"--{name} is a share of the training samples, from 0 to 1, not {getattr(cfg, name)}")
    for name in ("ctx_noise", "ctx_noise_sample", "P_std"):  # 0: no context noise, one training noise level
        if getattr(cfg, name) < 0:  # below 0, ln(sigma) of the context noise is NaN
            raise DataError(f"--{name} is a noise level or its spread: 0 or above, not {getattr(cfg, name)}")
    for name in ("sigma_data", "sigma_min", "rho", "mlp_ratio"):  # scales, logs and ratios
        if getattr(cfg, name) <= 0:
            raise DataError(f"--{name} must be above 0, not {getattr(cfg, name)}")
    if not 0.01 <= cfg.sigma_data <= 100:  # 1 / sigma_data^2 weighs the loss
        raise DataError(f"--sigma_data is the std of the data (0.5 for latents in [-1, 1]): from 0.01 to 100, "
                        f"not {cfg.sigma_data}")
    if not 1 <= cfg.rho <= 100:  # sigma_max^(1/rho) overflows as rho nears 0
        raise DataError(f"--rho bends the sampling schedule (EDM: 7): from 1 to 100, not {cfg.rho}")
    if cfg.sigma_max <= cfg.sigma_min:
        raise DataError(f"--sigma_max {cfg.sigma_max} must be above --sigma_min {cfg.sigma_min}: the sampler "
                        f"goes from one down to the other")


# an input this many times its column's spread in the training episodes is an error in inputs.csv, not a
# rare move: a key pressed once in 10^12 frames would reach it. The model sees inputs divided by the spread
MAX_ACTION_SPREADS = 1e6


def check_actions(actions, action_scale, meta):
    """One line for an input value that is NaN (a damaged actions.npy) or so far out (a corrupt inputs.csv: a
    mouse delta of 1e30) that the model would overflow on it: either would surface as a NaN loss."""
    scale = np.array(action_scale)
    reach = np.maximum(np.abs(actions.min(axis=0)), np.abs(actions.max(axis=0)))      # (A,), NaN stays NaN
    out = np.flatnonzero(~(reach <= MAX_ACTION_SPREADS * scale) | np.isinf(scale))  # inf: float32's squares overflowed
    if len(out):
        col = out[0]
        odd = ~np.isfinite(actions[:, col])
        row = int(odd.argmax() if odd.any() else np.abs(actions[:, col]).argmax())  # NaN or inf, or the largest
        e = next(e for e in meta["episodes"] if e["start"] <= row < e["start"] + e["length"])
        value, where = actions[row, col], f"in episode {e['name']} (row {row - e['start']} of its inputs.csv)"
        if not np.isfinite(value):                     # record.py refuses them in inputs.csv: the file is damaged
            raise DataError(f"input {meta['actions'][col]!r} is {value} in actions.npy {where}, where inputs.csv "
                            f"cannot put one: the latents folder is damaged; encode the recording again")
        why = ("too large to take the spread of its column" if np.isinf(scale[col]) else
               f"over {MAX_ACTION_SPREADS:g} times its spread in the training episodes")
        raise DataError(f"input {meta['actions'][col]!r} is {value:g} {where}, {why}: fix the value in inputs.csv, "
                        f"then encode again")


# -----------------------------------------------------------------------------
# Data: windows of T context frames + the next frame, drawn where they fit inside one episode


# bytes: datasets up to this size are copied to the device whole, larger ones stay memory-mapped. Two hours of
# 256x256 SD latents take 0.9 GB, so 4 GB holds about nine hours, a tenth of a 40 GB GPU's memory
MAX_ON_DEVICE = 4e9


def place(latents, actions, device):
    """The whole dataset on the device when it fits: then drawing a batch is one gather, with no loader at all.
    Done once, for both splits."""
    if latents.nbytes <= MAX_ON_DEVICE:
        latents = torch.from_numpy(np.array(latents)).to(device)  # a writable copy of the memory map
    return latents, torch.from_numpy(actions).to(device)


class Windows:
    def __init__(self, latents, actions, meta, split, cfg, device):
        """latents and actions as place() leaves them: tensors on the device, or the memory map and a tensor."""
        T = cfg.context + (cfg.self_rollout > 0)  # self_rollout needs one frame more, to predict the latest from
        eps = [e for e in meta["episodes"] if e["split"] == split and e["length"] > T]
        if not eps:
            lengths = ", ".join(f"{e['name']} {e['length']}" for e in meta["episodes"] if e["split"] == split)
            fix = ("encode.py holds out the last episodes by name, so re-encode with a longer one last (rename it) "
                   "or with --val-episodes 0" if split == "val" else "record longer episodes")
            raise DataError(f"no {split} episode is longer than the {T}-frame context (frames: {lengths}); {fix}")
        self.latents, self.actions = latents, actions
        self.targets = torch.cat([torch.arange(e["start"] + T, e["start"] + e["length"]) for e in eps])
        self.episodes, self.cfg, self.device, self.T = eps, cfg, device, T

    def draw(self, batch_size, generator):
        """(B, T+1) dataset rows of B random windows: T context frames, then the next frame."""
        idx = self.targets[torch.randint(len(self.targets), (batch_size,), generator=generator)]  # (B,)
        return idx[:, None] + torch.arange(-self.T, 1)                                          # (B, T+1)

    def read(self, rows):
        """The frames of `rows` from the memory map, in (pinned, for a fast copy to the GPU) CPU memory."""
        frames = torch.from_numpy(self.latents[rows.numpy().ravel()]).view(*rows.shape, *self.latents.shape[1:])
        return frames.pin_memory() if self.device.type == "cuda" else frames

    def batch(self, rows, frames=None):
        """x (B, C, h, w) next frame, ctx (B, T, C, h, w) frames before it, actions (B, T, A)."""
        if frames is None:
            frames = self.latents[rows.to(self.device)] if isinstance(self.latents, torch.Tensor) else self.read(rows)
        frames = normalize(self.cfg, frames.to(self.device, non_blocking=True))                  # (B, T+1, C, h, w)
        return frames[:, -1], frames[:, :-1], self.actions[rows[:, :-1].to(self.device)]

    def get_batch(self, batch_size, generator):
        return self.batch(self.draw(batch_size, generator))

    def stream(self, batch_size, seed, step, first, per_step):
        """Yield micro-batches for steps step, step+1, ...: micro-batch r of step k holds the windows drawn with
        the generator of (seed, k, first + r), so a resumed run sees the windows it would have seen, and N
        processes (first = rank x per_step) see what one process with N x per_step micro-batches would.
        Memory-mapped data is read one micro-batch ahead by a background thread while the model computes."""
        keys = ((k, first + r) for k in itertools.count(step) for r in range(per_step))
        seeds = (step_seed(seed, k, r, WINDOWS) for k, r in keys)
        rows = (self.draw(batch_size, torch.Generator().manual_seed(s)) for s in seeds)
        if isinstance(self.latents, torch.Tensor):  # on the device: a gather is all it takes
            yield from map(self.batch, rows)
            return
        with ThreadPoolExecutor(1) as pool:  # the reading releases the GIL: numpy copies, pinning
            ahead = next(rows)
            pending = pool.submit(self.read, ahead)
            for upcoming in rows:
                frames, current = pending.result(), ahead
                ahead, pending = upcoming, pool.submit(self.read, upcoming)
                yield self.batch(current, frames)


# -----------------------------------------------------------------------------
# Checkpoints: one dict, written atomically (temp file + rename) so a kill never leaves half a file


def save_checkpoint(path, **state):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
    os.replace(tmp, path)


def catch_stop_signals():
    """A dict that gets "signal": "Ctrl-C" (or "SIGTERM") and its "signum" when one arrives, instead of an
    exception in the middle of a step; the loop then saves and stops. A second Ctrl-C stops at once, as usual.
    main() puts the previous handlers back when it returns."""
    stop = {}

    def handler(signum, frame):
        stop["signal"] = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        stop["signum"] = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    return stop


def checkpoint_path(run):
    """RUN/ckpt.pt, or one line saying what to do when there is none."""
    path = Path(run) / "ckpt.pt"
    if not Path(run).is_dir():
        raise DataError(f"{run} {'is not a folder' if Path(run).exists() else 'does not exist'}; pass the --run "
                        f"folder that train.py wrote")
    if path.exists() and not path.is_file():
        raise DataError(f"{path} is a folder, not a checkpoint file; move it out of the way (a checkpoint is the "
                        f"file ckpt.pt that train.py writes)")
    if not path.is_file():
        raise DataError(f"{run} has no checkpoint (ckpt.pt) yet: train.py writes one at each validation (every "
                        f"--eval_every steps); wait for it, or train one with `python train.py --data ... --run "
                        f"{run}`")
    return path


CKPT_KEYS = {"model", "ema", "optimizer", "config", "step", "args"}  # what every checkpoint holds (checkpoint())


def load_checkpoint(run):
    path = checkpoint_path(run)
    try:  # save_checkpoint writes atomically, so a damaged file comes from elsewhere: a copy, a disk
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler of a file that is no checkpoint raises almost anything (KeyError: 101)
        first = (str(e).splitlines() or [""])[0][:80]                   # EOFError('') of a cut-short file: none
        why = "an empty file" if path.stat().st_size == 0 else type(e).__name__ + f": {first}" * bool(first)
        raise DataError(f"{path} cannot be read ({why}): the file is damaged, perhaps in a copy; restore it from "
                        f"where it came, or train the run again into a new --run") from None
    lacks = ", ".join(sorted(CKPT_KEYS - set(ckpt))) if isinstance(ckpt, dict) else None
    if lacks is None or lacks or not isinstance(ckpt["config"], dict):
        what = f"a {type(ckpt).__name__}" if lacks is None else f"no {lacks or 'config of the model'}"
        raise DataError(f"{path} is not a checkpoint that train.py wrote (it holds {what}); pass the --run folder "
                        f"of a run trained here")
    return ckpt


def load_weights(module, state, run):
    """module.load_state_dict(state), with a one-line error for weights that do not fit the checkpoint's config."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{run}/ckpt.pt holds weights that do not fit its own config ({str(e).splitlines()[0]}); "
                        f"the file was edited or damaged: restore it, or train the run again into a new --run") \
            from None


def data_key(meta, latents):
    """What a run's data must still be when the run is resumed or sampled: the autoencoder, the latents' shape,
    the input columns, and every episode with its length, its split (a re-encode may hold out other ones) and
    a checksum of its first and last latents (another recording has the same names and lengths)."""
    def checksum(e):
        return zlib.crc32(np.ascontiguousarray(latents[[e["start"], e["start"] + e["length"] - 1]]).tobytes())

    return dict(vae=meta["vae"], latent_shape=list(meta["latent_shape"]), actions=list(meta["actions"]),
                episodes=[[e["name"], e["length"], e["split"], checksum(e)] for e in meta["episodes"]])


def check_same_data(ckpt, now, run, folder):
    """Refuse latents whose data_key `now` is not the run's: encoded again since, or another recording."""
    saved = ckpt.get("data")  # a checkpoint from before this check has none
    changed = [k for k in now if saved is not None and saved[k] != now[k]]
    if changed:
        raise DataError(f"{folder} is not the data {run} was trained on: its {', '.join(changed)} differ (encoded "
                        f"again since, or another recording?); use the latents the run was trained on, or train "
                        f"a new run on these")


def config_from_checkpoint(ckpt, run):
    """The checkpoint's Config; one written before a Config field existed would silently get that field's
    new default, a different model, and one with a field this model.py lacks comes from another version:
    both are refused."""
    names = {f.name for f in fields(Config)}
    missing, unknown = names - set(ckpt["config"]), set(ckpt["config"]) - names
    if missing or unknown:
        which = f"an older model.py (no {', '.join(sorted(missing))})" if missing else \
            f"another model.py (with {', '.join(sorted(unknown))})"
        raise DataError(f"{run}/ckpt.pt was written by {which}; retrain it with this version, or check out the "
                        f"commit that trained it")
    if "ctx_sigma_eps" not in ckpt and ckpt["config"]["sigma_min"] != CTX_SIGMA_EPS:  # before CTX_SIGMA_EPS
        raise DataError(f"{run}/ckpt.pt was trained with --sigma_min {ckpt['config']['sigma_min']} and records no "
                        f"ctx_sigma_eps: model.py before commit 92e0286 also added sigma_min to the context's noise "
                        f"level, so whether this run learnt that cannot be told; check out the commit that trained "
                        f"it, or retrain it with this version")
    return Config(**ckpt["config"])


def model_from_checkpoint(ckpt, run, weights="ema"):
    model = WorldModel(config_from_checkpoint(ckpt, run))
    load_weights(model, ckpt[weights], run)
    return model


# -----------------------------------------------------------------------------
# Speed: seeds, the device's peak for MFU, and a benchmark mode

# dense bf16 tensor-core peak in FLOP/s, matched against torch.cuda.get_device_name (vendor data sheets); V100
# and T4 have no bf16 tensor cores, so they have no entry and no MFU
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A10G": 70e12,
             "A10": 125e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device):
    """The device's bf16 peak (None on CPU or an unknown GPU: no MFU is printed then)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def check_in_sync(model, world):
    """DDP keeps every rank's weights equal; compare a checksum across ranks to be sure."""
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = [torch.zeros_like(total) for _ in range(world)]
    dist.all_gather(sums, total)
    if any(s != sums[0] for s in sums):
        raise RuntimeError(f"the ranks' weights differ (checksums {[s.item() for s in sums]}): a DDP bug")


NOISE, WINDOWS = 0, 1  # the two random streams of a micro-batch: its noise (torch's global RNG), its windows
EVAL_BATCH = 32        # windows per validation batch, whatever the run's batch size (their noise differs when
                       #   a run's micro-batches are smaller and split them): validation losses compare


def step_seed(seed, step, micro, stream=NOISE):
    """A seed of its own for each (run seed, step, micro-batch, stream): 1_000_003 (a prime) exceeds any step
    count and 1009 any 2 x micro-batches per step, so no two of them share one."""
    return (seed * 1_000_003 + step) * 1009 + 2 * micro + stream


def seed_everything(seed, step, micro):
    """Seed the noise of micro-batch `micro` of `step` (its windows come from Windows.stream)."""
    torch.manual_seed(step_seed(seed, step, micro))


def synthetic_latents(preset, overrides):
    """Random latents of the preset's usual shape (or the --latent_* flags'), so --benchmark needs no dataset."""
    cfg = make_config(preset, **overrides)
    n, shape = 2000, (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    meta = dict(latent_shape=list(shape), actions=[f"a{i}" for i in range(cfg.action_dim)], latent_mean=0.0,
                latent_std=1.0, vae="random", episodes=[dict(name="random", start=0, length=n, split="train")])
    return np.random.randn(n, *shape).astype(np.float16), np.random.rand(n, cfg.action_dim).astype(np.float32), meta


def benchmark(args, train_model, model, optimizer, data, micro_batch, world, autocast, peak, master=True,
              warmup=5):
    """Time args.benchmark optimizer steps after a few warm-up ones (compilation, allocator); print and
    return samples/s, MFU and peak memory."""
    device = next(model.parameters()).device
    batches = data.stream(micro_batch, args.seed, 0, 0, args.grad_accum)
    for i in range(warmup + args.benchmark):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.time()
        for micro in range(args.grad_accum):
            seed_everything(args.seed, i, micro)
            x, ctx, act = next(batches)
            with autocast:
                loss = diffusion_loss(train_model, x, ctx, act) / args.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        memory = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB, the whole process
    speed = args.benchmark * args.batch_size / (time.time() - t0)
    mfu = speed * model.flops_per_sample() / (world * peak) if peak else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if master:
        print(f"benchmark {args.preset} on {name}: batch {args.batch_size}, {args.benchmark} steps, "
              f"{speed:.1f} samples/s, MFU {'n/a' if mfu is None else f'{mfu:.1%}'}, "
              f"{model.flops_per_sample() / 1e9:.1f} GFLOP/sample, peak memory {memory:.2f} GiB"
              f"{'' if device.type == 'cuda' else ' (process RSS)'}, compile={args.compile}")
    return dict(samples_per_s=speed, mfu=mfu, peak_memory_gib=memory)


# -----------------------------------------------------------------------------
# Previews: a rollout of the EMA model beside the truth, decoded to pixels


def preview(model, windows, autoencoder, n_frames, path):
    from sample import side_by_side, write_gif

    cfg, T = model.cfg, model.cfg.context
    ep = windows.episodes[0]
    n = min(n_frames, ep["length"] - T)
    rows = torch.arange(ep["start"], ep["start"] + T + n)
    frames = normalize(cfg, windows.latents[rows.to(windows.device)] if isinstance(windows.latents, torch.Tensor)
                       else torch.from_numpy(windows.latents[rows.numpy()]).to(windows.device))
    actions = windows.actions[rows[:-1].to(windows.device)][None]                    # (1, T+n-1, A)
    g = torch.Generator(windows.device).manual_seed(0)
    fake = rollout(model, frames[None, :T], actions, generator=g)[0]                  # (n, C, h, w)
    truth = autoencoder.decode(denormalize(cfg, frames[T:]))
    dream = autoencoder.decode(denormalize(cfg, fake))
    write_gif(path, side_by_side(truth, dream))


# -----------------------------------------------------------------------------


def leave_group():
    """The end of a torchrun process. The ranks wait for each other (rank 0 for its last checkpoint and
    preview) first: a rank that tears its connections down while another still uses them can abort gloo
    ("terminate called without an active exception")."""
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None):
    with signals_restored():  # catch_stop_signals' handlers are for the training loop only (tests call main())
        return train(argv)


def train(argv=None):
    args, given = get_args(argv)
    run = Path(args.run or f"runs/{args.preset}")

    # --- setup: DDP from the environment (torchrun sets RANK), resume or start, seeds, device, precision
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        use_cuda = torch.cuda.is_available() and args.device != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, local_rank, world = dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()
        args.device = f"cuda:{local_rank}" if use_cuda else "cpu"
        if use_cuda:
            torch.cuda.set_device(args.device)
    else:
        rank, world = 0, 1
    master = rank == 0  # only rank 0 writes checkpoints, logs and previews
    ckpt, loaded = None, None  # loaded: (latents, actions, meta) once read
    if args.data:
        args.data = str(Path(args.data).resolve())  # the run finds its data from any working directory
    if args.resume:
        ckpt = load_checkpoint(run)
        saved = ckpt["args"]
        trained = {**saved, **ckpt["config"]}  # a model flag left to the preset is None in args, set in config
        changed = [k for k, v in given.items() if k not in RESUME_MAY_CHANGE and v != trained.get(k)]
        if changed:  # the run goes on as it was trained: a changed model or data flag would be ignored
            may = ", ".join("--" + k for k in sorted(RESUME_MAY_CHANGE - {"run", "resume"}))
            raise DataError(f"--resume continues {run} as it was trained, so {', '.join('--' + k for k in changed)} "
                            f"cannot change; only {may} can")
        # the run's own settings, with what may change: a larger --steps extends it; --device and --compile
        # are this machine's, given or not
        args = argparse.Namespace(**{**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE},
                                     "device": args.device, "compile": args.compile, "data": args.data or
                                     saved["data"]})
        if "data" in given and "data" not in ckpt and Path(args.data) != Path(saved["data"]).resolve():
            raise DataError(f"{run} was saved before checkpoints recorded what their data is, so --data cannot "
                            f"change; put its latents back at {saved['data']}")
        if "steps" in given and ckpt["step"] < args.steps <= args.warmup:  # (at or below: "already at step")
            raise DataError(f"--steps {args.steps} is not above the run's --warmup {args.warmup}, so the learning "
                            f"rate would never decay; pass a larger --steps")
        if "data" in given and not Path(args.data).is_dir():
            raise DataError(f"--data {args.data} is not a folder; pass where the run's latents are now")
        if args.data and not Path(args.data).is_dir():
            raise DataError(f"{run} was trained on {args.data}, which is not there any more; put the latents "
                            f"folder back there, or pass --data with where it is now")
    else:
        if args.data is None and not args.benchmark:
            raise DataError("--data is required: the latents folder written by encode.py, e.g. "
                            "data/doom/latents-pixels")
        from_data = [f"--{k}" for k in BENCHMARK_SHAPE if k in given and args.data]
        if from_data:
            raise DataError(f"{', '.join(from_data)}: the latents' shape and the number of inputs come from the "
                            f"data in {args.data}; these flags size --benchmark's random data only")
        if args.data and not args.benchmark:  # a mistyped --data is said first, not hidden behind the checks on --run
            loaded = load_latents(args.data)
        if run.exists() and not run.is_dir() and not args.benchmark:
            raise DataError(f"--run {run} is a file, not a folder; pass a folder for the run (made if missing)")
        if (run / "ckpt.pt").exists() and not args.benchmark:
            raise DataError(f"{run} already holds a run; pass --resume to continue it or another --run")
        if (run / "log.csv").exists() and len((run / "log.csv").read_text().splitlines()) > 1 and not args.benchmark:
            raise DataError(f"{run} holds the log.csv of an earlier run but no checkpoint; pass another --run, or "
                            f"delete {run} to train there from the start")
        for k, v in TRAIN_PRESETS.get(args.preset, {}).items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if args.warmup >= args.steps and "warmup" in given:
            raise DataError(f"--warmup {args.warmup} is not below --steps {args.steps}, so the learning rate would "
                            f"never decay; pass a smaller --warmup")
        if args.warmup >= args.steps:  # the preset's warmup, for a short run: a tenth of it instead
            args.warmup = args.steps // 10
    micro_batch = args.batch_size // (world * args.grad_accum)
    if micro_batch * world * args.grad_accum != args.batch_size:
        raise DataError(f"--batch_size {args.batch_size} does not split into {world} process(es) x --grad_accum "
                        f"{args.grad_accum} equal micro-batches; pick a multiple of {world * args.grad_accum}")
    if args.lr * args.weight_decay >= 1:  # AdamW's decoupled decay multiplies the weights by 1 - lr x wd each step
        raise DataError(f"--weight_decay {args.weight_decay:g} x --lr {args.lr:g} is {args.lr * args.weight_decay:g}, "
                        f"so every step would zero or flip the weights; keep it below 1 (0.01 to 0.1 is usual)")
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: free speed, fp32 range
    torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", torch.bfloat16) if native_bf16(device, note=master) else nullcontext()

    # --- data
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}
    if loaded is None:
        loaded = load_latents(args.data) if args.data else synthetic_latents(args.preset, overrides)
    latents, actions, meta = loaded
    C, h, w = meta["latent_shape"]
    data = data_key(meta, latents) if args.data else None  # the memory map's bytes, before they move to the GPU
    if ckpt:
        check_same_data(ckpt, data, run, args.data)
        cfg = config_from_checkpoint(ckpt, run)
    else:
        if not any(e["split"] == "train" for e in meta["episodes"]):
            raise DataError(f"{args.data} holds no training episode (every one is held out for validation); "
                            f"encode it again with fewer --val-episodes")
        if not meta["latent_std"] > 1e-6:  # every frame alike (or NaN): nothing to learn, and x / 0 is NaN
            raise DataError(f"the latents in {args.data} do not vary (std {meta['latent_std']:.3g}): every frame "
                            f"is the same; record footage where something moves")
        train_rows = np.concatenate([np.arange(e["start"], e["start"] + e["length"])
                                     for e in meta["episodes"] if e["split"] == "train"])
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow (inf) is named by check_actions
            std = actions[train_rows].std(axis=0)  # float32, as every run was trained (float64 gives other digits)
        action_scale = tuple(float(s) if s > 1e-6 else 1.0 for s in std)  # a constant column: 1
        check_actions(actions, action_scale, meta)
        data_fields = dict(latent_channels=C, latent_height=h, latent_width=w, action_dim=len(meta["actions"]),
                           latent_mean=meta["latent_mean"], latent_std=meta["latent_std"], action_scale=action_scale,
                           frame_shuffle=DOWNSAMPLE if meta["vae"] == "pixels" else 1)  # pixels: 8x8 pixel blocks
        cfg = make_config(args.preset, **{**overrides, **data_fields})
        check_config(cfg)
        if cfg.self_rollout and not round(cfg.self_rollout * micro_batch):  # diffusion_loss's count per micro-batch
            raise DataError(f"--self_rollout {cfg.self_rollout} of a micro-batch of {micro_batch} windows rounds to "
                            f"none; make the micro-batch (--batch_size / processes / --grad_accum) at least "
                            f"{math.floor(0.5 / cfg.self_rollout) + 1}, or raise --self_rollout")
    latents, actions = place(latents, actions, device)
    train_data = Windows(latents, actions, meta, "train", cfg, device)
    has_val = any(e["split"] == "val" for e in meta["episodes"])
    val_data = Windows(latents, actions, meta, "val", cfg, device) if has_val else train_data
    if master and not has_val and args.data:
        print(f"note: {args.data} holds no validation episode (one episode, or --val-episodes 0), so the "
              f"validation loss is measured on training windows and says nothing about overfitting", file=sys.stderr)

    # --- model, EMA, optimizer
    torch.manual_seed(args.seed)  # the same initial weights for the same --seed (DDP broadcasts rank 0's anyway)
    model = WorldModel(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # no weight decay on biases, norms and embeddings
        (decay if p.dim() >= 2 and name not in ("row", "col", "ctx_row", "ctx_col", "frame") else no_decay).append(p)
    # beta2 0.95 (GPT-3's), not 0.999: Adam's denominator follows the gradients' scale over ~20 steps, so a
    # sudden large gradient is not divided by a stale small one
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)],
                                  lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    step = 0
    if ckpt:
        for module, key in ((model, "model"), (ema, "ema"), (optimizer, "optimizer")):
            load_weights(module, ckpt[key], run)
        step = ckpt["step"]
        if step >= args.steps and args.steps != ckpt["args"]["steps"]:
            raise DataError(f"{run} is already at step {step}, past --steps {args.steps}; pass a larger --steps "
                            f"to train it further")
        if step >= args.steps:
            if master:
                print(f"{run} is already trained to step {step}; pass --steps above {step} to train it further")
            if ddp:
                leave_group()
            return run
    n_params = sum(p.numel() for p in model.parameters())
    if master:
        print(f"model: {n_params / 1e6:.2f}M parameters, {cfg.depth} blocks of width {cfg.dim}, latents "
              f"{C}x{h}x{w}, {len(train_data.targets)} training windows, batch {args.batch_size} = {world} "
              f"process(es) x {args.grad_accum} x {micro_batch}" + ("" if args.benchmark else f"; run folder {run}"))
    train_model = torch.compile(model) if args.compile else model
    if ddp:
        train_model = DDP(train_model, device_ids=[local_rank] if device.type == "cuda" else None)
        # diffusion_loss reads model.cfg and calls model.flow; DDP does not pass attributes through. The flow's
        # gradients are still all-reduced: DDP hooks every parameter, not only those its forward uses
        train_model.cfg, train_model.flow = cfg, model.flow
    peak = peak_flops(device)

    def get_lr(it, total=None, peak=None):
        # 1) linear warmup, 2) cosine decay to min_lr_ratio * lr at the last step
        peak = peak or args.lr
        if it < args.warmup:
            return peak * (it + 1) / args.warmup
        progress = min(1.0, (it - args.warmup) / max(1, (total or args.steps) - args.warmup))
        return peak * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    if ckpt and master and (args.lr, args.steps) != (ckpt["args"]["lr"], ckpt["args"]["steps"]):
        before, longer = ckpt["args"]["steps"], args.steps > ckpt["args"]["steps"]
        what = [f"the peak learning rate goes from {ckpt['args']['lr']:.2e} to {args.lr:.2e}"] \
            if args.lr != ckpt["args"]["lr"] else []
        what += [f"{'extending' if longer else 'shortening'} the run from {before} to {args.steps} steps: the "
                 f"cosine now spans {args.steps}"] if args.steps != before else []
        old, new = get_lr(step, before, ckpt["args"]["lr"]), get_lr(step)
        print(f"{'; '.join(what)}; at step {step} the learning rate goes from {old:.2e} to {new:.2e}"
              f"{' (a warm restart, as in SGDR)' if new > 1.01 * old else ''}")  # not for a few steps more

    @torch.no_grad()
    def evaluate():
        g = torch.Generator().manual_seed(1234)  # the same windows and noise at every evaluation
        state = torch.random.get_rng_state()
        torch.manual_seed(1234)
        total, T = 0.0, cfg.context  # teacher-forced (no self_rollout): comparable between runs
        for _ in range(args.eval_batches):
            x, ctx, act = val_data.get_batch(EVAL_BATCH, g)  # the same windows whatever the batch size
            for i in range(0, EVAL_BATCH, micro_batch):      # in pieces no bigger than training's
                part = slice(i, i + micro_batch)
                with autocast:
                    total += diffusion_loss(ema, x[part], ctx[part, -T:], act[part, -T:]).item() * len(x[part])
        torch.random.set_rng_state(state)
        return total / (EVAL_BATCH * args.eval_batches)

    # --- the loop
    if args.benchmark:
        result = benchmark(args, train_model, model, optimizer, train_data, micro_batch, world, autocast, peak, master)
        if ddp:
            leave_group()
        return result
    if master:
        log_path = run / "log.csv"
        try:  # now, not at the first checkpoint after minutes of training
            run.mkdir(parents=True, exist_ok=True)
            if not log_path.exists() or ckpt is None:
                log_path.write_text("step,lr,train_loss,val_loss,samples_per_s,mfu,elapsed_s\n")
            open(log_path, "a").close()
        except OSError as e:
            raise DataError(f"cannot write to {run} ({e.strerror}); pass a --run folder where you can write, or "
                            f"make {run} writable") from None
        autoencoder = Autoencoder(meta["vae"], device)
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step", disable=not master)
    t0, seen, running = time.time(), 0, ckpt and ckpt.get("running")  # the logged loss goes on where it was
    elapsed = lambda: (ckpt.get("elapsed", 0.0) if ckpt else 0.0) + time.time() - t0  # noqa: E731, over resumes
    # Ctrl-C or kill: finish the step, save, then stop (one process; under torchrun the ranks would not agree
    # on the step, so there a stop keeps the last checkpoint)
    stop = catch_stop_signals() if not ddp and threading.current_thread() is threading.main_thread() else {}

    saved = {"step": ckpt["step"] if ckpt else None}  # the step of run/ckpt.pt, for blown_up()

    def checkpoint():
        saved["step"] = step
        with stops_held():  # a second Ctrl-C (or a kill) waits for the file: the checkpoint is always whole
            save_checkpoint(run / "ckpt.pt", model=model.state_dict(), ema=ema.state_dict(),
                            optimizer=optimizer.state_dict(), config=asdict(cfg), step=step, args=vars(args),
                            running=running, elapsed=elapsed(), data=data, ctx_sigma_eps=CTX_SIGMA_EPS)

    def blown_up():
        """What to do after the loss or the weights blew up: the same --lr would blow up again at the same step."""
        lower = f"--lr {args.lr / 3:.2g}"
        if saved["step"] == step:  # the loss of this step came from the checkpoint's weights: whatever the --lr
            return (f"{run}/ckpt.pt holds the weights that gave it on this step's batch, so resuming cannot help; "
                    f"train again with a lower learning rate ({lower}) into a new --run")
        if saved["step"] is not None:
            return (f"{run}/ckpt.pt keeps the last good weights; go on from them with a lower learning rate: "
                    f"`python train.py --run {run} --resume {lower}`")
        return f"no checkpoint was written yet; train again with a lower learning rate ({lower}) into a new --run"

    batches = train_data.stream(micro_batch, args.seed, step, rank * args.grad_accum, args.grad_accum)
    while step < args.steps:
        lr = get_lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            # the windows and noise of micro-batch r of step k depend only on (seed, k, r): a resumed run sees
            # what it would have seen, and N processes see what one process with N x --grad_accum would
            seed_everything(args.seed, step, rank * args.grad_accum + micro)
            x, ctx, act = next(batches)
            if ddp:  # all-reduce the gradients only once, on the last micro-step
                train_model.require_backward_grad_sync = micro == args.grad_accum - 1
            with autocast:
                loss = diffusion_loss(train_model, x, ctx, act) / args.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        if not (torch.isfinite(loss_sum) and torch.isfinite(grad_norm)):  # the same on every rank: all stop
            bar.close()
            became = f"the loss became {loss_sum.item():.4g} (gradient norm {grad_norm.item():.4g}) at step {step}"
            if step == 0:  # the initial weights, no update yet: not the learning rate
                raise DataError(f"{became}, the first step, before any update, so the data or the settings "
                                f"are at fault, not --lr: check for NaN or huge values in the latents and actions, "
                                f"and extreme --P_mean, --P_std or --ctx_noise")
            raise DataError(f"{became}, and the weights were not updated; {blown_up()}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # EMA with warmup: early on, average over the few steps there are
            d = min(args.ema, (1 + step) / (10 + step))  # 0.1 at the first step, 0.9 at 80, --ema from ~9000
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        step += 1
        seen += args.batch_size
        running = loss_sum.item() if running is None else 0.98 * running + 0.02 * loss_sum.item()
        speed = seen / (time.time() - t0)
        mfu = speed * model.flops_per_sample() / (world * peak) if peak else float("nan")
        bar.set_postfix(loss=f"{running:.4f}", samples_s=f"{speed:.1f}", **({"mfu": f"{mfu:.1%}"} if peak else {}))
        bar.update(1)

        if step % args.eval_every == 0 or step == args.steps:
            if ddp:
                check_in_sync(model, world)
            # e.g. an optimizer overflow; the weights are the same on every rank, so all ranks stop together
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise DataError(f"the weights became NaN or inf by step {step}; {blown_up()}")
            val_loss = evaluate() if master else 0.0  # rank 0 alone validates, previews and saves
            if ddp:  # and tells the others, so that all stop together on a validation loss that is not finite
                shared = torch.tensor([val_loss], device=device, dtype=torch.float64)
                dist.broadcast(shared, 0)
                val_loss = shared.item()
            if not math.isfinite(val_loss):             # weights too large to use: keep the checkpoint before
                raise DataError(f"the validation loss became {val_loss} at step {step}; {blown_up()}")
            saved["step"] = step                        # on every rank: rank 0 saves it now, and blown_up() says so
            if not master:
                continue
            checkpoint()                                # first: a failed preview must not cost the checkpoint
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow([step, f"{lr:.3e}", f"{running:.5f}", f"{val_loss:.5f}", f"{speed:.1f}",
                                        f"{mfu:.4f}" if peak else "", f"{elapsed():.1f}"])
            preview(ema, val_data, autoencoder, args.preview_frames, run / f"preview_{step:07d}.gif")
            bar.write(f"step {step}: train loss {running:.4f}, val loss {val_loss:.4f}, {speed:.1f} samples/s")
        if stop.get("signal") and step < args.steps:  # at the last step the run is done and saved: it ends
            checkpoint()
            bar.close()
            raise Stopped(f"stopped by {stop['signal']} at step {step}; {run}/ckpt.pt holds it: continue with "
                          f"`python train.py --run {run} --resume`", stop["signum"])
    bar.close()
    if ddp:
        if master:
            print(f"weights identical on all {world} ranks")
        leave_group()
    return run


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", 0))  # under torchrun a rank other than 0 says which it is
    try:
        main()
    except Stopped as e:  # one process, which finished its step and saved it (under torchrun a stop is abrupt)
        exit_stopped(e, e.status)
    except DataError as e:
        sys.exit(f"error{f' (rank {rank})' if rank else ''}: {e}")
    except KeyboardInterrupt:  # which reaches every rank alike: rank 0 alone says so
        if rank:
            sys.exit(128 + signal.SIGINT)
        exit_stopped("stopped by Ctrl-C; --resume continues from the last checkpoint, if the run has one")
