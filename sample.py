"""
Dream with a trained world model: autoregressive rollouts from a validation episode, written as GIFs.

    python sample.py --run runs/cpu                                  # recorded inputs, the truth beside
    python sample.py --run runs/cpu --actions none --frames 90       # or my_inputs.csv (inputs.csv's format)
    python sample.py --run runs/cpu --episode ep004 --start 200 --steps 4 --save_frames dream.npy
    python sample.py --run runs/cpu --eval --starts 64                # fidelity, adherence, stability
    python sample.py --run runs/cpu --eval --data data/doom-test/latents-pixels   # on a test recording
    python sample.py --run runs/cpu --compare --start 150            # one row per input script
    python sample.py --run runs/cpu --play                           # play it in a browser at 127.0.0.1:8000

The model sees 10 recorded frames from --start on, then paints each next frame from the 10 before it, its own
included. An --actions file's first row leads from the last recorded frame to the first dreamed one.
"""
import argparse
import io
import json
import threading
import time
from contextlib import nullcontext, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from encode import Autoencoder, data_key, load_latents, native_bf16, to_size
from model import denormalize, load_run, normalize, rollout, sample_next
from record import read_inputs, replay

GIF_DELAYS_MS = [70, 60, 70]  # GIF delays are in 1/100 s: 70+60+70 ms = 3 frames in 0.2 s = exactly 15 FPS
HORIZONS = (1, 4, 8, 16)      # frames ahead at which a rollout's PSNR against the truth is printed
CFG = 2.0                     # classifier-free guidance on the actions by default (1 = off, ~1.4x faster)
BATCH = 16                    # starts rolled out together
LUMA = [0.299, 0.587, 0.114]  # RGB -> luma (BT.601), what SSIM and sharpness look at

# -----------------------------------------------------------------------------
# GIFs and metrics


def side_by_side(*videos, gap=2):
    """Videos (N, H, W, 3) uint8 of equal shape -> one (N, H, W*k + gap*(k-1), 3), white gaps."""
    bar = np.full((*np.shape(videos[0])[:2], gap, 3), 255, np.uint8)
    return np.concatenate([part for v in videos for part in (bar, np.asarray(v))][1:], axis=2)


def write_gif(path, frames, min_height=192):
    """uint8 (N, H, W, 3) -> a looping 15 FPS GIF, scaled up (nearest) so small game frames are visible."""
    scale = max(1, -(-min_height // frames.shape[1]))
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=[GIF_DELAYS_MS[i % 3] for i in range(len(images))])


def frame_mse(a, b):
    """MSE per frame of videos (S, N, H, W, 3): (S, N)."""
    return ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).reshape(*a.shape[:2], -1).mean(axis=2)


def psnr(a, b):
    """PSNR in dB per horizon of videos (S, N, H, W, 3) from the MSE averaged over the S starts: a mean of per-frame
    PSNRs would let copy-last-frame's pixel-exact frames of a still player count 148 dB (the 1e-10 floor)."""
    return 10 * np.log10(255.0**2 / np.maximum(frame_mse(a, b).mean(axis=0), 1e-10))


def margin_of_mean_mse(err_a, err_b, seed=0, n_boot=1000):
    """Adherence margin per horizon, PSNR(dream_A, truth_A) - PSNR(dream_A, truth_B), from MSEs averaged over
    the starts (err_a (S, N) against truth_A, err_b (K, S, N) against each script's truth), averaged over the
    K scripts, like psnr; and its 95% bootstrap interval (2, N), the starts resampled with replacement."""
    def margin(starts):
        return (10 * np.log10(np.maximum(err_b[:, starts].mean(1), 1e-10)
                              / np.maximum(err_a[starts].mean(0), 1e-10))).mean(0)
    rng, S = np.random.default_rng(seed), len(err_a)
    boot = np.stack([margin(rng.integers(0, S, S)) for _ in range(n_boot)])
    return margin(np.arange(S)), np.percentile(boot, [2.5, 97.5], axis=0)


