"""
Tests for record.py: the Doom recorder, exact replay, and the checks on raw datasets.

    python -m pytest -q test_record.py
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import record
from record import ACTIONS, DataError

N_FRAMES = 90                # 6 seconds of play: enough for several different behaviours of the scripted player
RECORD_PY = pathlib.Path(__file__).parent / "record.py"


@pytest.fixture(scope="module", autouse=True)
def work_in_tmp(tmp_path_factory):
    """ViZDoom makes an empty _vizdoom/ folder in the working directory; keep it out of the repo."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(scope="module")
def doom_episode(tmp_path_factory):
    out = tmp_path_factory.mktemp("doom") / "data"
    record.record_doom(out, minutes=N_FRAMES / (60 * record.FPS), episodes=1, size=(64, 48), seed=0)
    return out / "ep000"


def make_episode(folder, n_frames=5, size=(8, 6)):
    """A small valid episode of random frames and actions, for breaking in the tests below."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n_frames, size[1], size[0], 3), dtype=np.uint8)
    actions = rng.integers(0, 2, (n_frames, len(ACTIONS))).astype(float)
    meta = {"fps": 15, "width": size[0], "height": size[1], "actions": ACTIONS, "source": "test"}
    record.write_episode(folder, zip(frames, actions), ACTIONS, meta)
    return folder


def error_of(function, *args):
    """The message of the DataError that function(*args) raises, checked to be one line."""
    with pytest.raises(DataError) as info:
        function(*args)
    message = str(info.value)
    assert "\n" not in message and message
    return message


# -----------------------------------------------------------------------------
# Recording and replaying Doom

def test_recording(doom_episode):
    frames, actions, names, meta = record.read_episode(doom_episode)
    assert frames.shape == (N_FRAMES, 48, 64, 3) and frames.dtype == np.uint8
    assert actions.shape == (N_FRAMES, len(ACTIONS)) and names == ACTIONS
    assert meta["fps"] == 15 and (meta["width"], meta["height"]) == (64, 48) and meta["source"] == "vizdoom"
    assert meta["doom"]["tic_pattern"] == [2, 2, 3] and meta["doom"]["seed"] == 0
    assert len(list((doom_episode / "frames").glob("*.png"))) == N_FRAMES

    changes = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert (changes > 0.5).mean() > 0.5                             # the view moves most of the time
    combos = {tuple(row) for row in actions[:, :8]}
    assert len(combos) >= 3                                         # several different key combinations
    turns = actions[:, ACTIONS.index("mouse_dx")]
    assert (turns > 0).sum() >= 5 and (turns < 0).sum() >= 5        # turns both ways
    assert not actions[:, ACTIONS.index("mouse_right")].any() and not actions[:, ACTIONS.index("mouse_dy")].any()


def test_scripted_player_switches_often():
    """The flicks make the next action hard to guess from the last ones: in open space the moving keys or
    the turn direction change on about 1 frame in 3 (1 in 6 without flicks)."""
    player = record.ScriptedPlayer(random.Random(0))
    depth = np.full((48, 64), 30.0)                                   # open space all around
    actions = np.array([player.act(5.0 * i, 0.0, depth) for i in range(3000)])  # always moving: never stuck
    keys, turn = actions[:, :4], np.sign(np.round(actions[:, ACTIONS.index("mouse_dx")] / 3))
    switches = np.any(keys[1:] != keys[:-1], axis=1) | (turn[1:] != turn[:-1])
    assert switches.mean() > 0.25


def play(seed, depth, moving=True, n_frames=2000):
    """The scripted player's actions (n_frames, A) where the depth buffer always reads `depth` and it moves 5 map
    units a frame, or with moving=False stays where it is (pinned against something)."""
    player = record.ScriptedPlayer(random.Random(seed))
    return np.array([player.act(5.0 * i if moving else 0.0, 0.0, depth) for i in range(n_frames)])


def longest_run(mask):
    longest = run = 0
    for value in mask:
        run = run + 1 if value else 0
        longest = max(longest, run)
    return longest


OPEN = np.full((48, 64), 30.0)                                      # open space all around


def test_scripted_player_stands_still_and_mashes_random_key_combinations():
    """Part of the time it does nothing at all, for seconds on end; and it mashes random key combinations,
    such as opposite keys together, which no purposeful behaviour holds."""
    actions = np.concatenate([play(seed, OPEN) for seed in range(4)])
    still = ~actions.any(axis=1)
    assert still.mean() > 0.1 and longest_run(still) >= 10
    w, a, s, d = (actions[:, ACTIONS.index(k)] > 0.5 for k in "wasd")
    assert ((w & s) | (a & d)).sum() >= 20
    assert len({tuple(row) for row in actions[:, :7] > 0.5}) >= 40  # of the 128 combinations of the 7 Doom keys


def test_scripted_player_backs_off_when_stuck_and_turns_before_a_wall():
    """Pinned (its position never changes), it soon backs off (s without w) instead of walking on; a player that
    moves walks on for seconds, and one with a wall just ahead turns away instead of walking into it."""
    wall = OPEN.copy()
    wall[:, 21:43] = 5.0                                            # the middle third of the view: a wall, close
    for seed in range(4):
        pinned, free, walled = play(seed, OPEN, moving=False), play(seed, OPEN), play(seed, wall)
        w, s = (pinned[:, ACTIONS.index(k)] > 0.5 for k in "ws")
        assert longest_run(w) <= 15 and (s & ~w).mean() > 0.1
        assert longest_run(free[:, ACTIONS.index("w")] > 0.5) >= 20
        assert (walled[:, ACTIONS.index("w")] > 0.5).mean() < 0.1


@pytest.mark.parametrize("moving", [True, False])
@pytest.mark.parametrize("side", [-1, 1])
def test_scripted_player_turns_toward_open_space(side, moving):
    """Facing walls with only the left (side -1) or the right third of the view open, it turns in place toward
    the open side (negative mouse_dx: left) far more often than away from it, also when pinned."""
    depth = np.full((48, 64), 5.0)
    depth[:, slice(None, 21) if side < 0 else slice(43, None)] = 40.0
    for seed in range(4):
        actions = play(seed, depth, moving)
        in_place = ~(actions[:, :4] > 0.5).any(axis=1)
        turns = np.sign(actions[in_place, ACTIONS.index("mouse_dx")])
        assert (turns == side).sum() > 2 * (turns == -side).sum()


def test_scripted_player_breaks_off_a_walk_with_short_turns_either_way():
    """A walk in open space is broken off by short turns in place (a flick of up to 4 frames, then the walk goes
    on), to the left as well as to the right."""
    breaks = {-1: 0, 1: 0}
    for seed in range(4):
        actions = play(seed, OPEN)
        w, dx = actions[:, ACTIONS.index("w")] > 0.5, actions[:, ACTIONS.index("mouse_dx")]
        turning = ~(actions[:, :4] > 0.5).any(axis=1) & (np.abs(dx) >= 3)
        t = 1
        while t < len(actions):
            if w[t - 1] and turning[t]:
                end = t
                while end < len(actions) and turning[end] and np.sign(dx[end]) == np.sign(dx[t]):
                    end += 1
                if end < len(actions) and end - t <= 4 and w[end]:
                    breaks[int(np.sign(dx[t]))] += 1
                t = end
            t += 1
    assert min(breaks.values()) >= 10


def test_recording_is_reproducible(doom_episode, tmp_path):
    record.record_doom(tmp_path / "again", minutes=N_FRAMES / (60 * record.FPS), episodes=1, seed=0)
    frames, actions, _, _ = record.read_episode(doom_episode)
    frames_again, actions_again, _, _ = record.read_episode(tmp_path / "again" / "ep000")
    assert np.array_equal(actions, actions_again) and np.array_equal(frames, frames_again)


def test_each_episode_is_its_own_play_turned_in_whole_doom_steps(tmp_path):
    """Episode e is played with seed + e, Doom's and the player's, so no episode repeats another's inputs; and
    mouse_dx holds whole steps of 1/65536 circle (what Doom turns by), which the CSV's 6 digits keep, so that a
    replay of the CSV turns exactly as the recording did."""
    record.record_doom(tmp_path / "data", minutes=60 / (60 * record.FPS), episodes=2, seed=7)
    (_, first, _, meta0), (_, second, _, meta1) = (record.read_episode(tmp_path / "data" / f"ep00{e}") for e in (0, 1))
    assert [meta0["doom"]["seed"], meta1["doom"]["seed"]] == [7, 8]
    assert (first != second).any(axis=1).mean() > 0.5                # most rows differ
    steps = np.concatenate([first, second])[:, ACTIONS.index("mouse_dx")] / record.TURN_UNIT
    assert np.abs(steps).max() > 100 and np.abs(steps - np.round(steps)).max() < 0.05


def test_replay_is_exact(doom_episode):
    frames, actions, _, _ = record.read_episode(doom_episode)
    assert np.array_equal(record.replay(doom_episode, 0, actions[:-1]), frames[1:])
    start = 50
    replayed = record.replay(doom_episode, start, actions[start:start + 10])
    assert np.array_equal(replayed, frames[start + 1:start + 11])


def test_replay_follows_other_actions(doom_episode):
    frames, actions, _, _ = record.read_episode(doom_episode)
    start = 30
    turning = np.zeros((10, len(ACTIONS)), dtype=np.float32)
    turning[:, ACTIONS.index("mouse_dx")] = 10.0
    replayed = record.replay(doom_episode, start, turning)
    assert replayed.shape == (10, 48, 64, 3)
    assert not np.array_equal(replayed, frames[start + 1:start + 11])
    assert np.abs(replayed[-1].astype(int) - frames[start + 10]).mean() > 5


def test_other_maps_record_and_replay(doom_episode, tmp_path):
    """--map basic plays ViZDoom's one-room scenario on top of Freedoom 2, and replays exactly from meta.json."""
    record.record_doom(tmp_path / "basic", minutes=30 / (60 * record.FPS), episodes=1, seed=0, level="basic")
    episode = tmp_path / "basic" / "ep000"
    frames, actions, _, meta = record.read_episode(episode)
    assert meta["doom"]["scenario"] == "scenarios/basic.wad"
    assert np.abs(frames[0].astype(int) - record.read_episode(doom_episode)[0][0]).mean() > 10  # another place
    assert np.array_equal(record.replay(episode, 5, actions[5:15]), frames[6:16])
    assert record.doom_settings(0, "MAP07")["map"] == "map07"
    assert "map01 .. map32" in error_of(record.record_doom, tmp_path / "none", 1.0, 1, (64, 48), 0, "map33")
    assert not (tmp_path / "none").exists()


