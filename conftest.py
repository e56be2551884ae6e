"""Shared pytest fixtures: one short Doom recording and its `pixels` latents for every test file, and a full disk."""
import pytest
from PIL import Image

import train
from encode import encode_dataset
from record import record_doom

TINY = ["--preset", "tiny", "--steps", "40", "--eval_every", "10", "--eval_batches", "2", "--preview_frames", "8"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "doom"
    record_doom(out, minutes=160 / 900, episodes=2, size=(64, 48), seed=5)  # 2 episodes of 80 frames
    return out


@pytest.fixture(scope="session")
def latents(dataset):
    return encode_dataset(dataset, "pixels").parent


@pytest.fixture(scope="session")
def run(latents, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    train.main(["--data", str(latents), "--run", str(folder), *TINY])
    return folder


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(n): from the n-th PNG saved on, Image.save fails as a full disk does (ENOSPC)."""
    def after(n):
        saved, original = [], Image.Image.save

        def save(image, path, *args, **kwargs):
            saved.append(path)
            if len(saved) >= n:
                raise OSError(28, "No space left on device")
            return original(image, path, *args, **kwargs)
        monkeypatch.setattr(Image.Image, "save", save)
    return after
