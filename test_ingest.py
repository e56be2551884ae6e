"""
Tests for `record.py ingest`: synthetic videos at 20, 30 and 60 fps and folders of images, with inputs.csv
and JSON-lines logs, resampled to 15 fps; and the one-line errors for bad footage and bad logs. A few
seconds; the videos are made here with PyAV, nothing is downloaded.

    python -m pytest -q test_ingest.py
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
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


def write_video(path, n_frames, fps, codec="ffv1", times=None, tick=Fraction(1, 1000)):
    """A video whose frame i is grey LEVEL * i. ffv1 (in .mkv) is lossless and its header has no frame
    count, mpeg4 (in .mp4) is lossy, like most real footage. times: when each frame shows, in seconds, for a
    variable frame rate, in whole ticks of the file's clock."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.bit_rate = 20_000_000                                  # high quality: greys survive exactly enough
        if times is not None:
            stream.time_base = stream.codec_context.time_base = tick
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE[1], SIZE[0], 3), LEVEL * i, dtype=np.uint8), "rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] / tick), tick
            container.mux(stream.encode(frame))
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


@pytest.mark.parametrize("fps, dropped", [(24, None), (25, None), (24, 10)])
def test_an_avi_whose_clock_ticks_once_a_frame(tmp_path, fps, dropped):
    """An .avi's time base is one frame: its timestamps are exact, also with a frame dropped, so no frame may
    show before its time (a tolerance of half a tick, right for a GIF's rounded hundredths, would pick the
    next frame early here)."""
    shown = [i for i in range(2 * fps) if i != dropped]                 # frame j of the file is shown[j] / fps
    video = write_video(tmp_path / "game.avi", len(shown), fps, "mpeg4", [i / fps for i in shown], Fraction(1, fps))
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * len(shown))
    episode = record.ingest(video, inputs, tmp_path / "data", size=(32, 24))
    on_screen = [max(j for j, i in enumerate(shown) if i <= k * fps // 15) for k in range(30)]
    assert frame_numbers(episode) == on_screen


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


def test_offset_shifts_the_log_to_where_it_starts_in_the_footage(tmp_path, capsys):
    """--offset 0.5: the log's t=0 is 0.5 s into the footage (a logger started after the recording), so the
    footage before is left out and output frame k is footage frame 15 + 2k of a 30 fps video, with the two log
    lines that start in its 1/15 s; --offset -0.5 leaves out the log's first 0.5 s instead."""
    video = write_video(tmp_path / "game.mkv", 60, 30)                # 2 s
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": j / 30, "mouse_dx": j} for j in range(30)])  # 1 s
    late = record.ingest(video, log, tmp_path / "data", "late", size=(32, 24), offset=0.5)
    assert "inputs start 0.500 s into the footage" in capsys.readouterr().out
    assert frame_numbers(late) == list(range(15, 45, 2))
    assert column(record.read_inputs(late)[1], "mouse_dx") == [4 * k + 1 for k in range(15)]  # lines 2k, 2k + 1
    early = record.ingest(video, log, tmp_path / "data", "early", size=(32, 24), offset=-0.5)
    assert frame_numbers(early) == list(range(0, 14, 2))              # 0.5 s of log left: 7 whole frames
    assert column(record.read_inputs(early)[1], "mouse_dx") == [4 * k + 31 for k in range(7)]  # lines 15 + 2k, ...


def test_variable_frame_rate_video_keeps_frames_in_step_with_the_log(tmp_path):
    """A screen recorder that drops to 15 fps when little moves: 0.5 s at 60 fps, then 2 s at 15 fps. Each
    output frame is the frame on screen at k/15 s by the file's timestamps; counting frames at the average
    rate would show frame 30 of the footage 0.5 s late, and every later frame out of step with its inputs."""
    times = [i / 60 for i in range(30)] + [0.5 + j / 15 for j in range(30)]
    video = write_video(tmp_path / "game.mp4", 60, 30, codec="mpeg4", times=times)
    log = [{"t": round(j / 60, 4), "mouse_dx": 1} for j in range(150)]
    episode = record.ingest(video, write_jsonl(tmp_path / "log.jsonl", log), tmp_path / "data", size=(32, 24))
    shown = frame_numbers(episode)
    assert shown[:8] == [4 * k for k in range(8)]                     # 60 fps: every 4th frame
    assert shown[8:] == [k + 22 for k in range(8, len(shown))]        # 15 fps: every frame, from frame 30
    assert len(shown) == 37                                           # the footage lasts 2.47 s


@pytest.mark.parametrize("n", [45, 5])
def test_a_gif_at_15_fps_whose_delays_are_whole_hundredths(tmp_path, n):
    """sample.py's own GIFs: delays 70, 60, 70 ms, so frame 1 shows at 0.07 s, not 1/15 s. Taken as exact,
    a third of the frames would be shown twice and a third left out; and 5 frames last 0.33 s, not 1/3 s."""
    images = [Image.new("RGB", SIZE, (LEVEL * i,) * 3) for i in range(n)]
    images[0].save(tmp_path / "dream.gif", save_all=True, append_images=images[1:],
                   duration=[(70, 60, 70)[i % 3] for i in range(n)])
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * n)
    episode = record.ingest(tmp_path / "dream.gif", inputs, tmp_path / "data", size=(32, 24))
    assert frame_numbers(episode) == list(range(n))


def test_a_video_at_29_97_fps_shows_no_frame_before_its_time(tmp_path):
    """NTSC's 30000/1001 fps: frame 2k shows 0.07k ms after k/15 s, so at k/15 s frame 2k - 1 is on screen."""
    video = write_video(tmp_path / "game.mp4", 30, Fraction(30000, 1001), "mpeg4",
                        [i * 1001 / 30000 for i in range(30)], Fraction(1001, 30000))
    episode = record.ingest(video, write_csv(tmp_path / "inputs.csv", [[0] * 10] * 30), tmp_path / "data",
                            size=(32, 24))
    assert frame_numbers(episode)[1:8] == [2 * k - 1 for k in range(1, 8)]


def write_h264(path, n_frames=60, fps=30):
    """An H.264 video with B-frames and a keyframe every 10 frames, frame i grey LEVEL * i; its packets."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.codec_context.gop_size = 10
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE[1], SIZE[0], 3), LEVEL * i, dtype=np.uint8), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        return [(p.pts, p.dts, p.is_keyframe) for p in container.demux(video=0) if p.size]


def copy_packets(source, target, keep, shift=0):
    """`ffmpeg -c copy`: the packets for which keep(n, pts) holds, their times moved back by `shift`."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        copy = dst.add_stream_from_template(src.streams.video[0])
        for n, packet in enumerate(p for p in src.demux(src.streams.video[0]) if p.size):
            if keep(n, packet.pts):
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, copy
                dst.mux(packet)
    return target


def test_a_video_cut_between_keyframes_starts_at_its_first_keyframe(tmp_path, capsys):
    """Packets copied from the middle of a GOP (`ffmpeg -ss ... -c copy` into .mkv) cannot be decoded: the
    frames that do decode keep their own timestamps, instead of moving up into the place of those that did
    not, both by a JSON-lines log's times and by an inputs.csv's rows (row j: the j-th frame shown)."""
    write_h264(tmp_path / "whole.mkv")
    cut = copy_packets(tmp_path / "whole.mkv", tmp_path / "cut.mkv", lambda n, pts: n >= 5)  # in decoding order
    with av.open(str(cut)) as container:
        shown = sorted(p.pts for p in container.demux(video=0) if p.size)  # frame j of the cut footage
    numbers = [round(pts * 30 / 1000) for pts in shown]                 # each one's number in the whole video
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": (pts - shown[0]) / 1000, "mouse_dx": number}
                                               for pts, number in zip(shown, numbers)])
    rows = write_csv(tmp_path / "inputs.csv", [[0] * 8 + [number, 0] for number in numbers])
    for inputs in (log, rows):
        episode = record.ingest(cut, inputs, tmp_path / inputs.suffix[1:], size=(32, 24))
        assert "before its first keyframe" in capsys.readouterr().out
        frames, dx = frame_numbers(episode), column(record.read_episode(episode)[1], "mouse_dx")
        assert frames[0] == 10 and frames == list(range(10, 10 + 2 * len(frames), 2))  # the keyframe on
        assert dx == [2 * f + 1 for f in frames]                        # each with its own inputs


