"""
The whole pipeline on a short Doom recording: record -> encode -> train -> sample, plus resume after a
kill and the one-line errors that bad input gets. About a minute on 2 CPU cores.

    python -m pytest -q test_pipeline.py
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample
import train
from encode import Autoencoder, encode_dataset, load_latents
from record import DataError, read_frames, read_inputs, record_doom
from conftest import TINY
from sample import psnr

HERE = Path(__file__).resolve().parent
TAESD = HERE.parent / "shared" / "weights" / "taesd"


def cli(*args, env=None):
    """Run one of the scripts as a user would; returns (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, *map(str, args)], cwd=HERE, capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=300)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(result, *words):
    code, _, err = result
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), err
    for w in words:
        assert w in lines[0], lines[0]


# -----------------------------------------------------------------------------
# encode


def test_pixels_round_trip_is_exact(dataset, latents):
    z, actions, meta = load_latents(latents)
    assert meta["latent_shape"] == [192, 6, 8] and z.dtype == np.float16 and len(z) == 160
    assert [e["split"] for e in meta["episodes"]] == ["train", "val"]  # whole episodes held out
    frames = read_frames(dataset / "ep001")
    start = meta["episodes"][1]["start"]
    decoded = Autoencoder("pixels").decode(z[start:start + len(frames)].astype(np.float32)).numpy()
    assert np.array_equal(decoded, frames)
    assert actions.shape == (160, 10) and np.abs(actions[:, -2]).sum() > 0  # the turns made it through
    assert np.array_equal(actions[start:start + len(frames)], read_inputs(dataset / "ep001")[1])  # row i: frame i


@pytest.mark.skipif(not TAESD.is_dir(), reason=f"the pretrained TAESD weights are not at {TAESD}")
def test_taesd_round_trip_on_doom_frames(dataset):
    frames = read_frames(dataset / "ep000")[::4]
    ae = Autoencoder(str(TAESD))
    z = ae.encode(frames)
    assert z.shape == (len(frames), 4, 6, 8)
    decoded = ae.decode(z).numpy()
    assert psnr(decoded, frames).mean() > 18                          # the bar; TAESD gives about 28
    # and it is the picture, the right way round: not its mean colour, its channels swapped, or it upside down
    flat = np.broadcast_to(frames.mean(axis=(1, 2), keepdims=True), frames.shape).round().astype(np.uint8)
    for wrong in (flat, decoded[..., ::-1], decoded[:, ::-1]):
        assert psnr(decoded, frames).mean() > psnr(wrong, frames).mean() + 1


def test_encode_refuses_to_overwrite(dataset, latents, tmp_path):
    with pytest.raises(DataError, match="already holds encoded latents; delete it or pass another --out"):
        encode_dataset(dataset, "pixels")
    more = tmp_path / "more"                                         # a session recorded since
    shutil.copytree(dataset, more, ignore=shutil.ignore_patterns("latents-*"))
    shutil.copytree(latents, more / latents.name)
    shutil.copytree(more / "ep001", more / "ep002")
    shutil.copytree(more / "ep001", more / "ep003")                  # and one encoded before is gone: 3 now
    shutil.rmtree(more / "ep001")
    with pytest.raises(DataError, match=r"of 2 episodes, and .* has 2 more since \(ep002, ep003\): to train on all 3, "
                                        r"encode them into a new --out, such as .*latents-pixels-3 \(runs"):
        encode_dataset(more, "pixels")
    encode_dataset(more, "pixels", more / "latents-pixels-3")
    with pytest.raises(DataError, match=r"into a new --out \(runs trained on"):  # not one that is taken
        encode_dataset(more, "pixels")
    (more / latents.name / "meta.json").write_text('{"episodes": [')    # damaged: refused all the same
    with pytest.raises(DataError, match="already holds encoded latents; delete it or pass another --out"):
        encode_dataset(more, "pixels")


# -----------------------------------------------------------------------------
# train and sample