def ssim(a, b):
    """Per-frame SSIM of uint8 videos (N, H, W, 3) on the luma: Wang et al. 2004's formula and constants, with
    a 7x7 uniform window and population (co)variances instead of their 11x11 Gaussian."""
    x, y = (torch.tensor(np.asarray(v, np.float64) @ LUMA)[:, None] for v in (a, b))  # (N, 1, H, W)
    mean = lambda t: torch.nn.functional.avg_pool2d(t, 7, 1)  # noqa: E731
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # the paper's constants for 8-bit images
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def sharpness(video):
    """Per-frame variance of the luma's 4-neighbour Laplacian, where all four neighbours exist: falls with blur."""
    x = np.asarray(video, np.float64) @ LUMA                                       # (N, H, W)
    lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
    return lap.reshape(len(x), -1).var(axis=1)


def changes(video):
    """Mean absolute difference between consecutive frames, in gray levels: (N-1,)."""
    return np.abs(np.diff(np.asarray(video, np.float64), axis=0)).reshape(len(video) - 1, -1).mean(axis=1)


# -----------------------------------------------------------------------------
# A trained run, rolled out from recorded starts


class Dreamer:
    """A run's EMA model, the latents to start from (its own data, or `data`, a test recording whose episodes
    all count as held out), and its autoencoder: rolls out batches of starts under chosen inputs."""

    def __init__(self, run, device="cpu", steps=None, cfg_scale=None, data=None, compile=False):
        (self.model, ckpt), self.run = load_run(run), Path(run)
        self.model.to(device).eval()
        folder = data or ckpt["args"]["data"]
        self.latents, self.actions, self.meta = load_latents(folder)
        cfg, self.T = self.model.cfg, self.model.cfg.context
        if self.latents.shape[1:] != (cfg.latent_channels, cfg.latent_height, cfg.latent_width) \
                or self.actions.shape[1] != cfg.action_dim:
            raise SystemExit(f"{folder} holds latents {self.latents.shape[1:]} with {self.actions.shape[1]} input "
                             f"columns, not what {run} was trained on; encode it with the run's autoencoder and size")
        if data_key(self.meta, self.actions) != ckpt["data"]:  # a test set (--data): none of it was trained on
            if not data:
                raise SystemExit(f"{folder} is not the data {run} was trained on: encoded again since?")
            self.meta["episodes"] = [{**e, "split": "val"} for e in self.meta["episodes"]]
        self.cfg_scale = cfg_scale if cfg_scale is not None else CFG if cfg.action_dropout > 0 else 1.0  # CFG needs it
        self.model = torch.compile(self.model) if compile else self.model
        self.autocast = torch.autocast("cuda", torch.bfloat16) if native_bf16(device) else nullcontext()
        self.autoencoder, self.device, self.steps = Autoencoder(self.meta["vae"], device), device, steps

    def episode(self, name=None, start=0):
        """An episode of the data by name (by default the first held-out one) with frames to dream from `start`."""
        episodes = {e["name"]: e for e in self.meta["episodes"]}
        held_out = [e for e in self.meta["episodes"] if e["split"] == "val"] or self.meta["episodes"]
        if name not in (None, *episodes):
            raise SystemExit(f"no episode {name!r} in the run's data; choose one of {', '.join(episodes)}")
        ep = episodes[name] if name else held_out[0]
        if not 0 <= start < ep["length"] - self.T:
            raise SystemExit(f"--start {start} leaves no frame to dream in {ep['name']} ({ep['length']} frames, "
                             f"{self.T} of context); use a --start from 0 to {ep['length'] - self.T - 1}")
        return ep

    def real(self, starts, n):
        """uint8 (S, n+1, H, W, 3): the decoded truth from the last context frame of each (episode, frame) on."""
        rows = [e["start"] + f + self.T - 1 for e, f in starts]
        return np.stack([self.autoencoder.decode(self.latents[r:r + n + 1].astype(np.float32)).numpy() for r in rows])

    def replay(self, name, start, actions):
        """uint8 (K, H, W, 3): the true frames of a Doom episode under other inputs (record.replay), brought to
        the encoded size as encode.py brought the recorded ones."""
        frames = replay(Path(self.meta["dataset"]) / name, start, actions)
        return np.stack([to_size(Image.fromarray(f), (self.meta["width"], self.meta["height"])) for f in frames])

    def replayable(self, name):
        """Whether the recording of an episode is here and can be rendered under other inputs (Doom's, Atari's)."""
        meta = Path(self.meta["dataset"]) / name / "meta.json"
        return meta.is_file() and bool({"doom", "atari"} & set(json.loads(meta.read_text())))

    def dream(self, starts, future, seed=0, progress=None):
        """Roll out each (episode, frame) start under the future inputs (S, n, A), the same noise for the same
        seed whatever the inputs; returns uint8 (S, n, H, W, 3)."""
        cfg, T, out = self.model.cfg, self.T, []
        for i in range(0, len(starts), BATCH):
            rows = np.array([e["start"] + f for e, f in starts[i:i + BATCH]])[:, None] + np.arange(T)
            z = torch.from_numpy(self.latents[rows.ravel()].astype(np.float32)).to(self.device)
            ctx = normalize(cfg, z).view(*rows.shape, *z.shape[1:])                     # (B, T, C, h, w)
            script = np.concatenate([self.actions[rows[:, :-1]], future[i:i + BATCH]], axis=1)  # (B, T-1+n, A)
            generator = torch.Generator(self.device).manual_seed(seed + i)
            with self.autocast:
                fake = rollout(self.model, ctx, torch.from_numpy(script).float().to(self.device), self.steps,
                               self.cfg_scale, generator, progress)
            out += [self.autoencoder.decode(denormalize(cfg, f)).numpy() for f in fake]  # (n, H, W, 3) each
        return np.stack(out)


