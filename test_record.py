"""
Tests for record.py: the Doom recorder, its scripted player, exact replay, and reading raw datasets. About 15 s.

    python -m pytest -q test_record.py
"""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import record
from record import ACTIONS

N_FRAMES = 90                # 6 seconds of play per episode: several behaviours of the scripted player


@pytest.fixture(scope="module", autouse=True)
def dataset(tmp_path_factory):
    """Two episodes of Doom, played (like every game here) where ViZDoom's empty _vizdoom/ stays out of the repo."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        record.record_doom("data", minutes=2 * N_FRAMES / (60 * record.FPS), episodes=2, size=(64, 48), seed=0)
        yield Path("data").resolve()


def frames_of(episode):
    names, actions, paths, meta = record.read_episode(episode)
    return np.stack([np.asarray(record.open_image(p)) for p in paths]), actions, names, meta


def column(actions, name):
    return actions[:, ACTIONS.index(name)]


# -----------------------------------------------------------------------------
# Recording and replaying Doom


def test_recording_and_its_reproducibility(dataset, tmp_path):
    frames, actions, names, meta = frames_of(dataset / "ep000")
    assert frames.shape == (N_FRAMES, 48, 64, 3) and actions.shape == (N_FRAMES, len(ACTIONS)) and names == ACTIONS
    assert meta["fps"] == 15 and (meta["width"], meta["height"]) == (64, 48) and meta["doom"]["seed"] == 0
    assert (np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3)) > 0.5).mean() > 0.5  # the view moves
    assert len({tuple(row) for row in actions[:, :8]}) >= 3 and not actions[:, [7, 9]].any()  # mouse_right, _dy: 0
    turns = column(actions, "mouse_dx") / record.TURN_UNIT
    assert (turns > 0).sum() >= 5 and (turns < 0).sum() >= 5        # turns both ways,
    assert np.abs(turns - np.round(turns)).max() < 0.05             # in whole Doom steps, which the CSV keeps
    other = record.read_episode(dataset / "ep001")                  # seed + 1: a play of its own
    assert (other[1] != actions).any(axis=1).mean() > 0.5 and other[3]["doom"]["seed"] == 1
    record.record_doom(tmp_path / "again", minutes=N_FRAMES / (60 * record.FPS), episodes=1, seed=0)
    for path in (tmp_path / "again" / "ep000").rglob("*.*"):       # the same flags give the same bytes
        assert path.read_bytes() == (dataset / path.relative_to(tmp_path / "again")).read_bytes(), path


def test_replay_is_exact_and_follows_other_actions(dataset):
    """The recorded actions give the recorded frames; a right turn (positive mouse_dx) moves what is seen to the
    left, so that pixel x then shows what x + 6 showed, and a left turn to the right."""
    frames, actions, _, _ = frames_of(dataset / "ep000")
    assert np.array_equal(record.replay(dataset / "ep000", 0, actions[:-1]), frames[1:])
    assert np.array_equal(record.replay(dataset / "ep000", 50, actions[50:60]), frames[51:61])
    still = record.replay(dataset / "ep000", 30, np.zeros((1, len(ACTIONS))))[0].astype(int)
    for degrees in (10.0, -10.0):
        turned = record.replay(dataset / "ep000", 30, [[0] * 8 + [degrees, 0]])[0].astype(int)
        error = {s: np.abs(turned[:, max(0, -s):64 - max(0, s)] - still[:, max(0, s):64 - max(0, -s)]).mean()
                 for s in range(-15, 16)}                           # how far pixel x moved: to x - s
        assert np.sign(min(error, key=error.get)) == np.sign(degrees) and abs(min(error, key=error.get)) >= 4


def held_in_doom(held, frames=6):
    """Holding the columns `held` ({name: value}) for `frames` frames from the start of MAP01: (map units moved
    forward, to the left, bullets fired, whether USE was held, degrees turned right, degrees of pitch, depth)."""
    import vizdoom
    game = record.start_doom(record.doom_settings(seed=0))
    angle, _, x, y = game.get_state().game_variables
    bullets, used, tics = game.get_game_variable(vizdoom.GameVariable.AMMO2), False, [game.get_episode_time()]
    for i in range(frames):
        record.doom_step(game, i, [held.get(name, 0.0) for name in ACTIONS])
        used, tics = used or bool(game.get_button(vizdoom.Button.USE)), tics + [game.get_episode_time()]
    assert np.diff(tics).tolist() == [2, 2, 3] * (frames // 3)      # Doom's 35 tics a second make 15 frames
    state, fired = game.get_state(), bullets - game.get_game_variable(vizdoom.GameVariable.AMMO2)
    angle_end, pitch, x_end, y_end = state.game_variables
    game.close()
    facing = np.radians(angle)                                      # ANGLE: degrees counter-clockwise from east
    forward = (x_end - x) * np.cos(facing) + (y_end - y) * np.sin(facing)
    left = (y_end - y) * np.cos(facing) - (x_end - x) * np.sin(facing)
    return forward, left, fired, used, (angle - angle_end + 180) % 360 - 180, pitch, state.depth_buffer.astype(float)


def test_each_column_holds_the_doom_control_it_stands_for():
    """w/s walk, a/d strafe, shift runs, a key counts above 0.5; mouse_left fires and space is USE; mouse_dx
    turns right by its degrees in whole steps, and a positive mouse_dy looks down (the floor comes nearer)."""
    for held, expected in [({"w": 0.6}, (1, 0)), ({"s": 1}, (-1, 0)), ({"a": 1}, (0, 1)), ({"d": 1}, (0, -1)),
                           ({"w": 0.4}, (0, 0)), ({"mouse_left": 1, "space": 1}, (0, 0))]:
        forward, left, fired, used, _, _, level = held_in_doom(held)
        assert (np.sign(np.round(forward / 20)), np.sign(np.round(left / 20))) == expected, held
        assert (fired >= 1, used) == (bool(held.get("mouse_left")), bool(held.get("space"))), held
    assert held_in_doom({"w": 1, "shift": 1})[0] > 1.5 * held_in_doom({"w": 1})[0]
    _, _, _, _, turned, pitch, down = held_in_doom({"mouse_dx": 7.3, "mouse_dy": 3.0})
    assert turned == pytest.approx(6 * round(7.3 / record.TURN_UNIT) * record.TURN_UNIT, abs=1e-3)
    assert pitch == pytest.approx(6 * round(3.0 / record.TURN_UNIT) * record.TURN_UNIT, abs=1e-3)
    assert level[-5:].mean() - down[-5:].mean() > 1                 # the bottom rows are nearer looking down


def test_other_maps_and_sizes_record_and_replay(tmp_path):
    """--map basic is ViZDoom's one-room scenario; a square --size is cut from the smallest 4:3 render covering it."""
    record.main(["doom", "--out", str(tmp_path / "d"), "--minutes", "0.0223", "--episodes", "1", "--map", "basic",
                 "--size", "192x192"])
    frames, actions, _, meta = frames_of(tmp_path / "d" / "ep000")
    assert meta["doom"]["scenario"] == "scenarios/basic.wad" and meta["doom"]["resolution"] == "RES_256X192"
    assert frames.shape == (20, 192, 192, 3) and record.doom_settings(0, "MAP07")["resolution"] == "RES_160X120"
    assert np.array_equal(record.replay(tmp_path / "d" / "ep000", 5, actions[5:15]), frames[6:16])