def test_a_video_cut_with_an_edit_list_starts_where_it_shows(tmp_path, capsys):
    """`ffmpeg -ss ... -c copy` into .mp4: the packets from the keyframe before the cut are kept, marked
    discarded, so that they decode but do not show; the footage starts at the first frame shown."""
    packets = write_h264(tmp_path / "whole.mp4")
    tick = packets[1][0] - packets[0][0] if packets[1][0] > packets[0][0] else 512  # 1/30 s in the file's units
    first = sorted(pts for pts, _, _ in packets)[13]                    # the cut: frame 13 shows at 0
    cut = copy_packets(tmp_path / "whole.mp4", tmp_path / "cut.mp4", lambda n, pts: pts >= first - 3 * tick,
                       shift=first)
    with av.open(str(cut)) as container:
        assert sum(p.is_discard for p in container.demux(video=0) if p.size) == 3
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": round(j / 30, 4), "mouse_dx": 13 + j} for j in range(47)])
    episode = record.ingest(cut, log, tmp_path / "data", size=(32, 24))
    assert "keyframe" not in capsys.readouterr().out
    frames, dx = frame_numbers(episode), column(record.read_episode(episode)[1], "mouse_dx")
    assert frames == list(range(13, 13 + 2 * len(frames), 2)) and dx == [2 * f + 1 for f in frames]