def test_the_share_cut_away_is_never_rounded_up_to_all(capsys):
    for w, h, size, share in ((4000, 1, (8, 8), "99.97%"), (1000, 10, (8, 8), "99.00%"), (400, 300, (8, 8), "25%")):
        record.note_fit(w, h, size, "the video")
        assert f"{share} of the picture, at its left and right, is cut away" in capsys.readouterr().out


@pytest.mark.parametrize("tall", [False, True])
def test_fit_keeps_the_centre_and_nothing_of_the_sides_cut_away(tall):
    """A 12x2 picture fitted to 2x1 keeps its middle 4x2, each output pixel the average of the 2x2 pixels it
    covers, with nothing of the red and blue strips cut away at the sides bleeding in; the same turned on its
    side for a picture taller than the size."""
    picture = np.zeros((2, 12, 3), dtype=np.uint8)
    picture[:, :4] = (255, 0, 0)                                    # cut away
    picture[:, 4:8] = np.array([0, 100, 200, 250])[:, None]         # greys, kept
    picture[:, 8:] = (0, 0, 255)                                    # cut away
    expected, size = np.array([[[50] * 3, [225] * 3]], dtype=np.uint8), (2, 1)  # (0 + 100) / 2, (200 + 250) / 2
    if tall:
        picture, expected, size = picture.transpose(1, 0, 2), expected.transpose(1, 0, 2), (1, 2)
    assert np.array_equal(record.fit(Image.fromarray(np.ascontiguousarray(picture)), size), expected)


