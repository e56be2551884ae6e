"""Shared pytest fixtures: one short Doom recording, its `pixels` latents and a tiny run trained on them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from encode import encode_dataset
from record import record_doom

HERE = Path(__file__).resolve().parent
if "PYTEST_XDIST_WORKER" in os.environ:  # `pytest -n 2`: one thread for each of the two workers, not two each
    torch.set_num_threads(1)
TINY = ["--preset", "tiny", "--steps", "40", "--eval_every", "10", "--eval_batches", "2", "--preview_frames", "8",
        "--device", "cpu"]


def cli(*args, check=False, **kwargs):
    """Run one of the scripts as a user would, in a fresh process; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=HERE, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, check=check, **kwargs)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "doom"
    record_doom(out, minutes=160 / 900, episodes=2, size=(64, 48), seed=5)  # 2 episodes of 80 frames
    return out


@pytest.fixture(scope="session")
def latents(dataset):
    return encode_dataset(dataset, "pixels")


@pytest.fixture(scope="session")
def run(latents, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    train.main(["--data", str(latents), "--run", str(folder), *TINY])
    return folder