def dream(dreamer, episode, start, frames, actions, seed=0):
    """One rollout from `start` of an episode under recorded inputs, none, or an inputs.csv: the dream (n, H, W,
    3), the truth or None, the last context frame, and the frames/s after the first frame (mostly warm-up)."""
    ep, T, names = dreamer.episode(episode, start), dreamer.T, dreamer.meta["actions"]
    n = min(frames, ep["length"] - T - start) if actions == "recorded" else frames
    first = ep["start"] + start + T - 1                                             # the last context frame
    if actions in ("recorded", "none"):
        future = dreamer.actions[first:first + n] if actions == "recorded" else counterfactual_scripts(names, n)["none"]
    else:
        file_names, future = read_inputs(actions)
        if file_names != names or len(future) < n:
            raise SystemExit(f"{actions} has the columns {','.join(file_names)} and {len(future)} rows; the run "
                             f"needs {','.join(names)} and at least --frames {n} rows")
    done = []
    with tqdm(total=n, desc="dream", unit="frame") as bar:
        bar.update = lambda k=1, update=bar.update: (done.append(time.time()), update(k))
        out = dreamer.dream([(ep, start)], future[None, :n], seed, progress=bar)[0]
    fps = (n - 1) / (time.time() - done[0]) if n > 1 else float("nan")
    real = dreamer.real([(ep, start)], n if actions == "recorded" else 0)[0]
    return out, real[1:] if actions == "recorded" else None, real[0], fps


