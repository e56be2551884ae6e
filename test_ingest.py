"""
Tests for `record.py ingest`: synthetic videos at 20, 30 and 60 fps and folders of images, with inputs.csv
and JSON-lines logs, resampled to 15 fps; and the one-line errors for bad footage and bad logs. A few
seconds; the videos are made here with PyAV, nothing is downloaded.

    python -m pytest -q test_ingest.py
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import record
from record import ACTIONS, DataError

av = pytest.importorskip("av", reason="ingest decodes video with PyAV (pip install av)")

HERE = Path(__file__).resolve().parent
SIZE = (64, 48)              # footage frame size; ingest brings it to --size (32, 24) here
LEVEL = 4                    # frame i of the footage is uniform grey LEVEL * i (so at most 64 frames), and a
                             # frame tells its number even after lossy compression, which moves greys by 1 here


def write_video(path, n_frames, fps, codec="ffv1"):
    """A video whose frame i is grey LEVEL * i. ffv1 (in .mkv) is lossless and its header has no frame
    count, mpeg4 (in .mp4) is lossy, like most real footage."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.bit_rate = 20_000_000                                  # high quality: greys survive exactly enough
        for i in range(n_frames):
            frame = np.full((SIZE[1], SIZE[0], 3), LEVEL * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_csv(path, rows):
    lines = [",".join(["frame", *ACTIONS])] + [",".join([str(i), *map(str, row)]) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path, objects):
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objects))
    return path


def frame_numbers(episode):
    """The footage frame number that each frame of an ingested episode shows."""
    frames = record.read_frames(episode)
    return list(np.round(frames.reshape(len(frames), -1).mean(axis=1) / LEVEL).astype(int))


def column(actions, name):
    return list(actions[:, ACTIONS.index(name)])


