"""
Training on the CPU: the pipeline's run, its guarantees (resume after Ctrl-C or kill -9 lands on the weights of
a run never stopped; torchrun with 2 processes trains like one with 2 accumulated micro-batches), the data's
windows, the learning rate, a NaN loss, the benchmark, and the one-line errors of train.py.

    python -m pytest -q test_train.py
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import train
from conftest import HERE, TINY, cli
from encode import load_latents
from model import load_run, make_config


def ckpt(run):
    return torch.load(run / "ckpt.pt", weights_only=True)  # tensors and plain types: no pickled code


def same_weights(a, b, atol=1e-6):
    return all(torch.allclose(a[w][k], b[w][k], atol=atol) for w in ("model", "ema") for k in a[w])


def test_training_writes_checkpoint_log_and_previews(run):
    saved = ckpt(run)
    assert saved["step"] == 40 and {"model", "ema", "optimizer", "config", "args"} <= set(saved)
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and [r.split(",")[0] for r in log[1:]] == ["10", "20", "30", "40"]
    val = [float(r.split(",")[3]) for r in log[1:]]
    assert val[-1] < val[0], val                                        # the loop descends the loss
    assert Image.open(run / "preview_0000040.gif").n_frames == 8
    model, _ = load_run(run)                                            # rebuilt from the stored config alone
    assert all(torch.equal(p, saved["ema"][k]) for k, p in model.state_dict().items())


def test_ctrl_c_and_kill_minus_9_lose_nothing_and_resume_lands_where_an_unstopped_run_does(latents, tmp_path):
    """A run stopped by Ctrl-C saves the step it is at and says so; resumed, then killed with SIGKILL after its
    next checkpoint (leaving a half-written checkpoint behind), then resumed again, it ends on the weights, EMA
    and logged loss of a run never stopped. Fresh processes all: the same thread pool sums in the same order."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    short = [*TINY, "--steps", "20", "--eval_every", "5", "--preview_frames", "2"]
    cli("train.py", "--data", latents, "--run", straight, *short, check=True)

    def start(*args):
        return subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=HERE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def wait_for_rows(n, proc):  # until log.csv has n validation rows
        deadline = time.time() + 120
        while not (stopped / "log.csv").exists() or len((stopped / "log.csv").read_text().splitlines()) <= n:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.05)

    proc = start("--data", latents, "--run", stopped, *short)
    wait_for_rows(1, proc)
    proc.send_signal(signal.SIGINT)
    message = proc.communicate(timeout=120)[1].strip().splitlines()[-1]
    at = ckpt(stopped)["step"]
    assert 5 <= at < 20 and message == f"stopped at step {at}, which {stopped}/ckpt.pt holds: continue with " \
                                        f"`python train.py --run {stopped} --resume`"
    proc = start("--run", stopped, "--resume")
    wait_for_rows(2 + (at % 5 > 0), proc)
    proc.kill()
    proc.wait()
    (stopped / "ckpt.pt.tmp").write_bytes(b"half a checkpoint")
    cli("train.py", "--run", stopped, "--resume", check=True)
    resumed, reference = ckpt(stopped), ckpt(straight)
    assert resumed["step"] == 20 and same_weights(resumed, reference)
    rows = [line.split(",") for line in (stopped / "log.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows][-1] == "20" and float(rows[-1][2]) == pytest.approx(reference["running"], rel=1e-4)


def test_torchrun_two_processes_train_like_one_with_two_micro_batches(latents, tmp_path):
    common = ["--data", latents, "--preset", "tiny", "--eval_batches", "1", "--preview_frames", "2", "--steps", "6",
              "--eval_every", "3", "--batch_size", "8", "--device", "cpu"]
    p = cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *common,
            "--run_dir", tmp_path / "ddp")
    assert p.returncode == 0, p.stderr[-3000:]
    cli("train.py", *common, "--grad_accum", "2", "--run", tmp_path / "single", check=True)
    ddp, single = ckpt(tmp_path / "ddp"), ckpt(tmp_path / "single")
    assert ddp["step"] == single["step"] == 6 and same_weights(ddp, single, atol=1e-5)


def test_resume_extends_a_run_and_refuses_what_it_would_ignore_or_other_data(run, latents, tmp_path):
    longer = tmp_path / "longer"
    shutil.copytree(run, longer)
    for flags, message in ((["--dim", "128"], "--dim cannot change"), (["--batch_size", "4"], "--batch_size"),
                           (["--data", tmp_path], "holds no encoded latents")):
        with pytest.raises(SystemExit, match=message):
            train.main(["--run", str(longer), "--resume", *map(str, flags)])
    other = tmp_path / "other"
    shutil.copytree(latents, other)
    actions = np.load(other / "actions.npy")
    np.save(other / "actions.npy", actions[::-1].copy())                  # the same episodes, other inputs
    with pytest.raises(SystemExit, match="is not the data"):
        train.main(["--run", str(longer), "--resume", "--data", str(other)])
    before = ckpt(longer)
    train.main(["--run", str(longer), "--resume", "--steps", "41", "--dim", "64"])  # the trained value: fine
    after, d = ckpt(longer), (1 + 40) / (10 + 40)
    assert after["step"] == 41 and (longer / "log.csv").read_text().splitlines()[-1].startswith("41,")
    for name, value in after["ema"].items():  # the EMA goes on from the saved one, at its warmed-up decay
        assert torch.allclose(value, d * before["ema"][name] + (1 - d) * after["model"][name], atol=1e-6), name


def test_windows_pair_each_context_frame_with_the_action_after_it(latents):
    """Row i of inputs.csv leads from frame i to i+1: a window's actions are those of its context frames, the
    last one leading to the frame to predict. Latents and actions are replaced by their row numbers."""
    data, actions, meta = load_latents(latents)
    numbered = torch.arange(len(data), dtype=torch.float32)[:, None, None, None].expand(-1, *data.shape[1:])
    rows = torch.arange(len(data), dtype=torch.float32)[:, None].expand(-1, actions.shape[1])
    cfg, cpu = make_config("tiny"), torch.device("cpu")                   # latent_mean 0, std 1: normalize = x 0.5
    windows = train.Windows(numbered, rows, meta, "train", cfg, cpu)
    x, ctx, act = windows.batch(windows.draw(16, torch.Generator().manual_seed(0)))
    target = x[:, 0, 0, 0] / cfg.sigma_data                               # the row of the frame to predict
    assert torch.equal(ctx[:, :, 0, 0, 0] / cfg.sigma_data, target[:, None] + torch.arange(-cfg.context, 0))
    assert torch.equal(act[:, :, 0], ctx[:, :, 0, 0, 0] / cfg.sigma_data)


def test_memory_mapped_data_streams_the_windows_of_the_on_device_data(latents, tmp_path, monkeypatch):
    """Data too big for the device stays memory-mapped and is read one micro-batch ahead by a thread: the same
    weights after a run, and a stream started at step k continues the one started at 0 (what --resume needs)."""
    common = ["--data", str(latents), *TINY[:2], "--steps", "4", "--eval_every", "4", "--batch_size", "4"]
    train.main([*common, "--run", str(tmp_path / "on_device")])
    monkeypatch.setattr(train, "MAX_ON_DEVICE", 0)
    train.main([*common, "--run", str(tmp_path / "mapped")])
    assert same_weights(ckpt(tmp_path / "mapped"), ckpt(tmp_path / "on_device"), atol=0)
    data, actions, meta = load_latents(latents)
    windows = train.Windows(data, torch.from_numpy(actions), meta, "train", make_config("tiny"), torch.device("cpu"))
    a, b = (windows.stream(4, seed=0, step=step, first=1, per_step=2) for step in (0, 3))
    for _ in range(6):  # steps 0 to 2 of a
        next(a)
    assert all(torch.equal(u, v) for _ in range(4) for u, v in zip(next(a), next(b)))


def test_the_learning_rate_warms_up_then_follows_the_cosine(latents, tmp_path, monkeypatch):
    rates, real_step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a: rates.append(self.param_groups[0]["lr"])
                        or real_step(self, *a))
    train.main(["--data", str(latents), *TINY, "--steps", "12", "--warmup", "4", "--lr", "1e-3", "--run",
                str(tmp_path / "lr")])
    cosine = [1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (it - 4) / 8))) for it in range(4, 12)]
    assert rates == pytest.approx([1e-3 * (it + 1) / 4 for it in range(4)] + cosine, rel=1e-6)