# -----------------------------------------------------------------------------
# Measuring a world model (--eval, --compare), on uint8 RGB frames:
# fidelity   PSNR (of the MSE over all starts) and SSIM against the truth under the recorded inputs, beside
#            copy-last-frame (what a model that ignores its inputs falls into), and the sharpness over the
#            truth's: PSNR rewards a blurry average, so a model can win on PSNR by fading
# adherence  the same starts and noise under the recorded inputs A and each counterfactual script B (none,
#            forward, turn left, turn right), whose truth Doom renders (record.replay): the margin
#            PSNR(dream_A, truth_A) - PSNR(dream_A, truth_B) (> 0: the dream follows A) and the response
#            mean|dream_A - dream_B| / mean|truth_A - truth_B| (1: as much as the game; footage: the numerator)
# stability  the share of STABLE_FRAMES-long rollouts that get stuck (STUCK_RUN frames changing by under STILL
#            gray levels while the truth moves), blur out (the last STUCK_RUN frames under BLUR_RATIO of the
#            truth's sharpness) or noise out (over 1/BLUR_RATIO of it)

HORIZONS_EVAL = (1, 2, 4, 8, 16, 32)  # frames ahead; 32 frames = 2.1 s
TURN = 10.0                           # degrees per frame in the turn scripts (the scripted player turns 4-15)
STABLE_FRAMES = 300                   # 20 s at 15 FPS
STUCK_RUN = 15                        # 1 s of frames
STILL = 1.0                           # gray levels per frame: below this, two frames look identical
BLUR_RATIO = 0.5                      # sharpness below half the truth's counts as blurred out


def counterfactual_scripts(names, n):
    """name -> (n, A) inputs, for the scripts the data's columns allow: Doom's, or an Atari joystick's."""
    zero = np.zeros((n, len(names)), np.float32)
    scripts = {"none": zero + (np.array(names) == "noop")}  # Atari's "none" is its NOOP input, Doom's no key at all
    for name, column, value in (("forward", "w", 1), ("turn_left", "mouse_dx", -TURN), ("turn_right", "mouse_dx", TURN),
                                ("left", "left", 1), ("right", "right", 1), ("up", "up", 1), ("down", "down", 1)):
        if column in names:
            scripts[name] = zero.copy()
            scripts[name][:, names.index(column)] = value
    return scripts


def is_stuck(dream, truth):
    """STUCK_RUN frames in a row where the dream changes by less than STILL while the truth moves."""
    still, moving = changes(dream) < STILL, changes(truth)
    return any(still[i:i + STUCK_RUN].all() and moving[i:i + STUCK_RUN].mean() > STILL
               for i in range(len(still) - STUCK_RUN + 1))


def eval_starts(meta, T, horizon, n, seed=0):
    """A fixed, seeded set of n (episode, frame) starts where T context frames + `horizon` more fit inside
    a validation episode; the frame is where the context begins."""
    pairs = [(e, f) for e in meta["episodes"] if e["split"] == "val" for f in range(e["length"] - T - horizon + 1)]
    if not pairs:
        raise SystemExit(f"no validation episode has the {T + horizon} frames this evaluation needs")
    pick = np.random.default_rng(seed).choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return [pairs[i] for i in sorted(pick)]