def test_a_raw_h264_stream_goes_by_the_rate_it_states(tmp_path, capsys):
    """A raw .h264 has no timestamps, and its container rate is ffmpeg's default of 25: the stream's 30 counts."""
    video = write_video(tmp_path / "game.h264", 60, 30, codec="h264")
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 60)
    episode = record.ingest(video, inputs, tmp_path / "data", size=(32, 24))
    assert "no timestamps; its frames are taken at 30 fps" in capsys.readouterr().out
    assert frame_numbers(episode) == list(range(0, 60, 2))


def test_footage_shorter_than_a_frame_says_so(tmp_path):
    video = write_video(tmp_path / "game.mkv", 1, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": 0, "w": 1}, {"t": 0.05, "w": 1}])
    assert "less than one frame at 15 fps" in error_of(record.ingest, video, log, tmp_path / "data")


def test_footage_smaller_than_the_size_says_it_is_enlarged(tmp_path, capsys):
    video = write_video(tmp_path / "game.mkv", 4, 15)                  # 64x48
    record.ingest(video, write_csv(tmp_path / "inputs.csv", [[0] * 10] * 4), tmp_path / "data", size=(256, 144))
    out = capsys.readouterr().out
    assert "is 64x48, so its frames are enlarged to --size 256x144" in out
    assert "pass --size 64x32 or smaller" in out                        # 16:9 as asked: the 64x36 that fit keeps
    record.ingest(video, write_csv(tmp_path / "inputs.csv", [[0] * 10] * 4), tmp_path / "data", "b", size=(32, 24))
    assert "enlarged" not in capsys.readouterr().out


@pytest.mark.parametrize("line, problem", [({"t": 0, "": 1}, "cannot be a column"),
                                           ({"t": 0, "a,b": 1}, "cannot be a column"),
                                           ({"t": 0, " jump": 1}, "cannot be a column"),
                                           ({"t": 0, "x\ny": 1}, "cannot be a column"),
                                           ({"t": 0, "a\u2028b": 1}, "cannot be a column"),
                                           ({"t": 0, "mouse_dx": 1e39}, "not a finite number"),
                                           ({"t": 0, "w": 10 ** 400}, "not a finite number")])
def test_log_names_and_values_that_inputs_csv_cannot_hold(tmp_path, line, problem):
    video = write_video(tmp_path / "game.mkv", 4, 15)
    assert problem in error_of(record.ingest, video, write_jsonl(tmp_path / "log.jsonl", [line]), tmp_path / "d")
    csv = tmp_path / "inputs.csv"
    csv.write_text("frame,w\n" + "".join(f"{i},1e39\n" for i in range(4)))
    assert "'1e39', not a finite number" in error_of(record.read_inputs, csv)  # float32 would store inf
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("episode", ["a/b", "..", "../x", "/abs"])
def test_an_episode_name_stays_inside_the_dataset(tmp_path, episode):
    video = write_video(tmp_path / "game.mkv", 4, 15)
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 4)
    assert "is not a folder name" in error_of(record.ingest, video, inputs, tmp_path / "d", episode)
    assert not (tmp_path / "d").exists() and not (tmp_path / "x").exists()


