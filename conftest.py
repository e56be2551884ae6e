"""Shared pytest fixtures: one short Doom recording and its `pixels` latents for every test file."""
import pytest

from encode import encode_dataset
from record import record_doom


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "doom"
    record_doom(out, minutes=160 / 900, episodes=2, size=(64, 48), seed=5)  # 2 episodes of 80 frames
    return out


@pytest.fixture(scope="session")
def latents(dataset):
    return encode_dataset(dataset, "pixels").parent
