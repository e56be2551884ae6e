"""
encode.py: the exact `pixels` round trip, TAESD's and a run on its latents (the real pretrained weights,
skipped where ../shared is absent), the SD VAE's code path, frames of any size brought to the encode size,
resume after a kill to the very latents of an uninterrupted run, and the one-line errors.

    python -m pytest -q test_encode.py
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import encode
from conftest import HERE
from encode import Autoencoder, encode_dataset, load_latents, to_size
from record import ACTIONS, open_image, read_episode, read_inputs, write_episode
from sample import psnr

TAESD = HERE.parent / "shared" / "weights" / "taesd"


def frames_of(episode):
    return np.stack([np.asarray(open_image(p)) for p in read_episode(episode)[2]])


def make_dataset(folder, sizes, n_frames=8, seed=0):
    """Episodes ep0, ep1, ... of smooth random frames of size (w, h) = sizes[i], with random inputs."""
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        base = rng.integers(0, 256, (n_frames, 1, 1, 3))
        frames = (base + np.arange(w)[None, None, :, None] + 2 * np.arange(h)[None, :, None, None]) % 256
        actions = rng.integers(0, 2, (n_frames, len(ACTIONS))).astype(float)
        write_episode(folder / f"ep{i}", zip(frames.astype(np.uint8), actions), ACTIONS,
                      {"fps": 15, "width": w, "height": h, "actions": ACTIONS, "source": "test"})
    return folder


def test_pixels_round_trip_is_exact_and_row_i_is_frame_i(dataset, latents):
    z, actions, meta = load_latents(latents)
    assert meta["latent_shape"] == [192, 6, 8] and z.dtype == np.float16 and len(z) == 160
    assert [e["split"] for e in meta["episodes"]] == ["train", "val"]    # whole episodes held out
    start, frames = meta["episodes"][1]["start"], frames_of(dataset / "ep001")
    assert np.array_equal(Autoencoder("pixels").decode(z[start:start + 80].astype(np.float32)).numpy(), frames)
    assert np.array_equal(actions[start:start + 80], read_inputs(dataset / "ep001")[1])
    train = z[:80].astype(np.float64)                                     # the statistics of the training episode
    assert meta["latent_mean"] == pytest.approx(train.mean(), rel=1e-3)
    assert meta["latent_std"] == pytest.approx(train.std(), rel=1e-3)


@pytest.mark.skipif(not TAESD.is_dir(), reason=f"the pretrained TAESD weights are not at {TAESD}")
def test_taesd_round_trip_on_doom_frames_and_a_run_on_its_latents(dataset, tmp_path):
    import sample
    import train
    frames = frames_of(dataset / "ep000")[::8]
    ae = Autoencoder(str(TAESD))
    z = ae.encode(frames)
    decoded = ae.decode(z).numpy()
    assert z.shape == (len(frames), 4, 6, 8) and psnr(decoded[None], frames[None]).mean() > 18  # about 28
    flat = np.broadcast_to(frames.mean(axis=(1, 2), keepdims=True), frames.shape).round().astype(np.uint8)
    for wrong in (flat, decoded[..., ::-1], decoded[:, ::-1]):  # the picture: not its mean, swapped or upside down
        assert psnr(decoded[None], frames[None]).mean() > psnr(wrong[None], frames[None]).mean() + 1
    small = make_dataset(tmp_path / "data", [(64, 48)] * 2, n_frames=12)      # the SD latent space, end to end
    latents = encode_dataset(small, str(TAESD))
    assert np.allclose(load_latents(latents)[0][:12], ae.encode(frames_of(small / "ep0")), atol=0.02)
    train.main(["--data", str(latents), "--run", str(tmp_path / "run"), "--preset", "tiny", "--steps", "2",
                "--eval_every", "2", "--eval_batches", "1", "--preview_frames", "2"])
    dream, truth, _, _ = sample.dream(sample.Dreamer(tmp_path / "run", steps=1), None, 0, 2, "recorded")
    assert dream.shape == truth.shape == (2, 48, 64, 3) and dream.std() > 1    # decoded by TAESD to a picture


def test_frames_are_cut_to_multiples_of_8_or_fitted_to_the_size(tmp_path):
    image = open_image(write_frame(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (52, 70, 3))))
    assert np.array_equal(to_size(image, (64, 48)), np.asarray(image)[2:50, 3:67])  # the centre, not resampled
    wide = np.zeros((48, 96, 3), np.uint8)
    wide[:, 24:72] = 255                                                  # a white centre square of 48x48
    assert (to_size(open_image(write_frame(tmp_path / "b.png", wide)), (24, 24)) == 255).all()
    dataset = make_dataset(tmp_path / "data", [(70, 52), (96, 48)], n_frames=2)
    z, _, meta = load_latents(encode_dataset(dataset, "pixels"))
    assert (meta["width"], meta["height"]) == (64, 48) and z.shape == (4, 192, 6, 8)


def write_frame(path, array):
    from PIL import Image
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the test holds encode.py up with a named pipe (POSIX)")
def test_an_encode_killed_midway_resumes_to_the_same_latents(tmp_path, capsys):
    dataset = make_dataset(tmp_path / "data", [(32, 24)] * 3, n_frames=16)  # 48 frames, 12 batches of 4
    straight = encode_dataset(dataset, "pixels", tmp_path / "straight", batch_size=4)
    # hold the run up at frame 24: a named pipe in that frame's place blocks whoever reads it, so the kill
    # lands after frames 0-23 are final, however fast or slow this machine is
    stall = dataset / "ep1" / "frames" / "00000008.png"
    png = stall.read_bytes()
    stall.unlink()
    os.mkfifo(stall)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "encode.py", dataset, "--vae", "pixels", "--out", killed,
                             "--batch-size", "4"], cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "progress.json").exists() or json.loads((killed / "progress.json").read_text())["done"] < 24:
        assert proc.poll() is None and time.time() < deadline, "encode.py ended before frame 24"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "progress.json").read_text())["done"] == 24
    stall.unlink()
    stall.write_bytes(png)
    with pytest.raises(SystemExit, match="another --vae, --size, --batch-size, device or episodes"):
        encode_dataset(dataset, "pixels", killed, batch_size=4, size=(24, 16))
    for i in range(16):                                                   # a finished episode is never read again
        write_frame(dataset / "ep0" / "frames" / f"{i:08d}.png", np.zeros((24, 32, 3)))
    encode_dataset(dataset, "pixels", killed, batch_size=4)
    assert "resuming" in capsys.readouterr().out and not (killed / "progress.json").exists()
    (z, a, meta), (z0, a0, meta0) = load_latents(killed), load_latents(straight)
    assert np.array_equal(z, z0) and np.array_equal(a, a0) and meta == meta0


def test_one_line_errors(dataset, latents, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="already holds encoded latents"):
        encode_dataset(dataset, "pixels")
    bad = make_dataset(tmp_path / "bad", [(32, 24), (32, 24)], n_frames=2)
    (bad / "ep1" / "frames" / "00000001.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit, match="00000001.png is corrupt or not an image"):
        encode_dataset(bad, "pixels")
    write_frame(bad / "ep1" / "frames" / "00000001.png", np.zeros((16, 32, 3)))
    with pytest.raises(SystemExit, match=r"00000001.png is 32x16, but its episode's frames are 32x24"):
        encode_dataset(bad, "pixels", tmp_path / "other")
    shutil.copytree(dataset / "ep000", bad / "ep2")                       # another set of input columns
    (bad / "ep2" / "inputs.csv").write_text((bad / "ep2" / "inputs.csv").read_text().replace("mouse_dy", "jump"))
    (bad / "ep2" / "meta.json").unlink()
    with pytest.raises(SystemExit, match="encode episodes with the same columns together"):
        encode_dataset(bad, "pixels", tmp_path / "third")
    with pytest.raises(SystemExit, match=f"pass {latents}"):
        load_latents(dataset)
    monkeypatch.setattr(encode.socket, "getaddrinfo", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    t0 = time.time()
    with pytest.raises(SystemExit, match=r"cannot load the autoencoder 'stabilityai/sd-vae-ft-mse' .* or pixels"):
        Autoencoder("stabilityai/sd-vae-ft-mse")
    assert time.time() - t0 < 10                                          # not half a minute of retries


def test_bf16_only_on_gpus_that_have_it_in_hardware(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    assert not encode.native_bf16("cuda") and not encode.native_bf16("cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    assert encode.native_bf16("cuda")


# stabilityai/sd-vae-ft-mse's config.json: the Stable Diffusion VAE, here with random weights (no download)
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, norm_num_groups=32,
              sample_size=256, scaling_factor=0.18215)


def test_the_sd_vae_path_scales_its_latents_both_ways_through_encode_and_sample(tmp_path):
    from diffusers import AutoencoderKL

    import sample
    import train
    torch.manual_seed(0)
    AutoencoderKL(**SD_VAE).save_pretrained(tmp_path / "sd-vae-ft-mse")
    dataset = make_dataset(tmp_path / "data", [(32, 24)] * 2, n_frames=12)
    latents = encode_dataset(dataset, str(tmp_path / "sd-vae-ft-mse"))
    z, _, meta = load_latents(latents)
    assert latents.name == "latents-sd-vae-ft-mse" and z.shape == (24, 4, 3, 4)
    vae = AutoencoderKL.from_pretrained(tmp_path / "sd-vae-ft-mse")
    x = torch.from_numpy(frames_of(dataset / "ep0")[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(z[:2]).float(), vae.encode(x).latent_dist.mean * 0.18215, atol=2e-3)
        by_hand = ((vae.decode(torch.from_numpy(z[:2]).float() / 0.18215).sample.clamp(-1, 1) + 1) * 127.5).round()
    assert np.array_equal(Autoencoder(meta["vae"]).decode(z[:2].astype(np.float32)).numpy(),
                          by_hand.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    train.main(["--data", str(latents), "--run", str(tmp_path / "run"), "--preset", "tiny", "--steps", "2",
                "--eval_every", "2", "--eval_batches", "1", "--preview_frames", "2"])
    frames, truth, _, _ = sample.dream(sample.Dreamer(tmp_path / "run", steps=1), None, 0, 2, "recorded")
    assert frames.shape == truth.shape == (2, 24, 32, 3)                    # decoded by the SD VAE to pixels
