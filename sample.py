"""
Dream with a trained world model: autoregressive rollouts from a validation episode, written as GIFs.

    python sample.py --run runs/cpu                                  # recorded inputs, truth beside
    python sample.py --run runs/cpu --actions none --frames 90       # what if the player does nothing?
    python sample.py --run runs/cpu --actions my_inputs.csv          # your own inputs (inputs.csv format)
    python sample.py --run runs/cpu --episode ep004 --start 200 --steps 4 --save-frames dream.npy
    python sample.py --run runs/cpu --eval --starts 64                # fidelity, adherence, stability
    python sample.py --run runs/cpu --eval --data data/doom-test/latents-pixels   # on a test recording

The model sees the recorded frames from --start on (the context: Config.context, 10 in every preset),
then paints each next frame from as many before it, its own included, under the chosen inputs. The row
of inputs that follows a frame is the action that leads to the next one (record.py), so the inputs used
for the first generated frame are those of the last context frame, whatever --actions says for the context.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from encode import Autoencoder, device, load_latents, native_bf16, to_size
from model import denormalize, normalize, rollout
from record import DataError, exit_stopped, number, parse_with_given, read_inputs, read_meta, replay
from train import SEED_MAX, check_same_data, checkpoint_path, data_key, load_checkpoint, model_from_checkpoint

ANIMATIONS = {ext for ext, kind in Image.registered_extensions().items() if kind in Image.SAVE_ALL}  # .gif, .png, ...
GIF_DELAYS_MS = [70, 60, 70]  # GIF delays are in 1/100 s: 70+60+70 ms = 3 frames in 0.2 s = exactly 15 FPS
HORIZONS = (1, 4, 8, 16)      # frames ahead at which PSNR against the truth is printed
CFG = 2.0                     # classifier-free guidance on the actions by default: it doubled the response to
                              #   the inputs before motion compensation (0.31 -> 0.60 at 8 frames); with motion
                              #   the flow carries the inputs and --cfg 1 measures the same, ~1.4x faster
                              #   (README Results). 1 for a run trained with --action_dropout 0

BATCH = 16                    # starts rolled out together
MAX_FRAMES = 4500             # 5 minutes: a GIF is built in memory, 150 KB a frame at 256x192 (0.7 GB)

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


def save(path, write):
    """write(a temporary name beside path), then rename it to path: an interrupted write leaves the file that
    was there. Returns " (replaced)" when there was one, for the line that names the output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part, replaced = path.with_name(f".{path.stem}.part{path.suffix}"), path.exists()
    try:
        write(part)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return " (replaced)" if replaced else ""


def write_gif(path, frames, min_height=192):
    """uint8 (N, H, W, 3) -> a looping 15 FPS GIF, scaled up (nearest) so small game frames are visible."""
    frames = np.asarray(frames)
    scale = max(1, -(-min_height // frames.shape[1]))
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    delays = [GIF_DELAYS_MS[i % 3] for i in range(len(images))]
    return save(path, lambda part: images[0].save(part, save_all=True, append_images=images[1:], duration=delays,
                                                  loop=0))


def check_output(flag, path, suffixes=None):
    """One line now, instead of a traceback after the rollout: the file's folder exists and can be written to,
    or can be made in the nearest folder that exists (made only when the file is written), and an animation
    has the name of a format that PIL writes with all its frames (it picks the format by the name)."""
    if Path(path).is_dir() or str(path).endswith(("/", os.sep)):
        raise DataError(f"{flag} {path} is a folder; give a file name in it")
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        first, *others = sorted(suffixes, key=lambda s: (s != ".gif", s))
        raise DataError(f"{flag} {path}: name the file *{first}" + (f" (or {', '.join(others)})" if others else ""))
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write there ({e.strerror}); pass a path in a folder you can "
                        f"write") from None


def frame_mse(a, b):
    """MSE per frame of videos (S, N, H, W, 3): (S, N)."""
    return ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).reshape(*a.shape[:2], -1).mean(axis=2)


def psnr(a, b):
    """Per-frame PSNR in dB between uint8 videos (N, H, W, 3)."""
    return 10 * np.log10(255.0**2 / np.maximum(frame_mse(a[None], b[None])[0], 1e-10))


# -----------------------------------------------------------------------------
# Loading a run and rolling it out