def evaluate(dreamer, n_starts=16, n_stable=8, seed=0, stable_frames=STABLE_FRAMES):
    """Fidelity, adherence and stability (see above) on the held-out episodes, as a dict."""
    meta, T, H = dreamer.meta, dreamer.T, max(HORIZONS_EVAL)
    starts, at = eval_starts(meta, T, H, n_starts, seed), [k - 1 for k in HORIZONS_EVAL]
    future = lambda starts, n: np.stack([dreamer.actions[e["start"] + f + T - 1:][:n] for e, f in starts])  # noqa
    scripts = counterfactual_scripts(meta["actions"], H)
    n = min(stable_frames, max(e["length"] for e in meta["episodes"] if e["split"] == "val") - T)  # as they allow
    long_starts = eval_starts(meta, T, n, min(n_stable, n_starts), seed + 1)
    steps = -(-len(starts) // BATCH) * H * (1 + len(scripts)) + -(-len(long_starts) // BATCH) * n  # rollout steps
    bar = tqdm(total=steps, desc="eval", unit="step")
    result = dict(data=meta["dataset"], starts=len(starts), horizons=HORIZONS_EVAL, cfg=dreamer.cfg_scale, seed=seed,
                  steps=dreamer.steps or dreamer.model.cfg.sample_steps, scripts=list(scripts))

    # fidelity under the recorded inputs
    recorded, real = future(starts, H), dreamer.real(starts, H)                     # (S, H, A), (S, H+1, ...)
    dream_a = dreamer.dream(starts, recorded, seed, progress=bar)                    # (S, H, H, W, 3)
    copy_last = np.broadcast_to(real[:, :1], real[:, 1:].shape)
    result["psnr"] = psnr(dream_a, real[:, 1:])[at].tolist()
    result["psnr_copy_last"] = psnr(copy_last, real[:, 1:])[at].tolist()
    result["ssim"] = np.stack([ssim(d, r[1:]) for d, r in zip(dream_a, real)]).mean(0)[at].tolist()
    result["ssim_copy_last"] = np.stack([ssim(c, r[1:]) for c, r in zip(copy_last, real)]).mean(0)[at].tolist()
    sharp = lambda videos: np.stack([sharpness(v) for v in videos]).mean(0)          # noqa: E731, (H,)
    result["sharpness"] = (sharp(dream_a) / sharp(real[:, 1:]))[at].tolist()

    # adherence: the same starts and noise under counterfactual inputs
    can_replay = all(dreamer.replayable(e["name"]) for e, _ in starts)
    if can_replay:
        truth_a = np.stack([dreamer.replay(e["name"], f + T - 1, a) for (e, f), a in zip(starts, recorded)])
    err_b, moved_dream, moved_truth = [], [], []                                     # per script: (S, H)
    for script in scripts.values():
        dream_b = dreamer.dream(starts, np.broadcast_to(script, recorded.shape).copy(), seed, progress=bar)
        moved_dream.append(np.abs(dream_a.astype(np.float64) - dream_b).mean(axis=(2, 3, 4)))
        if can_replay:
            truth_b = np.stack([dreamer.replay(e["name"], f + T - 1, script) for e, f in starts])
            err_b.append(frame_mse(dream_a, truth_b))
            moved_truth.append(np.abs(truth_a.astype(np.float64) - truth_b).mean(axis=(2, 3, 4)))
    result["dream_response"] = np.mean(moved_dream, axis=(0, 1))[at].tolist()       # gray levels
    if can_replay:
        margin, ci = margin_of_mean_mse(frame_mse(dream_a, truth_a), np.stack(err_b), seed)
        result.update(margin=margin[at].tolist(), margin_ci95=ci[:, at].T.tolist(), response_ratio=(
            np.sum(moved_dream, axis=(0, 1)) / np.sum(moved_truth, axis=(0, 1)))[at].tolist())

    # stability over long rollouts
    long_dream = dreamer.dream(long_starts, future(long_starts, n), seed, progress=bar)
    bar.close()
    long_real = dreamer.real(long_starts, n)[:, 1:]
    ratios = [(sharpness(d[-STUCK_RUN:]).mean() + 1e-6) / (sharpness(r[-STUCK_RUN:]).mean() + 1e-6)  # flat: 1
              for d, r in zip(long_dream, long_real)]
    result.update(stable_rollouts=len(long_starts), stable_frames=n,
                  stuck_share=float(np.mean([is_stuck(d, r) for d, r in zip(long_dream, long_real)])),
                  blur_share=float(np.mean([r < BLUR_RATIO for r in ratios])),
                  noise_share=float(np.mean([r > 1 / BLUR_RATIO for r in ratios])),
                  sharpness_ratio=float(np.median(ratios)))  # the median: one flat truth can make a ratio huge
    return result


def print_eval(result):
    r = {**result, **dict(zip(["ci_low", "ci_high"], zip(*result.get("margin_ci95", []))))}
    print(f"{r['starts']} held-out starts in {r['data']}, {r['steps']} steps, cfg {r['cfg']}")
    for name, key, fmt in (("horizon (frames)", "horizons", "d"), ("PSNR dream (dB)", "psnr", ".2f"),
                           ("PSNR copy-last (dB)", "psnr_copy_last", ".2f"), ("SSIM dream", "ssim", ".3f"),
                           ("SSIM copy-last", "ssim_copy_last", ".3f"), ("sharpness / truth's", "sharpness", ".2f"),
                           ("adherence margin (dB)", "margin", ".2f"), ("  95% CI low", "ci_low", ".2f"),
                           ("  95% CI high", "ci_high", ".2f"), ("response ratio", "response_ratio", ".2f"),
                           ("dream response (gray)", "dream_response", ".2f")):
        if key in r:
            print(f"{name:<22}" + "".join(f"{v:8{fmt}}" for v in r[key]))
    print(f"over {result['stable_rollouts']} rollouts of {result['stable_frames']} frames: "
          f"{result['stuck_share']:.0%} stuck, {result['blur_share']:.0%} blurred out, {result['noise_share']:.0%} "
          f"noised out (median sharpness {result['sharpness_ratio']:.2f} of the truth's)")


def compare(dreamer, episode=None, start=0, frames=45, seed=0):
    """One video, one row per input script from the same start and noise (recorded, then the counterfactuals):
    left the truth (recorded, or replayed in Doom; black for other footage), right the dream."""
    ep, T = dreamer.episode(episode, start), dreamer.T
    n = min(frames, ep["length"] - T - start)
    first = ep["start"] + start + T - 1
    scripts = {"recorded": dreamer.actions[first:first + n], **counterfactual_scripts(dreamer.meta["actions"], n)}
    rows = []
    for name, script in scripts.items():
        dream_ = dreamer.dream([(ep, start)], script[None], seed)[0]
        truth = (dreamer.real([(ep, start)], n)[0, 1:] if name == "recorded" else
                 dreamer.replay(ep["name"], start + T - 1, script) if dreamer.replayable(ep["name"]) else
                 np.zeros_like(dream_))
        rows += [side_by_side(truth, dream_), np.full((n, 2, 2 * dream_.shape[2] + 2, 3), 255, np.uint8)]
    return np.concatenate(rows[:-1], axis=1), list(scripts)


# -----------------------------------------------------------------------------
# Play inside the dream: a web page (assets/play.html) sends the keys held and the mouse's movement 15 times a
# second; the server paints the next frame from the last 10, which stay on the device, and sends it back

KEYS = {"w": ["w", "arrowup"], "a": ["a"], "s": ["s", "arrowdown"], "d": ["d"], "space": [" "], "shift": ["shift"],
        "mouse_left": ["mouse0"], "mouse_right": ["mouse2"]}  # column -> the browser's keys (and buttons) for it


class Game:  # the dream as a game from one start: step(row of inputs) paints the next frame; reset() goes back
    def __init__(self, dreamer, episode, start, seed, mouse_scale):
        self.dreamer, self.ep, self.start, self.seed = dreamer, dreamer.episode(episode, start), start, seed
        self.names, self.mouse_scale = dreamer.meta["actions"], mouse_scale
        self.missing = [name for name in self.names if name not in (*KEYS, "mouse_dx", "mouse_dy")]  # stay 0
        self.reset()

    def reset(self):
        d, rows = self.dreamer, self.ep["start"] + self.start + np.arange(self.dreamer.T)
        z = torch.from_numpy(d.latents[rows].astype(np.float32)).to(d.device)
        self.ctx = normalize(d.model.cfg, z)[None]                                   # (1, T, C, h, w)
        self.past = torch.from_numpy(d.actions[rows[:-1]]).float().to(d.device)[None]  # (1, T-1, A)
        self.generator = torch.Generator(d.device).manual_seed(self.seed)         # as dream(): the same frames
        self.rows, self.frames = [], []

    def row(self, held, dx=0.0, dy=0.0):
        """Inputs in the data's columns from the browser's keys held and mouse pixels; arrows turn TURN a frame."""
        turn = TURN * (("arrowright" in held) - ("arrowleft" in held))
        values = {**{column: float(any(k in held for k in keys)) for column, keys in KEYS.items()},
                  "mouse_dx": dx * self.mouse_scale + turn, "mouse_dy": dy * self.mouse_scale}
        return np.array([values.get(name, 0.0) for name in self.names], np.float32)

    @torch.no_grad()
    def step(self, row):
        """uint8 (H, W, 3): the next frame under the inputs `row` (A,), which lead from the latest frame to it."""
        d = self.dreamer
        actions = torch.cat([self.past, torch.from_numpy(row).to(d.device)[None, None]], dim=1)  # (1, T, A)
        with d.autocast:
            x = sample_next(d.model, self.ctx, actions, d.steps, d.cfg_scale, self.generator)  # (1, C, h, w)
        self.ctx, self.past = torch.cat([self.ctx[:, 1:], x[:, None]], dim=1), actions[:, 1:]
        self.rows.append(row)
        self.frames.append(d.autoencoder.decode(denormalize(d.model.cfg, x)).numpy()[0])  # the new frame only
        return self.frames[-1]

    def save(self):
        """The frames played since the last reset as a GIF, and their inputs as an inputs.csv that replays them."""
        if not self.frames:
            return {}
        stem, n = self.dreamer.run / time.strftime("play-%Y%m%d-%H%M%S"), len(self.frames)
        write_gif(stem.with_suffix(".gif"), np.stack(self.frames))
        rows = [",".join(map(str, [i, *row.tolist()])) for i, row in enumerate(self.rows)]  # repr: exact float32
        stem.with_suffix(".csv").write_text("\n".join([",".join(["frame", *self.names]), *rows]) + "\n")
        print(f"{n} frames -> {stem}.gif; to dream them again: python sample.py --run {self.dreamer.run} --episode "
              f"{self.ep['name']} --start {self.start} --seed {self.seed} --actions {stem}.csv --frames {n}")
        return dict(gif=f"{stem}.gif", csv=f"{stem}.csv")


def play(game, host="127.0.0.1", port=8000):
    """Serve the game until the page's End button or Ctrl-C, then save what was played."""
    page, d, lock = (Path(__file__).parent / "assets" / "play.html").read_bytes(), game.dreamer, threading.Lock()
    info = dict(columns=game.names, missing=game.missing, episode=game.ep["name"], start=game.start,
                steps=d.steps or d.model.cfg.sample_steps, cfg=d.cfg_scale)

    class Handler(BaseHTTPRequestHandler):
        protocol_version, disable_nagle_algorithm = "HTTP/1.1", True  # one connection for all frames, no delays
        log_message = lambda *args: None  # noqa: E731, quiet: a line per frame would bury the one that matters

        def do_GET(self):  # the page, and what it shows of the run
            self.reply(*(json.dumps(info).encode(), "application/json") if self.path == "/info" else
                       (page, "text/html"))

        def do_POST(self):  # /step: the inputs held now in, the next frame out as a PNG; /reset; /end
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or "{}")
            with lock:  # one request at a time changes the game
                if self.path == "/step":
                    png = io.BytesIO()
                    Image.fromarray(game.step(game.row(set(body["keys"]), body["dx"], body["dy"]))).save(png, "PNG")
                    self.reply(png.getvalue(), "image/png")
                elif self.path == "/reset":
                    game.reset()
                    self.reply(b"{}", "application/json")
                else:  # /end: save what was played, then stop serving
                    self.reply(json.dumps(game.save()).encode(), "application/json")
                    threading.Thread(target=server.shutdown).start()

        def reply(self, body, kind):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with suppress(ConnectionError):  # the page was closed meanwhile
                self.wfile.write(body)

    try:
        server = ThreadingHTTPServer((host, port), Handler)  # a thread per connection: the page keeps two
    except OSError as e:
        raise SystemExit(f"cannot serve on {host}:{port} ({e.strerror}); pass another --port") from None
    print(f"play at http://{host}:{port}/ (from a GPU machine: `ssh -L {port}:127.0.0.1:{port} HOST`, then open "
          f"that address here); Ctrl-C or the page's End button saves what was played", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        with lock:  # after the frame being painted, if one is
            game.save()
    finally:
        server.server_close()


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder written by train.py")
    p.add_argument("--episode", help="episode name (default: the first validation episode)")
    p.add_argument("--start", type=int, default=0, help="episode frame where the 10-frame context begins")
    p.add_argument("--frames", type=int, default=45, help="frames to dream, 15 a second (at most the episode's)")
    p.add_argument("--actions", default="recorded", help="recorded, none, or an inputs.csv (see the top)")
    p.add_argument("--steps", type=int, help="denoising steps per frame (default: the run's)")
    p.add_argument("--cfg", type=float, help=f"guidance scale on the actions (1 = off; default {CFG:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output path (default: in the run folder)")
    p.add_argument("--save_frames", help="also write the dreamed frames as uint8 (N, H, W, 3) .npy")
    p.add_argument("--eval", action="store_true", help="measure fidelity, adherence and stability (eval.json)")
    p.add_argument("--starts", type=int, default=16, help="held-out starts for --eval")
    p.add_argument("--data", help="--eval on this encoded recording: a test set the run never saw")
    p.add_argument("--compare", action="store_true", help="one GIF, one row per input script from one start")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser (long rollouts on a GPU)")
    p.add_argument("--play", action="store_true", help="play the dream in a web browser (see the top)")
    p.add_argument("--host", default="127.0.0.1", help="--play serves here (0.0.0.0: every network, insecure)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mouse_scale", type=float, default=0.1, help="--play: mouse_dx/dy per pixel the mouse moves")
    args = p.parse_args(argv)
    dreamer = Dreamer(args.run, args.device, args.steps, args.cfg, args.data, args.compile)
    if args.play:  # without guidance by default: it measures the same (docs/ablations.md), 1.4x as fast
        dreamer.cfg_scale = 1.0 if args.cfg is None else args.cfg
        return play(Game(dreamer, args.episode, args.start, args.seed, args.mouse_scale), args.host, args.port)
    tag = args.actions if args.actions in ("recorded", "none") else Path(args.actions).stem
    out = Path(args.out or Path(args.run) / (f"eval{'_' + Path(args.data).parent.name if args.data else ''}.json"
                                             if args.eval else "compare.gif" if args.compare else
                                             f"dream_{args.episode or 'val'}_{args.start}_{tag}.gif"))
    if args.eval:
        result = evaluate(dreamer, args.starts, seed=args.seed)
        print_eval(result)
        out.write_text(json.dumps(result, indent=1))
    elif args.compare:
        video, names = compare(dreamer, args.episode, args.start, args.frames, args.seed)
        write_gif(out, video, min_height=480)
        print(f"rows: {', '.join(names)}; left the truth, right the dream")
    else:
        frames, truth, last, fps = dream(dreamer, args.episode, args.start, args.frames, args.actions, args.seed)
        write_gif(out, frames if truth is None else side_by_side(truth, frames))
        print(f"{len(frames)} frames at {fps:.1f} frames/s" + ", left the truth, right the dream" * (truth is not None))
        if truth is not None:  # against the trivial model that repeats the last context frame
            ours, copy = psnr(frames[None], truth[None]), psnr(np.broadcast_to(last, truth.shape)[None], truth[None])
            for k in (k for k in HORIZONS if k <= len(frames)):
                print(f"PSNR at frame {k:2d}: dream {ours[k - 1]:5.2f} dB, copy-last-frame {copy[k - 1]:5.2f} dB")
        if args.save_frames:
            np.save(args.save_frames, frames)
    print(f"-> {out}" + f", {args.save_frames}" * bool(args.save_frames and not args.eval))


if __name__ == "__main__":
    main()