def test_training_writes_checkpoint_log_and_previews(run):
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 40 and {"model", "ema", "optimizer", "config", "args"} <= set(ckpt)
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and [r.split(",")[0] for r in log[1:]] == ["10", "20", "30", "40"]
    val = [float(r.split(",")[3]) for r in log[1:]]
    assert val[-1] < val[0], val                                    # the loop descends the loss
    for step in (10, 40):
        gif = Image.open(run / f"preview_{step:07d}.gif")
        assert gif.n_frames == 8


def test_resume_after_a_kill_matches_an_uninterrupted_run(latents, tmp_path):
    """SIGKILL a training run after its first checkpoint; --resume must land on the very same weights. Every
    run is a fresh process: torch's thread pool, once resized (test_encode.py does), sums in another order, and
    Adam turns that 1e-9 noise into 1e-6 steps on the attention's key bias, which gets no real gradient."""
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    subprocess.run([sys.executable, "train.py", "--data", str(latents), "--run", str(straight), *TINY], cwd=HERE,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, "train.py", "--data", str(latents), "--run", str(killed), *TINY],
                            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "log.csv").exists() or len((killed / "log.csv").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= torch.load(killed / "ckpt.pt", weights_only=True)["step"] < 40
    subprocess.run([sys.executable, "train.py", "--run", str(killed), "--resume"], cwd=HERE, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = torch.load(killed / "ckpt.pt", weights_only=True)
    straight = torch.load(straight / "ckpt.pt", weights_only=True)
    assert resumed["step"] == 40
    for weights in ("model", "ema"):                                # the EMA, which sampling uses, too
        for name, value in straight[weights].items():
            assert torch.allclose(resumed[weights][name], value, atol=1e-6), (weights, name)
    logs = [(r / "log.csv").read_text().splitlines() for r in (killed, tmp_path / "straight")]
    final = [float(log[-1].split(",")[2]) for log in logs]
    assert final[0] == pytest.approx(final[1], rel=1e-4)  # the logged train loss goes on from where it was


def test_ctrl_c_saves_the_step_it_is_at_and_resume_matches_an_uninterrupted_run(latents, tmp_path):
    """Ctrl-C (SIGINT) mid-run finishes the step, saves it and stops with one line; --resume then lands on the
    weights of a run never stopped, and log.csv holds each validation once, its elapsed_s counting on."""
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    subprocess.run([sys.executable, "train.py", "--data", str(latents), "--run", str(straight), *TINY], cwd=HERE,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, "train.py", "--data", str(latents), "--run", str(stopped), *TINY],
                            cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (stopped / "log.csv").exists() or len((stopped / "log.csv").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    last = proc.communicate(timeout=120)[1].strip().splitlines()[-1]
    at = int(re.fullmatch(r"stopped by Ctrl-C at step (\d+); .* --resume`", last).group(1))  # not an error
    assert proc.returncode == 128 + signal.SIGINT
    assert torch.load(stopped / "ckpt.pt", weights_only=True)["step"] == at < 40
    subprocess.run([sys.executable, "train.py", "--run", str(stopped), "--resume"], cwd=HERE, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed, reference = (torch.load(r / "ckpt.pt", weights_only=True) for r in (stopped, straight))
    for weights in ("model", "ema"):
        for name, value in reference[weights].items():
            assert torch.allclose(resumed[weights][name], value, atol=1e-6), (weights, name)
    rows = [line.split(",") for line in (stopped / "log.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [10, 20, 30, 40]
    assert all(float(a[-1]) < float(b[-1]) for a, b in zip(rows, rows[1:]))


def test_resume_can_extend_a_run(run, tmp_path, capsys):
    longer = tmp_path / "longer"
    shutil.copytree(run, longer)
    train.main(["--run", str(longer), "--resume", "--steps", "50", "--eval_every", "5"])  # checkpoints may change
    assert re.search(r"from 40 to 50 steps.*at step 40 the learning rate goes from \S+ to \S+", capsys.readouterr().out)
    assert torch.load(longer / "ckpt.pt", weights_only=True)["step"] == 50
    assert [r.split(",")[0] for r in (longer / "log.csv").read_text().splitlines()[-2:]] == ["45", "50"]


def test_sample_writes_gif_and_frames(run, tmp_path, capsys):
    gif, npy = tmp_path / "new" / "dream.gif", tmp_path / "more" / "dream"  # folders made; np.save adds .npy
    sample.main(["--run", str(run), "--frames", "12", "--out", str(gif), "--save-frames", str(npy)])
    assert f"-> {npy}.npy" in capsys.readouterr().out
    frames = np.load(f"{npy}.npy")
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
    image = Image.open(gif)
    assert image.n_frames == 12
    assert image.size[0] > 2 * image.size[1]  # truth and dream side by side


def test_the_speed_leaves_out_the_first_frame(run, monkeypatch):
    """Its time is mostly warm-up (with --compile, compiling): here a first frame that takes 1 s more."""
    real = sample.rollout

    def slow_start(*args):
        time.sleep(1.0)
        return real(*args)

    monkeypatch.setattr(sample, "rollout", slow_start)
    t0 = time.time()
    fps = sample.dream(run, frames=4)[3]
    assert fps >= 3 / (time.time() - t0 - 1.0)                    # 3 frames in the time after the first


def test_sample_under_other_actions(run, tmp_path):
    names = load_latents(torch.load(run / "ckpt.pt", weights_only=True)["args"]["data"])[2]["actions"]
    script = tmp_path / "turn.csv"
    rows = [",".join(["frame", *names])] + [",".join([str(i)] + ["0"] * 8 + ["10", "0"]) for i in range(6)]
    script.write_text("\n".join(rows) + "\n")
    turn, truth, _, _ = sample.dream(run, frames=6, actions=str(script))
    still, _, _, _ = sample.dream(run, frames=6, actions="none")
    assert turn.shape == still.shape == (6, 48, 64, 3) and truth is None
    assert not np.array_equal(turn, still)         # the same noise: only the file's inputs can differ


def test_actions_from_an_episode_folder_or_a_csv_in_capitals(run, dataset, tmp_path, capsys):
    """Another episode's inputs as the script: by its folder, or by a copy of its inputs.csv named ACT.CSV;
    and an animated PNG instead of a GIF."""
    shutil.copy(dataset / "ep000" / "inputs.csv", tmp_path / "ACT.CSV")
    for actions, out in ((dataset / "ep000", tmp_path / "a.gif"), (tmp_path / "ACT.CSV", tmp_path / "b.png")):
        sample.main(["--run", str(run), "--frames", "3", "--actions", str(actions), "--out", str(out)])
        assert Image.open(out).format == out.suffix[1:].upper() and "3 frames at" in capsys.readouterr().out
    assert not (tmp_path / "typo").exists()
    with pytest.raises(DataError, match="typo does not exist"):
        sample.main(["--run", str(tmp_path / "typo"), "--frames", "3"])
    assert not (tmp_path / "typo").exists()                          # a mistyped run makes no folder


def test_replayed_truth_matches_the_encoded_frames_at_any_recorded_size(tmp_path):
    """A recording whose sides are no multiples of 8 is encoded cropped (68x50 -> 64x48); the frames that
    --eval and --compare replay must be cropped the same way: replaying the recorded inputs gives the truth."""
    record_doom(tmp_path / "doom", minutes=60 / 900, episodes=2, size=(68, 50), seed=3)  # 2 episodes of 30 frames
    latents = encode_dataset(tmp_path / "doom", "pixels").parent
    train.main(["--data", str(latents), "--run", str(tmp_path / "run"), "--preset", "tiny", "--steps", "1",
                "--eval_every", "1", "--eval_batches", "1", "--preview_frames", "2", "--device", "cpu"])
    dreamer = sample.Dreamer(tmp_path / "run")
    ep, n = dreamer.episode(None, 0, 5)
    recorded = dreamer.actions[ep["start"] + dreamer.T - 1:][:n]
    truth = dreamer.real([(ep, 0)], n)[0, 1:]                                  # (5, 48, 64, 3)
    assert truth.shape == (5, 48, 64, 3) and np.array_equal(dreamer.replay(ep["name"], dreamer.T - 1, recorded), truth)


# -----------------------------------------------------------------------------
# bad input: one line on stderr that says what to do, never a traceback


@pytest.mark.parametrize("command", [["train.py", "--data", "x"], ["sample.py", "--run", "x"], ["encode.py", "x"],
                                     ["record.py", "doom"], ["record.py", "screen"],
                                     ["record.py", "ingest", "x", "--inputs", "y"]])
def test_a_flag_that_does_not_exist_gets_a_two_line_usage(command):
    """Every script answers a mistyped flag with its usage in one line and the error, not a page of flags."""
    code, _, err = cli(*command, "--frmaes", "3")
    usage, error = err.strip().splitlines()
    assert code == 2 and usage.startswith(f"usage: {' '.join(command[:2 if command[0] == 'record.py' else 1])} ")
    assert usage.endswith("(--help lists every flag)") and "unrecognized arguments: --frmaes 3" in error, err


def test_error_missing_dataset(tmp_path):
    assert_one_line_error(cli("encode.py", tmp_path / "nope", "--vae", "pixels"), "does not exist")


def test_error_dataset_without_episodes(tmp_path):
    assert_one_line_error(cli("encode.py", tmp_path, "--vae", "pixels"), "no episodes")


def test_error_corrupt_image(dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken, ignore=shutil.ignore_patterns("latents-*"))
    (broken / "ep000" / "frames" / "00000003.png").write_bytes(b"not a png")
    assert_one_line_error(cli("encode.py", broken, "--vae", "pixels"), "00000003.png")
    assert not (broken / "latents-pixels" / "meta.json").exists()


def test_error_hub_id_offline(dataset, tmp_path):
    result = cli("encode.py", dataset, "--out", tmp_path / "sd", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "--vae pixels", "shared/weights/taesd")


def test_error_train_without_data(tmp_path):
    assert_one_line_error(cli("train.py", "--data", tmp_path / "nope", "--run", tmp_path / "r"), "encode.py")


def test_error_sample_without_checkpoint(tmp_path):
    assert_one_line_error(cli("sample.py", "--run", tmp_path), "no checkpoint")


@pytest.mark.parametrize("header", ["up,down", "a,w,s,d,space,shift,mouse_left,mouse_right,mouse_dx,mouse_dy"])
def test_error_actions_with_other_columns(run, tmp_path, header):
    """Other columns, or the model's own in another order (w and a swapped): the model would read them wrong."""
    script = tmp_path / "keys.csv"
    n = len(header.split(","))
    script.write_text(f"frame,{header}\n" + "".join(f"{i}," + ",".join(["0"] * n) + "\n" for i in range(2)))
    assert_one_line_error(cli("sample.py", "--run", run, "--actions", script, "--frames", "2"), "columns")


@pytest.mark.parametrize("flag", [["--frames", "0"], ["--frames", "4501"], ["--steps", "-2"], ["--steps", "0"],
                                  ["--starts", "0"], ["--start", "-1"], ["--cfg", "inf"], ["--device", "nonsense"],
                                  ["--device", "meta"], ["--seed", "-1"], ["--seed", "99999999999999999999"],
                                  ["--actions", "no-such-file.csv"], ["--actions", "record.py"]])
def test_sample_flags_that_cannot_work_are_one_line_usage_errors(run, capsys, flag):
    with pytest.raises(SystemExit):
        sample.main(["--run", str(run), *flag])
    assert f"error: argument {flag[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--eval", "--frames", "90", "--start", "0"], "--frames, --start cannot go with --eval"),
    (["--compare", "--actions", "none"], "--actions cannot go with --compare"),
    (["--starts", "64"], "--starts: for --eval only")])
def test_sample_flags_that_a_mode_would_ignore_are_one_line_usage_errors(run, capsys, flags, message):
    """--eval picks its own starts and scripts, --compare its own scripts: a flag they would ignore is refused,
    even at its default value."""
    with pytest.raises(SystemExit):
        sample.main(["--run", str(run), *flags])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--frames", "2", "--out", "{tmp}/file/dream.gif"], "cannot write there"),
    (["--frames", "2", "--out", "{tmp}/dream.jpg"], "name the file *.gif (or .apng"),
    (["--frames", "2", "--save_frames", "{tmp}/file/frames.npy"], "cannot write there"),
    (["--eval", "--starts", "1", "--out", "{tmp}/file/eval.json"], "cannot write there"),
    (["--eval", "--starts", "1", "--out", "{tmp}/ckpt.pt"], "name the file *.json"),  # not over a checkpoint
    (["--frames", "2", "--save_frames", "{tmp}"], "is a folder"),                    # not {tmp}.npy beside it
    (["--frames", "2", "--save_frames", "{tmp}/new/"], "is a folder")])