def load_run(run, device, data=None):
    """The run's EMA model and the latents to start from: its own data, or `data`, another encoded
    recording (a test set, see check_test_set). A run never trained on `data`, so all of its episodes
    count as held out."""
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt, run).to(device).eval()
    own = ckpt["args"]["data"]
    if ckpt["step"] < ckpt["args"]["steps"]:  # a run still training, or stopped: its last checkpoint
        print(f"note: {run} is at step {ckpt['step']} of {ckpt['args']['steps']} (its last checkpoint)",
              file=sys.stderr)
    if data is None and not Path(own).is_dir():
        where = "" if Path(own).is_absolute() else " (relative to the folder train.py ran in)"
        raise DataError(f"{run} was trained on {own}{where}, which is not there any more; put the latents folder "
                        f"back there (sampling starts from its frames), or --eval on another recording with --data")
    if data is None or Path(data).resolve() == Path(own).resolve():
        latents, actions, meta = load_latents(own)
        check_same_data(ckpt, data_key(meta, latents), run, own)
        check_shape(run, model.cfg, own, latents, actions)  # for checkpoints written before check_same_data
        return model, latents, actions, with_recording(meta, own)
    latents, actions, meta = load_latents(data)
    if ckpt.get("data") == data_key(meta, latents):          # the run's own data, moved: its splits hold
        check_shape(run, model.cfg, data, latents, actions)
        return model, latents, actions, with_recording(meta, data)
    check_test_set(run, model.cfg, own, data, latents, actions, meta)
    meta = {**meta, "episodes": [{**e, "split": "val"} for e in meta["episodes"]]}
    return model, latents, actions, with_recording(meta, data)


def with_recording(meta, latents_folder):
    """meta, its "dataset" (the raw recording, which --eval and --compare replay) found again if it moved
    together with its latents: encode.py writes them into DATASET/latents-NAME."""
    here = Path(latents_folder).resolve().parent
    if not Path(meta["dataset"]).is_dir() and all((here / e["name"]).is_dir() for e in meta["episodes"]):
        return {**meta, "dataset": str(here)}
    return meta


def check_shape(run, cfg, data, latents, actions):
    if tuple(latents.shape[1:]) != (cfg.latent_channels, cfg.latent_height, cfg.latent_width) \
            or actions.shape[1] != cfg.action_dim:
        raise DataError(f"{data} holds latents {tuple(latents.shape[1:])} with {actions.shape[1]} input columns, "
                        f"but {run} was trained on ({cfg.latent_channels}, {cfg.latent_height}, "
                        f"{cfg.latent_width}) with {cfg.action_dim}; encode it with the run's autoencoder and size")


def check_test_set(run, cfg, own, data, latents, actions, meta):
    """A test set must match the run's latents and input columns and share no episode with `own`, the
    run's training data (checked when that folder is here)."""
    check_shape(run, cfg, data, latents, actions)
    if not (Path(own) / "meta.json").exists():
        print(f"note: the run's training data {own} is not here, so whether {data} was made the same way and "
              f"is new to the run goes unchecked", file=sys.stderr)
        return
    own_latents, _, own_meta = load_latents(own)
    for key in ("vae", "actions"):
        if own_meta[key] != meta[key]:
            raise DataError(f"{data} has {key} {meta[key]}, but {run} was trained on {own_meta[key]}; "
                            f"record and encode the test set the way the training data was")
    # an episode is identified by its length and last frame: the same seed replays the same episode
    last = lambda lat, e: (e["length"], lat[e["start"] + e["length"] - 1].tobytes())  # noqa: E731
    seen = {last(own_latents, e) for e in own_meta["episodes"]}
    if any(last(latents, e) in seen for e in meta["episodes"]):
        raise DataError(f"{data} repeats episodes of the run's training data (recorded with the same "
                        f"--seed?); record the test set with another --seed")


def actions_file(text):
    """An argparse type: recorded, none, a .csv file that exists or an episode folder with an inputs.csv (read
    when the model's columns are known)."""
    path = Path(text)
    if text not in ("recorded", "none") and not (path.is_file() and path.suffix.lower() == ".csv") \
            and not (path / "inputs.csv").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not recorded, none, an existing .csv file in the "
                                         f"inputs.csv format (header frame,<action names>) or an episode folder")
    return text


def script_actions(kind, recorded, names, n):
    """The (n, A) inputs for the n generated frames: recorded, none (all zero), or from an inputs.csv."""
    if kind == "recorded":
        return recorded
    if kind == "none":
        return np.zeros((n, len(names)), np.float32)
    file_names, actions = read_inputs(Path(kind))
    if file_names != names:
        raise DataError(f"{kind} has columns {','.join(file_names)} but the model was trained on "
                        f"{','.join(names)}; write an inputs.csv with exactly those columns")
    if len(actions) < n:
        raise DataError(f"{kind} has {len(actions)} rows but --frames {n} needs {n}; add rows or lower --frames")
    return actions[:n]


