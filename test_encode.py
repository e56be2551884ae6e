"""
Tests for encode.py on footage of any size: resume after a SIGKILL gives the very latents of an uninterrupted
run, how frames are cropped or fitted to the encode size, and the errors. The autoencoder is a small
AutoencoderTiny (TAESD's architecture) with random weights made here, so nothing is downloaded. About 15 s.

    python -m pytest -q test_encode.py
"""
import argparse
import json
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

import record
import encode
from encode import Autoencoder, encode_dataset, load_latents, native_bf16
from record import ACTIONS, DataError

HERE = Path(__file__).resolve().parent


def make_dataset(folder, sizes, n_frames=48, seed=0):
    """Episodes ep0, ep1, ... of smooth random frames (w, h) = sizes[i] and random actions."""
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        base = rng.integers(0, 256, (n_frames, 1, 1, 3))
        frames = (base + np.arange(w)[None, None, :, None] + 2 * np.arange(h)[None, :, None, None]) % 256
        actions = rng.integers(0, 2, (n_frames, len(ACTIONS))).astype(float)
        meta = {"fps": 15, "width": w, "height": h, "actions": ACTIONS, "source": "test"}
        record.write_episode(folder / f"ep{i}", zip(frames.astype(np.uint8), actions), ACTIONS, meta)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one CPU thread, here and in encode.py below: on a busy machine two threads that wait for each
    other can be a hundred times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A local AutoencoderTiny folder: TAESD's design with fewer channels and seeded random weights."""
    from diffusers import AutoencoderTiny

    folder = tmp_path_factory.mktemp("vae") / "tiny-taesd"
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16),
                    decoder_block_out_channels=(16, 16, 16, 16)).save_pretrained(folder)
    return str(folder)