def test_a_size_of_another_shape_keeps_the_centre_of_a_render_big_enough_for_it(tmp_path, capsys):
    """Doom renders 4:3. A square --size is the middle of the same 4:3 render, never a stretched picture, and
    a large one is rendered large, not enlarged from 160x120 (which adds no detail); replay does the same."""
    frames = 4 / (60 * record.FPS)
    record.record_doom(tmp_path / "wide", frames, 1, (256, 192), seed=3)
    record.record_doom(tmp_path / "square", frames, 1, (192, 192), seed=3)
    assert "25% of the picture, at its left and right, is cut away" in capsys.readouterr().out
    wide, _, _, _ = record.read_episode(tmp_path / "wide" / "ep000")
    square, actions, _, meta = record.read_episode(tmp_path / "square" / "ep000")
    assert meta["doom"]["resolution"] == "RES_256X192" and square.shape == (4, 192, 192, 3)
    assert np.array_equal(square, wide[:, :, 32:224])             # the same picture with its sides cut away
    assert np.array_equal(record.replay(tmp_path / "square" / "ep000", 0, actions[:3]), square[1:])
    assert record.doom_settings(0, size=(64, 48))["resolution"] == "RES_160X120"   # the quickstart's, as before
    assert record.doom_settings(0, size=(256, 256))["resolution"] == "RES_400X300"  # 300x300 shrunk to 256x256
    assert record.doom_settings(0, size=(4096, 3072))["resolution"] == "RES_1600X1200"


