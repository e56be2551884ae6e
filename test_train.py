"""
Training at scale and under faults, on the CPU: torchrun with 2 processes (gloo) against one process
with the same global batch, memory-mapped data read ahead by a thread, a NaN loss, a checkpoint left
half-written by a kill, and the benchmark mode.

    python -m pytest -q test_train.py
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model
import sample
import train
from encode import load_latents
from model import make_config
from record import DataError

HERE = Path(__file__).resolve().parent
SMALL = ["--preset", "tiny", "--eval_batches", "1", "--preview_frames", "2", "--device", "cpu"]


def weights(run):
    return torch.load(Path(run) / "ckpt.pt", weights_only=True)


def test_torchrun_two_processes_match_one_process(latents, tmp_path):
    """2 ranks x 1 micro-batch of 4 must train exactly like 1 process x 2 accumulated micro-batches of 4."""
    common = ["--data", str(latents), *SMALL, "--steps", "6", "--eval_every", "3", "--batch_size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *common, "--run_dir", str(tmp_path / "ddp")],
                       cwd=HERE, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "weights identical on all 2 ranks" in p.stdout
    train.main([*common, "--grad_accum", "2", "--run", str(tmp_path / "single")])
    ddp, single = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert ddp["step"] == single["step"] == 6
    for name, value in single["model"].items():
        assert torch.allclose(ddp["model"][name], value, atol=1e-5), name
    losses = [[float(r.split(",")[2]) for r in (tmp_path / k / "log.csv").read_text().splitlines()[1:]]
              for k in ("ddp", "single")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_memory_mapped_data_streams_the_same_windows(latents, tmp_path, monkeypatch):
    """Data too big for the device stays memory-mapped and is read one micro-batch ahead in a thread; the
    windows must be exactly those of the on-device path, and a stream started at step k must continue the
    stream started at 0 (what --resume relies on)."""
    data, actions, meta = load_latents(latents)
    cfg = make_config("tiny", latent_mean=meta["latent_mean"], latent_std=meta["latent_std"])
    cpu = torch.device("cpu")
    on_device = train.Windows(*train.place(data, actions, cpu), meta, "train", cfg, cpu)
    monkeypatch.setattr(train, "MAX_ON_DEVICE", 0)
    mapped = train.Windows(*train.place(data, actions, cpu), meta, "train", cfg, cpu)
    assert isinstance(on_device.latents, torch.Tensor) and not isinstance(mapped.latents, torch.Tensor)
    a = on_device.stream(4, seed=0, step=0, first=1, per_step=2)
    b = mapped.stream(4, seed=0, step=3, first=1, per_step=2)
    for _ in range(6):  # steps 0-2 of a
        next(a)
    for _ in range(5):
        for u, v in zip(next(a), next(b)):
            assert torch.equal(u, v)
    # and a whole training run through the memory map ends with the same weights
    common = ["--data", str(latents), *SMALL, "--steps", "4", "--eval_every", "4", "--batch_size", "4"]
    train.main([*common, "--run", str(tmp_path / "mapped")])
    monkeypatch.setattr(train, "MAX_ON_DEVICE", 4e9)
    made, Windows = [], train.Windows  # the Windows main makes: both splits share one copy of the data
    monkeypatch.setattr(train, "Windows", lambda *a: made.append(Windows(*a)) or made[-1])
    train.main([*common, "--run", str(tmp_path / "on_device")])
    mapped_w, device_w = weights(tmp_path / "mapped")["model"], weights(tmp_path / "on_device")["model"]
    assert all(torch.equal(mapped_w[k], device_w[k]) for k in device_w)
    assert [w.episodes[0]["split"] for w in made] == ["train", "val"] and made[0].latents is made[1].latents


def test_windows_pair_each_context_frame_with_the_action_after_it(latents):
    """Row i of inputs.csv leads from frame i to i+1: a window's actions are those of its context frames,
    the last one leading to the frame to predict. Latents and actions are replaced by their row numbers."""
    data, actions, meta = load_latents(latents)
    numbered = np.broadcast_to(np.arange(len(data), dtype=np.float16)[:, None, None, None], data.shape)
    cfg = make_config("tiny")                                        # latent_mean 0, std 1: normalize = x 0.5
    cpu = torch.device("cpu")
    rows = np.arange(len(data), dtype=np.float32)[:, None].repeat(actions.shape[1], 1)
    windows = train.Windows(*train.place(numbered, rows, cpu), meta, "train", cfg, cpu)
    x, ctx, act = windows.get_batch(16, torch.Generator().manual_seed(0))
    target = x[:, 0, 0, 0] / cfg.sigma_data                           # the row of the frame to predict
    assert torch.equal(ctx[:, :, 0, 0, 0] / cfg.sigma_data, target[:, None] + torch.arange(-cfg.context, 0))
    assert torch.equal(act[:, :, 0], ctx[:, :, 0, 0, 0] / cfg.sigma_data)


def test_a_short_validation_episode_says_how_to_hold_out_another(latents):
    data, actions, meta = load_latents(latents)
    short = {**meta, "episodes": [{**e, "length": 8} if e["split"] == "val" else e for e in meta["episodes"]]}
    cpu = torch.device("cpu")
    with pytest.raises(DataError, match=r"no val episode .*frames: \S+ 8\); .*--val-episodes 0") as info:
        train.Windows(*train.place(data, actions, cpu), short, "val", make_config("tiny"), cpu)
    assert "\n" not in str(info.value)


def test_batch_must_split_into_equal_micro_batches(latents, tmp_path):
    with pytest.raises(DataError, match="equal micro-batches"):
        train.main(["--data", str(latents), *SMALL, "--batch_size", "8", "--grad_accum", "3",
                    "--run", str(tmp_path / "three")])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(latents, tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(DataError, match=r"(at|by) step \d+.*(keeps the last good weights.*--resume --lr 3.3e\+11|"
                                        r"holds the weights that gave it .*\(--lr 3.3e\+11\) into a new --run)"):
        train.main(["--data", str(latents), *SMALL, "--steps", "200", "--eval_every", "1", "--lr", "1e12",
                    "--weight_decay", "0", "--warmup", "1", "--grad_clip", "1e30", "--run", str(run)])
    kept = weights(run)
    assert kept["step"] >= 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_resume_may_lower_the_learning_rate(latents, tmp_path, capsys):
    """What the message above advises: a loss that blew up at one --lr blows up at the same step again."""
    run = tmp_path / "run"
    train.main(["--data", str(latents), *SMALL, "--steps", "2", "--eval_every", "2", "--run", str(run)])
    train.main(["--run", str(run), "--resume", "--lr", "1e-4", "--steps", "4"])
    assert weights(run)["step"] == 4 and weights(run)["args"]["lr"] == 1e-4
    # warmup 0 (a tenth of 2 steps): at step 2 the old schedule had ended at 0.1 x 1e-3; the new one is halfway
    assert "the peak learning rate goes from 1.00e-03 to 1.00e-04; extending the run from 2 to 4 steps: the cosine " \
           "now spans 4; at step 2 the learning rate goes from 1.00e-04 to 5.50e-05\n" in capsys.readouterr().out


def test_nan_loss_before_any_checkpoint_says_to_start_again(latents, tmp_path):
    with pytest.raises(DataError, match=r"no checkpoint was written yet; train again .*\(--lr 3.3e\+11\)"):
        train.main(["--data", str(latents), *SMALL, "--steps", "200", "--lr", "1e12", "--weight_decay", "0",
                    "--warmup", "1", "--grad_clip", "1e30", "--run", str(tmp_path / "nan")])
    assert not (tmp_path / "nan" / "ckpt.pt").exists()


def test_half_written_checkpoint_is_ignored(latents, tmp_path):
    """A kill during torch.save leaves only ckpt.pt.tmp behind: ckpt.pt is still the last complete one."""
    run = tmp_path / "run"
    train.main(["--data", str(latents), *SMALL, "--steps", "4", "--eval_every", "2", "--run", str(run)])
    (run / "ckpt.pt.tmp").write_bytes(b"PK\x03\x04 half a zip file")  # what a kill mid-write leaves
    assert weights(run)["step"] == 4
    train.main(["--run", str(run), "--resume", "--steps", "6"])
    assert weights(run)["step"] == 6 and not (run / "ckpt.pt.tmp").exists()


def test_checkpoint_from_an_older_model_py_is_refused(run, tmp_path):
    """A config without a field that model.py has since gained would load as a different model: refuse it."""
    ckpt = weights(run)
    del ckpt["config"]["embed_ring"]
    (tmp_path / "old").mkdir()
    torch.save(ckpt, tmp_path / "old" / "ckpt.pt")
    with pytest.raises(DataError, match="older model.py.*embed_ring") as info:
        train.main(["--run", str(tmp_path / "old"), "--resume", "--steps", "50"])
    assert "\n" not in str(info.value)


def test_checkpoint_from_another_model_py_is_refused(run, tmp_path):
    """A config with a field this model.py lacks (a newer version, an experiment) is refused in one line too."""
    ckpt = weights(run)
    ckpt["config"]["out_ring"] = True
    (tmp_path / "new").mkdir()
    torch.save(ckpt, tmp_path / "new" / "ckpt.pt")
    with pytest.raises(DataError, match="another model.py.*out_ring") as info:
        sample.main(["--run", str(tmp_path / "new"), "--frames", "2"])
    assert "\n" not in str(info.value)


def test_benchmark_runs_without_data(capsys):
    result = train.main(["--preset", "tiny", "--benchmark", "2", "--batch_size", "4", "--device", "cpu",
                         "--latent_height", "6", "--latent_width", "8"])
    assert result["samples_per_s"] > 0 and result["mfu"] is None  # no MFU on a CPU: no known peak
    assert "samples/s" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# Flags that cannot work: one line before any work, and the run already there is left as it was


@pytest.mark.parametrize("flag", [["--steps", "0"], ["--batch_size", "-4"], ["--lr", "-1"], ["--eval_every", "0"],
                                  ["--lr", "nan"], ["--motion", "maybe"], ["--dim", "abc"], ["--device", "cuda:99"],
                                  ["--seed", "100000000000000"], ["--seed", "-1"], ["--ema", "1.5"],
                                  ["--min_lr_ratio", "2"]])
def test_bad_flag_values_are_one_line_usage_errors(latents, tmp_path, capsys, flag):
    with pytest.raises(SystemExit):
        train.main(["--data", str(latents), *SMALL, "--run", str(tmp_path / "bad"), *flag])
    err = capsys.readouterr().err
    assert f"error: argument {flag[0]}" in err and not (tmp_path / "bad").exists()
    assert len(err.splitlines()) <= 3, err                                  # a short usage line, not every flag


@pytest.mark.parametrize("flags, message", [(["--heads", "3"], "does not split into --heads 3"),
                                            (["--patch_size", "5"], "--patch_size 5 x --ctx_pool 1 does not divide"),
                                            (["--rope", "true", "--dim", "36", "--heads", "2"], "divides by 4"),
                                            (["--action_dropout", "1.5"], "from 0 to 1"),
                                            (["--ctx_noise", "-0.5"], "--ctx_noise is a noise level .* 0 or above"),
                                            (["--rho", "0"], "--rho must be above 0"),
                                            (["--rho", "1e-9"], "--rho bends the sampling schedule"),
                                            (["--sigma_data", "1e-30"], "--sigma_data is the std of the data"),
                                            (["--warmup", "50", "--steps", "50"], "--warmup 50 is not below"),
                                            (["--sigma_max", "0.001"], "must be above --sigma_min 0.002"),
                                            (["--mlp_ratio", "0.001"], "leaves the MLP of --dim 64 no width"),
                                            (["--batch_size", "4", "--self_rollout", "0.1"],
                                             r"0.1 of a micro-batch of 4 windows rounds to none; .* at least 6,")])
def test_model_flags_that_do_not_fit_are_one_line_errors(latents, tmp_path, flags, message):
    with pytest.raises(DataError, match=message) as info:
        train.main(["--data", str(latents), *SMALL, "--run", str(tmp_path / "bad"), *flags])
    assert "\n" not in str(info.value) and not (tmp_path / "bad").exists()


def test_flags_given_at_their_default_count(latents, tmp_path):
    """--resume sees a flag given at argparse's default: --seed 0 on a run trained with --seed 1 is refused,
    and --preview_frames 45 on a run trained with 2 is honoured. The Config fields that come from the data
    are no flags (--latent_mean), or flags for --benchmark alone (--latent_height)."""
    run = tmp_path / "run"
    train.main(["--data", str(latents), *SMALL, "--steps", "2", "--eval_every", "2", "--seed", "1", "--run", str(run)])
    with pytest.raises(DataError, match="so --seed cannot change"):
        train.main(["--run", str(run), "--resume", "--seed", "0"])
    train.main(["--run", str(run), "--resume", "--steps", "4", "--preview_frames", "45"])
    assert Image.open(run / "preview_0000004.gif").n_frames == 45
    with pytest.raises(DataError, match="^--latent_height: the latents' shape .* from the data"):
        train.main(["--data", str(latents), *SMALL, "--latent_height", "6", "--run", str(tmp_path / "shape")])
    with pytest.raises(SystemExit):
        train.main(["--data", str(latents), *SMALL, "--latent_mean", "5", "--run", str(tmp_path / "mean")])
    assert not (tmp_path / "shape").exists() and not (tmp_path / "mean").exists()


def test_resume_refuses_what_it_would_ignore(run, tmp_path, capsys):
    """A run continues as it was trained: a model or data flag is refused, not silently dropped; a --steps
    below the run's step is an error; a finished run says how to extend it; a damaged ckpt.pt is one line."""
    before = weights(run)["step"]
    with pytest.raises(DataError, match="so --weight_decay, --dim cannot change; only --compile, --data, --device, "
                                        "--eval_every, --lr, --preview_frames, --steps can$"):
        train.main(["--run", str(run), "--resume", "--dim", "128", "--data", "elsewhere", "--weight_decay", "5",
                    "--preset", "tiny"])
    with pytest.raises(DataError, match=f"already at step {before}, past --steps 10"):
        train.main(["--run", str(run), "--resume", "--steps", "10"])
    train.main(["--run", str(run), "--resume", "--preset", "tiny"])  # the run's own preset: nothing changes
    assert f"already trained to step {before}" in capsys.readouterr().out and weights(run)["step"] == before
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "ckpt.pt").write_bytes((run / "ckpt.pt").read_bytes()[:5000])
    with pytest.raises(DataError, match="ckpt.pt cannot be read .* damaged") as info:
        train.main(["--run", str(damaged), "--resume"])
    assert "\n" not in str(info.value)
    (damaged / "ckpt.pt").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot be read \(an empty file\)"):
        train.main(["--run", str(damaged), "--resume"])