def test_ingesting_the_current_folder_names_the_episode_after_it(tmp_path, monkeypatch):
    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(4):
        Image.new("RGB", SIZE, (LEVEL * i,) * 3).save(shots / f"{i}.png")
    monkeypatch.chdir(shots)
    episode = record.ingest(Path("."), write_csv(tmp_path / "inputs.csv", [[0] * 10] * 4), tmp_path / "d",
                            size=(32, 24), fps=15)
    assert episode == tmp_path / "d" / "shots" and record.list_episodes(tmp_path / "d") == [episode]


def test_an_out_through_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    video = write_video(tmp_path / "game.mkv", 4, 15)
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 4)
    assert "is a file, so --out" in error_of(record.ingest, video, inputs, tmp_path / "file")
    assert "is a file, so --out" in error_of(record.ingest, video, inputs, tmp_path / "file" / "d")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="the test holds ingest up with a named pipe (POSIX)")
def test_ctrl_c_stops_an_ingest_started_in_the_background(tmp_path):
    """A shell starts `cmd &` with Ctrl-C (SIGINT) ignored; ingest listens to it anyway, and writes nothing."""
    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(4):
        Image.new("RGB", SIZE).save(shots / f"{i}.png")
    (shots / "2.png").unlink()
    os.mkfifo(shots / "2.png")                                        # reading frame 2 waits here for ever
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 4)
    proc = subprocess.Popen([sys.executable, str(HERE / "record.py"), "ingest", str(shots), "--fps", "15",
                             "--inputs", str(inputs), "--out", str(tmp_path / "data")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                               signal.SIG_IGN))
    try:
        seen = ""
        while "ingest" not in seen:                                   # its progress bar: the frames are read
            seen += proc.stdout.read(1)
            assert proc.poll() is None, proc.communicate()
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        stderr = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped by Ctrl-C: no episode was written")
    assert not (tmp_path / "data" / "shots").exists()


def test_inputs_csv_of_other_columns(tmp_path):
    """Footage from another tool, with its own columns and no mouse: nothing to sum, each row as it is."""
    video = write_video(tmp_path / "game.mkv", 30, 15)
    inputs = tmp_path / "inputs.csv"
    inputs.write_text("frame,up,down,fire\n" + "".join(f"{i},{i % 2},0,{-i}\n" for i in range(30)))
    _, actions, names, _ = record.read_episode(record.ingest(video, inputs, tmp_path / "data", size=(32, 24)))
    assert names == ["up", "down", "fire"] and actions[:, 0].tolist() == [i % 2 for i in range(30)]
    assert actions[:, 2].tolist() == [-i for i in range(30)]


