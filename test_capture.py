"""
Tests for `record.py screen`: a real recording on a virtual X display (Xvfb) whose keyboard and mouse are
driven by xdotool, a crash in the middle of a recording, and the input rules. The display tests need the
Debian packages xvfb and xdotool (.ci/run installs them) and skip without them. About 10 s.

    python -m pytest -q test_capture.py
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import record
from record import ACTIONS, DataError

HERE = Path(__file__).resolve().parent
SCREEN = (320, 240)          # the virtual display: small, so grabbing it is cheap
COLOURS = {"black": (0, 0, 0), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
           "white": (255, 255, 255), "grey": (128, 128, 128), "yellow": (255, 255, 0)}
SCRIPT = [                   # (xdotool arguments, then the colour the screen turns, seconds to hold it)
    (["keydown", "w"], "red", 0.5),
    (["keyup", "w", "mousemove_relative", "40", "0"], "green", 0.4),
    (["keydown", "space", "mousedown", "1"], "blue", 0.4),
    (["keyup", "space", "mouseup", "1", "mousemove_relative", "0", "25"], "white", 0.4),
    (["key", "F9"], "grey", 0.4),                                     # pause: nothing is recorded
    (["key", "F9"], "yellow", 0.5),                                   # resume, into a second episode
]


@pytest.fixture(scope="module")
def display():
    """A fresh Xvfb display, e.g. ':5'."""
    for tool in ("Xvfb", "xdotool"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (apt-get install xvfb xdotool)")
    pytest.importorskip("Xlib", reason="python-xlib (installed with pynput on Linux) paints the test screen")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
                               "-nolisten", "tcp"], pass_fds=[write], stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()               # Xvfb writes "N\n" once it is ready; read all of it
    if not number:
        server.kill()
        pytest.skip("Xvfb did not start")
    yield f":{number}"
    server.terminate()
    server.wait()


def painter(name):
    """A function that fills the whole screen of display `name` with one colour, at once."""
    from Xlib import display

    connection = display.Display(name)
    root = connection.screen().root

    def paint(colour):
        r, g, b = COLOURS[colour]
        root.change_attributes(background_pixel=(r << 16) | (g << 8) | b)
        root.clear_area(0, 0, 0, 0)                                   # 0 x 0 = the whole window
        connection.sync()
    return paint


def nearest_colour(frames):
    names, rgb = list(COLOURS), np.array(list(COLOURS.values()))
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)           # (N, 3)
    return [names[i] for i in np.linalg.norm(means[:, None] - rgb[None], axis=2).argmin(axis=1)]


# -----------------------------------------------------------------------------
# A real recording


def test_screen_recording_matches_what_was_sent(display, tmp_path):
    env = {**os.environ, "DISPLAY": display}
    paint = painter(display)
    paint("black")
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, str(HERE / "record.py"), "screen", "--out", str(out), "--countdown",
                             "0", "--region", "40,30,240,180", "--size", "32x24"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(out.glob("*/inputs.csv")) or len(next(out.glob("*/inputs.csv")).read_text().splitlines()) < 6:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    for args, colour, hold in SCRIPT:
        subprocess.run(["xdotool", *args], env=env, check=True)       # the input first, then the screen
        paint(colour)
        time.sleep(hold)
    proc.send_signal(signal.SIGINT)                                   # Ctrl-C
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    print(stdout)

    first, second = sorted(out.iterdir())                             # the pause split the recording in two
    frames, actions, names, meta = record.read_episode(first)         # everything landed, the episode is valid
    second_frames, second_actions, _, second_meta = record.read_episode(second)
    colours = nearest_colour(frames)
    assert names == ACTIONS and frames.shape[1:] == (24, 32, 3) and meta["capture"]["frames"] == len(frames)
    assert {"black", "red", "green", "blue", "white"} <= set(colours)

    def rows_with(name):
        return np.flatnonzero(actions[:, ACTIONS.index(name)])

    for name in ("w", "space", "mouse_left"):                         # each held once, w first
        assert len(rows_with(name)) and np.all(np.diff(rows_with(name)) == 1), (name, rows_with(name))
    assert rows_with("w")[-1] <= rows_with("space")[0]
    assert actions[:, ACTIONS.index("mouse_dx")].sum() == 40 and actions[:, ACTIONS.index("mouse_dy")].sum() == 25
    assert not actions[:, [ACTIONS.index(k) for k in ("a", "s", "d", "shift", "mouse_right")]].any()
    assert not second_actions[:, :8].any()

    # Timing. Row i holds the inputs between frames i and i+1, so an input sent just before the screen turned
    # a colour belongs to the row before that colour's first frame: allow one frame either way. This needs a
    # machine that keeps up: one that drops frames is likely to hand key events to the recorder late too.
    dropped = meta["capture"]["dropped"] + second_meta["capture"]["dropped"]
    if dropped:
        pytest.skip(f"the machine was too busy to check timing: the recorder dropped {dropped} frames")

    def onset(colour):
        return colours.index(colour) - 1

    for name, start, stop in [("w", "red", "green"), ("space", "blue", "white"), ("mouse_left", "blue", "white")]:
        rows = rows_with(name)
        assert abs(rows[0] - onset(start)) <= 1 and abs(rows[-1] - onset(stop)) <= 1, (name, rows, colours)
    for name, colour in [("mouse_dx", "green"), ("mouse_dy", "white")]:
        assert abs(rows_with(name)[0] - onset(colour)) <= 1, (name, rows_with(name), colours)
    assert colours.count("grey") <= 1 and nearest_colour(second_frames).count("yellow") >= 3


@pytest.mark.parametrize("flag, message", [(["--region", "300,200,100,100"], "reaches outside the screen"),
                                           (["--pause-key", "notakey"], "'notakey' names no key"),
                                           (["--pause-key", "W"], "--pause-key w is one of the recorded inputs"),
                                           (["--pause-key", " "], "--pause-key space is one of the recorded")])
def test_screen_flags_that_cannot_work(display, tmp_path, flag, message):
    done = subprocess.run([sys.executable, str(HERE / "record.py"), "screen", "--out", str(tmp_path / "d"),
                           "--countdown", "0", *flag],
                          env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "d").exists()


def test_a_dataset_of_other_columns_is_refused_before_recording(display, tmp_path):
    """An episode ingested with a log of its own keys: encode.py would refuse the two together at the end."""
    meta = {"fps": 15, "width": 8, "height": 6, "actions": ["jump"], "source": "ingest"}
    record.write_episode(tmp_path / "d" / "run1", [(np.zeros((6, 8, 3), np.uint8), [1.0])], ["jump"], meta)
    shutil.copytree(tmp_path / "d" / "run1", tmp_path / "d" / "run0")
    (tmp_path / "d" / "run0" / "inputs.csv").write_text("damaged\n")  # an episode first in order, but unreadable
    done = subprocess.run([sys.executable, str(HERE / "record.py"), "screen", "--out", str(tmp_path / "d"),
                           "--countdown", "0", "--minutes", "0.01"],
                          env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "have other input columns (jump in run1)" in lines[0], lines
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["run0", "run1"]


def test_ctrl_c_in_the_countdown_stops_without_a_traceback(display, tmp_path):
    """Ctrl-C is how a screen recording ends, also before it began."""
    proc = subprocess.Popen([sys.executable, str(HERE / "record.py"), "screen", "--out", str(tmp_path / "d"),
                             "--countdown", "60"], env={**os.environ, "DISPLAY": display},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while "recording in" not in proc.stdout.readline():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in stderr and stdout.strip().endswith("stopped"), stderr
    assert not any((tmp_path / "d").glob("*/inputs.csv"))


# -----------------------------------------------------------------------------
# Without a display: the capture loop with a stand-in for the screen


def test_a_crash_loses_nothing_and_drops_are_counted(tmp_path):
    calls = []

    def grab():
        calls.append(time.perf_counter())
        if len(calls) == 3:
            time.sleep(0.2)                                           # a busy machine: about 2 slots pass
        if len(calls) == 9:
            raise RuntimeError("the display went away")
        return Image.new("RGB", (40, 30), (20 * len(calls), 0, 0))

    meta = {"fps": 15, "width": 8, "height": 6, "actions": ACTIONS, "source": "test", "capture": {}}
    inputs = record.InputState()
    inputs.press("w")
    with pytest.raises(RuntimeError, match="went away"):
        record.record_stretch(grab, inputs, tmp_path / "ep", meta, (8, 6))
    frames, actions, _, meta = record.read_episode(tmp_path / "ep")
    assert len(frames) == 8 and list(frames[:, 0, 0, 0]) == [20 * i for i in range(1, 9)]
    assert actions[:, ACTIONS.index("w")].all()
    assert meta["capture"]["frames"] == 8 and meta["capture"]["dropped"] >= 2 and 2 in meta["capture"]["dropped_after"]


def test_a_full_disk_is_one_line_and_keeps_the_frames_written(tmp_path, full_disk):
    full_disk(4)
    meta = {"fps": 15, "width": 8, "height": 6, "actions": ACTIONS, "source": "test", "capture": {}}
    with pytest.raises(DataError) as info:
        record.record_stretch(lambda: Image.new("RGB", (40, 30)), record.InputState(), tmp_path / "ep", meta, (8, 6))
    assert str(info.value).startswith(f"cannot write {tmp_path / 'ep'} (No space left on device)"), info.value
    assert "\n" not in str(info.value)
    frames, actions, _, _ = record.read_episode(tmp_path / "ep")
    assert len(frames) == len(actions) == 3


class Clock:
    """time.perf_counter and time.sleep for record_stretch on a clock that moves only when it sleeps or a grab
    takes time, so that its timing is exact on a machine of any speed."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def capture(tmp_path, monkeypatch, n_frames, slow=()):
    """An episode of n_frames frames captured by record_stretch from a screen whose grab n (from 1) is red 10 * n,
    just before which the pointer moves n pixels right, and which takes 1.6 frame periods where n is in `slow`
    (else no time). Returns the times of the grabs in frame periods, and the episode's actions and meta."""
    clock, inputs, times = Clock(), record.InputState(pointer=(0, 0)), []
    monkeypatch.setattr(record, "time", clock)

    def grab():
        times.append(clock.now * record.FPS)
        n = len(times)
        inputs.move(n * (n + 1) // 2, 0)                              # n pixels on from the last position
        if n in slow:
            clock.now += 1.6 / record.FPS
        if n == n_frames:
            inputs.press(inputs.pause_key)                            # the pause key ends the stretch
        return Image.new("RGB", (40, 30), (10 * n, 0, 0))

    meta = {"fps": 15, "width": 8, "height": 6, "actions": ACTIONS, "source": "test", "capture": {}}
    record.record_stretch(grab, inputs, tmp_path / "ep", meta, (8, 6), deadline=(n_frames + 9) / record.FPS)
    frames, actions, _, meta = record.read_episode(tmp_path / "ep")              # (a deadline, should it not stop)
    assert list(frames[:, 0, 0, 0]) == [10 * n for n in range(1, n_frames + 1)]  # every grab, in order
    return times, actions, meta


def test_row_i_of_a_screen_recording_holds_the_inputs_between_frames_i_and_i_plus_1(tmp_path, monkeypatch):
    """The pointer moves n pixels just before grab n, that is between frames n - 2 and n - 1: row i holds the
    move made before grab i + 2, and the last row what came after the last frame (nothing here)."""
    times, actions, meta = capture(tmp_path, monkeypatch, 6)
    assert times == pytest.approx(range(6)) and meta["capture"]["dropped"] == 0  # a grab every 1/15 s
    assert list(actions[:, ACTIONS.index("mouse_dx")]) == [2, 3, 4, 5, 6, 0]


def test_a_slot_too_late_to_grab_is_dropped_and_the_row_before_covers_the_gap(tmp_path, monkeypatch):
    """Grab 3 (frame 2) takes 1.6 frame periods: slot 3 could only be grabbed 0.6 of a period late, more than
    half, so it is dropped and frame 3 is grabbed on time at slot 4; row 2 holds all that happened until then."""
    times, actions, meta = capture(tmp_path, monkeypatch, 6, slow={3})
    assert times == pytest.approx([0, 1, 2, 4, 5, 6])
    assert meta["capture"]["dropped"] == 1 and meta["capture"]["dropped_after"] == [2]
    assert list(actions[:, ACTIONS.index("mouse_dx")]) == [2, 3, 4, 5, 6, 0]


def test_input_rules():
    inputs = record.InputState(pause_key="f9", pointer=(100, 100))
    inputs.press("w")
    inputs.press("space")
    inputs.release("space")                                           # a tap within one frame still counts
    inputs.move(110, 95)
    inputs.move(130, 90)                                              # moves add up
    inputs.press("f9")                                                # the pause key is not an input
    assert inputs.paused
    assert inputs.row() == [1, 0, 0, 0, 1, 0, 0, 0, 30, -10]
    assert inputs.row() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]             # w still held, the tap and moves are gone
    assert record.key_name(type("Key", (), {"char": "W"})()) == "w"   # shift+w is still w
    assert record.key_name(type("Key", (), {"char": None, "name": "shift_r"})()) == "shift"


@pytest.mark.parametrize("text", ["0,0,100", "--5,0,100,100", "0,0,\u00b2,100"])  # a doubled minus, a superscript 2
def test_bad_region_text(text):
    with pytest.raises(DataError, match="x,y,width,height"):
        record.parse_region(text)
    assert record.parse_region(" -5, 0,100 ,100") == (-5, 0, 100, 100)