class Dreamer:
    """A trained run, ready to roll out batches of starts under chosen inputs and decode them to pixels."""

    def __init__(self, run, device="cpu", steps=None, cfg_scale=None, compile=False, data=None):
        self.model, self.latents, self.actions, self.meta = load_run(run, device, data)
        guidable = self.model.cfg.action_dropout > 0  # guidance needs a model that was shown hidden actions
        if cfg_scale is None:
            cfg_scale = CFG if guidable else 1.0
        elif cfg_scale != 1 and not guidable:
            raise DataError(f"--cfg {cfg_scale:g} needs a run trained with action dropout, and this one was "
                            f"trained with --action_dropout 0; leave --cfg out (or use --cfg 1)")
        if compile:  # worth it for long rollouts on a GPU: the first frames pay for the compilation
            self.model = torch.compile(self.model)
        self.autocast = torch.autocast("cuda", torch.bfloat16) if native_bf16(device) else nullcontext()
        self.autoencoder = Autoencoder(self.meta["vae"], device)
        self.device, self.steps, self.cfg_scale = device, steps, cfg_scale
        self.T = self.model.cfg.context

    def episode(self, name, start, frames, truth=True):
        """The episode dict (default: the first validation episode) and how many frames to dream from start:
        with truth, as many as the recording has after the context (at most `frames`), else `frames`."""
        eps = {e["name"]: e for e in self.meta["episodes"]}
        if name is None and not held_out(self.meta):
            name = self.meta["episodes"][0]["name"]
            print(f"note: the run's data holds no validation episode (one episode, or --val-episodes 0), so "
                  f"this dreams from {name}, which the model was trained on", file=sys.stderr)
        elif name is None:
            name = held_out(self.meta)[0]["name"]
        elif eps.get(name, {}).get("split") == "train":
            print(f"note: the model was trained on {name}; the held-out episodes are "
                  f"{', '.join(e['name'] for e in held_out(self.meta)) or 'none'}", file=sys.stderr)
        if name not in eps:
            raise DataError(f"no episode {name!r} in the run's data; choose one of {', '.join(eps)}")
        ep = eps[name]
        left = ep["length"] - start - self.T                   # recorded frames after the context
        if start < 0 or left < (1 if truth else 0):
            last = ep["length"] - self.T - (1 if truth else 0)
            raise DataError(f"--start {start} leaves no {'frame to predict' if truth else 'room for the context'} "
                            f"in {name} ({ep['length']} frames, {self.T} of context); use a --start from 0 to {last}")
        if truth and left < frames:
            print(f"note: {name} has {left} frames after the context from --start {start}, so {left} are dreamed "
                  f"beside the truth", file=sys.stderr)
        return ep, min(frames, left) if truth else frames

    def real(self, starts, n):
        """uint8 (S, n+1, H, W, 3): the decoded truth from the last context frame on."""
        return np.stack([self.decode_rows(e["start"] + f + self.T - 1, n + 1) for e, f in starts])

    def replay(self, name, start, actions):
        """uint8 (K, H, W, 3): the true frames of a Doom episode under other inputs (record.replay), brought to
        the encoded size as encode.py brought the recorded ones (a 100x75 recording is encoded at 96x72)."""
        frames = replay(Path(self.meta["dataset"]) / name, start, actions)
        return np.stack([to_size(Image.fromarray(f), (self.meta["width"], self.meta["height"])) for f in frames])

    def decode_rows(self, row, n):
        return self.autoencoder.decode(self.latents[row:row + n].astype(np.float32)).numpy()

    def dream(self, starts, future, seed=0, progress=None):
        """Roll out each start (episode, frame) under future inputs (S, n, A), the same noise for the same
        seed whatever the inputs; returns uint8 (S, n, H, W, 3)."""
        cfg, T = self.model.cfg, self.T
        out = []
        for i in range(0, len(starts), BATCH):
            rows = np.array([e["start"] + f for e, f in starts[i:i + BATCH]])[:, None] + np.arange(T)
            z = torch.from_numpy(self.latents[rows.ravel()].astype(np.float32)).to(self.device)
            ctx = normalize(cfg, z).view(*rows.shape, *z.shape[1:])                     # (B, T, C, h, w)
            past = self.actions[rows[:, :-1]]                                           # (B, T-1, A)
            script = torch.from_numpy(np.concatenate([past, future[i:i + BATCH]], axis=1)).to(self.device)
            generator = torch.Generator(self.device).manual_seed(seed + i)
            with self.autocast:
                fake = rollout(self.model, ctx, script.float(), self.steps, self.cfg_scale, generator, progress)
            if not torch.isfinite(fake).all():
                guided = self.cfg_scale not in (1.0, CFG)
                raise DataError("the dream overflowed to inf or NaN" + (f" under --cfg {self.cfg_scale:g}; use a "
                                f"guidance scale near the default {CFG:g}" if guided else "; the run's weights are "
                                "damaged or diverged: train it again (from its start, or --resume with a lower --lr)"))
            out += [self.autoencoder.decode(denormalize(cfg, f)).numpy() for f in fake]  # (n, H, W, 3) each
        return np.stack(out)