def test_extra_columns_that_are_movements_or_axes(tmp_path):
    """A 60 Hz log with a camera column "yaw" (a distance: --movements sums it, 4 lines a frame) and a stick
    "stick" pushed left (-1) on one line of every frame: it reads -1, where a max would read 0."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = [{"t": round(j / 60, 4), "yaw": -1, "stick": -int(j % 4 == 1), "jump": int(j == 9)} for j in range(60)]
    inputs = write_jsonl(tmp_path / "log.jsonl", log)
    episode = record.ingest(video, inputs, tmp_path / "data", size=(32, 24), movements=["mouse_dx", "yaw"])
    _, actions, names, meta = record.read_episode(episode)
    assert names == ACTIONS + ["jump", "stick", "yaw"]                # extra names in alphabetical order
    assert list(actions[:, -1]) == [-4] * 15 and list(actions[:, -2]) == [-1] * 15
    assert list(actions[:, -3]) == [int(k == 2) for k in range(15)]   # a one-line tap of a key is held
    assert "'yaw'" in meta["ingest"]["movements"]
    message = error_of(record.ingest, video, inputs, tmp_path / "other", movements=["roll"])
    assert "--movements names roll" in message


def test_sessions_whose_logs_name_different_keys_get_the_same_columns(tmp_path):
    """Session 1 presses jump, then crouch; session 2 the other way round; session 3 neither. Into one
    dataset, all three get the columns of the first (a name a log lacks is 0), so they encode together."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    data = tmp_path / "data"
    logs = {"s1": [{"t": 0, "jump": 1}, {"t": 0.5, "crouch": 1}], "s2": [{"t": 0, "crouch": 1}, {"t": 0.5, "jump": 1}],
            "s3": [{"t": 0, "w": 1}, {"t": 0.5, "frame": 15}]}             # a logger's frame counter is left out
    for name, log in logs.items():
        record.ingest(video, write_jsonl(tmp_path / f"{name}.jsonl", log), data, name, size=(32, 24))
        if name == "s1":                                              # first by name, and unreadable: passed over
            shutil.copytree(data / "s1", data / "s0")
            (data / "s0" / "inputs.csv").write_text("damaged\n")
    columns = [record.read_inputs(data / name)[0] for name in logs]
    assert columns == [ACTIONS + ["crouch", "jump"]] * 3
    assert record.read_inputs(data / "s3")[1][:, -2:].sum() == 0 and record.read_inputs(data / "s2")[1][0, -2] == 1
    fire = write_jsonl(tmp_path / "fire.jsonl", [{"t": 0, "fire": 1}])
    assert "'fire', which the episodes already in" in error_of(record.ingest, video, fire, data, "s4", size=(32, 24))
    episode = record.ingest(video, fire, tmp_path / "other", size=(32, 24), columns=["fire", "jump"])
    assert record.read_inputs(episode)[0] == ACTIONS + ["fire", "jump"]
    assert "--columns lacks" in error_of(record.ingest, video, fire, tmp_path / "third", columns=["jump"])
    csv = tmp_path / "s5.csv"                                        # an inputs.csv gets them too
    csv.write_text("frame,w,jump\n" + "".join(f"{i},1,{int(i < 10)}\n" for i in range(30)))  # 2 rows a frame
    names, values = record.read_inputs(record.ingest(video, csv, data, "s5", size=(32, 24)))
    assert names == ACTIONS + ["crouch", "jump"] and values[:, 0].all() and values[:, -1].tolist() == [1] * 5 + [0] * 10
    csv.write_text("frame,fire\n" + "".join(f"{i},1\n" for i in range(30)))
    assert "give it the columns of those episodes" in error_of(record.ingest, video, csv, data, "s6", size=(32, 24))


