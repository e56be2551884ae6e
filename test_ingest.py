"""
Tests for `record.py ingest`: synthetic videos (made here with PyAV) and folders of images, with inputs.csv and
JSON-lines logs, resampled to 15 fps; and the one-line errors for logs that do not fit. A few seconds.

    python -m pytest -q test_ingest.py
"""
import json
import signal
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import record
from record import ACTIONS

av = pytest.importorskip("av", reason="ingest decodes video with PyAV (pip install av)")

SIZE = (64, 48)              # footage frame size
LEVEL = 4                    # footage frame i is a uniform grey LEVEL * i, which tells its number after compression


def write_video(path, n_frames, fps, codec="ffv1", times=None):
    """A video whose frame i is grey LEVEL * i: ffv1 in .mkv is lossless, mpeg4 in .mp4 lossy like most footage.
    times: when each frame shows, in seconds, for a variable frame rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.bit_rate = 20_000_000                                  # high quality: the greys survive
        if times is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE[1], SIZE[0], 3), LEVEL * i, dtype=np.uint8), "rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_log(path, lines, names=ACTIONS):
    """An inputs.csv of rows (for a path ending in .csv), else JSON lines of objects."""
    csv = ["frame," + ",".join(names)] + [f"{i}," + ",".join(map(str, row)) for i, row in enumerate(lines)]
    path.write_text("\n".join(csv) + "\n" if path.suffix == ".csv" else "".join(json.dumps(o) + "\n" for o in lines))
    return path


def read(episode):
    """(the footage frame number each frame shows, the episode's column names, {name: its column})."""
    names, actions, paths, _ = record.read_episode(episode)
    shown = [round(np.asarray(Image.open(p)).mean() / LEVEL) for p in paths]
    return shown, names, {name: actions[:, j].tolist() for j, name in enumerate(names)}


# -----------------------------------------------------------------------------
# Resampling to 15 fps


def test_30fps_video_with_inputs_csv(tmp_path):
    """Two footage frames per output frame: keys held in either (a one-frame tap shows), mouse deltas summed."""
    video = write_video(tmp_path / "game.mp4", 60, 30, codec="mpeg4")
    rows = [[int(j == 5), 0, 0, int(10 <= j < 20), 0, 0, 0, 0, j, -1] for j in range(60)]
    shown, names, columns = read(record.ingest(video, write_log(tmp_path / "inputs.csv", rows), tmp_path / "data"))
    assert shown == list(range(0, 60, 2)) and names == ACTIONS
    assert columns["w"] == [int(k == 2) for k in range(30)] and columns["d"] == [int(5 <= k < 10) for k in range(30)]
    assert columns["mouse_dx"] == [4 * k + 1 for k in range(30)] and columns["mouse_dy"] == [-2] * 30


@pytest.mark.parametrize("fps", [20, 60])
def test_other_frame_rates_with_a_60hz_jsonl_log(tmp_path, fps):
    """Output frame k shows the footage frame on screen at k/15 s. Of 4 log lines a frame, mouse_dx and "yaw" (by
    --movements) are summed; a key held 0.50..0.567 s shows in frames 7 and 8; a stick at -1 on one line reads -1."""
    video = write_video(tmp_path / "game.mkv", fps, fps)            # one second
    log = [{"t": round(j / 60, 4), "mouse_dx": 1, "space": int(30 <= j < 34), "yaw": -1, "stick": -int(j % 4 == 1)}
           for j in range(60)]
    record.main(["ingest", str(video), "--inputs", str(write_log(tmp_path / "log.jsonl", log)), "--out",
                 str(tmp_path / "d"), "--movements", "mouse_dx,yaw", "--size", "16x12"])
    shown, names, columns = read(tmp_path / "d" / "game")
    assert shown == [k * fps // 15 for k in range(15)] and names == ACTIONS + ["stick", "yaw"]  # new names: a-z
    assert columns["mouse_dx"] == [4] * 15 and columns["space"] == [int(k in (7, 8)) for k in range(15)]
    assert columns["yaw"] == [-4] * 15 and columns["stick"] == [-1] * 15


def test_variable_frame_rate_keeps_frames_in_step_with_the_log(tmp_path):
    """0.5 s at 60 fps, then 2 s at 15 fps: counting frames at the average rate would show frame 30 late."""
    times = [i / 60 for i in range(30)] + [0.5 + j / 15 for j in range(30)]
    video = write_video(tmp_path / "game.mp4", 60, 30, codec="mpeg4", times=times)
    log = write_log(tmp_path / "log.jsonl", [{"t": round(j / 60, 4), "mouse_dx": 1} for j in range(150)])
    assert read(record.ingest(video, log, tmp_path / "d"))[0] == [4 * k for k in range(8)] + list(range(30, 59))


def test_a_video_cut_between_keyframes_keeps_its_frames_in_step_with_the_log(tmp_path):
    """Packets copied from the middle of a group of pictures (`ffmpeg -c copy`) do not decode until the next
    keyframe: the frames that do decode are placed by their own timestamps, not moved up into the gap."""
    whole = tmp_path / "whole.mkv"
    with av.open(str(whole), "w") as container:                      # H.264 with a keyframe every 10 frames
        stream = container.add_stream("h264", rate=30)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.codec_context.gop_size = 10
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE[1], SIZE[0], 3), LEVEL * i, dtype=np.uint8), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    cut = tmp_path / "cut.mkv"
    with av.open(str(whole)) as src, av.open(str(cut), "w") as dst:  # from the 5th packet on, as ffmpeg -c copy
        copy = dst.add_stream_from_template(src.streams.video[0])
        for packet in [p for p in src.demux(video=0) if p.size][5:]:
            packet.stream = copy
            dst.mux(packet)
    with av.open(str(cut)) as container:
        numbers = sorted(round(p.pts * 30 / 1000) for p in container.demux(video=0) if p.size)  # in the whole
    log = write_log(tmp_path / "log.jsonl", [{"t": (n - numbers[0]) / 30, "mouse_dx": n} for n in numbers])
    shown, _, columns = read(record.ingest(cut, log, tmp_path / "d"))
    kept = [k for k, n in enumerate(shown) if n > 10]                   # after the first keyframe, frame n shows
    assert len(kept) > 20 and all(columns["mouse_dx"][k] == 2 * shown[k] + 1 for k in kept)  # with log lines n, n+1