def error_of(function, *args, **kwargs):
    with pytest.raises(DataError) as info:
        function(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# -----------------------------------------------------------------------------
# Resampling to 15 fps


def test_30fps_video_with_inputs_csv(tmp_path):
    """Two footage frames per output frame: keys held in either, mouse deltas summed."""
    video = write_video(tmp_path / "game.mp4", 60, 30, codec="mpeg4")
    rows = [[int(j == 5), 0, 0, int(10 <= j < 20), 0, 0, 0, 0, j, -1] for j in range(60)]  # w tapped on one frame
    inputs = write_csv(tmp_path / "inputs.csv", rows)
    episode = record.ingest(video, inputs, tmp_path / "data", size=(32, 24))
    frames, actions, names, meta = record.read_episode(episode)
    assert frames.shape == (30, 24, 32, 3) and names == ACTIONS and meta["fps"] == 15
    assert frame_numbers(episode) == list(range(0, 60, 2))
    assert column(actions, "w") == [int(k == 2) for k in range(30)]  # a one-frame tap is kept
    assert column(actions, "d") == [int(5 <= k < 10) for k in range(30)]
    assert column(actions, "mouse_dx") == [4 * k + 1 for k in range(30)]  # (2k) + (2k + 1)
    assert column(actions, "mouse_dy") == [-2] * 30


@pytest.mark.parametrize("fps", [20, 30, 60])
def test_other_frame_rates_with_a_jsonl_log(tmp_path, fps):
    """Output frame k shows the footage frame on screen at k/15 s; a 60 Hz log is summed 4 lines a frame."""
    video = write_video(tmp_path / "game.mkv", fps, fps)                # one second
    log = [{"t": round(j / 60, 4), "mouse_dx": 1, "space": int(30 <= j < 34)} for j in range(60)]
    episode = record.ingest(video, write_jsonl(tmp_path / "log.jsonl", log), tmp_path / "data", size=(32, 24))
    _, actions, names, _ = record.read_episode(episode)
    assert frame_numbers(episode) == [k * fps // 15 for k in range(15)]
    assert names == ACTIONS and len(actions) == 15
    assert column(actions, "mouse_dx") == [4] * 15
    assert column(actions, "space") == [int(k in (7, 8)) for k in range(15)]  # 0.50-0.567 s spans frames 7 and 8


def test_log_shorter_than_the_video_trims_it_with_a_note(tmp_path, capsys):
    video = write_video(tmp_path / "game.mkv", 60, 30)
    log = [{"t": 0.5 + j / 30, "w": 1, "jump": j % 2} for j in range(30)]  # 0.5..1.5 s; "jump" is an extra key
    episode = record.ingest(video, write_jsonl(tmp_path / "log.jsonl", log), tmp_path / "data", size=(32, 24))
    out = capsys.readouterr().out
    assert "inputs start 0.500 s into the footage" in out and "0.500 s before the footage does" in out
    _, actions, names, _ = record.read_episode(episode)
    assert names == ACTIONS + ["jump"] and len(actions) == 15
    assert frame_numbers(episode) == list(range(15, 45, 2))
    assert actions[:, ACTIONS.index("w")].all() and actions[:, -1].all()


def test_folder_of_images(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", SIZE, (LEVEL * i,) * 3).save(folder / f"shot_{i:03d}.png")
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 8 + [1, 0]] * 12)
    episode = record.ingest(folder, inputs, tmp_path / "data", fps=30, size=(32, 24))
    _, actions, _, _ = record.read_episode(episode)
    assert frame_numbers(episode) == [0, 2, 4, 6, 8, 10] and column(actions, "mouse_dx") == [2] * 6
    assert "--fps" in error_of(record.ingest, folder, inputs, tmp_path / "other")


def test_folder_of_unpadded_numbers_is_read_in_frame_order(tmp_path):
    """0.png .. 11.png: by name, 10.png would come right after 1.png and pair with row 2."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", SIZE, (LEVEL * i,) * 3).save(folder / f"{i}.png")
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 8 + [i, 0] for i in range(12)])
    episode = record.ingest(folder, inputs, tmp_path / "data", fps=15, size=(32, 24))
    _, actions, _, _ = record.read_episode(episode)
    assert frame_numbers(episode) == list(range(12)) and column(actions, "mouse_dx") == list(range(12))
    (folder / "5.png").unlink()  # every later frame would pair with the row before its own
    assert "frame 5 is missing (at 6.png)" in error_of(record.ingest, folder, inputs, tmp_path / "gap", fps=15)
    Image.new("RGB", SIZE).save(folder / "05.png")
    Image.new("RGB", SIZE).save(folder / "5.png")
    assert "frame 5 appears twice" in error_of(record.ingest, folder, inputs, tmp_path / "twice", fps=15)
    (folder / "05.png").unlink()
    Image.new("RGB", SIZE).save(folder / "cover.png")  # would sort between the frames by name
    assert "cover.png has no frame number" in error_of(record.ingest, folder, inputs, tmp_path / "cover", fps=15)
    assert not any((tmp_path / name).exists() for name in ("gap", "twice", "cover"))


# -----------------------------------------------------------------------------
# Bad footage and bad logs: one line that says what to do, and no half episode left behind


def test_undecodable_video(tmp_path):
    video = tmp_path / "broken.mp4"
    video.write_bytes(np.random.default_rng(0).bytes(5000))
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10])
    done = subprocess.run([sys.executable, str(HERE / "record.py"), "ingest", str(video), "--inputs", str(inputs),
                           "--out", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "cannot be decoded" in lines[0], done.stderr
    assert not (tmp_path / "data").exists()


def test_inputs_csv_with_fewer_rows_than_frames(tmp_path):
    video = write_video(tmp_path / "game.mkv", 60, 30)
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 59)
    assert "has 59 rows but" in error_of(record.ingest, video, inputs, tmp_path / "data")


def test_timestamp_going_backwards(tmp_path):
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": 0.0}, {"t": 0.1}, {"t": 0.05}, {"t": 0.2}])
    message = error_of(record.ingest, video, log, tmp_path / "data")
    assert "log.jsonl:3" in message and "goes backwards" in message


def test_log_lines_that_share_a_timestamp(tmp_path):
    """A logger with a coarse clock writes two lines per tick: the last tick still lasts one tick, not 0 s,
    so the log covers the whole second."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": j // 2 / 15, "mouse_dx": 1} for j in range(30)])
    _, actions, _, _ = record.read_episode(record.ingest(video, log, tmp_path / "data", size=(32, 24)))
    assert column(actions, "mouse_dx") == [2] * 15


def test_inputs_that_are_a_folder(tmp_path):
    video = write_video(tmp_path / "game.mkv", 30, 30)
    assert "is a folder; pass the inputs log" in error_of(record.ingest, video, tmp_path, tmp_path / "data")


def test_log_that_does_not_overlap_the_video(tmp_path):
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": 5 + j / 30, "w": 1} for j in range(30)])
    assert "do not overlap" in error_of(record.ingest, video, log, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_corrupt_image_leaves_no_half_episode(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", SIZE).save(folder / f"{i:03d}.png")
    (folder / "006.png").write_bytes(b"not a png")
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 10)
    assert "006.png is corrupt" in error_of(record.ingest, folder, inputs, tmp_path / "data", fps=15)
    assert not (tmp_path / "data" / "shots").exists()
