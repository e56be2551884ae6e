"""
Playing inside the dream (sample.py --play): the server's protocol on the tiny run, then the page in a real
headless browser (Debian's chromium and chromium-driver with selenium; skipped with a reason without them).

    python -m pytest -q test_play.py
"""
import contextlib
import io
import json
import shutil
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import sample

try:
    from selenium import webdriver
except ImportError:
    webdriver = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(run, tmp_path):
    """A game served on a free port from a copy of the tiny run; yields (game, post, address)."""
    shutil.copytree(run, tmp_path / "run")
    game = sample.Game(sample.Dreamer(tmp_path / "run", steps=1), None, 0, seed=0, mouse_scale=0.1)
    port = free_port()
    thread = threading.Thread(target=sample.play, args=(game, "127.0.0.1", port), daemon=True)
    thread.start()
    address = f"http://127.0.0.1:{port}"

    def post(path, body=None):
        request = urllib.request.Request(address + path, json.dumps(body or {}).encode(), method="POST")
        return urllib.request.urlopen(request, timeout=60).read()

    for _ in range(100):  # until it listens
        try:
            urllib.request.urlopen(address + "/info", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    yield game, post, address
    with contextlib.suppress(OSError):  # the test may have ended the game itself
        post("/end")
    thread.join(timeout=10)


def test_inputs_in_a_frame_out_r_resets_and_the_saved_inputs_replay_the_same_frames(server):
    game, post, address = server
    info = json.loads(urllib.request.urlopen(address + "/info").read())
    assert info["columns"] == game.names and info["missing"] == [] and info["steps"] == 1
    keys = [["arrowup"], ["arrowright", "shift"], ["arrowright"], [" "], []]
    frames = [np.asarray(Image.open(io.BytesIO(post("/step", {"keys": k, "dx": 20, "dy": 0})))) for k in keys]
    assert frames[0].shape == (48, 64, 3) and np.array_equal(frames, game.frames)
    rows = {name: [float(r[j]) for r in game.rows] for j, name in enumerate(game.names)}
    assert rows["w"] == [1, 0, 0, 0, 0] and rows["shift"] == [0, 1, 0, 0, 0] and rows["space"] == [0, 0, 0, 1, 0]
    assert rows["mouse_dx"] == pytest.approx([2, 12, 12, 2, 2])            # 20 pixels x 0.1, plus TURN for ->
    post("/reset")
    assert game.frames == [] and np.array_equal(post("/step", {"keys": ["arrowup"], "dx": 20, "dy": 0}),
                                                _png(frames[0]))          # the same start, noise and inputs
    for k in keys[1:]:
        post("/step", {"keys": k, "dx": 20, "dy": 0})
    saved = json.loads(post("/end"))
    assert Image.open(saved["gif"]).n_frames == 5
    again = sample.dream(game.dreamer, game.ep["name"], game.start, 5, saved["csv"], seed=0)[0]
    assert np.array_equal(again, frames)                                  # replayed by sample.py, frame for frame


def _png(frame):
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "PNG")
    return out.getvalue()


def test_holding_turn_right_moves_the_picture_the_way_doom_does(run):
    """8 frames holding the right arrow are closer to what Doom renders turning right than turning left."""
    game = sample.Game(sample.Dreamer(run), None, 0, seed=0, mouse_scale=0.1)
    dream = np.stack([game.step(game.row({"arrowright"})) for _ in range(8)]).astype(float)
    truth = {turn: game.dreamer.replay(game.ep["name"], game.dreamer.T - 1, np.stack([game.row({turn})] * 8))
             for turn in ("arrowright", "arrowleft")}
    assert ((dream - truth["arrowright"]) ** 2).mean() < ((dream - truth["arrowleft"]) ** 2).mean()


def test_one_line_errors(run, tmp_path):
    dreamer = sample.Dreamer(run, steps=1)
    with pytest.raises(SystemExit, match="no episode 'ep9'"):
        sample.Game(dreamer, "ep9", 0, 0, 0.1)
    with pytest.raises(SystemExit, match="--start 75 leaves no frame to dream in ep001"):
        sample.Game(dreamer, None, 75, 0, 0.1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit, match=f"cannot serve on 127.0.0.1:{taken.getsockname()[1]} .*another --port"):
            sample.play(sample.Game(dreamer, None, 0, 0, 0.1), "127.0.0.1", taken.getsockname()[1])
    with pytest.raises(SystemExit, match="has no checkpoint"):
        sample.main(["--run", str(tmp_path), "--play"])


def browser():
    """A headless Chromium driven by selenium, or a reason to skip."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (webdriver and chromium and driver):
        pytest.skip("the browser test needs selenium and Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--window-size=800,700"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_the_page_plays_in_a_real_browser(server, tmp_path):
    game, post, address = server
    chrome = browser()
    try:
        chrome.get(address)
        status = lambda: chrome.find_element("id", "status").text  # noqa: E731
        deadline = time.time() + 60
        while len(game.frames) < 5:                                        # frames arrive without any input
            assert time.time() < deadline, status()
            time.sleep(0.1)
        assert "frames/s" in status() and all(row.sum() == 0 for row in game.rows[:3])
        body = chrome.find_element("tag name", "body")
        webdriver.ActionChains(chrome).key_down("w").perform()                        # hold W: the next rows have it
        while not any(row[game.names.index("w")] for row in game.rows):
            assert time.time() < deadline, status()
            time.sleep(0.1)
        generator = game.generator
        webdriver.ActionChains(chrome).key_up("w").send_keys_to_element(body, "r").perform()  # R: back to the start
        while game.generator is generator:
            assert time.time() < deadline, status()
            time.sleep(0.05)
        chrome.save_screenshot(str(tmp_path / "play.png"))
        assert Image.open(tmp_path / "play.png").size[0] >= 640
    finally:
        chrome.quit()