# -----------------------------------------------------------------------------
# One rollout from a recorded start


def dream(run, episode=None, start=0, frames=45, actions="recorded", steps=None, seed=0, cfg_scale=None,
          device="cpu", compile=False):
    """Roll out the run's EMA model from one start. Returns uint8 frames: the dream (n, H, W, 3), the truth
    (n, H, W, 3) or None when the inputs are not the recorded ones, the last context frame (H, W, 3); and
    the generation speed in frames/s (denoising and decoding) after the first frame, whose time is mostly
    warm-up (and with --compile, compiling)."""
    dreamer = Dreamer(run, device, steps, cfg_scale, compile)
    recorded = actions == "recorded"
    ep, n = dreamer.episode(episode, start, frames, truth=recorded)
    first = ep["start"] + start + dreamer.T - 1                                   # the last context frame
    future = script_actions(actions, dreamer.actions[first:first + n], dreamer.meta["actions"], n)
    t0, done = time.time(), []                                                    # when each frame was done

    class Progress(tqdm):
        def update(self, k=1):
            done.append(time.time())
            return super().update(k)

    with Progress(total=n, desc="dream", unit="frame") as bar:
        out = dreamer.dream([(ep, start)], future[None], seed, progress=bar)[0]
    fps = (n - 1) / (time.time() - done[0]) if n > 1 else 1 / (time.time() - t0)
    real = dreamer.real([(ep, start)], n if recorded else 0)[0]
    return out, real[1:] if recorded else None, real[0], fps


# -----------------------------------------------------------------------------
# Measuring a world model (--eval, --compare). The definitions, all on uint8 RGB frames:
#
# fidelity   PSNR (from the MSE over all starts, see psnr_of_mean_mse) and SSIM of the rollout under the
#            recorded inputs against the truth, at each horizon, next to the copy-last-frame baseline:
#            repeat the last context frame forever, the trivial solution a model that ignores its inputs
#            falls into. And its sharpness (below) over the truth's at each horizon: PSNR rewards a blurry
#            average, so a model can win on PSNR by fading; under 1 the dream is blurrier than the game.
# adherence  from the same start and noise seed, roll out under the recorded inputs A and under each
#            counterfactual script B (none, forward, turn left, turn right). Doom can render the truth of
#            any inputs (record.replay), so we report
#              margin    PSNR(dream_A, truth_A) - PSNR(dream_A, truth_B) in dB; > 0: the dream follows A.
#                        From MSEs averaged over the starts (margin_of_mean_mse), with a bootstrap
#                        95% interval over the starts
#              response  mean|dream_A - dream_B| / mean|truth_A - truth_B|; 1: reacts as much as the game,
#                        0: ignores the inputs
#            For footage without replay only the model's own response mean|dream_A - dream_B| is reported.
# stability  rollouts of STABLE_FRAMES frames under the recorded inputs; the share that
#              get stuck  STUCK_RUN frames in a row in which the dream changes by less than STILL gray
#                         levels per frame (mean absolute difference) while the truth changes by more
#              blur out   sharpness (variance of the Laplacian) of the dream's last STUCK_RUN frames below
#                         BLUR_RATIO of the truth's over the same frames
#              noise out  the same sharpness above 1/BLUR_RATIO of the truth's: the picture has dissolved
#                         into speckle and texture (the failure a small, short-trained model shows first)
# A perceptual score such as LPIPS needs pretrained network weights downloaded at run time, which an
# offline machine cannot do; SSIM (Wang et al. 2004) is computed instead.

HORIZONS_EVAL = (1, 2, 4, 8, 16, 32)  # frames ahead; 32 frames = 2.1 s
TURN = 10.0                           # degrees per frame in the turn scripts (the scripted player turns 4-15)
STABLE_FRAMES = 300                   # 20 s at 15 FPS
STUCK_RUN = 15                        # 1 s of frames
STILL = 1.0                           # gray levels per frame: below this, two frames look identical
BLUR_RATIO = 0.5                      # sharpness below half the truth's counts as blurred out


def counterfactual_scripts(names, n):
    """name -> (n, A) inputs, for the scripts the data's columns allow."""
    zero = np.zeros((n, len(names)), np.float32)
    scripts = {"none": zero}
    if "w" in names:
        scripts["forward"] = zero.copy()
        scripts["forward"][:, names.index("w")] = 1
    if "mouse_dx" in names:
        for name, sign in (("turn_left", -1), ("turn_right", 1)):
            scripts[name] = zero.copy()
            scripts[name][:, names.index("mouse_dx")] = sign * TURN
    return scripts