# -----------------------------------------------------------------------------
# Resume


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the test holds encode.py up with a named pipe (POSIX)")
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_resume_after_a_kill_or_ctrl_c_gives_the_same_latents(stop, tiny_vae, tmp_path, capsys):
    dataset = make_dataset(tmp_path / "data", [(32, 24)] * 3, n_frames=16)  # 48 frames, 12 batches of 4
    straight = encode_dataset(dataset, tiny_vae, tmp_path / "straight", batch_size=4).parent

    # hold the run up at frame 24 (frame 8 of ep1): a named pipe in its place blocks whoever reads it, so
    # the kill lands mid-way, after frames 0-23 are checkpointed, however fast or slow this machine is
    stall = dataset / "ep1" / "frames" / "00000008.png"
    png = stall.read_bytes()
    stall.unlink()
    os.mkfifo(stall)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "encode.py", str(dataset), "--vae", tiny_vae, "--out", str(killed),
                             "--batch-size", "4"], cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600                                     # a busy machine may take minutes to start
    while not (killed / "progress.json").exists() or json.loads((killed / "progress.json").read_text())["done"] < 24:
        assert proc.poll() is None and time.time() < deadline, "encode.py ended before frame 24"
        time.sleep(0.02)
    proc.send_signal(getattr(signal, stop))
    if stop == "SIGINT":  # Ctrl-C: let the blocked read finish, then encode.py says what it kept and stops
        while True:
            try:  # the reader may still be on its way to the pipe: opening to write fails until it is there
                pipe = os.open(stall, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert time.time() < deadline, "encode.py never read the stalled frame"
                time.sleep(0.02)
        os.write(pipe, png)
        os.close(pipe)
        last = proc.communicate(timeout=600)[1].strip().splitlines()[-1]
        assert proc.returncode == 128 + signal.SIGINT, last  # the shell's status for Ctrl-C, not an error's
        assert last.startswith("stopped by Ctrl-C: what is encoded so far is kept"), last
    proc.wait()
    done = json.loads((killed / "progress.json").read_text())["done"]
    assert done in ((24,) if stop == "SIGKILL" else (24, 28)) and not (killed / "meta.json").exists()

    stall.unlink()
    stall.write_bytes(png)
    for i in range(16):                                              # a finished episode is never read again
        (dataset / "ep0" / "frames" / f"{i:08d}.png").write_bytes(b"not a png")
    encode_dataset(dataset, tiny_vae, killed, batch_size=4)
    assert f"at frame {done} of 48 (1 of 3 episodes already encoded)" in capsys.readouterr().out
    z_resumed, actions_resumed, meta_resumed = load_latents(killed)
    z_straight, actions_straight, meta_straight = load_latents(straight)
    assert np.array_equal(z_resumed, z_straight) and np.array_equal(actions_resumed, actions_straight)
    assert {**meta_resumed, "dataset": None} == {**meta_straight, "dataset": None}
    assert not (killed / "progress.json").exists()


def test_resume_refuses_other_settings(tiny_vae, tmp_path):
    dataset = make_dataset(tmp_path / "data", [(64, 48)])
    out = tmp_path / "latents"
    out.mkdir()
    np.lib.format.open_memmap(out / "latents.npy", "w+", np.float16, (48, 4, 6, 8)).flush()
    (out / "progress.json").write_text(json.dumps({"vae": "other", "done": 16}))
    with pytest.raises(DataError, match=r"unfinished encode with other settings or episodes \(vae other -> "):
        encode_dataset(dataset, tiny_vae, out)


def stopped_encode(dataset, out, monkeypatch, batches=2, vae="pixels", **kwargs):
    """An encode of `dataset` into `out` stopped by Ctrl-C after `batches` batches, as pixels (or `vae`)."""
    real, calls = encode.load_frames, []

    def load_frames(*args):
        calls.append(1)
        if len(calls) > batches:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(encode, "load_frames", load_frames)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(dataset, vae, out, batch_size=8, workers=1, **kwargs)
    monkeypatch.setattr(encode, "load_frames", real)
    return json.loads((out / "progress.json").read_text())["done"]


@pytest.mark.parametrize("damage", ["other recording", "other size", "progress cut", "progress foreign",
                                    "progress done infinite", "progress episodes foreign", "other latent shape",
                                    "latents cut", "latents other shape"])
def test_an_unfinished_encode_resumes_only_what_it_was(tmp_path, monkeypatch, damage):
    """Its rows must be of this very recording, at these settings, and whole: else one line, and nothing is
    touched. Two Doom recordings with other seeds have the same episode names and lengths."""
    dataset, out = make_dataset(tmp_path / "data", [(32, 24)] * 2), tmp_path / "latents"
    assert stopped_encode(dataset, out, monkeypatch) == 16
    kwargs, message = {}, "is damaged"
    if damage == "other recording":
        dataset = make_dataset(tmp_path / "other", [(32, 24)] * 2, seed=1)
        message = r"other settings or episodes \(the episodes' inputs \(another recording\?\)\)"
    elif damage == "other size":
        kwargs, message = {"size": (16, 16)}, r"\(width 32 -> 16, height 24 -> 16\)"
    elif damage == "progress cut":
        (out / "progress.json").write_text((out / "progress.json").read_text()[:20])
    elif damage == "progress foreign":
        (out / "progress.json").write_text("[]")
    elif damage == "progress done infinite":  # edited by hand: JSON's 1e400 is Python's inf, which int() refuses
        (out / "progress.json").write_text((out / "progress.json").read_text().replace('"done": 16', '"done": 1e400'))
    elif damage == "progress episodes foreign":
        saved = json.loads((out / "progress.json").read_text())
        (out / "progress.json").write_text(json.dumps({**saved, "episodes": 2}))
        message = r"other settings or episodes \(episodes \(0 -> 2, or their lengths\)\)"
    elif damage == "other latent shape":  # the same --vae folder, now holding another autoencoder
        saved = json.loads((out / "progress.json").read_text())
        (out / "progress.json").write_text(json.dumps({**saved, "latent_shape": [4, 3, 4]}))
        message = r"other settings or episodes \(latent_shape \[4, 3, 4\] -> \[192, 3, 4\] \(another autoencoder"
    elif damage == "latents cut":
        with open(out / "latents.npy", "r+b") as f:
            f.truncate(5000)
    else:
        np.save(out / "latents.npy", np.zeros((96, 192, 2, 2), np.float16))
        message = r"latents.npy \(float16 \(96, 192, 2, 2\)\) does not fit its progress.json"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=message):
        encode_dataset(dataset, "pixels", out, batch_size=8, **kwargs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_unfinished_encode_is_not_resumed_with_other_weights_in_its_vae_folder(tiny_vae, tmp_path, monkeypatch):
    """The same --vae folder, but another model of the same shape saved into it since (a fine-tuned one, say):
    continuing would put latents of two autoencoders into one file."""
    from diffusers import AutoencoderTiny
    dataset, out, vae = make_dataset(tmp_path / "data", [(32, 24)] * 2), tmp_path / "latents", tmp_path / "vae"
    shutil.copytree(tiny_vae, vae)
    assert stopped_encode(dataset, out, monkeypatch, vae=str(vae)) == 16
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=r"other settings or episodes \(dtype torch.float32 -> torch.bfloat16\); "):
        encode_dataset(dataset, str(vae), out, batch_size=8, dtype=torch.bfloat16)  # the same weights, cast
    torch.manual_seed(1)
    AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16),
                    decoder_block_out_channels=(16, 16, 16, 16)).save_pretrained(vae)
    with pytest.raises(DataError, match=r"other settings or episodes \(the autoencoder's weights \(another model"):
        encode_dataset(dataset, str(vae), out, batch_size=8)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_latent_statistics_are_of_the_training_episodes(tmp_path):
    dataset = make_dataset(tmp_path / "data", [(32, 24)] * 3, n_frames=16)
    latents, _, meta = load_latents(encode_dataset(dataset, "pixels").parent)
    train = np.concatenate([latents[e["start"]:e["start"] + e["length"]] for e in meta["episodes"]
                            if e["split"] == "train"]).astype(np.float64)
    assert len(train) == 32 and len(latents) == 48
    assert meta["latent_mean"] == pytest.approx(train.mean(), rel=1e-12)
    assert meta["latent_std"] == pytest.approx(train.std(), rel=1e-12)
    assert abs(meta["latent_mean"] - latents.astype(np.float64).mean()) > 1e-4  # not over the held-out frames