def test_data_that_moved_or_was_encoded_again(latents, tmp_path, monkeypatch):
    """A run finds its data from any working directory; data that moved is followed with --resume --data;
    the same folder encoded again with other held-out episodes is refused by --resume and by sample.py."""
    shutil.copytree(latents, tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    train.main(["--data", "a", *SMALL, "--steps", "2", "--eval_every", "2", "--run", str(run)])
    assert weights(run)["args"]["data"] == str(tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "b")
    with pytest.raises(DataError, match="which is not there any more; .* or pass --data with where it is now"):
        train.main(["--run", str(run), "--resume", "--steps", "4"])
    train.main(["--run", str(run), "--resume", "--steps", "4", "--data", "b"])
    assert weights(run)["step"] == 4 and weights(run)["args"]["data"] == str(tmp_path / "b")
    shutil.copytree(tmp_path / "b", tmp_path / "other")              # another recording: same names and lengths
    other = np.load(tmp_path / "other" / "latents.npy", mmap_mode="r+")
    other[0] += 1
    other.flush()
    with pytest.raises(DataError, match="is not the data .* was trained on: its episodes differ"):
        train.main(["--run", str(run), "--resume", "--steps", "6", "--data", "other"])
    old = weights(run)                                                # a checkpoint from before data_key
    del old["data"]
    torch.save(old, run / "ckpt.pt")
    with pytest.raises(DataError, match="saved before checkpoints recorded what their data is"):
        train.main(["--run", str(run), "--resume", "--steps", "6", "--data", "other"])
    train.main(["--run", str(run), "--resume", "--steps", "6", "--data", "b"])  # the same folder: fine
    assert weights(run)["step"] == 6
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    flipped = [{**e, "split": "val" if e["split"] == "train" else "train"} for e in meta["episodes"]]
    (tmp_path / "b" / "meta.json").write_text(json.dumps({**meta, "episodes": flipped}))
    for call in (lambda: train.main(["--run", str(run), "--resume", "--steps", "6"]),
                 lambda: sample.main(["--run", str(run), "--frames", "2"])):
        with pytest.raises(DataError, match="is not the data .* was trained on: its episodes differ"):
            call()


def test_run_folder_that_cannot_be_written_or_holds_an_old_log(latents, tmp_path):
    """Both refused before any training: not after the first validation, nor mixing two runs in one log."""
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot write to .*; pass a --run folder where you can write"):
        train.main(["--data", str(latents), *SMALL, "--steps", "2", "--run", str(tmp_path / "file" / "run")])
    old = tmp_path / "old"
    old.mkdir()
    (old / "log.csv").write_text("step,lr,train_loss,val_loss,samples_per_s,mfu,elapsed_s\n20,1e-3,1,1,1,,1\n")
    with pytest.raises(DataError, match="holds the log.csv of an earlier run but no checkpoint"):
        train.main(["--data", str(latents), *SMALL, "--steps", "2", "--run", str(old)])


def test_a_mistyped_data_is_said_before_the_run_folder_is_checked(run, latents):
    """Into a run folder that is taken, with --data mistyped: the typo is the first thing to fix."""
    with pytest.raises(DataError, match=f"{latents}x holds no encoded latents"):
        train.main(["--data", f"{latents}x", *SMALL, "--run", str(run)])
    with pytest.raises(DataError, match="already holds a run"):
        train.main(["--data", str(latents), *SMALL, "--run", str(run)])


def test_the_learning_rate_warms_up_then_follows_the_cosine_and_gradients_are_clipped(latents, tmp_path,
                                                                                       monkeypatch):
    """The rate each step used, against the formula: linear warmup to --lr, cosine down to lr * min_lr_ratio."""
    rates, clips, real_step, real_clip = [], [], torch.optim.AdamW.step, torch.nn.utils.clip_grad_norm_

    def step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    def clip(parameters, max_norm, *args, **kwargs):
        clips.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    train.main(["--data", str(latents), *SMALL, "--steps", "12", "--warmup", "4", "--lr", "1e-3",
                "--min_lr_ratio", "0.1", "--grad_clip", "0.25", "--run", str(tmp_path / "lr")])
    cosine = [1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (it - 4) / 8))) for it in range(4, 12)]
    assert rates == pytest.approx([1e-3 * (it + 1) / 4 for it in range(4)] + cosine, rel=1e-6)
    assert clips == [0.25] * 12


