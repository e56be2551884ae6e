"""
Train the world model on encoded latents (encode.py's). A plain torch loop.

    python train.py --data data/doom/latents-pixels --preset cpu                   # the CPU quickstart
    python train.py --data data/wow/latents-sd-vae-ft-mse --preset base --compile   # one GPU
    torchrun --nproc_per_node=8 train.py --data ... --preset base --compile --run_dir runs/base8
    python train.py --run runs/cpu --resume --steps 1800                           # continue, and extend, a run
    python train.py --preset base --compile --benchmark 20                         # speed, on random latents

Every model Config field is a flag too (--dim 384, --motion false). The run folder (--run, default runs/<preset>)
gets at every validation ckpt.pt (model, EMA, optimizer, config, step, arguments; written whole, and also when
Ctrl-C or kill stops one process), a row of log.csv and preview_<step>.gif: the EMA's rollout right of the truth.
"""
import argparse
import copy
import csv
import math
import os
import resource
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, fields
from itertools import count
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from encode import DOWNSAMPLE, Autoencoder, data_key, load_latents, native_bf16
from model import PRESETS, Config, WorldModel, denormalize, diffusion_loss, load_run, make_config, normalize, rollout
from sample import side_by_side, write_gif

# training hyperparameters per preset; each is also a flag
TRAIN_PRESETS = {
    "tiny": dict(batch_size=8, steps=200, lr=1e-3, warmup=20, eval_every=100),
    "cpu": dict(batch_size=32, steps=900, lr=1.5e-3, warmup=100, eval_every=300),        # minutes on 2 cores
    "base": dict(batch_size=256, steps=100_000, lr=2e-4, warmup=5000, eval_every=5000, grad_accum=2),  # 2x128 in 80 GB
}
DEFAULTS = dict(data=None, min_lr_ratio=0.1, weight_decay=0.01, grad_clip=1.0, ema=0.999, eval_batches=8, seed=0,
                preview_frames=45, grad_accum=1, compile=False, benchmark=0,
                device="cuda" if torch.cuda.is_available() else "cpu")
FROM_DATA = {"latent_channels", "latent_height", "latent_width", "action_dim", "latent_mean", "latent_std",
             "action_scale", "frame_shuffle"}  # Config fields that train.py fills in from the encoded data
RESUME_MAY_CHANGE = {"run", "resume", "data", "steps", "lr", "device", "compile", "eval_every", "preview_frames"}
EVAL_BATCH = 32       # windows per validation batch whatever the batch size, so that validation losses compare
MAX_ON_DEVICE = 4e9   # bytes: a dataset up to this size lives on the device (2 hours of 256x256 SD latents: 0.9 GB)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "B200": 2250e12, "A100": 312e12, "A10G": 70e12, "L40S": 362e12,
             "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}  # dense bf16 FLOP/s, from the data sheets

# -----------------------------------------------------------------------------
# Arguments: the preset's values, then the flags given; on --resume the run's own, then the few that may change


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="train.py --data LATENTS [--preset cpu] [--run RUN] [--resume] ... (--help)",
                                argument_default=argparse.SUPPRESS)  # a flag not given is left out: see settings
    p.add_argument("--data", help="an encoded latents folder (encode.py's output)")
    p.add_argument("--preset", choices=list(PRESETS), help="model and training size (default cpu)")
    p.add_argument("--run_dir", "--run", dest="run", help="run folder (default runs/<preset>); torchrun: --run_dir")
    p.add_argument("--resume", action="store_true", help="continue the run in --run from its checkpoint")
    p.add_argument("--steps", type=int, help="optimizer steps in all; a larger one extends a resumed run")
    p.add_argument("--batch_size", type=int, help="windows per optimizer step, over all processes")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay")
    p.add_argument("--eval_every", type=int, help="steps between validations (with checkpoint and preview)")
    p.add_argument("--weight_decay", type=float, help="AdamW weight decay (0.01)")
    p.add_argument("--eval_batches", type=int, help=f"validation batches of {EVAL_BATCH} windows (8)")
    p.add_argument("--preview_frames", type=int, help="frames in each preview GIF (45: 3 s)")
    p.add_argument("--seed", type=int, help="the seed of the weights, the windows and the noise (0)")
    p.add_argument("--grad_accum", type=int, help="micro-batches per optimizer step and process (1)")
    p.add_argument("--device", help="cuda, cpu or mps (default: cuda where there is one)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start)")
    p.add_argument("--benchmark", type=int, metavar="N", help="time N steps (random latents without --data)")
    true_or_false = lambda s: {"true": True, "false": False}.get(s.lower(), s)  # noqa: E731, else not a choice
    for f in (f for f in fields(Config) if f.name not in FROM_DATA):  # every model Config field is a flag too
        p.add_argument(f"--{f.name}", type={bool: true_or_false, int: int, float: float}[f.type],
                       choices=[True, False] if f.type is bool else None, help=f"model.Config.{f.name}")
    return vars(p.parse_args(argv))