def test_atari_records_its_joystick_as_columns_replays_bit_for_bit_and_obeys_it(tmp_path):
    """record.py atari: the game's minimal action set as one-hot columns, a random player that holds each action
    for 1 to 8 frames, and replay() exact under the recorded inputs; holding right puts the player's (white)
    boxer right of where holding left does, and holding down below where holding up does."""
    pytest.importorskip("ale_py", reason="the Atari source needs ale-py (pip install ale-py)")
    record.main(["atari", "--game", "boxing", "--out", str(tmp_path / "a"), "--minutes", str(80 / 900),
                 "--episodes", "2"])
    frames, actions, names, meta = frames_of(tmp_path / "a" / "ep000")
    assert frames.shape == (40, 64, 64, 3) and meta["atari"] == {"game": "boxing", "seed": 0} and len(names) == 18
    assert names[:6] == ["noop", "fire", "up", "right", "left", "down"] and (actions.sum(axis=1) == 1).all()
    held = np.diff(np.flatnonzero(np.diff(np.append(actions.argmax(axis=1), -1)) != 0))  # frames each was held
    assert len(set(actions.argmax(axis=1))) >= 4 and held.max() <= 8
    assert np.array_equal(record.replay(tmp_path / "a" / "ep000", 0, actions[:-1]), frames[1:])
    white = {move: np.nonzero(record.replay(tmp_path / "a" / "ep000", 10, np.eye(18)[[names.index(move)] * 8])[-1]
                              .min(axis=2) > 200) for move in ("left", "right", "up", "down")}  # (rows, columns)
    assert white["right"][1].mean() > white["left"][1].mean() + 4 and white["down"][0].mean() > white["up"][0].mean()
    with pytest.raises(SystemExit, match="--game tetris3000 is not an Atari ROM"):
        record.record_atari(tmp_path / "b", "tetris3000")