def test_sample_output_that_cannot_be_written_is_refused_before_the_rollout(run, tmp_path, monkeypatch, flags,
                                                                            message):
    (tmp_path / "file").write_text("")
    for name in ("load_run", "evaluate"):
        monkeypatch.setattr(sample, name, lambda *a, **k: pytest.fail("the rollout began"))
    with pytest.raises(DataError, match=re.escape(message)) as info:
        sample.main(["--run", str(run), *(f.format(tmp=tmp_path) for f in flags)])
    assert "\n" not in str(info.value)


def test_sample_a_folder_that_is_no_run_says_so_before_the_output_path(tmp_path):
    (tmp_path / "README.md").write_text("")
    with pytest.raises(DataError, match="README.md is not a folder; pass the --run folder"):
        sample.main(["--run", str(tmp_path / "README.md")])                  # not "--out ...: cannot write there"
    with pytest.raises(DataError, match="nowhere does not exist"):
        sample.main(["--run", str(tmp_path / "nowhere")])
    (tmp_path / "early").mkdir()                                            # training, before its first validation
    with pytest.raises(DataError, match="has no checkpoint .* yet: train.py writes one at each validation"):
        sample.main(["--run", str(tmp_path / "early")])


def test_sampling_a_run_before_its_last_step_says_which_step(run, tmp_path, capsys):
    early = tmp_path / "early"
    shutil.copytree(run, early)
    ckpt = torch.load(early / "ckpt.pt", weights_only=False)
    ckpt["args"]["steps"] = ckpt["step"] * 5                                # stopped, or still training
    torch.save(ckpt, early / "ckpt.pt")
    sample.main(["--run", str(early), "--frames", "2"])
    assert f"is at step {ckpt['step']} of {ckpt['step'] * 5} (its last checkpoint)" in capsys.readouterr().err
    sample.main(["--run", str(run), "--frames", "2", "--out", str(tmp_path / "done.gif")])
    assert "its last checkpoint" not in capsys.readouterr().err