def psnr_of_mean_mse(a, b):
    """PSNR per horizon of videos (S, N, H, W, 3) from the MSE averaged over the S starts. Averaging
    per-frame PSNR instead would let the pixel-identical frames that copy-last-frame gets whenever the
    player stands still count as 148 dB each (the 1e-10 floor) and swamp everything else."""
    return 10 * np.log10(255.0**2 / np.maximum(frame_mse(a, b).mean(axis=0), 1e-10))


def margin_of_mean_mse(err_a, err_b, seed=0, n_boot=1000):
    """Adherence margin per horizon, PSNR(dream_A, truth_A) - PSNR(dream_A, truth_B), from MSEs averaged
    over the starts like psnr_of_mean_mse (a dream that keeps a still player's frame pixel-exact would
    otherwise add up to 148 dB for that start), then averaged over the scripts B. err_a (S, N) are the MSEs
    against truth_A, err_b (K, S, N) against each script's truth. Returns the margin (N,) and its 95%
    bootstrap interval (2, N): the starts resampled with replacement n_boot times."""
    def margin(starts):
        return (10 * np.log10(np.maximum(err_b[:, starts].mean(1), 1e-10)
                              / np.maximum(err_a[starts].mean(0), 1e-10))).mean(0)
    rng = np.random.default_rng(seed)
    S = len(err_a)
    boot = np.stack([margin(rng.integers(0, S, S)) for _ in range(n_boot)])
    return margin(np.arange(S)), np.percentile(boot, [2.5, 97.5], axis=0)


def ssim(a, b):
    """Per-frame SSIM of uint8 videos (N, H, W, 3) on luma (BT.601 weights): Wang et al. 2004's formula,
    constants and population (co)variances, with a 7x7 uniform window (scikit-image's default window, though
    its default (co)variances are the sample ones) instead of their 11x11 Gaussian."""
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    x = (torch.tensor(np.asarray(a), dtype=torch.float64) @ luma)[:, None]  # (N, 1, H, W)
    y = (torch.tensor(np.asarray(b), dtype=torch.float64) @ luma)[:, None]
    mean = lambda t: torch.nn.functional.avg_pool2d(t, 7, 1)  # noqa: E731
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # the paper's constants for 8-bit images
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def sharpness(video):
    """Per-frame variance of the 4-neighbour Laplacian of the luma (BT.601 weights), over the pixels that have
    all four neighbours: falls as an image blurs."""
    x = np.asarray(video, np.float64) @ [0.299, 0.587, 0.114]                     # (N, H, W)
    lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
    return lap.reshape(len(x), -1).var(axis=1)


def changes(video):
    """Mean absolute difference between consecutive frames, in gray levels: (N-1,)."""
    v = np.asarray(video, np.float64)
    return np.abs(v[1:] - v[:-1]).reshape(len(v) - 1, -1).mean(axis=1)


def is_stuck(dream, truth):
    """STUCK_RUN frames in a row where the dream changes by less than STILL while the truth moves."""
    still, moving = changes(dream) < STILL, changes(truth)
    return any(still[i:i + STUCK_RUN].all() and moving[i:i + STUCK_RUN].mean() > STILL
               for i in range(len(still) - STUCK_RUN + 1))


def held_out(meta):
    """The episodes --eval measures on: the validation episodes (all of them in a test recording)."""
    return [e for e in meta["episodes"] if e["split"] == "val"]


def replayable(meta, name):
    """Whether episode `name` can be rendered under other inputs (record.replay: Doom recordings), with a note
    when the recording it was encoded from is not here to tell."""
    folder = Path(meta["dataset"]) / name
    if not folder.is_dir():
        print(f"note: {folder}, the recording, is not here, so the truth under other inputs cannot be replayed "
              f"(no margin or response ratio); put it back to measure them", file=sys.stderr)
        return False
    return read_meta(folder).get("source") == "vizdoom"


def eval_starts(meta, T, horizon, n, seed=0):
    """A fixed, seeded set of n (episode, frame) starts where T context frames + `horizon` more fit inside
    a validation episode; the frame is where the context begins."""
    pairs = [(e, f) for e in held_out(meta) for f in range(e["length"] - T - horizon + 1)]
    if not pairs:
        raise DataError(f"no validation episode has {T + horizon} frames, as this evaluation needs; record "
                        f"longer episodes")
    pick = np.random.default_rng(seed).choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return [pairs[i] for i in sorted(pick)]