def test_out_that_cannot_be_created(tmp_path):
    """An --out through a file: one line, not a traceback. (A read-only dataset folder with the default --out
    takes the same path, but cannot be made here: the tests may run as root, who can write anywhere.)"""
    dataset = make_dataset(tmp_path / "data", [(64, 48)])
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot create .*; pass an --out folder where you can write") as info:
        encode_dataset(dataset, "pixels", tmp_path / "file" / "latents")
    assert "\n" not in str(info.value)


def test_out_that_holds_other_files_is_refused_and_left_alone(tmp_path):
    """--out pointed at an episode by mistake: writing latents and a meta.json there would break it."""
    dataset = make_dataset(tmp_path / "data", [(64, 48), (64, 48)])
    episode = dataset / "ep1"
    before = sorted(p.name for p in episode.rglob("*"))
    with pytest.raises(DataError, match="holds files that an encode did not write") as info:
        encode_dataset(dataset, "pixels", episode)
    assert "\n" not in str(info.value) and sorted(p.name for p in episode.rglob("*")) == before
    (tmp_path / "empty").mkdir()  # an empty folder is fine, hidden files (a Finder's .DS_Store) aside
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    assert encode_dataset(dataset, "pixels", tmp_path / "empty").exists()


@pytest.mark.parametrize("flag", [["--batch-size", "-5"], ["--batch-size", "0"], ["--workers", "0"],
                                  ["--workers", "99999999999999999999"], ["--val-episodes", "-1"],
                                  ["--device", "nonsense"], ["--device", "cuda:99"]])
def test_bad_numbers_and_devices_are_one_line_errors(tmp_path, capsys, flag):
    dataset = make_dataset(tmp_path / "data", [(64, 48), (64, 48)])
    with pytest.raises(SystemExit):
        encode.main([str(dataset), "--vae", "pixels", *flag])
    assert f"error: argument {flag[0]}" in capsys.readouterr().err
    assert not (dataset / "latents-pixels").exists()


# -----------------------------------------------------------------------------
# Frame size: crop by default, fit with --size