def test_replay_errors(doom_episode, tmp_path):
    still = np.zeros((1, len(ACTIONS)))
    assert "outside" in error_of(record.replay, doom_episode, N_FRAMES, still)
    assert "not a Doom recording" in error_of(record.replay, make_episode(tmp_path / "ep"), 0, still)


@pytest.mark.parametrize("degrees", [7.3, -11.1, 0.01])
def test_mouse_dx_is_degrees_per_frame(degrees):
    doom = record.doom_settings(seed=0)
    game = record.start_doom(doom)
    try:
        for i in range(3):                                          # frames of 2, 2 and 3 tics
            before = game.get_state().game_variables[0]             # ANGLE, counter-clockwise in degrees
            action = [0.0] * len(ACTIONS)
            action[ACTIONS.index("mouse_dx")] = degrees
            record.doom_step(game, doom, i, action)
            turned_right = (before - game.get_state().game_variables[0] + 180) % 360 - 180
            assert turned_right == pytest.approx(round(degrees / record.TURN_UNIT) * record.TURN_UNIT, abs=1e-6)
    finally:
        game.close()


def test_a_frame_is_2_2_or_3_tics_so_that_doom_runs_at_15_fps():
    """Doom's clock ticks 35 times a second. Frame i is followed by 2, 2, 3, 2, 2, 3, ... tics (meta.json's
    tic_pattern, from frame 0 on), so 3 frames take 7 tics and the recording shows 15 frames a second."""
    doom = record.doom_settings(seed=0)
    game = record.start_doom(doom)
    try:
        tics = []
        for i in range(9):
            before = game.get_episode_time()                        # in tics
            record.doom_step(game, doom, i, [0.0] * len(ACTIONS))
            tics.append(game.get_episode_time() - before)
    finally:
        game.close()
    assert tics == [2, 2, 3] * 3 == [doom["tic_pattern"][i % 3] for i in range(9)]
    assert sum(tics) * record.FPS == 9 * 35                         # 9 frames at 15 fps = 21 tics at 35 a second


def held_in_doom(held, frames=6):
    """What holding the columns `held` ({name: value}) for `frames` frames from the start of MAP01 does: (map
    units moved forward, map units moved to the left, bullets fired, whether Doom's USE button was held,
    degrees of pitch, depth buffer)."""
    import vizdoom

    doom = record.doom_settings(seed=0)
    game = record.start_doom(doom)
    try:
        angle, _, x, y = game.get_state().game_variables
        bullets, used = game.get_game_variable(vizdoom.GameVariable.AMMO2), False
        for i in range(frames):
            record.doom_step(game, doom, i, [held.get(name, 0.0) for name in ACTIONS])
            used = used or bool(game.get_button(vizdoom.Button.USE))
        state = game.get_state()
        _, pitch, x_end, y_end = state.game_variables
        fired = bullets - game.get_game_variable(vizdoom.GameVariable.AMMO2)
    finally:
        game.close()
    facing = np.radians(angle)                                      # ANGLE: degrees counter-clockwise from east
    forward = (x_end - x) * np.cos(facing) + (y_end - y) * np.sin(facing)
    left = (y_end - y) * np.cos(facing) - (x_end - x) * np.sin(facing)
    return forward, left, fired, used, pitch, state.depth_buffer.astype(float)