def test_fit_keeps_the_centre():
    """A 12x2 picture fitted to 2x1 keeps its middle 4x2, each output pixel the average of the 2x2 it covers,
    with nothing of the red and blue strips cut away at the sides bleeding in; the same turned on its side."""
    picture = np.zeros((2, 12, 3), dtype=np.uint8)
    picture[:, :4], picture[:, 8:] = (255, 0, 0), (0, 0, 255)       # cut away
    picture[:, 4:8] = np.array([0, 100, 200, 250])[:, None]         # greys, kept
    expected = np.array([[[50] * 3, [225] * 3]], dtype=np.uint8)    # (0 + 100) / 2, (200 + 250) / 2
    assert np.array_equal(record.fit(Image.fromarray(picture), (2, 1)), expected)
    tall = Image.fromarray(np.ascontiguousarray(picture.transpose(1, 0, 2)))
    assert np.array_equal(record.fit(tall, (1, 2)), expected.transpose(1, 0, 2))


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_kill_while_recording_keeps_every_frame_with_its_row(tmp_path, stop):
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, record.__file__, "doom", "--out", str(out), "--minutes", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(n_frames):
        while len(list(out.glob("ep000/frames/*.png"))) < n_frames:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    wait_for(20)
    games = [int(pid) for f in Path(f"/proc/{proc.pid}/task").glob("*/children") for pid in f.read_text().split()]
    for game in games:
        os.kill(game, signal.SIGINT)                                  # Ctrl-C in a terminal reaches the game too:
    wait_for(40)                                                      # it plays on
    proc.send_signal(getattr(signal, stop))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert stdout.strip().splitlines()[-1].startswith(f"stopped: {out} keeps")
    _, actions, paths, _ = record.read_episode(out / "ep000")
    assert 40 <= len(paths) == len(actions) < 900 and not (out / "ep001").exists() and games


# -----------------------------------------------------------------------------
# The scripted player, in a stand-in world: a depth buffer that never changes

OPEN = np.full((48, 64), 30.0)                                      # open space all around


def play(seed, depth=OPEN, moving=True, n_frames=2000):
    """Its actions where it moves 5 map units a frame, or with moving=False stays where it is (pinned)."""
    player = record.ScriptedPlayer(random.Random(seed))
    return np.array([player.act(5.0 * i if moving else 0.0, 0.0, depth) for i in range(n_frames)])


def letters(actions):
    """One letter a frame: W walk (w held), S still (no input at all), L or R a turn in place, . anything else."""
    return "".join("W" if a[0] > 0.5 else "S" if not a.any() else "." if (a[:4] > 0.5).any() or abs(a[8]) < 3
                   else "LR"[int(a[8] > 0)] for a in actions)                # a[8]: mouse_dx