@pytest.mark.parametrize("size, left, top", [((70, 50), 3, 1), ((71, 53), 3, 2)])  # odd margins: floor
def test_frames_are_cropped_to_multiples_of_8(tmp_path, size, left, top):
    dataset = make_dataset(tmp_path / "data", [size, size], n_frames=4)
    z, _, meta = load_latents(encode_dataset(dataset, "pixels").parent)
    assert (meta["width"], meta["height"]) == (64, 48) and z.shape == (8, 192, 6, 8)
    frames = record.read_frames(dataset / "ep1")
    decoded = Autoencoder("pixels").decode(z[4:].astype(np.float32)).numpy()
    assert np.array_equal(decoded, frames[:, top:top + 48, left:left + 64])  # the centre, not resampled


def test_size_fits_frames_of_any_shape(tmp_path):
    dataset = make_dataset(tmp_path / "data", [(64, 48), (96, 48)], n_frames=4)
    with pytest.raises(DataError, match="pass --size"):
        encode_dataset(dataset, "pixels", tmp_path / "no")
    z, _, meta = load_latents(encode_dataset(dataset, "pixels", tmp_path / "fit", size=(24, 24)).parent)
    assert (meta["width"], meta["height"]) == (24, 24) and z.shape == (8, 192, 3, 3)
    frames = record.read_frames(dataset / "ep0").astype(float)     # 64x48 -> the centre 48x48 -> halved
    centre = frames[:, :, 8:56].reshape(4, 24, 2, 24, 2, 3).mean(axis=(2, 4))
    decoded = Autoencoder("pixels").decode(z.astype(np.float32)).numpy()
    assert np.abs(decoded[:4] - centre).max() <= 1
    wide = record.read_frames(dataset / "ep1").astype(float)        # 96x48 -> the centre 48x48 -> halved
    centre = wide[:, :, 24:72].reshape(4, 24, 2, 24, 2, 3).mean(axis=(2, 4))
    assert np.abs(decoded[4:] - centre).max() <= 1


def test_meta_json_with_the_wrong_size_is_named(tmp_path):
    """Not the frames of another episode: the size that episode's meta.json gives."""
    dataset = make_dataset(tmp_path / "data", [(64, 48), (64, 48)], n_frames=2)
    meta = json.loads((dataset / "ep1" / "meta.json").read_text())
    (dataset / "ep1" / "meta.json").write_text(json.dumps({**meta, "width": 99}))
    with pytest.raises(DataError, match=r"ep1 is 99x48 .* its frames are 64x48: fix width and height in .*meta"):
        encode_dataset(dataset, "pixels")
    shutil.rmtree(dataset / "ep0")
    with pytest.raises(DataError, match=r"00000000.png is 64x48 but its episode's frames are 99x48 \(by its meta"):
        encode_dataset(dataset, "pixels", tmp_path / "one")


def test_episodes_of_other_sizes_without_meta_json_are_told_to_pass_size(tmp_path):
    dataset = make_dataset(tmp_path / "data", [(64, 48), (32, 24)], n_frames=2)
    (dataset / "ep1" / "meta.json").unlink()
    with pytest.raises(DataError, match=r"ep1 is 32x24 .*, but ep0 before it is 64x48; pass --size"):
        encode_dataset(dataset, "pixels")
    assert encode_dataset(dataset, "pixels", size=(32, 24)).exists()
    (dataset / "ep1" / "meta.json").write_text(json.dumps({"fps": 15, "width": 32, "height": 24}))
    (dataset / "ep1" / "frames" / "00000000.png").write_bytes(b"not a png")  # not a traceback on the way
    with pytest.raises(DataError, match=r"ep1 is 32x24 .*; pass --size"):
        encode_dataset(dataset, "pixels", tmp_path / "again")


def test_episodes_at_different_frame_rates_are_refused(tmp_path):
    dataset = make_dataset(tmp_path / "data", [(64, 48), (64, 48)], n_frames=2)
    meta = json.loads((dataset / "ep1" / "meta.json").read_text())
    (dataset / "ep1" / "meta.json").write_text(json.dumps({**meta, "fps": 30}))
    with pytest.raises(DataError, match="ep1 is at 30 fps but ep0 at 15; one model learns one frame rate"):
        encode_dataset(dataset, "pixels")


