"""
Dream with a trained world model: autoregressive rollouts from a validation episode, written as GIFs.

    python sample.py --run runs/cpu                                  # recorded inputs, truth beside
    python sample.py --run runs/cpu --actions none --frames 90       # what if the player does nothing?
    python sample.py --run runs/cpu --actions my_inputs.csv          # your own inputs (inputs.csv format)
    python sample.py --run runs/cpu --episode ep004 --start 200 --steps 2 --save-frames dream.npy

The model sees the 10 recorded frames from --start on (the context), then paints each next frame
from the 10 before it, its own included, under the chosen inputs. The row of inputs that follows a
frame is the action that leads to the next one (record.py), so the inputs used for the first
generated frame are those of the last context frame, whatever --actions says for the context.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from encode import Autoencoder, load_latents
from model import denormalize, normalize, rollout
from record import DataError, read_inputs
from train import load_checkpoint, model_from_checkpoint

GIF_DELAYS_MS = [70, 60, 70]  # GIF delays are in 1/100 s: 70+60+70 ms = 3 frames in 0.2 s = exactly 15 FPS
HORIZONS = (1, 4, 8, 16)      # frames ahead at which PSNR against the truth is printed

# -----------------------------------------------------------------------------
# GIFs and metrics


def side_by_side(*videos, gap=2):
    """Videos (N, H, W, 3) uint8 of equal shape -> one (N, H, W*k + gap*(k-1), 3), white gaps."""
    n, h = videos[0].shape[:2]
    bar = np.full((n, h, gap, 3), 255, np.uint8)
    parts = [np.asarray(videos[0])]
    for v in videos[1:]:
        parts += [bar, np.asarray(v)]
    return np.concatenate(parts, axis=2)


def write_gif(path, frames, min_height=192):
    """uint8 (N, H, W, 3) -> a looping 15 FPS GIF, scaled up (nearest) so small game frames are visible."""
    frames = np.asarray(frames)
    scale = max(1, -(-min_height // frames.shape[1]))
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    delays = [GIF_DELAYS_MS[i % 3] for i in range(len(images))]
    images[0].save(path, save_all=True, append_images=images[1:], duration=delays, loop=0)


def psnr(a, b):
    """Per-frame PSNR in dB between uint8 videos (N, H, W, 3)."""
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


# -----------------------------------------------------------------------------
# Rollout from a recorded start


def load_run(run, device):
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt).to(device).eval()
    latents, actions, meta = load_latents(ckpt["args"]["data"])
    return model, latents, actions, meta


def script_actions(kind, recorded, names, n):
    """The (n, A) inputs for the n generated frames: recorded, none (all zero), or from an inputs.csv."""
    if kind == "recorded":
        return recorded
    if kind == "none":
        return np.zeros_like(recorded)
    file_names, actions = read_inputs(Path(kind))
    if file_names != names:
        raise DataError(f"{kind} has columns {','.join(file_names)} but the model was trained on "
                        f"{','.join(names)}; write an inputs.csv with exactly those columns")
    if len(actions) < n:
        raise DataError(f"{kind} has {len(actions)} rows but --frames {n} needs {n}; add rows or lower --frames")
    return actions[:n]


def dream(run, episode=None, start=0, frames=45, actions="recorded", steps=None, seed=0, cfg_scale=1.0,
          device="cpu"):
    """Roll out the run's EMA model. Returns uint8 frames: the dream (n, H, W, 3), the truth (n, H, W, 3)
    or None when the actions are not the recorded ones, the last context frame (H, W, 3); and frames/s."""
    model, latents, all_actions, meta = load_run(run, device)
    cfg, T = model.cfg, model.cfg.context
    eps = {e["name"]: e for e in meta["episodes"]}
    if episode is None:
        episode = next((e["name"] for e in meta["episodes"] if e["split"] == "val"), meta["episodes"][0]["name"])
    if episode not in eps:
        raise DataError(f"no episode {episode!r} in the run's data; choose one of {', '.join(eps)}")
    ep = eps[episode]
    n = min(frames, ep["length"] - start - T)
    if start < 0 or n < 1:
        raise DataError(f"--start {start} leaves no frame to predict in {episode} ({ep['length']} frames, "
                        f"{T} of context); use a --start below {ep['length'] - T}")
    first = ep["start"] + start
    context = normalize(cfg, torch.from_numpy(latents[first:first + T].astype(np.float32)).to(device))
    recorded = all_actions[first:first + T + n - 1]                          # (T+n-1, A)
    future = script_actions(actions, recorded[T - 1:], meta["actions"], n)    # (n, A)
    script = np.concatenate([recorded[:T - 1], future])                       # (T+n-1, A)
    script = torch.from_numpy(script).float().to(device)[None]

    autoencoder = Autoencoder(meta["vae"], device)
    generator = torch.Generator(device).manual_seed(seed)
    t0 = time.time()
    with tqdm(total=n, desc="dream", unit="frame") as bar:
        z = rollout(model, context[None], script, steps, cfg_scale, generator, progress=bar)[0]  # (n, C, h, w)
    out = autoencoder.decode(denormalize(cfg, z)).numpy()
    fps = n / (time.time() - t0)
    real = autoencoder.decode(latents[first + T - 1:first + T + n].astype(np.float32)).numpy()  # (n+1, H, W, 3)
    return out, real[1:] if actions == "recorded" else None, real[0], fps


# -----------------------------------------------------------------------------
# Evaluation: rollout fidelity over many starts, against the copy-last-frame baseline


def eval_starts(meta, T, horizon, n, seed=0):
    """A fixed, seeded set of n dataset rows where a T-frame context + `horizon` frames fit in a val episode."""
    eps = [e for e in meta["episodes"] if e["split"] == "val"] or meta["episodes"]
    rows = np.concatenate([np.arange(e["start"], e["start"] + e["length"] - T - horizon + 1) for e in eps])
    if len(rows) == 0:
        raise DataError(f"no validation episode is longer than {T + horizon} frames; record longer episodes")
    return np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))


def evaluate(run, n_starts=32, horizons=(1, 2, 4, 8, 16), steps=None, cfg_scale=1.0, seed=0, device="cpu",
             batch_size=16):
    """Mean PSNR (dB) of rollouts under the recorded actions at each horizon, and of the copy-last-frame
    baseline (repeat the last context frame), over a fixed set of validation starts."""
    model, latents, actions, meta = load_run(run, device)
    cfg, T, H = model.cfg, model.cfg.context, max(horizons)
    starts = eval_starts(meta, T, H, n_starts, seed)
    autoencoder = Autoencoder(meta["vae"], device)
    ours, copy = [], []
    generator = torch.Generator(device).manual_seed(seed)
    for i in tqdm(range(0, len(starts), batch_size), desc="eval", unit="batch"):
        rows = starts[i:i + batch_size, None] + np.arange(T + H)                        # (B, T+H)
        z = normalize(cfg, torch.from_numpy(latents[rows.ravel()].astype(np.float32)).to(device))
        z = z.view(*rows.shape, *z.shape[1:])                                            # (B, T+H, C, h, w)
        script = torch.from_numpy(actions[rows[:, :-1]]).to(device)                      # (B, T+H-1, A)
        fake = rollout(model, z[:, :T], script, steps, cfg_scale, generator)             # (B, H, C, h, w)
        for b in range(len(rows)):
            real = autoencoder.decode(denormalize(cfg, z[b, T - 1:])).numpy()            # (H+1, H, W, 3)
            dream = autoencoder.decode(denormalize(cfg, fake[b])).numpy()
            ours.append(psnr(dream, real[1:]))
            copy.append(psnr(np.broadcast_to(real[0], real[1:].shape), real[1:]))
    ours, copy = np.array(ours), np.array(copy)                                          # (S, H)
    return {"starts": len(starts), "horizons": list(horizons),
            "psnr": [float(ours[:, k - 1].mean()) for k in horizons],
            "psnr_copy_last": [float(copy[:, k - 1].mean()) for k in horizons]}


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder written by train.py")
    p.add_argument("--episode", help="episode name (default: the first validation episode)")
    p.add_argument("--start", type=int, default=0, help="episode frame where the 10-frame context begins")
    p.add_argument("--frames", type=int, default=45, help="frames to generate (15 per second)")
    p.add_argument("--actions", default="recorded", help="recorded, none, or an inputs.csv file")
    p.add_argument("--steps", type=int, help="denoising steps per frame (default: the model's, 4)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale on the actions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="GIF path (default RUN/dream_<episode>_<start>_<actions>.gif)")
    p.add_argument("--save_frames", "--save-frames", help="also write the frames as uint8 (N, H, W, 3) .npy")
    p.add_argument("--eval", action="store_true", help="measure rollout PSNR over many validation starts")
    p.add_argument("--starts", type=int, default=32, help="number of validation starts for --eval")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    if args.eval:
        result = evaluate(args.run, args.starts, steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
                          device=args.device)
        print(f"rollout PSNR over {result['starts']} validation starts (dB)")
        print("horizon  " + "".join(f"{k:>8d}" for k in result["horizons"]))
        print("model    " + "".join(f"{v:8.2f}" for v in result["psnr"]))
        print("copy-last" + "".join(f"{v:8.2f}" for v in result["psnr_copy_last"]))
        path = Path(args.run) / "eval.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"-> {path}")
        return

    out, truth, last, fps = dream(args.run, args.episode, args.start, args.frames, args.actions, args.steps,
                            args.seed, args.cfg, args.device)
    tag = Path(args.actions).stem if args.actions not in ("recorded", "none") else args.actions
    episode = args.episode or "val"
    gif = Path(args.out or Path(args.run) / f"dream_{episode}_{args.start}_{tag}.gif")
    write_gif(gif, out if truth is None else side_by_side(truth, out))
    print(f"{len(out)} frames at {fps:.1f} frames/s -> {gif}" + ("  (left: truth, right: dream)" if truth is not None
                                                                 else ""))
    if truth is not None:  # against the trivial model that repeats the last context frame
        ours, copy = psnr(out, truth), psnr(np.broadcast_to(last, truth.shape), truth)
        for k in (k for k in HORIZONS if k <= len(out)):
            print(f"PSNR at frame {k:2d}: dream {ours[k - 1]:5.2f} dB, copy-last-frame {copy[k - 1]:5.2f} dB")
    if args.save_frames:
        np.save(args.save_frames, out)
        print(f"frames {out.shape} -> {args.save_frames}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