def test_resume_goes_on_averaging_the_saved_ema(run, tmp_path):
    """One step after a resume, the EMA is the saved EMA moved towards the new weights by the warmed-up decay
    (1 + step) / (10 + step): not restarted from the raw weights, not at the final decay."""
    longer = tmp_path / "longer"
    shutil.copytree(run, longer)
    before = weights(longer)
    train.main(["--run", str(longer), "--resume", "--steps", str(before["step"] + 1)])
    after, step = weights(longer), before["step"]
    d = (1 + step) / (10 + step)
    names = dict(train.WorldModel(train.config_from_checkpoint(before, run)).named_parameters())
    for name in names:
        expected = d * before["ema"][name] + (1 - d) * after["model"][name]
        assert torch.allclose(after["ema"][name], expected, atol=1e-6), name


def test_a_preset_warmup_longer_than_the_run_shrinks_to_fit(latents, tmp_path):
    train.main(["--data", str(latents), *SMALL, "--steps", "10", "--run", str(tmp_path / "short")])  # tiny: 20
    assert weights(tmp_path / "short")["args"]["warmup"] == 1


def test_resume_with_data_that_is_not_there_names_the_flag(run):
    with pytest.raises(DataError, match="--data /no/such/latents is not a folder"):
        train.main(["--run", str(run), "--resume", "--data", "/no/such/latents"])