def settings(given):
    """(args, checkpoint or None): the preset's settings and the flags given, or on --resume the run's own."""
    ckpt = None
    if given.get("resume"):
        _, ckpt = load_run(given.get("run", f"runs/{given.get('preset', 'cpu')}"))
        trained = {**ckpt["args"], **ckpt["config"]}
        changed = [f"--{k}" for k, v in given.items() if k not in RESUME_MAY_CHANGE and v != trained.get(k)]
        if changed:
            raise SystemExit(f"--resume continues the run as it was trained, so {', '.join(changed)} cannot change; "
                             f"only {', '.join('--' + k for k in sorted(RESUME_MAY_CHANGE - {'run', 'resume'}))} can")
        args = argparse.Namespace(**{**ckpt["args"], "compile": False, "device": DEFAULTS["device"], **given})
    else:
        preset = given.get("preset", "cpu")
        args = argparse.Namespace(**{**DEFAULTS, **TRAIN_PRESETS[preset], "preset": preset, "resume": False,
                                     "run": f"runs/{preset}", **given})
        if args.warmup >= args.steps and "warmup" not in given:  # the preset's warmup, for a short run: a tenth
            args.warmup = args.steps // 10
        if not args.data and not args.benchmark:
            raise SystemExit("--data is required: the latents folder encode.py wrote, e.g. data/doom/latents-pixels")
        if (Path(args.run) / "ckpt.pt").exists() and not args.benchmark:
            raise SystemExit(f"{args.run} already holds a run; pass --resume to continue it, or another --run")
    args.data = args.data and str(Path(args.data).resolve())  # the run finds its data from anywhere
    world = int(os.environ.get("WORLD_SIZE", 1))                 # torchrun's number of processes
    args.micro_batch = args.batch_size // (world * args.grad_accum)  # windows per process and forward pass
    if args.micro_batch * world * args.grad_accum != args.batch_size:
        raise SystemExit(f"--batch_size {args.batch_size} does not split into {world} processes x --grad_accum "
                         f"{args.grad_accum} equal micro-batches")
    return args, ckpt


# -----------------------------------------------------------------------------
# Data: windows of T context frames and the next frame, drawn where they fit inside one episode


def step_seed(seed, step, micro, stream=0):
    """A seed for each random stream (0: noise, 1: windows) of each micro-batch of each step: a resumed run sees
    what it would have, N processes what one would (1_000_003 exceeds any step count, 1009 any micro-batches)."""
    return (seed * 1_000_003 + step) * 1009 + 2 * micro + stream


class Windows:  # latents: on the device (as a tensor) or the memory map; actions: a tensor on the device
    def __init__(self, latents, actions, meta, split, cfg, device):
        T = cfg.context
        eps = [e for e in meta["episodes"] if e["split"] == split and e["length"] > T]
        if not eps:
            raise SystemExit(f"no {split} episode is longer than the {T}-frame context; record longer episodes")
        self.latents, self.actions, self.episodes, self.cfg, self.device, self.T = latents, actions, eps, cfg, device, T
        self.targets = torch.cat([torch.arange(e["start"] + T, e["start"] + e["length"]) for e in eps])

    def draw(self, batch_size, generator):
        """(B, T+1) dataset rows of B random windows: T context frames, then the next frame."""
        idx = self.targets[torch.randint(len(self.targets), (batch_size,), generator=generator)]  # (B,)
        return idx[:, None] + torch.arange(-self.T, 1)                                          # (B, T+1)

    def read(self, rows):  # the frames of rows from the memory map, pinned for a fast copy to a GPU
        frames = torch.from_numpy(self.latents[rows.numpy().ravel()]).view(*rows.shape, *self.latents.shape[1:])
        return frames.pin_memory() if self.device.type == "cuda" else frames

    def batch(self, rows, frames=None):
        """x (B, C, h, w) next frame, ctx (B, T, C, h, w) frames before it, actions (B, T, A)."""
        if frames is None:
            frames = self.latents[rows.to(self.device)] if torch.is_tensor(self.latents) else self.read(rows)
        frames = normalize(self.cfg, frames.to(self.device, non_blocking=True))                   # (B, T+1, C, h, w)
        return frames[:, -1], frames[:, :-1], self.actions[rows[:, :-1].to(self.device)]

    def stream(self, batch_size, seed, step, first, per_step):
        """Micro-batches for steps step, step+1, ...: micro-batch r of step k holds the windows of step_seed(seed,
        k, first + r, 1). Memory-mapped data is read one micro-batch ahead by a thread while the model computes."""
        seeds = (step_seed(seed, k, first + r, 1) for k in count(step) for r in range(per_step))
        rows = (self.draw(batch_size, torch.Generator().manual_seed(s)) for s in seeds)
        if torch.is_tensor(self.latents):  # on the device: a gather is all it takes
            yield from map(self.batch, rows)
            return
        with ThreadPoolExecutor(1) as pool:  # reading releases the GIL (numpy copies, pinning)
            ahead = next(rows)
            pending = pool.submit(self.read, ahead)
            for upcoming in rows:
                frames, current = pending.result(), ahead
                ahead, pending = upcoming, pool.submit(self.read, upcoming)
                yield self.batch(current, frames)


