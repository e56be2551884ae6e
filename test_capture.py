"""
Tests for `record.py screen`: a recording on a virtual X display (Xvfb) driven by xdotool (skipped without the
Debian packages xvfb and xdotool), and the capture clock with a stand-in screen. About 5 s.

    python -m pytest -q test_capture.py
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import record
from record import ACTIONS

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
    """A fresh 320x240 Xvfb display, e.g. ':5'."""
    if not (shutil.which("Xvfb") and shutil.which("xdotool")):
        pytest.skip("needs Xvfb and xdotool (apt-get install xvfb xdotool)")
    pytest.importorskip("Xlib", reason="python-xlib (installed with pynput on Linux) paints the test screen")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
                              pass_fds=[write], stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        yield ":" + pipe.readline().strip()                           # Xvfb writes "N\n" once it is ready
    server.terminate()
    server.wait()


def painter(name):
    """A function that fills the whole screen of display `name` with one colour, at once."""
    from Xlib import display
    connection = display.Display(name)

    def paint(colour):
        r, g, b = COLOURS[colour]
        connection.screen().root.change_attributes(background_pixel=(r << 16) | (g << 8) | b)
        connection.screen().root.clear_area(0, 0, 0, 0)               # 0 x 0 = the whole window
        connection.sync()
    return paint


def colours_of(episode):
    _, actions, paths, meta = record.read_episode(episode)
    means = np.array([np.asarray(Image.open(p)).reshape(-1, 3).mean(axis=0) for p in paths])  # (N, 3)
    nearest = np.linalg.norm(means[:, None] - np.array(list(COLOURS.values())), axis=2).argmin(axis=1)
    return [list(COLOURS)[i] for i in nearest], actions, meta


def test_screen_recording_matches_what_was_sent(display, tmp_path):
    env, paint, out = {**os.environ, "DISPLAY": display}, painter(display), tmp_path / "data"
    paint("black")
    proc = subprocess.Popen([sys.executable, record.__file__, "screen", "--out", str(out), "--countdown",
                             "0", "--region", "40,30,240,180", "--size", "32x24"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(list(out.glob("*/frames/*.png"))) < 6:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    for args, colour, hold in SCRIPT:
        subprocess.run(["xdotool", *args], env=env, check=True)       # the input first, then the screen
        paint(colour)
        time.sleep(hold)
    proc.send_signal(signal.SIGINT)                                   # Ctrl-C
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and stdout.strip().endswith("stopped"), stderr

    first, second = sorted(out.iterdir())                             # the pause split the recording in two
    colours, actions, meta = colours_of(first)                        # everything landed, the episode is valid
    second_colours, second_actions, second_meta = colours_of(second)
    assert {"black", "red", "green", "blue", "white"} <= set(colours) and (meta["width"], meta["height"]) == (32, 24)
    assert actions[:, ACTIONS.index("mouse_dx")].sum() == 40 and actions[:, ACTIONS.index("mouse_dy")].sum() == 25
    assert not actions[:, [ACTIONS.index(k) for k in ("a", "s", "d", "shift", "mouse_right")]].any()
    assert not second_actions[:, :8].any() and second_colours.count("yellow") >= 3 and colours.count("grey") <= 1
    # Row i holds the inputs between frames i and i+1, so an input sent just before the screen turned a colour
    # belongs to the row before that colour's first frame: one frame either way, on a machine that keeps up.
    timed = not (meta["dropped_after"] or second_meta["dropped_after"])
    for name, start, stop in [("w", "red", "green"), ("space", "blue", "white"), ("mouse_left", "blue", "white")]:
        rows = np.flatnonzero(actions[:, ACTIONS.index(name)])
        assert len(rows) and np.all(np.diff(rows) == 1), (name, rows)  # held once
        if timed:
            assert abs(rows[0] - (colours.index(start) - 1)) <= 1 and abs(rows[-1] - (colours.index(stop) - 1)) <= 1


# -----------------------------------------------------------------------------
# Without a display: the capture loop with a stand-in screen and clock


class Clock:                 # time.perf_counter and time.sleep on a clock that moves only when told: exact timing
    now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("slow, crash, grabbed, dropped_after", [((), False, range(6), []),
                                                                ({3}, False, [0, 1, 2, 4, 5, 6], [2]),
                                                                ((), True, range(7), [])])
def test_the_capture_clock(tmp_path, monkeypatch, slow, crash, grabbed, dropped_after):
    """A grab every 1/15 s, grab n (from 1) red 10 * n. The pointer moves n pixels just before grab n, between
    frames n - 2 and n - 1: row i holds the move made before grab i + 2. Where grab 3 takes 1.6 frame periods,
    slot 3 could only be grabbed 0.6 of a period late, more than half: it is dropped, never filled with a copy.
    Whatever ends the stretch, the pause key or a crash, every frame grabbed is kept with its row."""
    clock, inputs, times = Clock(), record.InputState(pointer=(0, 0)), []
    monkeypatch.setattr(record, "time", clock)

    def grab():
        times.append(clock.now * record.FPS)                          # in frame periods
        n = len(times)
        inputs.move(n * (n + 1) // 2, 0)                              # n pixels on from the last position
        clock.now += 1.6 / record.FPS if n in slow else 0
        if n == 7:
            raise RuntimeError("the display went away")
        if n == 6 and not crash:
            inputs.key(inputs.pause_key, True)                        # the pause key ends the stretch
        return Image.new("RGB", (40, 30), (10 * n, 0, 0))

    with pytest.raises(RuntimeError) if crash else contextlib.nullcontext():
        record.record_stretch(grab, inputs, tmp_path / "ep", (8, 6), deadline=15 / record.FPS)
    _, actions, paths, meta = record.read_episode(tmp_path / "ep")
    assert [np.asarray(Image.open(p))[0, 0, 0] for p in paths] == [10 * n for n in range(1, 7)]
    assert times == pytest.approx(list(grabbed)) and meta["dropped_after"] == dropped_after
    assert actions[:, ACTIONS.index("mouse_dx")].tolist() == [2, 3, 4, 5, 6, 7 * crash]


def test_input_rules():
    inputs = record.InputState(pointer=(100, 100), pause_key="f9")
    for name, down in [("w", True), ("space", True), ("space", False), ("f9", True)]:  # a tap within a frame counts
        inputs.key(name, down)
    inputs.move(110, 95)
    inputs.move(130, 90)                                              # moves add up
    assert inputs.paused and inputs.row() == [1, 0, 0, 0, 1, 0, 0, 0, 30, -10]  # the pause key is no input
    assert inputs.row() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]             # w still held, the tap and moves are gone
    assert record.key_name(type("Key", (), {"char": "W"})()) == "w"   # shift+w is still w
    assert record.key_name(type("Key", (), {"char": None, "name": "shift_r"})()) == "shift"