def test_the_validation_loss_takes_the_same_windows_whatever_the_batch_size(latents, tmp_path, monkeypatch):
    sizes, get_batch = [], train.Windows.get_batch
    monkeypatch.setattr(train.Windows, "get_batch", lambda self, n, g: sizes.append(n) or get_batch(self, n, g))
    train.main(["--data", str(latents), *SMALL, "--steps", "1", "--batch_size", "4", "--run", str(tmp_path / "r")])
    assert sizes == [train.EVAL_BATCH]


def test_without_validation_episodes_the_loss_says_what_it_is(latents, tmp_path, capsys):
    alltrain = tmp_path / "alltrain"
    shutil.copytree(latents, alltrain)
    meta = json.loads((alltrain / "meta.json").read_text())
    meta["episodes"] = [{**e, "split": "train"} for e in meta["episodes"]]
    (alltrain / "meta.json").write_text(json.dumps(meta))
    train.main(["--data", str(alltrain), *SMALL, "--steps", "1", "--run", str(tmp_path / "r")])
    assert "holds no validation episode" in capsys.readouterr().err


def test_under_torchrun_errors_name_their_rank_and_flags_and_the_benchmark_are_said_once(latents, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    def torchrun(*flags):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "train.py", *SMALL, *flags], cwd=HERE, capture_output=True, text=True, env=env,
                              timeout=300)
    p = torchrun("--data", str(latents), "--run_dir", str(tmp_path / "r"), "--heads", "3")
    assert p.returncode != 0 and p.stderr.count("error: --dim 64 does not split into --heads 3") == 1 \
        and p.stderr.count("error (rank 1): --dim 64 does not split") == 1, p.stderr[-3000:]  # each rank its own
    p = torchrun("--data", str(latents), "--seed", "-1")                     # the same flags on every rank
    assert p.returncode != 0 and p.stderr.count("error: argument --seed") == 1, p.stderr[-3000:]
    p = torchrun("--benchmark", "1", "--batch_size", "4", "--latent_height", "6", "--latent_width", "8")
    assert p.returncode == 0 and p.stdout.count("samples/s") == 1, p.stdout + p.stderr[-3000:]