def evaluate(run, n_starts=16, n_stable=8, steps=None, cfg_scale=None, seed=0, device="cpu",
             stable_frames=STABLE_FRAMES, data=None, compile=False):
    """Fidelity, adherence and stability of a run (see the definitions above) as a dict; on the run's
    validation episodes, or on every episode of `data`, a test recording (see load_run)."""
    dreamer = Dreamer(run, device, steps, cfg_scale, compile, data)
    meta, T, H = dreamer.meta, dreamer.T, max(HORIZONS_EVAL)
    if not held_out(meta):
        raise DataError(f"{run}'s data holds no validation episode (one episode, or --val-episodes 0), and a "
                        f"score on training episodes says little; --eval on a test recording with --data")
    starts = eval_starts(meta, T, H, n_starts, seed)
    if len(starts) < n_starts:
        print(f"note: only {len(starts)} starts fit in the held-out episodes; measuring on those", file=sys.stderr)
    n_stable = min(n_stable, n_starts)
    batches = lambda starts, n: -(-len(starts) // BATCH) * n                        # noqa: E731, rollout steps
    at = [k - 1 for k in HORIZONS_EVAL]
    result = {"run": str(run), "data": meta["dataset"], "starts": len(starts), "horizons": list(HORIZONS_EVAL),
              "cfg": dreamer.cfg_scale, "steps": steps or dreamer.model.cfg.sample_steps, "seed": seed}

    # fidelity under the recorded inputs
    recorded = np.stack([dreamer.actions[e["start"] + f + T - 1:e["start"] + f + T - 1 + H] for e, f in starts])
    real = dreamer.real(starts, H)                                                   # (S, H+1, H, W, 3)
    with tqdm(total=batches(starts, H), desc="fidelity", unit="step") as bar:
        dream_a = dreamer.dream(starts, recorded, seed, progress=bar)                # (S, H, H, W, 3)
    copy_last = np.broadcast_to(real[:, :1], real[:, 1:].shape)
    result["psnr"] = psnr_of_mean_mse(dream_a, real[:, 1:])[at].tolist()
    result["psnr_copy_last"] = psnr_of_mean_mse(copy_last, real[:, 1:])[at].tolist()
    result["ssim"] = np.stack([ssim(d, r[1:]) for d, r in zip(dream_a, real)]).mean(0)[at].tolist()
    result["ssim_copy_last"] = np.stack([ssim(c, r[1:]) for c, r in zip(copy_last, real)]).mean(0)[at].tolist()
    sharp = lambda videos: np.stack([sharpness(v) for v in videos]).mean(0)          # noqa: E731, (H,)
    result["sharpness"] = (sharp(dream_a) / sharp(real[:, 1:]))[at].tolist()

    # adherence: the same starts and noise under counterfactual inputs
    can_replay = all(replayable(meta, e["name"]) for e, _ in starts)
    if not can_replay and all((Path(meta["dataset"]) / e["name"]).is_dir() for e, _ in starts):
        print("note: only Doom recordings can be rendered under other inputs (record.replay), so for this "
              "footage --eval measures the dream's response in gray levels, without margin or response ratio",
              file=sys.stderr)
    err_b, moved_dream, moved_truth = [], [], []                                     # per script: (S, H)
    if can_replay:
        truth_a = np.stack([dreamer.replay(e["name"], f + T - 1, a) for (e, f), a in zip(starts, recorded)])
        err_a = frame_mse(dream_a, truth_a)
    scripts = counterfactual_scripts(meta["actions"], H)
    with tqdm(total=len(scripts) * batches(starts, H), desc="counterfactuals", unit="step") as bar:
        for name, script in scripts.items():
            future = np.broadcast_to(script, recorded.shape).copy()
            dream_b = dreamer.dream(starts, future, seed, progress=bar)
            moved_dream.append(np.abs(dream_a.astype(np.float64) - dream_b).mean(axis=(2, 3, 4)))
            if can_replay:
                truth_b = np.stack([dreamer.replay(e["name"], f + T - 1, script) for e, f in starts])
                err_b.append(frame_mse(dream_a, truth_b))
                moved_truth.append(np.abs(truth_a.astype(np.float64) - truth_b).mean(axis=(2, 3, 4)))
    moved_dream = np.stack(moved_dream)                                              # (scripts, S, H)
    result["scripts"] = list(counterfactual_scripts(meta["actions"], 1))
    result["dream_response"] = moved_dream.mean(axis=(0, 1))[at].tolist()           # gray levels
    if can_replay:
        margin, ci = margin_of_mean_mse(err_a, np.stack(err_b), seed)
        result["margin"] = margin[at].tolist()
        result["margin_ci95"] = ci[:, at].T.tolist()
        result["response_ratio"] = (moved_dream.sum(axis=(0, 1)) / np.stack(moved_truth).sum(axis=(0, 1)))[at].tolist()

    # stability over long rollouts, as long as the longest held-out episode allows (short recordings still evaluate)
    stable_frames = min(stable_frames, max(e["length"] for e in held_out(meta)) - T)
    long_starts = eval_starts(meta, T, stable_frames, n_stable, seed + 1)
    long_actions = np.stack([dreamer.actions[e["start"] + f + T - 1:e["start"] + f + T - 1 + stable_frames]
                             for e, f in long_starts])
    with tqdm(total=batches(long_starts, stable_frames), desc="stability", unit="step") as bar:
        long_dream = dreamer.dream(long_starts, long_actions, seed, progress=bar)
    long_real = dreamer.real(long_starts, stable_frames)[:, 1:]
    ratios = [(sharpness(d[-STUCK_RUN:]).mean() + 1e-6) / (sharpness(r[-STUCK_RUN:]).mean() + 1e-6)  # flat: 1
              for d, r in zip(long_dream, long_real)]
    result.update(stable_rollouts=len(long_starts), stable_frames=stable_frames,
                  stuck_share=float(np.mean([is_stuck(d, r) for d, r in zip(long_dream, long_real)])),
                  blur_share=float(np.mean([ratio < BLUR_RATIO for ratio in ratios])),
                  noise_share=float(np.mean([ratio > 1 / BLUR_RATIO for ratio in ratios])),
                  sharpness_ratio=float(np.median(ratios)))  # median: one flat truth can make a ratio huge
    return result


def print_eval(result):
    row = lambda name, values, fmt="8.2f": print(f"{name:<22}" + "".join(f"{v:{fmt}}" for v in values))  # noqa
    print(f"{result['run']}: {result['starts']} held-out starts in {result.get('data', 'its data')}, "
          f"{result['steps']} steps, cfg {result['cfg']}")
    row("horizon (frames)", result["horizons"], "8d")
    row("PSNR dream (dB)", result["psnr"])
    row("PSNR copy-last (dB)", result["psnr_copy_last"])
    row("SSIM dream", result["ssim"], "8.3f")
    row("SSIM copy-last", result["ssim_copy_last"], "8.3f")
    if "sharpness" in result:
        row("sharpness / truth's", result["sharpness"])
    if "margin" in result:
        row("adherence margin (dB)", result["margin"])
        row("  95% CI low", [lo for lo, _ in result["margin_ci95"]])
        row("  95% CI high", [hi for _, hi in result["margin_ci95"]])
        row("response ratio", result["response_ratio"])
    row("dream response (gray)", result["dream_response"])
    print(f"over {result['stable_rollouts']} rollouts of {result['stable_frames']} frames: "
          f"{100 * result['stuck_share']:.0f}% stuck, {100 * result['blur_share']:.0f}% blurred out, "
          f"{100 * result.get('noise_share', 0):.0f}% noised out "
          f"(median sharpness {result['sharpness_ratio']:.2f} of the truth's)")


def compare(run, episode=None, start=0, frames=45, steps=None, cfg_scale=None, seed=0, device="cpu", compile=False):
    """One video, one row per input script from the same start and noise: recorded, then the
    counterfactuals. Left: the truth (recorded, or replayed for Doom; black for other footage), right: the
    dream. Returns (video, row names, whether the truth was replayed)."""
    dreamer = Dreamer(run, device, steps, cfg_scale, compile)
    meta, T = dreamer.meta, dreamer.T
    ep, n = dreamer.episode(episode, start, frames)
    first = ep["start"] + start
    scripts = {"recorded": dreamer.actions[first + T - 1:first + T - 1 + n]}
    scripts.update(counterfactual_scripts(meta["actions"], n))
    doom = replayable(meta, ep["name"])
    rows = []
    for name, script in scripts.items():
        dream_ = dreamer.dream([(ep, start)], script[None], seed)[0]
        if name == "recorded":
            truth = dreamer.real([(ep, start)], n)[0, 1:]
        else:
            truth = dreamer.replay(ep["name"], start + T - 1, script) if doom else np.zeros_like(dream_)
        rows.append(side_by_side(truth, dream_))
    gap = np.full((n, 2, rows[0].shape[2], 3), 255, np.uint8)
    video = np.concatenate([part for r in rows for part in (r, gap)][:-1], axis=1)
    return video, list(scripts), doom


# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="sample.py --run RUN [--start N] [--frames N] [--actions recorded|none|FILE] "
                                      "[--eval] ... (--help lists every flag)")
    p.add_argument("--run", required=True, help="a run folder written by train.py")
    p.add_argument("--episode", help="episode name (default: the first validation episode)")
    p.add_argument("--start", type=number(int, inclusive=True), default=0,
                   help="episode frame where the context (10 frames in every preset) begins")
    p.add_argument("--frames", type=number(int, high=MAX_FRAMES), default=45,
                   help=f"frames to generate (15 per second), at most {MAX_FRAMES} (the GIF is held in memory); "
                        f"beside the truth, at most what the episode has")
    p.add_argument("--actions", default="recorded", type=actions_file,
                   help="recorded, none, an inputs.csv file, or an episode folder (its inputs.csv): the file's "
                        "first row leads from the last context frame to the first dreamed one")
    p.add_argument("--steps", type=number(int),
                   help="denoising steps per frame (default: the run's; the cpu preset's is 2)")
    p.add_argument("--cfg", type=number(float, -math.inf),
                   help=f"classifier-free guidance scale on the actions (1 = off; default {CFG:g}, or 1 for a run "
                        f"trained without action dropout)")
    p.add_argument("--seed", type=number(int, inclusive=True, high=SEED_MAX), default=0)
    p.add_argument("--out", help="GIF path (default RUN/dream_<episode>_<start>_<actions>.gif, where the "
                                 "episode is 'val' when it is the default, the first held-out one)")
    p.add_argument("--save_frames", "--save-frames", help="also write the frames as uint8 (N, H, W, 3) .npy")
    p.add_argument("--eval", action="store_true", help="measure fidelity, adherence and stability (eval.json)")
    p.add_argument("--starts", type=number(int), default=16,
                   help="number of held-out starts for --eval (and up to 8 of them for 300-frame rollouts)")
    p.add_argument("--data", help="--eval on this encoded recording instead (a test set the run never saw)")
    p.add_argument("--compare", action="store_true", help="one GIF, one row per input script from one start")
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser (GPU, long rollouts)")
    args, given = parse_with_given(p, argv)
    mode = "--eval" if args.eval else "--compare" if args.compare else None
    ignored = {"--eval": {"episode", "start", "frames", "actions", "save_frames", "compare"},  # it picks its own
               "--compare": {"actions", "save_frames", "starts", "data"},                   # its own scripts
               None: {"starts", "data"}}[mode] & given
    if ignored:
        flags = ", ".join("--" + k for k in sorted(ignored))
        p.error(f"{flags} cannot go with {mode}" if mode else f"{flags}: for --eval only")

    # every output path is checked before the rollout, not after it
    tag = Path(args.actions).stem if args.actions not in ("recorded", "none") else args.actions
    out_default = {"--eval": f"eval_{Path(args.data).parent.name}.json" if args.data else "eval.json",
                   "--compare": "compare.gif", None: f"dream_{args.episode or 'val'}_{args.start}_{tag}.gif"}[mode]
    checkpoint_path(args.run)                                              # a --run without one: that, first
    out_path = Path(args.out or Path(args.run) / out_default)              # --data data/NAME/latents-*: NAME
    check_output("--out", args.out or out_path, {".json"} if args.eval else ANIMATIONS)
    if args.save_frames:
        check_output("--save_frames", args.save_frames)                    # a folder, before .npy is added
        frames_path = Path(args.save_frames)
        frames_path = frames_path if frames_path.suffix == ".npy" else frames_path.with_name(frames_path.name + ".npy")
        check_output("--save_frames", frames_path)                         # with the name np.save writes

    if args.eval:
        result = evaluate(args.run, args.starts, steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
                          device=args.device, data=args.data, compile=args.compile)
        print_eval(result)
        replaced = save(out_path, lambda part: part.write_text(json.dumps(result, indent=1)))
        print(f"-> {out_path}{replaced}")
        return
    if args.compare:
        video, names, replayed = compare(args.run, args.episode, args.start, args.frames, args.steps, args.cfg,
                                         args.seed, args.device, args.compile)
        replaced = write_gif(out_path, video, min_height=480)
        left = "the truth (replayed)" if replayed else \
            "the truth in the recorded row, black in the others (only Doom can be replayed under other inputs)"
        print(f"rows: {', '.join(names)}; left: {left}, right: the dream -> {out_path}{replaced}")
        return
    out, truth, last, fps = dream(args.run, args.episode, args.start, args.frames, args.actions, args.steps,
                                  args.seed, args.cfg, args.device, args.compile)
    replaced = write_gif(out_path, out if truth is None else side_by_side(truth, out))
    print(f"{len(out)} frames at {fps:.1f} frames/s -> {out_path}{replaced}"
          + ("  (left: truth, right: dream)" if truth is not None else ""))
    if truth is not None:  # against the trivial model that repeats the last context frame
        ours, copy = psnr(out, truth), psnr(np.broadcast_to(last, truth.shape), truth)
        for k in (k for k in HORIZONS if k <= len(out)):
            print(f"PSNR at frame {k:2d}: dream {ours[k - 1]:5.2f} dB, copy-last-frame {copy[k - 1]:5.2f} dB")
    if args.save_frames:
        replaced = save(frames_path, lambda part: np.save(part, out))
        print(f"frames {out.shape} -> {frames_path}{replaced}")


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        exit_stopped("stopped by Ctrl-C")