def test_a_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(run, tmp_path, monkeypatch):
    nan_run = tmp_path / "nan"
    shutil.copytree(run, nan_run)
    good = ckpt(nan_run)
    real = train.diffusion_loss
    monkeypatch.setattr(train, "diffusion_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(SystemExit, match=r"the loss became nan at step 40; go on from the last checkpoint with a lower "
                                         r"learning rate, .*--resume --lr 0.00033`"):
        train.main(["--run", str(nan_run), "--resume", "--steps", "45"])
    assert same_weights(ckpt(nan_run), good, atol=0)


def test_benchmark_runs_without_data(capsys):
    """What a GPU owner runs (README, Speed), on the CPU and small: training samples/s, MFU, memory, rollout."""
    result = train.main(["--preset", "tiny", "--benchmark", "2", "--batch_size", "4", "--patch_size", "4"])
    assert result["samples_per_s"] > 0 and result["mfu"] is None           # no MFU on a CPU: no known peak
    assert result["rollout_fps"] > 0 and "GFLOP/sample" in capsys.readouterr().out


def test_one_line_errors(run, latents, tmp_path):
    for args, message in ((["--run", str(tmp_path / "new")], "--data is required"),
                          (["--data", str(latents.parent)], f"pass {latents}\\?"),
                          (["--data", str(latents), "--run", str(run)], "already holds a run; pass --resume"),
                          (["--run", str(tmp_path), "--resume"], "has no checkpoint"),
                          (["--data", str(latents), "--batch_size", "7", "--grad_accum", "2"], "equal micro-batches")):
        with pytest.raises(SystemExit, match=message):
            train.main(args)
    p = cli("train.py", "--data", latents, "--motion", "maybe")           # argparse: its usage line and the error
    assert p.returncode == 2 and p.stderr.splitlines()[-1].endswith("invalid choice: 'maybe' (choose from True, False)")
    assert len(p.stderr.splitlines()) == 2, p.stderr


def test_compile_trains_and_samples_as_eager_does_and_never_recompiles(latents, tmp_path, monkeypatch):
    """--compile on the CPU (inductor, which needs a C compiler): the losses of eager training, and not one
    recompilation in training or in sampling (torch._dynamo raises on one here)."""
    import torch._dynamo

    import sample
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    common = ["--data", str(latents), *TINY, "--steps", "4", "--eval_every", "2", "--batch_size", "4"]
    train.main([*common, "--run", str(tmp_path / "eager")])
    train.main([*common, "--run", str(tmp_path / "compiled"), "--compile"])
    losses = [[float(row.split(",")[2]) for row in (tmp_path / run / "log.csv").read_text().splitlines()[1:]]
              for run in ("eager", "compiled")]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    torch._dynamo.reset()  # sampling is another process's work: its graphs (no gradients) start a cache of their own
    frames = [sample.dream(sample.Dreamer(tmp_path / "compiled", steps=2, compile=compile), None, 0, 3, "none")[0]
              for compile in (False, True)]
    assert np.abs(frames[0].astype(int) - frames[1]).max() <= 2            # the same frames, up to rounding