def test_resume_may_not_shorten_a_run_into_its_warmup(latents, tmp_path):
    run = tmp_path / "run"
    train.main(["--data", str(latents), *SMALL, "--steps", "2", "--eval_every", "2", "--run", str(run)])
    ckpt = weights(run)
    ckpt["args"].update(steps=10, warmup=5)                                  # as if stopped at step 2 of 10
    torch.save(ckpt, run / "ckpt.pt")
    with pytest.raises(DataError, match="--steps 4 is not above the run's --warmup 5"):
        train.main(["--run", str(run), "--resume", "--steps", "4"])
    ckpt["args"].update(steps=4)                                             # trained so before warmups shrank
    torch.save(ckpt, run / "ckpt.pt")
    train.main(["--run", str(run), "--resume"])                              # goes on as it was trained
    assert weights(run)["step"] == 4


def test_a_checkpoint_whose_sigma_min_also_labelled_the_context_noise_is_refused(run, tmp_path):
    """Before CTX_SIGMA_EPS, sigma_min was added to the context's noise level: a run trained with another
    sigma_min would now see other labels."""
    ckpt = weights(run)
    assert ckpt["ctx_sigma_eps"] == model.CTX_SIGMA_EPS
    ckpt["config"]["sigma_min"] = 0.01
    assert train.config_from_checkpoint(ckpt, run).sigma_min == 0.01        # written since: fine
    del ckpt["ctx_sigma_eps"]
    with pytest.raises(DataError, match="trained with --sigma_min 0.01 and records no ctx_sigma_eps"):
        train.config_from_checkpoint(ckpt, run)


# -----------------------------------------------------------------------------
# What validation scores, how the actions are scaled, which weights decay, and what a blow-up stops


class Enough(Exception):
    """Raised by stop_at once main() has built what a test looks at: no training needed after that."""


def stop_at(seen):
    """A stand-in for a class main() builds: it keeps the first argument it is given, then stops main()."""
    def stand_in(first, *args, **kwargs):
        seen.append(first)
        raise Enough
    return stand_in