def test_each_column_holds_the_doom_control_it_stands_for():
    """w/s walk forward/back, a/d strafe left/right, shift runs, mouse_left fires the pistol, space is USE
    (which opens doors; there is none to see in front of the start), and a key is held only above 0.5."""
    forward, left, fired, used, _, _ = held_in_doom({"w": 1.0})
    assert forward > 20 and abs(left) < 1 and fired == 0 and not used
    assert held_in_doom({"w": 1.0, "shift": 1.0})[0] > 1.5 * forward
    forward, left, _, _, _, _ = held_in_doom({"s": 1.0})
    assert forward < -20 and abs(left) < 1
    forward, left, _, _, _, _ = held_in_doom({"a": 1.0})
    assert left > 20 and abs(forward) < 1
    forward, left, _, _, _, _ = held_in_doom({"d": 1.0})
    assert left < -20 and abs(forward) < 1
    forward, left, fired, used, _, _ = held_in_doom({"mouse_left": 1.0})
    assert fired >= 1 and forward == left == 0 and not used
    forward, left, fired, used, _, _ = held_in_doom({"space": 1.0})
    assert used and fired == 0 and forward == left == 0
    assert held_in_doom({"w": 0.4})[0] == 0 and held_in_doom({"w": 0.6})[0] > 20


def test_mouse_dy_is_degrees_of_looking_down_per_frame():
    """Like a mouse moved toward you, a positive mouse_dy looks down: the floor at the bottom of the view comes
    closer and the top of the view looks farther away; a negative one looks up."""
    level = held_in_doom({}, frames=3)[5]
    for dy in (5.0, -5.0):
        _, _, _, _, pitch, depth = held_in_doom({"mouse_dy": dy}, frames=3)
        assert pitch == pytest.approx(3 * round(dy / record.TURN_UNIT) * record.TURN_UNIT, abs=1e-3)  # + = down
        assert np.sign(dy) * (level[-5:].mean() - depth[-5:].mean()) > 1   # the bottom rows: nearer looking down
        assert np.sign(dy) * (depth[:5].mean() - level[:5].mean()) > 1     # the top rows: farther


# -----------------------------------------------------------------------------
# Reading raw datasets, and what happens with bad ones

def test_roundtrip_and_missing_meta(tmp_path):
    episode = make_episode(tmp_path / "data" / "ep000")
    assert record.list_episodes(tmp_path / "data") == [episode]
    frames, actions, names, meta = record.read_episode(episode)
    assert frames.shape == (5, 6, 8, 3) and actions.shape == (5, len(ACTIONS)) and names == ACTIONS
    (episode / "meta.json").unlink()                                # meta.json is optional
    meta = record.read_meta(episode)
    assert meta["fps"] == 15 and (meta["width"], meta["height"]) == (8, 6) and meta["actions"] == ACTIONS


def test_missing_or_empty_dataset(tmp_path):
    assert "does not exist" in error_of(record.list_episodes, tmp_path / "nowhere")
    assert "holds no episodes" in error_of(record.list_episodes, tmp_path)


def test_frames_and_inputs_of_different_lengths(tmp_path):
    episode = make_episode(tmp_path / "ep")
    (episode / "frames" / "00000004.png").unlink()
    message = error_of(record.read_episode, episode)
    assert "5 rows" in message and "4 images" in message


def test_corrupt_image(tmp_path):
    episode = make_episode(tmp_path / "ep")
    (episode / "frames" / "00000002.png").write_bytes(b"not a png")
    assert "00000002.png is corrupt" in error_of(record.read_frames, episode)


def test_image_of_another_size(tmp_path):
    episode = make_episode(tmp_path / "ep")
    Image.new("RGB", (9, 6)).save(episode / "frames" / "00000003.png")
    assert "00000003.png is 9x6" in error_of(record.read_frames, episode)


def test_frames_with_a_gap(tmp_path):
    episode = make_episode(tmp_path / "ep")
    (episode / "frames" / "00000002.png").rename(episode / "frames" / "00000007.png")
    assert "frame 2 is missing" in error_of(record.frame_paths, episode)
    Image.new("RGB", (8, 6)).save(episode / "frames" / "00000002.jpg")
    Image.new("RGB", (8, 6)).save(episode / "frames" / "00000003.jpg")
    assert "frame 3 appears twice" in error_of(record.frame_paths, episode)


def rewrite_line(episode, line_no, text):
    path = episode / "inputs.csv"
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_missing_column(tmp_path):
    episode = make_episode(tmp_path / "ep")
    rewrite_line(episode, 3, "1,0,0,0,0,0,0,0,0,0")                 # one value short
    message = error_of(record.read_inputs, episode)
    assert "inputs.csv:3" in message and "missing column 'mouse_dy'" in message