def test_scripted_player_varies_its_actions():
    """It switches keys or turn direction on about 1 frame in 3, stands still and walks on for seconds, mashes
    random key combinations (opposite keys too), and breaks off walks with short turns in place, either way."""
    actions = np.concatenate([play(seed) for seed in range(4)])
    keys, turn = actions[:, :4] > 0.5, np.sign(np.round(column(actions, "mouse_dx") / 3))
    assert (np.any(keys[1:] != keys[:-1], axis=1) | (turn[1:] != turn[:-1])).mean() > 0.25
    w, a, s, d = keys.T
    assert ((w & s) | (a & d)).sum() >= 20 and len({tuple(row) for row in actions[:, :7] > 0.5}) >= 40
    text = letters(actions)
    assert text.count("S") > 0.1 * len(text) and "S" * 10 in text and "W" * 20 in text
    assert len(re.findall("W(?=L{1,4}W)", text)) >= 10 and len(re.findall("W(?=R{1,4}W)", text)) >= 10


def test_scripted_player_avoids_walls_and_backs_off_when_stuck():
    """With a wall just ahead it turns instead of walking in; facing walls with one side open it turns toward that
    side; pinned (its position never changes) it backs off (s without w) instead of walking on."""
    wall = OPEN.copy()
    wall[:, 21:43] = 5.0                                            # the middle third of the view, close
    for seed in range(3):
        assert (column(play(seed, wall), "w") > 0.5).mean() < 0.1
        pinned = play(seed, moving=False)
        assert "W" * 16 not in letters(pinned) and (column(pinned, "s") > column(pinned, "w")).mean() > 0.1
        for side in "LR":
            depth = np.full((48, 64), 5.0)
            depth[:, slice(None, 21) if side == "L" else slice(43, None)] = 40.0
            text = letters(play(seed, depth, moving=seed % 2 == 0))
            assert text.count(side) > 2 * text.count("LR".replace(side, ""))


# -----------------------------------------------------------------------------
# Reading and writing raw datasets


def test_write_and_read_an_episode_and_each_mistake_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    frames, actions = rng.integers(0, 256, (5, 6, 8, 3), dtype=np.uint8), rng.integers(0, 2, (5, len(ACTIONS)))
    episode, csv = tmp_path / "data" / "ep", tmp_path / "data" / "ep" / "inputs.csv"
    assert record.write_episode(episode, zip(frames, actions), ACTIONS, {"fps": 30}) == 5
    names, read_actions, paths, meta = record.read_episode(episode)
    assert names == ACTIONS and np.array_equal(read_actions, actions) and read_actions.dtype == np.float32
    assert np.array_equal(np.asarray(Image.open(paths[4])), frames[4])
    assert meta == {"fps": 30, "width": 8, "height": 6}             # width and height from the first frame
    (episode / "meta.json").unlink()                                # meta.json is optional
    assert record.read_episode(episode)[3]["fps"] == 15 and record.read_inputs(csv)[0] == ACTIONS
    with pytest.raises(FileExistsError):                            # recorded data is never overwritten
        record.write_episode(episode, [], ACTIONS, {})

    good = csv.read_text()
    cases = [(lambda: record.list_episodes(tmp_path / "nowhere"), "nowhere does not exist"),
             (lambda: record.list_episodes(episode), "holds no episodes"),                  # spoil it, then read it:
             (lambda: ((episode / "frames" / "00000004.png").unlink(), record.read_episode(episode)),
              "frames/ has 4 images but inputs.csv 5 rows"),
             (lambda: (paths[2].write_bytes(b"-"), record.open_image(paths[2])), "00000002.png is corrupt or not"),
             (lambda: (csv.write_text(good + "5,0,0,0,0,0,0,0,0,0\n"), record.read_inputs(csv)),
              "inputs.csv:7: column 'mouse_dy' is missing"),
             (lambda: (csv.write_text(good + "5,0,0,0,0,0,0,0,0,left,0\n"), record.read_inputs(csv)),
              "inputs.csv:7: could not convert string to float: 'left'"),
             (lambda: (csv.write_text("w,a,s,d\n"), record.read_inputs(episode)), "the header must be 'frame,<action"),
             (lambda: record.main(["doom", "--out", str(tmp_path / "data")]), "data is not empty; pass a new --out"),
             (lambda: record.doom_settings(0, "map33"), "--map map33 is neither map01 .. map32 nor a scenario")]
    for call, message in cases:
        with pytest.raises(SystemExit) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value), (message, info.value)
    assert record.list_episodes(tmp_path / "data") == [episode]