def test_the_validation_loss_is_the_emas_mean_over_eval_batches(latents, tmp_path, monkeypatch):
    """The logged val_loss is the EMA weights' loss (the weights that sample), averaged over --eval_batches
    batches of EVAL_BATCH windows. Catches validation on the raw model, and an --eval_batches left unread."""
    scored, real = [], train.diffusion_loss

    def spy(m, x, ctx, act):
        loss = real(m, x, ctx, act)
        if not torch.is_grad_enabled():                                       # evaluate(), not a training step
            scored.append((m, loss.item() * len(x), len(x)))
        return loss

    monkeypatch.setattr(train, "diffusion_loss", spy)
    run = tmp_path / "r"
    train.main(["--data", str(latents), *SMALL, "--steps", "2", "--eval_every", "2", "--eval_batches", "2",
                "--batch_size", "8", "--run", str(run)])
    ckpt = weights(run)
    assert sum(n for _, _, n in scored) == 2 * train.EVAL_BATCH                # one evaluation, 2 batches
    assert len({id(m) for m, _, _ in scored}) == 1
    assert any(not torch.equal(ckpt["model"][k], ckpt["ema"][k]) for k in ckpt["ema"])   # they do differ
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in scored[0][0].state_dict().items()), "not the EMA"
    val_loss = float((run / "log.csv").read_text().splitlines()[-1].split(",")[3])
    assert val_loss == pytest.approx(sum(s for _, s, _ in scored) / (2 * train.EVAL_BATCH), abs=1e-5)


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_non_finite_loss_or_gradient_stops_before_the_weights_change(latents, tmp_path, monkeypatch, what):
    """At the third step the loss becomes NaN, or stays finite with a NaN gradient: the run stops at that step
    with the weights of the step before (those of the last checkpoint), not one step later when the weights
    are NaN. Catches a check on the loss or the gradient norm removed (the weights check would stop it later)."""
    trained, real = [], train.diffusion_loss

    def spy(m, x, ctx, act):
        loss = real(m, x, ctx, act)
        if torch.is_grad_enabled():
            trained.append(m)
            if len(trained) == 3 and what == "loss":
                loss = loss * float("nan")
            if len(trained) == 3 and what == "gradient":               # + sqrt(0): 0, with the gradient 0/0
                loss = loss + torch.sqrt(m.out.bias.sum() * 0)
        return loss

    monkeypatch.setattr(train, "diffusion_loss", spy)
    run = tmp_path / "run"
    became = "nan" if what == "loss" else r"\d[\d.e+-]*"
    with pytest.raises(DataError, match=rf"^the loss became {became} \(gradient norm nan\) at step 2, and the "
                                        r"weights were not updated; .*ckpt.pt holds the weights that gave it"):
        train.main(["--data", str(latents), *SMALL, "--steps", "4", "--eval_every", "2", "--run", str(run)])
    kept = weights(run)
    assert kept["step"] == 2
    assert all(torch.equal(v, kept["model"][k]) for k, v in trained[-1].state_dict().items()), "weights moved"