def load_data(args, ckpt, device):
    """(Config, training and validation Windows, meta, data key) of --data, or of random latents to benchmark."""
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if args.data:
        latents, actions, meta = load_latents(args.data)
    else:  # --benchmark without data: 2000 random latents of the preset's usual shape
        cfg = make_config(args.preset, **overrides)
        latents = np.random.randn(2000, cfg.latent_channels, cfg.latent_height, cfg.latent_width).astype(np.float16)
        actions = np.random.rand(2000, cfg.action_dim)
        meta = dict(latent_shape=latents.shape[1:], actions=[0] * cfg.action_dim, vae="random", latent_mean=0.0,
                    latent_std=1.0, episodes=[dict(name="random", start=0, length=2000, split="train")])
    key = data_key(meta, actions)  # what a resumed run must find again
    if ckpt and ckpt["data"] != key:
        raise SystemExit(f"{args.data} is not the data {args.run} was trained on (encoded again since, or another "
                         f"recording?); pass the latents it was trained on, or train a new run on these")
    if ckpt:
        cfg = Config(**ckpt["config"])
    else:
        rows = np.concatenate([np.arange(e["start"], e["start"] + e["length"]) for e in meta["episodes"]
                               if e["split"] == "train"])
        std = actions[rows].astype(np.float32).std(axis=0)  # each input column's spread: keys 0/1, mouse degrees
        C, h, w = meta["latent_shape"]
        cfg = make_config(args.preset, **overrides, latent_channels=C, latent_height=h, latent_width=w,
                          action_dim=len(meta["actions"]), latent_mean=meta["latent_mean"],
                          latent_std=meta["latent_std"], action_scale=tuple(float(s) if s > 1e-6 else 1.0 for s in std),
                          frame_shuffle=DOWNSAMPLE if meta["vae"] == "pixels" else 1)  # pixels: 8x8 pixel blocks
    if latents.nbytes <= MAX_ON_DEVICE:  # then drawing a batch is one gather on the device, with no loader at all
        latents = torch.from_numpy(np.array(latents)).to(device)
    actions = torch.from_numpy(actions.astype(np.float32)).to(device)
    val = "val" if any(e["split"] == "val" for e in meta["episodes"]) else "train"  # none held out: training's
    return cfg, *(Windows(latents, actions, meta, split, cfg, device) for split in ("train", val)), meta, key


# -----------------------------------------------------------------------------
# The model and its optimizer, the learning rate, validation, checkpoints and previews


def build(cfg, args, device, ckpt):
    """The model, its EMA and AdamW, where the checkpoint left them when resuming."""
    torch.manual_seed(args.seed)
    model = WorldModel(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # no weight decay on biases, norms and embeddings
        (decay if p.dim() >= 2 and name not in ("row", "col", "ctx_row", "ctx_col", "frame") else no_decay).append(p)
    # beta2 0.95 (GPT-3's), not 0.999: a sudden large gradient is not divided by a stale small one
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)], lr=args.lr, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    for module, name in ((model, "model"), (ema, "ema"), (optimizer, "optimizer")) if ckpt else ():
        module.load_state_dict(ckpt[name])
    return model, ema, optimizer