def test_a_log_shorter_than_the_footage_cuts_it_with_a_note_and_offset_moves_it(tmp_path, capsys):
    """A log of 0.5..1.5 s of a 2 s video leaves out the footage before and after. --offset 0.5 puts a log that
    starts at t=0 there too; --offset -0.5 leaves out the log's first half instead."""
    video = write_video(tmp_path / "game.mkv", 60, 30)
    late = write_log(tmp_path / "late.jsonl", [{"t": 0.5 + j / 30, "mouse_dx": j} for j in range(30)])
    early = write_log(tmp_path / "early.jsonl", [{"t": j / 30, "mouse_dx": j} for j in range(30)])
    for log, name, offset in ((late, "late", 0.0), (early, "shifted", 0.5)):
        shown, _, columns = read(record.ingest(video, log, tmp_path / "d", name, offset=offset))
        assert shown == list(range(15, 45, 2)) and columns["mouse_dx"] == [4 * k + 1 for k in range(15)]
        assert "note: the inputs cover 0.500..1.500 s of the footage's 0..2.0" in capsys.readouterr().out
    shown, _, columns = read(record.ingest(video, early, tmp_path / "d", "cut", offset=-0.5))
    assert shown == list(range(0, 14, 2)) and columns["mouse_dx"] == [4 * k + 31 for k in range(7)]