def test_weights_that_became_non_finite_stop_the_run_before_they_are_saved(latents, tmp_path, monkeypatch):
    """An optimizer step that leaves inf in the weights (an overflow): the next validation stops the run and
    the checkpoint keeps the step before. Catches the weights check removed (the inf weights saved)."""
    steps, real_step = [], torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps.append(self)
        if len(steps) == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"^the weights became NaN or inf by step 2; .*keeps the last good weights"):
        train.main(["--data", str(latents), *SMALL, "--steps", "4", "--eval_every", "1", "--run", str(run)])
    kept = weights(run)
    assert kept["step"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_the_actions_are_scaled_by_the_std_of_the_training_rows_alone(latents, tmp_path, monkeypatch):
    """Config.action_scale is each input column's std over the training episodes (1 for a constant column):
    the validation episodes, here with inputs 10x as large, must not leak into it."""
    data, actions, meta = load_latents(latents)
    rows = {s: np.concatenate([np.arange(e["start"], e["start"] + e["length"]) for e in meta["episodes"]
                               if e["split"] == s]) for s in ("train", "val")}
    loud = actions.copy()
    loud[rows["val"]] *= 10
    monkeypatch.setattr(train, "load_latents", lambda folder: (data, loud, meta))
    configs = []
    monkeypatch.setattr(train, "WorldModel", stop_at(configs))
    with pytest.raises(Enough):
        train.main(["--data", str(latents), *SMALL, "--run", str(tmp_path / "r")])
    std = actions[rows["train"]].std(axis=0)
    assert (std > 1e-6).sum() >= 2                                       # columns that move in the recording
    assert configs[0].action_scale == pytest.approx([s if s > 1e-6 else 1.0 for s in std], rel=1e-5)
    everything = loud.std(axis=0)
    assert all(abs(a - b) > 0.1 * b for a, b in zip(everything, std) if b > 1e-6)   # a leak would show


def test_weight_decay_spares_biases_norms_and_embeddings(latents, tmp_path, monkeypatch):
    """AdamW gets two groups: --weight_decay on the weights of the linear and convolution layers, none on
    biases, norms, the position and frame embeddings and null_action. Catches decay on all or on none."""
    models, groups, WorldModel = [], [], train.WorldModel
    monkeypatch.setattr(train, "WorldModel", lambda cfg: models.append(WorldModel(cfg)) or models[-1])
    monkeypatch.setattr(torch.optim, "AdamW", stop_at(groups))            # the list of parameter groups
    with pytest.raises(Enough):
        train.main(["--data", str(latents), *SMALL, "--weight_decay", "0.05", "--run", str(tmp_path / "r")])
    names = {id(p): n for n, p in models[0].named_parameters()}
    decay = {wd: {names[id(p)] for g in groups[0] if g["weight_decay"] == wd for p in g["params"]} for wd in (0.05, 0)}
    layers = {f"{n}.weight" for n, m in models[0].named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert decay[0.05] == layers
    assert decay[0] == set(names.values()) - layers
    assert {"row", "col", "ctx_row", "ctx_col", "frame", "null_action", "ctx_norm.weight", "out.bias"} <= decay[0]
    assert sum(len(g["params"]) for g in groups[0]) == len(names)             # each parameter in one group


# -----------------------------------------------------------------------------
# What a config-space fuzz found: tracebacks and a lost checkpoint


def test_a_non_finite_validation_loss_keeps_the_checkpoint_before(latents, tmp_path, monkeypatch):
    """Weights that are finite but too large to use give a NaN validation loss: that must not overwrite the
    last good checkpoint (it did, and the message then said the checkpoint kept the good weights)."""
    steps, real = [], train.diffusion_loss

    def spy(m, x, ctx, act):
        loss = real(m, x, ctx, act)
        if torch.is_grad_enabled():
            steps.append(1)
        elif len(steps) > 2:                                              # the validation after step 2
            return loss * float("nan")
        return loss

    monkeypatch.setattr(train, "diffusion_loss", spy)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"^the validation loss became nan at step 4; .*ckpt.pt keeps the last good"):
        train.main(["--data", str(latents), *SMALL, "--steps", "6", "--eval_every", "2", "--run", str(run)])
    assert weights(run)["step"] == 2


def test_a_nan_loss_before_any_update_blames_the_data_or_settings_not_the_learning_rate(latents, tmp_path,
                                                                                       monkeypatch):
    data, actions, meta = load_latents(latents)
    broken = np.full_like(data, np.nan)                                   # e.g. a damaged latents.npy
    monkeypatch.setattr(train, "load_latents", lambda folder: (broken, actions, meta))
    with pytest.raises(DataError, match=r"^the loss became nan .* at step 0, the first step, before any "
                                        r"update, so the data or the settings are at fault, not --lr") as info:
        train.main(["--data", str(latents), *SMALL, "--steps", "2", "--run", str(tmp_path / "r")])
    assert "lower learning rate" not in str(info.value)
    for value in (np.nan, -np.inf):                                       # a damaged actions.npy: named first
        damaged = actions.copy()
        damaged[3, 0] = value
        monkeypatch.setattr(train, "load_latents", lambda folder: (data, damaged, meta))
        with pytest.raises(DataError, match=rf"^input 'w' is {value} in actions.npy in episode ep000 \(row 3 of "
                                            rf"its inputs.csv\), where inputs.csv cannot put one: the latents folder"):
            train.main(["--data", str(latents), *SMALL, "--steps", "2", "--run", str(tmp_path / "r")])
    monkeypatch.setattr(train, "load_latents", lambda folder: (data, actions, {**meta, "latent_std": 0.0}))
    with pytest.raises(DataError, match=r"do not vary \(std 0\): every frame is the same"):
        train.main(["--data", str(latents), *SMALL, "--steps", "2", "--run", str(tmp_path / "r")])
    held_out = [{**e, "split": "val"} for e in meta["episodes"]]
    monkeypatch.setattr(train, "load_latents", lambda folder: (data, actions, {**meta, "episodes": held_out}))
    with pytest.raises(DataError, match=r"holds no training episode"):
        train.main(["--data", str(latents), *SMALL, "--steps", "2", "--run", str(tmp_path / "r")])


def test_latents_too_small_for_the_motion_are_a_one_line_error():
    """TAESD latents of a 64x8 frame are 1 position tall: the motion, at half resolution, has nothing left."""
    with pytest.raises(DataError, match=r"the latents are 1x8 positions, too small for the motion"):
        train.main(["--benchmark", "1", "--preset", "tiny", "--latent_height", "1", "--latent_width", "8"])


def test_a_run_that_is_a_file_or_a_ckpt_that_is_not_a_checkpoint(run, latents, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"--run .*file is a file, not a folder"):
        train.main(["--data", str(latents), *SMALL, "--steps", "2", "--run", str(tmp_path / "file")])
    bad = tmp_path / "bad"
    bad.mkdir()
    for junk in ("hello", "\x80\x02"):                                     # KeyError 101; EOFError('')
        (bad / "ckpt.pt").write_text(junk, encoding="latin-1")
        for load in (lambda: train.main(["--run", str(bad), "--resume", "--steps", "9"]),
                     lambda: sample.main(["--run", str(bad)])):
            with pytest.raises(DataError, match=r"ckpt.pt cannot be read"):
                load()
    for what in ({"foo": 1}, [1, 2], {**weights(run), "config": 3}):
        torch.save(what, bad / "ckpt.pt")
        with pytest.raises(DataError, match=r"ckpt.pt is not a checkpoint that train.py wrote \(it holds (a list|no )"):
            train.main(["--run", str(bad), "--resume", "--steps", "9"])
    ckpt = weights(run)
    ckpt["ema"] = {k: v[..., :1] if v.dim() else v for k, v in ckpt["ema"].items()}   # another shape
    torch.save(ckpt, bad / "ckpt.pt")
    for load in (lambda: train.main(["--run", str(bad), "--resume", "--steps", "99"]),
                 lambda: sample.main(["--run", str(bad)])):
        with pytest.raises(DataError, match=r"ckpt.pt holds weights that do not fit its own config"):
            load()


def test_a_nan_loss_on_the_step_right_after_the_checkpoint_does_not_advise_resuming(latents, tmp_path, monkeypatch):
    """The batch and noise of a step are fixed by --seed and the step, and --lr acts only after the loss: a loss
    that blew up on the checkpoint's own weights blows up again on resume, whatever the --lr."""
    run = tmp_path / "run"
    train.main(["--data", str(latents), *SMALL, "--steps", "2", "--eval_every", "2", "--run", str(run)])
    real = train.diffusion_loss
    monkeypatch.setattr(train, "diffusion_loss", lambda *args: real(*args) * float("nan"))
    with pytest.raises(DataError, match=r"at step 2, and the weights were not updated; .*ckpt.pt holds the weights "
                                        r"that gave it on this step's batch, so resuming cannot help; train again"):
        train.main(["--run", str(run), "--resume", "--steps", "4"])
    assert weights(run)["step"] == 2


def test_a_ckpt_that_is_a_folder_and_a_weight_decay_that_flips_the_weights(latents, tmp_path):
    (tmp_path / "r" / "ckpt.pt").mkdir(parents=True)
    for load in (lambda: train.main(["--run", str(tmp_path / "r"), "--resume", "--steps", "9"]),
                 lambda: sample.main(["--run", str(tmp_path / "r")])):
        with pytest.raises(DataError, match=r"ckpt.pt is a folder, not a checkpoint file; move it out of the way"):
            load()
    with pytest.raises(DataError, match=r"--weight_decay 200 x --lr 0.005 is 1, so every step would zero or flip"):
        train.main(["--data", str(latents), *SMALL, "--steps", "2", "--lr", "0.005", "--weight_decay", "200",
                    "--run", str(tmp_path / "wd")])
    assert not (tmp_path / "wd" / "ckpt.pt").exists()


def test_an_input_far_out_of_its_spread_is_named_before_training(latents, tmp_path):
    """1e30 in a training episode made float32's std of its column inf, and in a held-out episode it overflows
    the model: either was met by a NaN loss blamed on the weights. Now the value is named, with its episode
    and inputs.csv row; large inputs that are all alike train."""
    copy = tmp_path / "latents"
    shutil.copytree(latents, copy)
    meta = json.loads((copy / "meta.json").read_text())
    actions = np.load(copy / "actions.npy")
    dx = meta["actions"].index("mouse_dx")
    for e in meta["episodes"]:
        bad = actions.copy()
        bad[e["start"] + 7, dx] = 1e30
        np.save(copy / "actions.npy", bad)
        why = "over 1e\\+06 times its spread in the training episodes" if e["split"] == "val" else \
            "too large to take the spread of its column"
        with pytest.raises(DataError, match=rf"^input 'mouse_dx' is 1e\+30 in episode {e['name']} \(row 7 of its "
                                            rf"inputs.csv\), {why}: fix the value"):
            train.main(["--data", str(copy), *SMALL, "--steps", "2", "--run", str(tmp_path / e["name"])])
    bad = actions.copy()
    bad[:, dx] *= 1e5
    np.save(copy / "actions.npy", bad)
    train.main(["--data", str(copy), *SMALL, "--steps", "2", "--run", str(tmp_path / "large")])
    assert weights(tmp_path / "large")["config"]["action_scale"][dx] == pytest.approx(1e5 * actions[:, dx].std(),
                                                                                        rel=0.1)


def test_under_torchrun_a_nan_validation_loss_stops_every_rank_with_one_line(latents, tmp_path):
    """Rank 0 alone validates. A NaN there stopped rank 0 alone, and rank 1 died in the next all-reduce with a
    'Connection closed by peer' traceback; rank 0 now shares the loss, so both stop with the one-line error, and
    the checkpoint of the step before is kept. The script runs train.py as `python train.py` does, with the loss
    made NaN in the validations after step 2 (train.py imports diffusion_loss from the patched model module)."""
    script = tmp_path / "nan_validation.py"
    script.write_text(f"""import runpy, sys
sys.path.insert(0, {str(HERE)!r})
import model, torch
real = model.diffusion_loss
steps = []
def spy(*args):
    loss = real(*args)
    steps.append(torch.is_grad_enabled())
    return loss * float("nan") if not torch.is_grad_enabled() and sum(steps) > 2 else loss
model.diffusion_loss = spy
sys.argv[0] = {str(HERE / "train.py")!r}
runpy.run_path(sys.argv[0], run_name="__main__")
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), "--data", str(latents), *SMALL, "--steps", "6", "--eval_every", "2",
                        "--batch_size", "8", "--run_dir", str(tmp_path / "run")],
                       cwd=HERE, capture_output=True, text=True, env=env, timeout=300)
    # not line by line: the two ranks write to one stderr at the same moment
    errors = re.findall(r"error(?: \(rank \d\))?: the validation loss became nan at step 4; ", p.stderr)
    assert p.returncode != 0 and "Connection closed" not in p.stderr, p.stderr[-3000:]
    assert "error: the validation loss became nan at step 4; " in errors, p.stderr[-3000:]
    # rank 1 says the same, unless torchrun, which ends the other ranks once one has exited, was first
    assert "error (rank 1): the validation loss became nan at step 4; " in errors or \
        "Signal 15 (SIGTERM) received" in p.stderr, p.stderr[-3000:]
    assert weights(tmp_path / "run")["step"] == 2