@pytest.mark.parametrize("config, message", [("{not json", "does not describe an AutoencoderKL"),
                                             ("{}", "does not describe an AutoencoderKL"),
                                             (None, "has no weights")])
def test_vae_folder_that_holds_no_autoencoder(tmp_path, tiny_vae, config, message):
    """A config.json that is not JSON, one of no model, or a model folder without its weights: one line."""
    folder = tmp_path / "vae"
    shutil.copytree(tiny_vae, folder)
    if config is None:
        for weights in folder.glob("diffusion_pytorch_model.*"):
            weights.unlink()
    else:
        (folder / "config.json").write_text(config)
    with pytest.raises(DataError, match=message) as info:
        encode.load_vae(str(folder))
    assert "\n" not in str(info.value)


def test_size_must_be_multiples_of_8(tmp_path):
    dataset = make_dataset(tmp_path / "data", [(64, 48)], n_frames=2)
    with pytest.raises(DataError, match="multiples of 8"):
        encode_dataset(dataset, "pixels", size=(60, 40))


def test_decode_takes_a_long_rollout_a_few_frames_at_a_time(monkeypatch):
    """A 300-frame --eval rollout through SD's VAE in one call runs a GPU out of memory: decode in chunks."""
    class CountingVAE:  # pixels, but through the network path, recording every batch it is given
        sizes = []
        def decode(self, z):
            self.sizes.append(len(z))
            return argparse.Namespace(sample=torch.nn.functional.pixel_shuffle(z, encode.DOWNSAMPLE))
    monkeypatch.setattr(encode, "DECODE_BATCH", 4)
    z = torch.randn(10, 192, 2, 3).clamp(-1, 1)
    ae = Autoencoder("pixels")
    ae.kind, ae.vae = "tiny", CountingVAE()
    decoded = ae.decode(z).numpy()
    assert CountingVAE.sizes == [4, 4, 2]
    assert np.array_equal(decoded, Autoencoder("pixels").decode(z).numpy())


def test_loading_a_recording_instead_of_its_latents_names_them(dataset, latents, tmp_path):
    with pytest.raises(DataError, match=re.escape(f"(pass {latents}?)")):
        load_latents(dataset)
    recording = make_dataset(tmp_path / "data", [(32, 24)], n_frames=2)
    with pytest.raises(DataError, match=re.escape("(a recording, not yet encoded)")):
        load_latents(recording)
    with pytest.raises(DataError, match=f"{tmp_path} holds no encoded latents; run"):
        load_latents(tmp_path)                                      # no guess where there is nothing to go on


META_DAMAGE = {  # meta.json fields edited by hand or by another tool: train.py met each deep inside torch
    "no latent_mean": lambda m: m.pop("latent_mean"),
    "another latent_shape": lambda m: m.update(latent_shape=[192, 3, 8]),
    "an episode out of range": lambda m: m["episodes"][-1].update(start=10**6),
    "fewer input columns": lambda m: m.update(actions=m["actions"][:-1]),
    "pixels of 100 channels": lambda m: m.update(latent_shape=[100, 6, 8]),
    "latent_mean a string": lambda m: m.update(latent_mean="0.5"),
}


@pytest.mark.parametrize("damage", ["cut latents.npy", "no actions.npy", "bad meta.json", "fewer frames",
                                    "1-D actions.npy", *META_DAMAGE])