def test_non_numeric_value(tmp_path):
    episode = make_episode(tmp_path / "ep")
    rewrite_line(episode, 4, "2,0,0,0,0,0,0,0,0,left,0")
    message = error_of(record.read_inputs, episode)
    assert "inputs.csv:4" in message and "'mouse_dx' is 'left'" in message


def test_wrong_frame_numbers_and_header(tmp_path):
    episode = make_episode(tmp_path / "ep")
    rewrite_line(episode, 2, "5,0,0,0,0,0,0,0,0,0,0")
    assert "column 'frame' is '5' but should be 0" in error_of(record.read_inputs, episode)
    rewrite_line(episode, 1, "w,a,s,d")
    assert "header" in error_of(record.read_inputs, episode)


def test_header_names_are_stripped_and_must_be_distinct(tmp_path):
    """A spreadsheet's "frame, w, a": the names without the spaces, which `sample.py --actions` compares with
    the model's (it printed two lists that looked the same); a repeated, empty or second "frame" name refused."""
    episode = make_episode(tmp_path / "ep")
    rewrite_line(episode, 1, "frame, " + ", ".join(ACTIONS))
    assert record.read_inputs(episode)[0] == ACTIONS
    for names, problem in ((["w", "w"], "'w' twice"), (["w", ""], "an empty name"), (["w", "frame"], "'frame' again")):
        rewrite_line(episode, 1, ",".join(["frame", *names, *ACTIONS[2:]]))
        assert problem in error_of(record.read_inputs, episode)


def test_sixteen_bit_grey_frames_are_scaled_not_clipped(tmp_path):
    """PIL's convert("RGB") clips a 16-bit grey to 255: a frame of 3084 would be white, not a dark grey."""
    episode = make_episode(tmp_path / "ep")
    Image.fromarray(np.full((6, 8), 3084, dtype=np.uint16)).save(episode / "frames" / "00000001.png")
    assert Image.open(episode / "frames" / "00000001.png").mode.startswith("I")  # saved as 16 bits
    frames = record.read_frames(episode)
    assert (frames[1] == 3084 >> 8).all()


def test_episode_folder_without_inputs_is_named_not_skipped(tmp_path):
    make_episode(tmp_path / "data" / "ep000")
    make_episode(tmp_path / "data" / "ep001")
    (tmp_path / "data" / "ep001" / "inputs.csv").rename(tmp_path / "data" / "ep001" / "inputs.CSV")
    assert "ep001 has frames/ but no inputs.csv" in error_of(record.list_episodes, tmp_path / "data")


def test_files_that_are_not_utf8_or_give_sizes_as_text(tmp_path):
    """A spreadsheet's Latin-1 export, a meta.json with "width": "64": one line each, not a traceback."""
    episode = make_episode(tmp_path / "ep")
    (episode / "inputs.csv").write_bytes((episode / "inputs.csv").read_bytes() + "5,\xe9".encode("latin-1"))
    assert "is not UTF-8 text" in error_of(record.read_inputs, episode)
    meta = json.loads((episode / "meta.json").read_text())
    for key, value in (("width", "8"), ("fps", 0), ("height", 6.5)):
        (episode / "meta.json").write_text(json.dumps({**meta, key: value}))
        assert f"{key!r} is {value!r}, not a positive" in error_of(record.read_meta, episode)
    floats = make_episode(tmp_path / "floats")                      # a tool that writes 8.0 for 8
    (floats / "meta.json").write_text(json.dumps({**meta, "width": 8.0, "height": 6.0}))
    assert record.read_meta(floats)["width"] == 8 and record.read_episode(floats)[0].shape == (5, 6, 8, 3)


@pytest.mark.parametrize("where, kept, stop", [("save", 2, "SIGINT"), ("replace", 3, "SIGINT"),
                                               ("replace", 3, "SIGTERM")])