def test_save_replaces_a_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "dream.gif"
    assert sample.save(path, lambda part: part.write_text("first")) == ""
    def interrupted(part):
        part.write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        sample.save(path, interrupted)
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["dream.gif"]
    assert sample.save(path, lambda part: part.write_text("second")) == " (replaced)" and path.read_text() == "second"


def test_other_inputs_dream_past_the_recording_and_a_cut_is_said(run, capsys):
    ep = sample.held_out(load_latents(train.load_checkpoint(run)["args"]["data"])[2])[0]
    end = ep["length"] - 10                                                  # the context fills the episode
    out, truth, _, _ = sample.dream(run, start=end, frames=3, actions="none", steps=1)
    assert len(out) == 3 and truth is None
    out, truth, _, _ = sample.dream(run, start=end - 2, frames=5, steps=1)  # beside the truth: 2 frames left
    assert len(out) == len(truth) == 2 and "has 2 frames after the context" in capsys.readouterr().err


def test_error_sample_after_the_latents_moved(run, tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "gone" / "latents-pixels")
    torch.save(ckpt, moved / "ckpt.pt")
    with pytest.raises(DataError, match="which is not there any more; put the latents folder back") as info:
        sample.main(["--run", str(moved), "--frames", "2"])
    assert "\n" not in str(info.value)