def test_a_damaged_latents_folder_is_one_line(latents, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(latents, bad)
    if damage == "cut latents.npy":
        with open(bad / "latents.npy", "r+b") as f:
            f.truncate(1000)
    elif damage == "no actions.npy":
        (bad / "actions.npy").unlink()
    elif damage == "bad meta.json":
        (bad / "meta.json").write_text("{")
    elif damage == "fewer frames":
        np.save(bad / "actions.npy", np.load(bad / "actions.npy")[:-1])
    elif damage == "1-D actions.npy":
        np.save(bad / "actions.npy", np.load(bad / "actions.npy")[:, 0])
    else:
        meta = json.loads((bad / "meta.json").read_text())
        META_DAMAGE[damage](meta)
        (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="is damaged") as info:
        load_latents(bad)
    assert "\n" not in str(info.value)


def test_a_local_autoencoder_is_recorded_by_its_full_path(tiny_vae, tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path / "data", [(32, 24)], n_frames=4)
    monkeypatch.chdir(Path(tiny_vae).parent)
    meta = json.loads(encode_dataset(dataset, "./tiny-taesd", tmp_path / "out").read_text())
    assert meta["vae"] == tiny_vae                                   # train.py and sample.py run from anywhere
    with pytest.raises(DataError, match="autoencoder folder ../nowhere/taesd does not exist"):
        encode.load_vae("../nowhere/taesd")                          # not "no network" from the hub
    with pytest.raises(DataError, match="is a file; pass the folder that holds it"):
        encode.load_vae("./tiny-taesd/config.json")
    monkeypatch.chdir(tiny_vae)
    assert encode.default_out(dataset, ".") == dataset / "latents-tiny-taesd"  # the folder's name, not "latents-"


def test_a_local_autoencoder_loads_without_diffusers_warnings(tiny_vae, capfd, caplog):
    """Loading logs nothing a user could act on: no `pip install accelerate`, no notes on the config."""
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_warning()                       # as in a fresh process
    Autoencoder(tiny_vae)
    captured = capfd.readouterr()
    assert captured.out + captured.err == "" and not caplog.records, caplog.records


def test_pixels_is_pixels_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path / "data", [(32, 24)], n_frames=4)
    (tmp_path / "pixels").mkdir()
    monkeypatch.chdir(tmp_path)
    assert json.loads(encode_dataset(dataset, "pixels", tmp_path / "out").read_text())["vae"] == "pixels"


def test_bf16_only_on_gpus_that_have_it_in_hardware(monkeypatch, capsys):
    """A T4 or V100 (compute capability 7) emulates bf16 slowly and torch.compile cannot generate it: float32
    there, with a note; an A100 or newer, or an AMD GPU, computes in bf16; a CPU never does."""
    capability = {"value": (7, 5)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.version, "hip", None)
    assert not native_bf16("cuda:0")
    assert capsys.readouterr().err == ("note: Tesla T4 has no bfloat16 in hardware (it came before Ampere), so "
                                       "this runs in float32\n")
    assert not native_bf16("cuda", note=False) and capsys.readouterr().err == ""   # rank 0 alone says it
    capability["value"] = (8, 0)
    assert native_bf16("cuda:0") and not native_bf16("cpu") and not native_bf16("mps")
    capability["value"] = (7, 0)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert native_bf16("cuda:0") and capsys.readouterr().err == ""


def test_vae_folder_whose_weights_do_not_fit_its_config(tmp_path, tiny_vae):
    """A config.json edited, or weights of another model beside it: torch's size mismatch, in one line."""
    folder = tmp_path / "vae"
    shutil.copytree(tiny_vae, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(DataError, match="cannot be loaded as a diffusers AutoencoderTiny") as info:
        encode.load_vae(str(folder))
    assert "\n" not in str(info.value)


def test_vae_folder_whose_weights_lack_tensors_is_refused(tmp_path, tiny_vae):
    """diffusers fills the tensors that a weights file lacks with random numbers, and says so only in a log
    that encode.py silences: latents of a random network would go on to train a model on noise."""
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "vae"
    shutil.copytree(tiny_vae, folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("encoder.")}, weights)
    with pytest.raises(DataError, match=r"weights lack \d+ of the AutoencoderTiny's tensors") as info:
        encode.load_vae(str(folder))
    assert "\n" not in str(info.value)


def test_a_frame_too_large_for_pillow_is_one_line(tmp_path, monkeypatch):
    """A frame of more pixels than Pillow opens (2 x Image.MAX_IMAGE_PIXELS, 179 million: a damaged or foreign
    file) raises its DecompressionBombError, no OSError; here the limit is lowered instead of writing one."""
    from PIL import Image
    dataset = make_dataset(tmp_path / "data", [(64, 48)], n_frames=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"00000000.png is corrupt or not an image \(Image size") as info:
        encode_dataset(dataset, "pixels", tmp_path / "out", workers=1)
    assert "\n" not in str(info.value)