def test_ctrl_c_while_a_frame_is_written_leaves_each_frame_with_its_row(tmp_path, monkeypatch, where, kept, stop):
    """Ctrl-C at the third frame: while its PNG is half written, the frame is left out; just as it gets its
    name, the interrupt waits until its row is written too. Either way every frame has its row. A kill
    (SIGTERM, which record.main turns into Terminated) waits the same (it did not: a frame lost its row)."""
    real_save, real_replace, calls = Image.Image.save, os.replace, []
    previous = signal.signal(signal.SIGTERM, record.terminate)

    def save(image, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            pathlib.Path(path).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        return real_save(image, path, *args, **kwargs)

    def replace(*args):
        calls.append(args)
        real_replace(*args)
        if len(calls) == 3:
            os.kill(os.getpid(), getattr(signal, stop))
            time.sleep(0.1)                                          # time for the interrupt to land here

    monkeypatch.setattr(*(Image.Image, "save", save) if where == "save" else (record.os, "replace", replace))
    try:
        with pytest.raises(record.Terminated if stop == "SIGTERM" else KeyboardInterrupt):
            make_episode(tmp_path / "ep")
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    frames, actions, _, _ = record.read_episode(tmp_path / "ep")
    assert len(frames) == len(actions) == kept


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_stops_held_passes_a_stop_on_to_the_handler_it_replaced(stop):
    """Where Ctrl-C or kill has the system's default action (SIG_DFL, not a Python exception), it still ends
    the process, once the block is over."""
    script = ("import os, signal, time, record\n"
              f"signal.signal(signal.{stop}, signal.SIG_DFL)\n"
              "with record.stops_held():\n"
              f"    os.kill(os.getpid(), signal.{stop})\n"
              "    time.sleep(0.2)\n"
              "    print('block done', flush=True)\n"
              "time.sleep(0.5)\n"
              "print('still running')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=RECORD_PY.parent, capture_output=True, text=True)
    assert done.stdout == "block done\n" and done.returncode == -getattr(signal, stop), (done.stdout, done.stderr)


def test_stops_held_leaves_an_ignored_ctrl_c_ignored_and_still_passes_on_the_kill_behind_it():
    """A launcher that ignores SIGINT (a shell's `&`): a Ctrl-C in the block stays ignored, and a kill that
    follows it still ends the process once the block is over (only the first signal caught was passed on)."""
    script = ("import os, signal, time, record\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
              "with record.stops_held():\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(0.2)\n"
              "    print('block done', flush=True)\n"
              "time.sleep(0.5)\n"
              "print('still running')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=RECORD_PY.parent, capture_output=True, text=True)
    assert done.stdout == "block done\n" and done.returncode == -signal.SIGTERM, (done.stdout, done.stderr)


def test_ctrl_c_before_an_episode_has_a_frame_leaves_no_empty_episode(tmp_path, monkeypatch):
    real_start, starts = record.start_doom, []

    def start(doom):
        starts.append(doom)
        if len(starts) == 2:
            raise KeyboardInterrupt
        return real_start(doom)

    monkeypatch.setattr(record, "start_doom", start)
    message = error_of(record.record_doom, tmp_path / "data", 0.1, 2)
    assert "keeps episodes ep000 to ep000" in message and not (tmp_path / "data" / "ep001").exists()
    assert record.list_episodes(tmp_path / "data") == [tmp_path / "data" / "ep000"]


def in_session(sid):
    """The processes of session `sid` that are still running (Linux's /proc)."""
    alive = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()      # after "pid (name)": state, ppid, pgrp, sid
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_kill_while_recording_doom_keeps_every_frame_with_its_row(tmp_path, stop):
    """And the game ViZDoom runs in a process of its own ends with the recorder (`kill` left it running)."""
    out = tmp_path / "data"
    command = [sys.executable, str(RECORD_PY), "doom", "--out", str(out), "--minutes", "5", "--episodes", "2"]
    player = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    while len(list(out.glob("ep000/frames/*.png"))) < 20 and player.poll() is None:
        time.sleep(0.05)
    player.send_signal(getattr(signal, stop))
    stderr = player.communicate(timeout=60)[1]                      # tqdm's bar, then one line
    assert player.returncode == 128 + getattr(signal, stop) and "Traceback" not in stderr, stderr  # not an error
    assert stderr.strip().splitlines()[-1].startswith(f"stopped by {'Ctrl-C' if stop == 'SIGINT' else stop}: ")
    frames, actions, _, _ = record.read_episode(out / "ep000")
    assert 20 <= len(frames) == len(actions) < 2250
    if pathlib.Path("/proc/self/stat").exists():
        deadline = time.time() + 10
        while in_session(player.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not in_session(player.pid)


def test_doom_out_that_is_a_file_and_seeds_doom_does_not_take(tmp_path):
    (tmp_path / "file").write_text("")
    assert "is a file" in error_of(record.record_doom, tmp_path / "file")
    assert "is a file, so --out" in error_of(record.record_doom, tmp_path / "file" / "data")
    for seed in ("-1", str(2**32)):
        with pytest.raises(SystemExit):
            record.main(["doom", "--out", str(tmp_path / "bad"), "--seed", seed])
    message = error_of(record.record_doom, tmp_path / "bad", 0.1, 2, (64, 48), 2**32 - 1)  # ep001: 2**32
    assert "passes 4294967295, the largest seed Doom takes" in message and not (tmp_path / "bad").exists()


def test_an_episode_that_fails_before_its_first_frame_leaves_no_empty_episode(tmp_path, monkeypatch):
    """Not only Ctrl-C: whatever ends it, an encode of the dataset must not meet an episode without frames."""
    def start(doom):
        raise RuntimeError("ViZDoom could not start")

    monkeypatch.setattr(record, "start_doom", start)
    with pytest.raises(RuntimeError, match="could not start"):
        record.record_doom(tmp_path / "data", 0.1, 2)
    assert not any((tmp_path / "data").iterdir())


@pytest.mark.parametrize("text", ["big", "64x", "\u00b2x48", "99999x48", "0x48", "64x48x3"])
def test_sizes_that_are_not_sizes(text):
    with pytest.raises(DataError, match="is not WIDTHxHEIGHT with sides of 1 to 4096 pixels"):
        record.parse_size(text)


def test_scenarios_that_crash_vizdoom_are_refused():
    with pytest.raises(DataError, match="ViZDoom crashes starting this scenario"):
        record.doom_level("multi_duel")


def test_inputs_csv_is_utf8_whatever_the_locale(tmp_path):
    """A column named ü, written where Python's default encoding is ASCII, is read back (as UTF-8)."""
    script = ("import numpy as np, record\n"
              f"record.write_episode({str(tmp_path / 'ep')!r}, [(np.zeros((8, 8, 3), np.uint8), [1])], ['\\u00fc'], "
              "{'fps': 15})\n")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", script], cwd=RECORD_PY.parent, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert record.read_inputs(tmp_path / "ep") == (["\u00fc"], pytest.approx(np.ones((1, 1))))


# -----------------------------------------------------------------------------
# The command line

def test_cli(tmp_path):
    out = tmp_path / "data"
    command = [sys.executable, str(RECORD_PY), "doom", "--out", str(out), "--minutes", "0.02", "--episodes", "1"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "recorded 18 frames" in done.stdout
    assert len(record.read_inputs(out / "ep000")[1]) == 18          # 0.02 minutes at 15 fps

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 2
    assert len(again.stderr.strip().splitlines()) == 1 and again.stderr.startswith("error: ")
    assert "already exists" in again.stderr

    bad_size = subprocess.run(command[:-4] + ["--size", "big"], cwd=tmp_path, capture_output=True, text=True)
    assert bad_size.returncode == 2 and bad_size.stderr.startswith("error: --size")


def test_main_leaves_its_callers_signal_handlers_as_it_found_them(tmp_path):
    """record.main stops cleanly on SIGTERM and Ctrl-C while it records; afterwards (here, after an error) the
    caller's own handlers are back: a test or a notebook that calls main() keeps its Ctrl-C."""
    def mine(signum, frame):
        pass

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, mine)
    signal.signal(signal.SIGINT, mine)
    try:
        with pytest.raises(record.DataError, match="does not exist"):
            record.main(["ingest", str(tmp_path / "missing.mp4"), "--inputs", str(tmp_path / "log.csv"),
                         "--out", str(tmp_path / "data")])
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_write_episode_never_writes_into_a_folder_that_is_there(tmp_path):
    """Even an empty one: another run (an ingest of the same name) may have just claimed it."""
    (tmp_path / "ep").mkdir()
    with pytest.raises(FileExistsError):
        record.write_episode(tmp_path / "ep", [(np.zeros((8, 8, 3), np.uint8), [1.0])], ["w"], {"fps": 15})
    assert list((tmp_path / "ep").iterdir()) == []
    assert record.write_episode(tmp_path / "new" / "ep", [(np.zeros((8, 8, 3), np.uint8), [1.0])], ["w"], {}) == 1