def test_a_log_in_milliseconds_is_refused_and_one_that_runs_on_says_so(tmp_path, capsys):
    """Timestamps in milliseconds: the first line covers the whole 1 s of footage, which would get one row of
    inputs repeated; a log in seconds that runs on well past the footage gets a note."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": round(j * 1000 / 60, 1), "w": 1} for j in range(60)])
    assert "are its timestamps in milliseconds?" in error_of(record.ingest, video, log, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": j / 15, "w": 1} for j in range(60)])  # 4 s of 1 s footage
    record.ingest(video, log, tmp_path / "data", size=(32, 24))
    assert "are the timestamps in seconds?" in capsys.readouterr().out
    long = write_video(tmp_path / "long.mkv", 64, 1)                   # 64 s at 1 fps, a log in ms at 60 Hz
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": round(j * 1000 / 60, 1), "w": 1} for j in range(3840)])
    assert "are its timestamps in milliseconds?" in error_of(record.ingest, long, log, tmp_path / "data", "ms")
    sparse = write_jsonl(tmp_path / "log.jsonl", [{"t": t * 1000, "w": 1} for t in (0, 5, 12, 30, 45, 60)])
    assert "are its timestamps in milliseconds?" in error_of(record.ingest, long, sparse, tmp_path / "data", "ms")
    early = write_jsonl(tmp_path / "log.jsonl", [{"t": j * 1000 / 60 - 200, "w": 1} for j in range(72)])
    assert "are its timestamps in milliseconds?" in error_of(record.ingest, video, early, tmp_path / "data", "ms")
    changes = write_jsonl(tmp_path / "log.jsonl", [{"t": 0, "w": 0}, {"t": 0.5, "w": 1}, {"t": 20, "w": 0}])
    record.ingest(video, changes, tmp_path / "data", "changes", size=(32, 24))  # in seconds, only a few lines
    session = write_jsonl(tmp_path / "log.jsonl", [{"t": j / 60, "w": 1} for j in range(120 * 60)])
    record.ingest(video, session, tmp_path / "data", "session", size=(32, 24))  # 2 min of a session, in seconds


def test_a_second_session_gets_the_datasets_frame_size(tmp_path, capsys):
    video = write_video(tmp_path / "game.mkv", 4, 15)                  # 64x48
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 4)
    first = record.ingest(video, inputs, tmp_path / "data", "first")
    assert record.read_meta(first)["width"] == 256                     # the default, 16:9
    assert "25% of the picture, at its top and bottom, is cut away" in capsys.readouterr().out
    second = record.ingest(video, inputs, tmp_path / "data", "second", size=(32, 24))
    (tmp_path / "data" / "a-latents").mkdir()                          # encode.py's output is no episode
    (tmp_path / "data" / "a-latents" / "meta.json").write_text(json.dumps({"width": 16, "height": 8}))
    (tmp_path / "data" / "broken").mkdir()                             # nor is a damaged one a size to take
    (tmp_path / "data" / "broken" / "inputs.csv").write_text(",".join(["frame", *ACTIONS]) + "\n")
    (tmp_path / "data" / "broken" / "meta.json").write_text(json.dumps({"width": 0, "height": 8}))
    third = record.ingest(video, inputs, tmp_path / "data", "third")
    assert record.read_meta(second)["width"] == 32 and record.read_meta(third)["width"] == 256
    assert "gets the frame size of" in capsys.readouterr().out
    done = subprocess.run([sys.executable, str(HERE / "record.py"), "ingest", str(video), "--inputs", str(inputs),
                           "--out", str(tmp_path / "data"), "--size", ""], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: --size '' is not WIDTHxHEIGHT"), done.stderr


def test_footage_below_15_fps_says_its_frames_repeat(tmp_path, capsys):
    record.ingest(write_video(tmp_path / "game.mkv", 10, 10), write_csv(tmp_path / "inputs.csv", [[0] * 10] * 10),
                  tmp_path / "data", size=(32, 24))
    assert "runs at 10 fps, below 15: each of its frames is shown about 1.5 times" in capsys.readouterr().out


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
    assert "frame 5 appears twice (05.png and 5.png)" in error_of(record.ingest, folder, inputs, tmp_path / "twice",
                                                                  fps=15)
    (folder / "05.png").unlink()
    (folder / "._5.png").write_bytes(b"\0")  # macOS's hidden AppleDouble file, on a copy to a USB stick: no frame
    hidden = record.ingest(folder, inputs, tmp_path / "data", "hidden", fps=15)
    (hidden / "frames" / "._00000003.png").write_bytes(b"\0")          # and in an episode copied the same way
    assert len(record.read_episode(hidden)[0]) == 12
    (folder / "._5.png").unlink()
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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a named pipe (POSIX)")
def test_a_log_through_a_pipe_is_read(tmp_path):
    """`--inputs <(convert log)` in a shell: a pipe is neither a file nor a folder."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    os.mkfifo(tmp_path / "pipe")
    text = "".join(json.dumps({"t": j / 30, "w": 1}) + "\n" for j in range(30))
    writer = threading.Thread(target=(tmp_path / "pipe").write_text, args=(text,), daemon=True)
    writer.start()
    _, actions, _, _ = record.read_episode(record.ingest(video, tmp_path / "pipe", tmp_path / "data", size=(32, 24)))
    assert column(actions, "w") == [1] * 15
    csv = tmp_path / "csv_pipe"                                       # a nameless inputs.csv is read as JSON lines
    csv.write_text(write_csv(tmp_path / "inputs.csv", [[0] * 10] * 30).read_text())
    assert error_of(record.ingest, video, csv, tmp_path / "data", "two") == (
        f"{csv} is an inputs.csv, which is read as one only from a file whose name ends in .csv; save it as one and "
        f"pass that")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_log_that_cannot_be_read_is_one_line(tmp_path, monkeypatch, suffix):
    """No permission, or (on Windows) a logger that still holds the file locked."""
    video = write_video(tmp_path / "game.mkv", 4, 15)
    log = write_csv(tmp_path / f"log{suffix}", [[0] * 10] * 4)

    def read_text(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(Path, "read_text", read_text)
    message = error_of(record.ingest, video, log, tmp_path / "data")
    assert message.startswith(f"{log} cannot be read (Permission denied)"), message
    assert not (tmp_path / "data").exists()


def test_log_that_does_not_overlap_the_video(tmp_path):
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": 5 + j / 30, "w": 1} for j in range(30)])
    assert "do not overlap" in error_of(record.ingest, video, log, tmp_path / "data")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("offset", [1e308, -1e308])
def test_an_offset_too_large_to_count_frames_in_says_they_do_not_overlap(tmp_path, offset):
    """(end - start) * 15 of such a log is an infinity, which no number of frames is."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": j / 30, "w": 1} for j in range(30)])
    assert "do not overlap" in error_of(record.ingest, video, log, tmp_path / "data", offset=offset)
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


def test_an_ingest_of_the_same_name_that_started_meanwhile_keeps_its_episode(tmp_path, monkeypatch):
    """Two ingests of gameplay.mp4 from different sessions, in parallel into one --out: the second to start
    writing stops, and leaves the first one's episode alone."""
    video = write_video(tmp_path / "game.mkv", 30, 30)
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 30)
    theirs = tmp_path / "data" / "game" / "inputs.csv"

    def footage_info(*args):                                          # decoding takes a while: the other starts
        theirs.parent.mkdir(parents=True)
        theirs.write_text("frame,w\n")
        return original(*args)
    original = record.footage_info
    monkeypatch.setattr(record, "footage_info", footage_info)
    assert "game already exists" in error_of(record.ingest, video, inputs, tmp_path / "data", size=(32, 24))
    assert theirs.read_text() == "frame,w\n"
    theirs = tmp_path / "data2" / "game" / "inputs.csv"                  # and a Ctrl-C before ours is claimed

    def tqdm(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(record, "tqdm", tqdm)
    with pytest.raises(KeyboardInterrupt):
        record.ingest(video, inputs, tmp_path / "data2", size=(32, 24))
    assert theirs.read_text() == "frame,w\n"


def test_a_full_disk_is_one_line_and_leaves_no_half_episode(tmp_path, full_disk):
    video = write_video(tmp_path / "game.mkv", 30, 30)
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 30)
    full_disk(3)
    message = error_of(record.ingest, video, inputs, tmp_path / "data", size=(32, 24))
    assert message.startswith(f"cannot write {tmp_path / 'data' / 'game'} (No space left on device)"), message
    assert not (tmp_path / "data" / "game").exists()