def test_a_folder_of_numbered_images(tmp_path):
    """0.png .. 11.png in frame order (by name, 10.png would follow 1.png), at the rate --fps gives."""
    (tmp_path / "shots").mkdir()
    for i in range(12):
        Image.new("RGB", SIZE, (LEVEL * i,) * 3).save(tmp_path / "shots" / f"{i}.png")
    inputs = write_log(tmp_path / "inputs.csv", [[0] * 8 + [i, 0] for i in range(12)])
    shown, _, columns = read(record.ingest(tmp_path / "shots", inputs, tmp_path / "d", fps=30))
    assert shown == list(range(0, 12, 2)) and columns["mouse_dx"] == [4 * k + 1 for k in range(6)]
    with pytest.raises(SystemExit, match="shots is a folder of images, which carries no frame rate: give it with"):
        record.ingest(tmp_path / "shots", inputs, tmp_path / "d", "again")
    (tmp_path / "shots" / "6.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit, match="6.png is corrupt or not an image"):
        record.ingest(tmp_path / "shots", inputs, tmp_path / "d", "again", fps=30)
    assert not (tmp_path / "d" / "again").exists()                  # no half episode


def test_a_second_session_gets_the_datasets_columns_and_size(tmp_path):
    """Session 1 presses jump and crouch, session 2 only w: both get the columns and frame size of the first (a name
    a log lacks is 0), so that they encode together; an inputs.csv too. --columns names those of a new dataset."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    first = write_log(tmp_path / "s1.jsonl", [{"t": 0, "jump": 1}, {"t": 0.5, "crouch": 1}])
    record.ingest(video, first, tmp_path / "d", "s1", size=(16, 12))
    second_log = write_log(tmp_path / "s2.jsonl", [{"t": 0, "w": 1}, {"t": 0.5, "w": 1}])
    second = record.ingest(video, second_log, tmp_path / "d", "s2")
    _, names, columns = read(second)
    assert names == ACTIONS + ["crouch", "jump"] and columns["w"] == [1] * 15 and columns["jump"] == [0] * 15
    assert Image.open(second / "frames" / "00000000.png").size == (16, 12)
    csv = write_log(tmp_path / "s3.csv", [[1, int(j < 10)] for j in range(30)], names=["w", "jump"])
    _, names, columns = read(record.ingest(video, csv, tmp_path / "d", "s3"))
    assert names == ACTIONS + ["crouch", "jump"] and columns["jump"] == [1] * 5 + [0] * 10
    fire = write_log(tmp_path / "fire.jsonl", [{"t": 0, "fire": 1}])
    assert read(record.ingest(video, fire, tmp_path / "new", columns=["fire", "jump"]))[1] == ACTIONS + ["fire", "jump"]


# -----------------------------------------------------------------------------
# Inputs that do not fit: one line, and no half episode left behind


def test_errors_are_one_line_and_leave_no_half_episode(tmp_path, monkeypatch):
    video = write_video(tmp_path / "game.mkv", 30, 30)
    record.ingest(video, write_log(tmp_path / "ok.jsonl", [{"t": 0, "w": 1}]), tmp_path / "d", "taken")
    cases = [([{"t": 5 + j / 30, "w": 1} for j in range(30)], "game", "(5.000..6.000 s) does not overlap the footage"),
             ([{"t": 0}, {"t": 0.1}, {"t": 0.05}, {"t": 0.2}], "game", "jsonl: the time t goes backwards on line 3"),
             ([{"t": 0, "fire": 1}], "game", "the inputs use ['fire'], not among the columns of"),
             ([{"t": 0, "w": 1}], "taken", "taken already exists; pass another --episode")]
    for log, name, message in cases:
        with pytest.raises(SystemExit) as info:
            record.ingest(video, write_log(tmp_path / "log.jsonl", log), tmp_path / "d", name)
        assert message in str(info.value) and "\n" not in str(info.value), (message, info.value)
    monkeypatch.setattr(record, "fit", lambda *_: signal.raise_signal(signal.SIGINT))  # Ctrl-C while writing
    with pytest.raises(KeyboardInterrupt):
        record.ingest(video, tmp_path / "ok.jsonl", tmp_path / "d")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["taken"]