def get_lr(it, args):
    # 1) linear warmup, 2) cosine decay to min_lr_ratio x lr at the last step
    if it < args.warmup:
        return args.lr * (it + 1) / args.warmup
    progress = min(1.0, (it - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, windows, args, micro_batch, autocast):
    """The model's loss on the same validation windows, with the same noise, every time."""
    g, state, total = torch.Generator().manual_seed(1234), torch.random.get_rng_state(), 0.0
    torch.manual_seed(1234)
    for _ in range(args.eval_batches):
        x, ctx, act = windows.batch(windows.draw(EVAL_BATCH, g))
        for i in range(0, EVAL_BATCH, micro_batch):  # in pieces no larger than training's
            with autocast:
                part = slice(i, i + micro_batch)
                total += diffusion_loss(model, x[part], ctx[part], act[part]).item() * len(x[part])
    torch.random.set_rng_state(state)
    return total / (EVAL_BATCH * args.eval_batches)


def save_checkpoint(path, **state):
    """Into a temporary file, on disk before a rename makes it the checkpoint: a kill leaves the last whole one."""
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def preview(model, windows, autoencoder, n_frames, path):
    """A rollout of the model from the start of the first episode of `windows`, right of the truth, as a GIF."""
    cfg, T, ep = model.cfg, model.cfg.context, windows.episodes[0]
    rows = torch.arange(ep["start"], ep["start"] + T + min(n_frames, ep["length"] - T))
    last, past, actions = windows.batch(rows[None])                               # the T+n frames, T+n-1 actions
    frames = torch.cat([past[0], last])                                           # (T+n, C, h, w)
    dream = rollout(model, frames[None, :T], actions, generator=torch.Generator(windows.device).manual_seed(0))[0]
    write_gif(path, side_by_side(autoencoder.decode(denormalize(cfg, frames[T:])),
                                 autoencoder.decode(denormalize(cfg, dream))))


@torch.no_grad()
def benchmark_report(args, model, train_model, speed, mfu, autocast):
    """--benchmark's training samples/s, MFU and peak memory, then 20 frames of rollout (after 5 of warm-up)."""
    cfg, device = model.cfg, next(model.parameters()).device
    memory = (torch.cuda.max_memory_allocated() if device.type == "cuda" else  # on a CPU, the whole process's
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    ctx = torch.randn(1, cfg.context, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device=device)
    actions = torch.zeros(1, cfg.context + 19, cfg.action_dim, device=device)  # for 20 frames
    with autocast:
        rollout(train_model, ctx, actions[:, :cfg.context + 4])
        t0 = time.time()
        fps = len(rollout(train_model, ctx, actions).cpu()[0]) / (time.time() - t0)
    print(f"benchmark {args.preset} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, batch "
          f"{args.batch_size}, compile {args.compile}: {speed:.1f} samples/s, MFU {f'{mfu:.1%}' if mfu else 'n/a'}, "
          f"{model.flops_per_sample() / 1e9:.1f} GFLOP/sample, peak memory {memory:.2f} GiB; rollout {fps:.1f} "
          f"frames/s at {cfg.sample_steps} steps")
    return dict(samples_per_s=speed, mfu=mfu, peak_memory_gib=memory, rollout_fps=fps)


# -----------------------------------------------------------------------------


def main(argv=None):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return train(argv)
    finally:  # the training loop's own handlers are for it alone (tests and notebooks call main)
        for s, handler in handlers.items():
            signal.signal(s, handler)


def train(argv=None):
    # --- setup: DDP from the environment (torchrun sets RANK), resume or start, device, precision
    args, ckpt = settings(get_args(argv))
    ddp, rank, world = "RANK" in os.environ, 0, 1
    if ddp:  # one process per device: NCCL between GPUs, gloo between CPU processes
        dist.init_process_group("gloo" if args.device == "cpu" else "nccl")
        rank, world = dist.get_rank(), dist.get_world_size()
        if args.device != "cpu":
            args.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(args.device)
    master, run, device, micro_batch = rank == 0, Path(args.run), torch.device(args.device), args.micro_batch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # TF32 on Ampere+: free speed
    autocast = torch.autocast("cuda", torch.bfloat16) if native_bf16(device) else nullcontext()

    # --- data, model, optimizer
    cfg, train_data, val_data, meta, key = load_data(args, ckpt, device)
    model, ema, optimizer = build(cfg, args, device, ckpt)
    step, (running, elapsed) = (ckpt["step"], (ckpt["running"], ckpt["elapsed"])) if ckpt else (0, (None, 0.0))
    if master:
        print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; {len(train_data.targets)} "
              f"training windows; batch {args.batch_size} = {world} processes x {args.grad_accum} x {micro_batch}")
    train_model = torch.compile(model) if args.compile else model
    if ddp:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
        train_model.cfg, train_model.flow = cfg, model.flow  # diffusion_loss reads them; DDP hides attributes

    def checkpoint():
        save_checkpoint(run / "ckpt.pt", model=model.state_dict(), ema=ema.state_dict(), step=step, args=vars(args),
                        optimizer=optimizer.state_dict(), config=asdict(cfg), data=key, running=running,
                        elapsed=elapsed + time.time() - t0)

    stop = []  # Ctrl-C or kill: finish the step, save and stop (one process; torchrun's keep the last checkpoint)
    for s in (signal.SIGINT, signal.SIGTERM) if not ddp and not args.benchmark else ():
        signal.signal(s, lambda signum, _: stop.append(signum))
    if master and not args.benchmark:  # the run folder, its log and the autoencoder that decodes the previews
        run.mkdir(parents=True, exist_ok=True)
        if not ckpt:
            (run / "log.csv").write_text("step,lr,train_loss,val_loss,samples_per_s,mfu,elapsed_s\n")
        autoencoder = Autoencoder(meta["vae"], device)
    end = args.benchmark + 5 if args.benchmark else args.steps  # a benchmark times N steps after 5 of warm-up
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak, t0, seen = next((v for k, v in PEAK_BF16.items() if k in name), None), time.time(), 0  # None: no MFU
    batches = train_data.stream(micro_batch, args.seed, step, rank * args.grad_accum, args.grad_accum)
    bar = tqdm(total=end, initial=step, desc="train", unit="step", disable=not master)
    while step < end:
        if args.benchmark and step == 5:  # the timing starts after the warm-up (compilation, the allocator)
            t0, seen = time.time(), 0
        lr = get_lr(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            torch.manual_seed(step_seed(args.seed, step, rank * args.grad_accum + micro))  # this micro-batch's noise
            x, ctx, act = next(batches)
            if ddp:  # all-reduce the gradients only once, on the last micro-step
                train_model.require_backward_grad_sync = micro == args.grad_accum - 1
            with autocast:
                micro_loss = diffusion_loss(train_model, x, ctx, act) / args.grad_accum
            micro_loss.backward()
            loss += micro_loss.detach()
        if ddp:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):  # the same on every rank: all stop here
            bar.close()
            raise SystemExit(f"the loss became {loss.item():.4g} at step {step}; go on from the last checkpoint with a "
                             f"lower learning rate, `python train.py --run {run} --resume --lr {args.lr / 3:.2g}`, or "
                             f"train again with it (at step 0, look for NaN in the data)")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # EMA with warmup: early on, average over the few steps there are
            d = min(args.ema, (1 + step) / (10 + step))  # 0.1 at the first step, 0.9 at 80, --ema from ~9000
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        step, seen = step + 1, seen + args.batch_size
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        speed = seen / (time.time() - t0)
        mfu = speed * model.flops_per_sample() / (world * peak) if peak else None
        bar.set_postfix(loss=f"{running:.4f}", samples_s=f"{speed:.1f}", **({"mfu": f"{mfu:.1%}"} if mfu else {}))
        bar.update(1)
        if (step % args.eval_every == 0 or step == args.steps) and master and not args.benchmark:
            val_loss = evaluate(ema, val_data, args, micro_batch, autocast)  # rank 0 alone validates and saves
            checkpoint()  # first: a failed preview must not cost the checkpoint
            with open(run / "log.csv", "a", newline="") as f:
                csv.writer(f).writerow([step, f"{lr:.3e}", f"{running:.5f}", f"{val_loss:.5f}", f"{speed:.1f}",
                                        f"{mfu:.4f}" if mfu else "", f"{elapsed + time.time() - t0:.1f}"])
            preview(ema, val_data, autoencoder, args.preview_frames, run / f"preview_{step:07d}.gif")
            bar.write(f"step {step}: train loss {running:.4f}, val loss {val_loss:.4f}, {speed:.1f} samples/s")
        elif stop:
            checkpoint()
        if stop:
            bar.close()
            raise SystemExit(f"stopped at step {step}, which {run}/ckpt.pt holds: continue with "
                             f"`python train.py --run {run} --resume`")
    bar.close()
    if ddp:  # the ranks wait for rank 0's last checkpoint and preview before they tear their connections down
        dist.barrier()
        dist.destroy_process_group()
    return benchmark_report(args, model, train_model, speed, mfu, autocast) if args.benchmark else run


if __name__ == "__main__":
    main()