@pytest.mark.parametrize("flag, value, problem", [("--columns", "jump,,crouch", "an empty name"),
                                                  ("--columns", "jump, jump", "'jump' twice"),
                                                  ("--movements", "yaw,frame", "'frame' (a reserved name)")])
def test_column_lists_on_the_command_line(tmp_path, capsys, flag, value, problem):
    video = write_video(tmp_path / "game.mkv", 30, 30)
    log = write_jsonl(tmp_path / "log.jsonl", [{"t": 0, "w": 1}])
    with pytest.raises(SystemExit):
        record.main(["ingest", str(video), "--inputs", str(log), "--out", str(tmp_path / "data"), flag, value])
    lines = capsys.readouterr().err.strip().splitlines()
    assert problem in lines[-1] and f"ingest: error: argument {flag}: " in lines[-1]
    assert not (tmp_path / "data").exists()


def test_an_image_of_more_pixels_than_pillow_opens_is_one_line(tmp_path, monkeypatch):
    """Pillow refuses an image over 2 x MAX_IMAGE_PIXELS (179 million) with DecompressionBombError, no OSError;
    the limit is lowered here instead of writing such a file."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", SIZE, (LEVEL * i,) * 3).save(folder / f"{i}.png")
    inputs = write_csv(tmp_path / "inputs.csv", [[0] * 10] * 3)
    episode = record.ingest(folder, inputs, tmp_path / "data", fps=15, size=(32, 24))
    (episode / "meta.json").write_text(json.dumps({"fps": 15, "source": "ingest"}))  # its size from a frame
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for read, image in ((lambda: record.ingest(folder, inputs, tmp_path / "data", "again", (32, 24), 15), "0.png"),
                        (lambda: record.read_meta(episode), "00000000.png"),
                        (lambda: record.read_frames(episode), "00000000.png")):
        error = error_of(read)
        assert re.search(rf"{image} (is corrupt or not|cannot be read as) an image \(Image size \(\d+ pixels", error)
    assert not (tmp_path / "data" / "again").exists()
