"""
Record gameplay into a raw dataset, and read such datasets back.

The raw dataset format, written by every source here and read by encode.py:

    DATASET/                 a folder of episodes
      EPISODE/               one continuous recording, any name
        frames/00000000.png  consecutive RGB frames of one size, numbered from 0
        inputs.csv           header "frame,<action names>", then one row per frame
        meta.json            {"fps": 15, "width": W, "height": H, "source": ..., ...}

Row i of inputs.csv holds the inputs applied AFTER frame i was shown: the action that leads from frame i to
frame i+1. Our sources write the columns w,a,s,d,space,shift,mouse_left,mouse_right (keys and buttons, 0/1)
and mouse_dx,mouse_dy (floats), but any columns are accepted: the action dimension comes from the data.
meta.json is optional; without it an episode runs at 15 fps, with the width and height of its first frame.

Doom (ViZDoom: Freedoom 2, no monsters, a scripted player) maps the columns to its controls so:

    w, s / a, d    MOVE_FORWARD, MOVE_BACKWARD / MOVE_LEFT, MOVE_RIGHT (strafe); held when above 0.5
    space, shift   USE (doors, switches), SPEED (run)
    mouse_left     ATTACK (the pistol); mouse_right is unused, always 0
    mouse_dx       degrees turned during the frame, positive = right, in Doom's steps of 360/65536
    mouse_dy       degrees of pitch change during the frame, positive = look down (the player keeps it 0)

Atari (the Arcade Learning Environment: 60 Hz, each input held 4 of its frames, a random player) writes the
game's minimal action set as 0/1 columns (noop, fire, up, right, left, down, upright, ...), one on a frame.

`screen` records your own game (mouse_dx/dy in pixels). `ingest` turns a video or a folder of images and an
inputs log into an episode; the log is an inputs.csv with a row per footage frame, or JSON lines with a time
in seconds from the footage's first frame (names left out are 0, new names become columns):

    {"t": 0.000, "w": 1, "mouse_dx": -3.5}
    {"t": 0.017, "w": 1, "shift": 1}

Launch:

    python record.py doom --out data/doom --minutes 5                 # 5 episodes of 1 minute, 64x48
    python record.py doom --out data/maze --minutes 30 --episodes 10 --size 128x96 --map my_way_home
    python record.py atari --game seaquest --out data/seaquest --minutes 10 --episodes 10   # 64x64
    python record.py screen --out data/mygame --region 0,0,1280,720   # until Ctrl-C; F9 pauses
    python record.py ingest gameplay.mp4 --inputs gameplay.jsonl --out data/mygame   # or shots/ --fps 30
"""

import argparse
import itertools
import json
import math
import os
import pathlib
import queue
import random
import re
import shutil
import signal
import threading
import time
from functools import partial

import numpy as np
from PIL import Image
from tqdm import tqdm

FPS = 15                     # frames per second of every episode we write: Doom's 35 tics/s make 15 exactly
ACTIONS = ["w", "a", "s", "d", "space", "shift", "mouse_left", "mouse_right", "mouse_dx", "mouse_dy"]
OWN_SIZE = (256, 144)        # frame size for your own game: 16:9 like most screens, sides multiples of 8

# -----------------------------------------------------------------------------
# Reading and writing the raw dataset format


def list_episodes(dataset):
    episodes = sorted(p.parent for p in pathlib.Path(dataset).glob("*/inputs.csv"))
    if not episodes:
        why = "holds no episodes (folders with an inputs.csv)" if os.path.isdir(dataset) else "does not exist"
        raise SystemExit(f"{dataset} {why}; pass a dataset folder, or record one with `python record.py doom`")
    return episodes


def read_inputs(path):
    """(action names, float32 (N, A)) of an inputs.csv, or of an episode folder's."""
    path = pathlib.Path(path, "inputs.csv") if os.path.isdir(path) else pathlib.Path(path)
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; pass an inputs.csv (or an episode folder that holds one)")
    lines = path.read_text(encoding="utf-8-sig").splitlines()        # a spreadsheet may start it with a BOM
    header = lines[0].split(",") if lines else []
    if header[:1] != ["frame"] or len(header) < 2:
        raise SystemExit(f"{path}: the header must be 'frame,<action names>', not {lines[:1]}; fix the first line")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        values = line.split(",")
        if len(values) < len(header):
            raise SystemExit(f"{path}:{n}: column {header[len(values)]!r} is missing; fix or delete the row")
        try:
            rows.append([float(v) for v in values[1:len(header)]])
        except ValueError as e:
            raise SystemExit(f"{path}:{n}: {e}; keys are 0/1, mouse deltas numbers") from None
    return header[1:], np.array(rows, dtype=np.float32).reshape(len(rows), len(header) - 1)


def open_image(path):
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as e:
        raise SystemExit(f"{path} is corrupt or not an image ({e}); replace or delete it") from None


def read_episode(folder):
    """(action names, actions float32 (N, A), frame paths in order, meta with defaults) of one episode."""
    folder = pathlib.Path(folder)
    names, actions = read_inputs(folder)
    paths = sorted((folder / "frames").glob("*.png"))
    if len(paths) != len(actions) or not paths:
        raise SystemExit(f"{folder}: frames/ has {len(paths)} images but inputs.csv {len(actions)} rows; every "
                         f"frame needs its row, so record the episode again or delete the extra rows or frames")
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
    if "width" not in meta or "height" not in meta:
        meta["width"], meta["height"] = open_image(paths[0]).size
    return names, actions, paths, {"fps": FPS, **meta}


def write_episode(folder, steps, names, meta):
    """Write a new episode from (frame uint8 (H, W, 3), action row) pairs as they come; returns the frame count.
    Each row is written and flushed right after its frame, so a crash keeps every frame with its row."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)                                       # FileExistsError for an episode that exists
    (folder / "frames").mkdir()
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    n = 0
    with open(folder / "inputs.csv", "w") as f:
        f.write(",".join(["frame"] + names) + "\n")
        for frame, action in steps:
            Image.fromarray(frame).save(folder / "frames" / f"{n:08d}.png")
            f.write(",".join([str(n)] + [f"{float(v):.6g}" for v in action]) + "\n")
            f.flush()
            n += 1
    return n


def fit(image, size):
    """uint8 (H, W, 3) of a PIL image brought to size=(W, H) without distortion: its centre cut to the aspect
    ratio W:H, then resized with BOX (each output pixel the average of those it covers: no ringing)."""
    (w, h), (W, H) = image.size, size
    cut_w, cut_h = min(w, h * W / H), min(h, w * H / W)
    box = ((w - cut_w) / 2, (h - cut_h) / 2, (w + cut_w) / 2, (h + cut_h) / 2)
    return np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX, box=box))  # (H, W, 3)


def first_episode(out):
    """(names, (width, height)) of the first episode in the dataset `out`: a new one takes them, to encode with it."""
    for found in sorted(pathlib.Path(out).glob("*/inputs.csv")):
        names, _, _, meta = read_episode(found.parent)
        return names, (meta["width"], meta["height"])
    return None, None


# -----------------------------------------------------------------------------
# Doom: one setup and one step function, shared by recording and replay so that both are identical

DOOM_WIDTHS = [160, 200, 256, 320, 400, 512, 640, 800, 1024, 1280, 1400, 1600]  # ViZDoom's 4:3 render sizes
TIC_PATTERN = [2, 2, 3]      # Doom runs 35 tics/s; frame i is followed by TIC_PATTERN[i % 3] tics: 7 tics = 3 frames
WARMUP_TICS = 7              # ViZDoom ignores turning in a map's first 7 tics (measured), so we skip them
TURN_UNIT = 360 / 65536      # Doom turns in whole steps of 1/65536 circle per tic (its commands hold 16 bits)
DOOM_BUTTONS = {             # our column -> the ViZDoom button it holds, in set_action's order
    "w": "MOVE_FORWARD", "s": "MOVE_BACKWARD", "a": "MOVE_LEFT", "d": "MOVE_RIGHT", "space": "USE",
    "shift": "SPEED", "mouse_left": "ATTACK", "mouse_dx": "TURN_LEFT_RIGHT_DELTA", "mouse_dy": "LOOK_UP_DOWN_DELTA",
}


def doom_settings(seed, level="map01", size=(64, 48)):
    """meta.json["doom"], all that replay() needs to start the same game. `level` is map01 .. map32 of Freedoom 2
    or a ViZDoom scenario (played on its map01); Doom renders the smallest 4:3 size that covers `size`."""
    import vizdoom
    level = level.lower()
    scenario = None if re.fullmatch(r"map(0[1-9]|[12][0-9]|3[0-2])", level) else f"scenarios/{level}.wad"
    if scenario and not os.path.exists(os.path.join(os.path.dirname(vizdoom.__file__), scenario)):
        raise SystemExit(f"--map {level} is neither map01 .. map32 nor a scenario in {vizdoom.scenarios_path}")
    w = next((w for w in DOOM_WIDTHS if w >= size[0] and w * 3 // 4 >= size[1]), DOOM_WIDTHS[-1])
    return {"seed": seed, "scenario": scenario, "map": "map01" if scenario else level,
            "resolution": f"RES_{w}X{w * 3 // 4}"}


def start_doom(doom):
    """A headless game as doom_settings describes it, at frame 0."""
    import vizdoom
    game, here = vizdoom.DoomGame(), os.path.dirname(vizdoom.__file__)   # the .wad files ship with vizdoom
    game.set_doom_game_path(os.path.join(here, "freedoom2.wad"))
    if doom.get("scenario"):
        game.set_doom_scenario_path(os.path.join(here, doom["scenario"]))
    game.set_doom_map(doom["map"])
    game.add_game_args("-nomonsters")          # nothing can hurt the player, so episodes last as long as we like
    game.set_seed(doom["seed"])                # Doom's random numbers: pistol spread, flickering lights
    game.set_screen_resolution(getattr(vizdoom.ScreenResolution, doom["resolution"]))
    game.set_screen_format(vizdoom.ScreenFormat.RGB24)
    for part in ("hud", "weapon", "crosshair", "messages"):             # a clean first-person view
        getattr(game, f"set_render_{part}")(False)
    game.set_available_buttons([getattr(vizdoom.Button, b) for b in DOOM_BUTTONS.values()])
    game.set_available_game_variables([getattr(vizdoom.GameVariable, v)
                                       for v in ("ANGLE", "PITCH", "POSITION_X", "POSITION_Y")])
    game.set_depth_buffer_enabled(True)        # the scripted player looks at it to find open space
    game.set_window_visible(False)
    game.set_sound_enabled(False)
    game.set_doom_config_path(os.devnull)      # built-in defaults every time, no _vizdoom.ini left behind
    mask = getattr(signal, "pthread_sigmask", lambda *args: None)  # POSIX: the game's process inherits the mask,
    mask(signal.SIG_BLOCK, {signal.SIGINT})                         # so Ctrl-C in a terminal stops us between two
    game.init()                                                     # frames, not the game under our feet
    mask(signal.SIG_UNBLOCK, {signal.SIGINT})
    game.advance_action(WARMUP_TICS)
    return game


def turn_per_tic(degrees, tics):
    """ViZDoom delta-button values for `tics` tics that together turn `degrees`: ViZDoom floors each tic's value
    to whole steps, so we split the turn into whole steps per tic and aim at the middle of each step."""
    base, extra = divmod(round(degrees / TURN_UNIT), tics)   # floor division, also right for negative turns
    return [(base + (t < extra) + 0.5) * TURN_UNIT for t in range(tics)]


def doom_step(game, i, action, update=True):
    """Apply `action` (a row in ACTIONS order) after frame i, up to frame i+1 (update=False: no new screen)."""
    a = dict(zip(ACTIONS, action))
    keys = [float(a[k] > 0.5) for k in list(DOOM_BUTTONS)[:7]]       # the on/off buttons
    tics = TIC_PATTERN[i % len(TIC_PATTERN)]
    yaw, pitch = turn_per_tic(a["mouse_dx"], tics), turn_per_tic(-a["mouse_dy"], tics)  # ViZDoom: + looks up
    for t in range(tics):
        game.set_action(keys + [yaw[t], pitch[t]])
        game.advance_action(1, update and t == tics - 1)         # fetch the screen after the last tic only


# -----------------------------------------------------------------------------
# The scripted player

SEGMENTS = {"walk": 40, "turn": 14, "strafe": 12, "back": 6, "still": 20, "mash": 10}  # behaviour -> weight
TURN_SPEED = (4, 14)         # degrees per frame when turning in place (a sharp but human mouse flick at the top)
AVOID_SPEED = (8, 15)        # degrees per frame when turning away from a wall, faster so the view is not all wall
CURVE = 2.5                  # std of the gentle turn while walking, degrees per frame
JITTER = 0.7                 # std of the frame-to-frame wobble added to any turn, degrees per frame
TAP = 0.03                   # chance per frame of tapping use, and separately attack
FLICK = 0.15                 # chance per frame of breaking off for a few frames of a random other action
FLICK_FRAMES = (1, 4)        # how many frames a flick lasts
OPEN = 20.0                  # centre depth under which the way ahead is blocked (walking lowers it ~2 per frame)
NEAR = 10.0                  # centre depth at which a walk usually gives way to a turn, a few frames before a wall
STUCK_FRAMES = 6             # moving keys held this many frames ...
STUCK_DISTANCE = 16.0        # ... while moving less than this many map units (walking covers ~100) means stuck


class ScriptedPlayer:
    """A random but purposeful player: a queue of segments, each one behaviour for some frames (walk, turn,
    strafe, back up, stand still, mash keys), with taps of use and attack and short flicks of another action on
    top. The depth buffer shows it the open side, so it turns before walls, and when stuck it backs off. The
    point is variety: a world model only learns to obey actions if the data shows many from similar views."""

    def __init__(self, rng):
        self.rng = rng
        self.queue = []      # segments to play: [frames left, set of held keys, turn in degrees per frame]
        self.trail = []      # positions since the moving keys were last released

    def turn(self, direction, degrees, speeds=TURN_SPEED):
        speed = self.rng.uniform(*speeds)
        return [max(1, round(degrees / speed)), set(), direction * speed]

    def flick(self):
        r = self.rng
        frames = r.randint(*FLICK_FRAMES)
        kind = r.choice(["turn", "turn", "still", "walk", "strafe"])
        if kind == "turn":
            return [frames, set(), r.choice([-1, 1]) * r.uniform(*TURN_SPEED)]
        keys = {"still": set(), "walk": {"w"}, "strafe": {r.choice("ad")}}[kind]
        return [frames, keys, 0.0]

    def plan(self, left, ahead, right):
        r = self.rng
        open_side = 1 if right > left else -1                       # +1 = turn right
        kind = r.choices(list(SEGMENTS), weights=list(SEGMENTS.values()))[0]
        if kind == "walk":
            keys = {"w"} | ({"shift"} if r.random() < 0.4 else set())
            keys |= {r.choice("ad")} if r.random() < 0.15 else set()
            walk = [r.randint(10, 45), keys, r.gauss(0, CURVE)]
            if ahead < OPEN:                                          # face open space first
                return [self.turn(open_side, r.uniform(45, 150)), walk]
            return [walk]
        if kind == "turn":
            direction = open_side if r.random() < 0.7 else -open_side
            return [self.turn(direction, r.uniform(20, 200))]
        if kind == "strafe":
            keys = {r.choice("ad")} | ({"w"} if r.random() < 0.3 else set())
            return [[r.randint(5, 25), keys, r.gauss(0, CURVE)]]
        if kind == "back":
            return [[r.randint(4, 15), {"s"}, r.gauss(0, 2 * CURVE)]]
        if kind == "still":
            return [[r.randint(5, 25), set(), 0.0]]
        keys = {k for k in ["w", "a", "s", "d", "shift", "space", "mouse_left"] if r.random() < 0.3}
        return [[r.randint(2, 12), keys, r.uniform(-12, 12) if r.random() < 0.5 else 0.0]]

    def act(self, x, y, depth):
        """The action for this frame, in ACTIONS order, given the position and the depth buffer."""
        r = self.rng
        h = depth.shape[0]
        left, ahead, right = (part.mean() for part in np.array_split(depth[h // 3: 2 * h // 3], 3, axis=1))
        open_side = 1 if right > left else -1
        self.trail.append((x, y))
        if len(self.trail) > STUCK_FRAMES and math.dist(self.trail[-STUCK_FRAMES - 1], (x, y)) < STUCK_DISTANCE:
            back = [r.randint(4, 8), {"s"}, 0.0]
            self.queue = [back, self.turn(open_side, r.uniform(60, 180), AVOID_SPEED)]
            self.trail = [(x, y)]
        elif self.queue and "w" in self.queue[0][1] and ahead < NEAR and r.random() < 0.8:
            self.queue = [self.turn(open_side, r.uniform(45, 150), AVOID_SPEED)]   # mostly turn before the wall
        if not self.queue:
            self.queue = self.plan(left, ahead, right)
        elif r.random() < FLICK:
            self.queue.insert(0, self.flick())
        segment = self.queue[0]
        segment[0] -= 1
        if segment[0] == 0:
            self.queue.pop(0)
        _, keys, turn = segment
        if keys or turn:                                              # standing still means no input at all
            keys = keys | {k for k in ["space", "mouse_left"] if r.random() < TAP}
            turn = turn + r.gauss(0, JITTER)
        self.trail = self.trail[-STUCK_FRAMES:] if keys & {"w", "a", "s", "d"} else []
        dx = round(turn / TURN_UNIT) * TURN_UNIT                      # whole turning steps: what Doom does
        return [float(k in keys) for k in ACTIONS[:8]] + [dx, 0.0]


def play_doom(doom, size, stop):
    """Yield (frame, action) of the scripted player in a new game until the level ends or `stop` holds a signal,
    which is looked at once a frame has been written with its row."""
    game = start_doom(doom)
    player = ScriptedPlayer(random.Random(doom["seed"]))
    try:
        for i in itertools.count():
            state = game.get_state()
            if state is None or stop:                                 # the level ended (the exit switch was used)
                break
            action = player.act(*state.game_variables[2:], state.depth_buffer)  # x, y: where it stands
            yield fit(Image.fromarray(state.screen_buffer), size), action
            doom_step(game, i, action)
    finally:
        game.close()


def record_doom(out, minutes=5.0, episodes=5, size=(64, 48), seed=0, level="map01"):
    """Record `minutes` of scripted Doom split over `episodes` episodes into the new dataset folder `out`."""
    settings = doom_settings(seed, level, size)
    record_episodes(out, minutes, episodes, lambda e, stop: (
        {"source": "vizdoom", "doom": {**settings, "seed": seed + e}}, ACTIONS,  # no two episodes alike
        play_doom({**settings, "seed": seed + e}, size, stop)), size)


def record_episodes(out, minutes, episodes, play, size):
    """Episodes of play(e, stop) -> (meta, columns, (frame, row) pairs) into the new dataset folder `out`. Ctrl-C
    or kill sets `stop`, which the players look at between frames: every frame recorded is kept with its row."""
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; pass a new --out (recorded data is never overwritten)")
    total, recorded, stopped = round(minutes * 60 * FPS), 0, []
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    handlers = {s: signal.signal(s, lambda signum, _: stopped.append(signum)) for s in signals}  # main thread only
    try:
        for e in range(episodes):
            n_frames = total // episodes + (e < total % episodes)
            meta, columns, steps = play(e, stopped)
            meta = {"fps": FPS, "width": size[0], "height": size[1], **meta}
            steps = tqdm(itertools.islice(steps, n_frames), total=n_frames, desc=f"ep{e:03d}")
            recorded += write_episode(out / f"ep{e:03d}", steps, columns, meta)
            if stopped:
                print(f"stopped: {out} keeps {recorded} frames in ep000 to ep{e:03d}, every frame with its row")
                return
        print(f"recorded {recorded} frames ({recorded / FPS / 60:.1f} min of play) in {episodes} episodes to {out}")
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def replay(episode, start, actions):
    """uint8 (K, H, W, 3): frames start+1 .. start+K of a Doom or Atari episode when `actions` (K, A) are applied
    from frame `start` on instead of the recorded ones; the recorded actions give the recorded frames bit for bit."""
    _, recorded, _, meta = read_episode(episode)
    if "atari" in meta:
        ale, moves = start_atari(meta["atari"])
        step, screen, close = lambda i, row, update=True: atari_step(ale, moves, row), ale.getScreenRGB, lambda: 0
    else:
        game = start_doom(meta["doom"])
        step, screen, close = partial(doom_step, game), lambda: game.get_state().screen_buffer, game.close
    try:
        for i in range(start):
            step(i, recorded[i], update=False)
        frames = []
        for k, action in enumerate(actions):
            step(start + k, action)
            frames.append(fit(Image.fromarray(screen()), (meta["width"], meta["height"])))
    finally:
        close()
    return np.stack(frames)                                           # (K, H, W, 3)


# -----------------------------------------------------------------------------
# Atari: the Arcade Learning Environment (ale-py, whose wheel ships the ROMs), deterministic without sticky actions

ATARI_REPEAT = 4             # the emulator runs at 60 Hz: an input is held 4 of its frames, for 15 frames a second
ATARI_HOLD = (1, 8)          # the scripted player holds a random action for 1 to 8 frames (to half a second)


def start_atari(atari):
    """A game as meta.json["atari"] describes it, at frame 0, and its minimal action set (the inputs it reads)."""
    from ale_py import ALEInterface, LoggerMode, roms
    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", atari["seed"])
    ale.setFloat("repeat_action_probability", 0.0)   # sticky actions off: the same inputs give the same frames
    ale.loadROM(roms.get_rom_path(atari["game"]))
    return ale, ale.getMinimalActionSet()


def atari_step(ale, moves, row):
    """Hold the action whose 0/1 column is on (NOOP, the first, when none is) for ATARI_REPEAT emulator frames."""
    on = np.flatnonzero(np.asarray(row) > 0.5)
    for _ in range(ATARI_REPEAT):
        ale.act(moves[on[0] if len(on) else 0])


def play_atari(atari, size, stop):
    """Yield (frame, action) of a random player (each action held for ATARI_HOLD frames) until the game ends."""
    ale, moves = start_atari(atari)
    rng, held, left = random.Random(atari["seed"]), 0, 0
    while not ale.game_over() and not stop:
        if left == 0:
            held, left = rng.randrange(len(moves)), rng.randint(*ATARI_HOLD)
        left -= 1
        row = [float(j == held) for j in range(len(moves))]
        yield fit(Image.fromarray(ale.getScreenRGB()), size), row
        atari_step(ale, moves, row)


def record_atari(out, game="boxing", minutes=5.0, episodes=5, size=(64, 64), seed=0):
    """Record `minutes` of random Atari play, its minimal action set as 0/1 columns, into the new folder `out`."""
    from ale_py import roms
    if game not in roms.get_all_rom_ids():
        raise SystemExit(f"--game {game} is not an Atari ROM that ale-py ships; such as boxing, seaquest, pong")
    columns = [move.name.lower() for move in start_atari({"game": game, "seed": seed})[1]]
    record_episodes(out, minutes, episodes, lambda e, stop: (
        {"source": "atari", "atari": {"game": game, "seed": seed + e}}, columns,
        play_atari({"game": game, "seed": seed + e}, size, stop)), size)


# -----------------------------------------------------------------------------
# Your own game, live: the screen with mss, the keyboard and mouse with pynput


def key_name(key):
    """pynput key -> column name: 'w' for W with or without shift, 'space', 'shift' for either shift, 'f9'."""
    name = (getattr(key, "char", None) or getattr(key, "name", None) or str(key)).lower()
    return {"shift_l": "shift", "shift_r": "shift"}.get(name, name)


class InputState:
    """The keyboard and mouse between two frames, fed by pynput's threads. row() returns a row and starts the
    next: a key counts if it was down at any moment since the last row, mouse deltas add up."""

    def __init__(self, pointer, pause_key="f9"):
        self.pointer, self.pause_key, self.paused = pointer, pause_key, False  # pointer: the last (x, y)
        self.lock, self.held, self.touched = threading.Lock(), set(), set()  # down now; down since the last row
        self.dx = self.dy = 0.0

    def key(self, name, down):
        with self.lock:
            if down and name == self.pause_key:
                self.paused = not self.paused
            (self.held.add if down else self.held.discard)(name)
            self.touched |= self.held

    def move(self, x, y, *_):
        with self.lock:
            self.dx, self.dy, self.pointer = self.dx + x - self.pointer[0], self.dy + y - self.pointer[1], (x, y)

    def row(self):
        with self.lock:
            row = [float(k in self.touched) for k in ACTIONS[:8]] + [self.dx, self.dy]
            self.touched, self.dx, self.dy = set(self.held), 0.0, 0.0
        return row


def record_stretch(grab, inputs, episode, size, deadline=math.inf):
    """Capture frames (grab() returns a PIL image) into the new episode folder until the pause key, `deadline` (a
    time.perf_counter()), Ctrl-C or an error; a thread writes each with its row as they come. Frame i is grabbed
    at slot i of a fixed 1/15 s clock; a slot more than half a slot late is dropped, never filled with a copy,
    and the row before covers the gap. meta.json's "dropped_after" holds the frame before each dropped slot."""
    meta = {"fps": FPS, "width": size[0], "height": size[1], "source": "screen"}
    pairs = queue.Queue()                                            # (frame, row) for the writer, then None
    writer = threading.Thread(target=write_episode, args=(episode, iter(pairs.get, None), ACTIONS, meta))
    writer.start()
    started, slot, n, frame, dropped_after = time.perf_counter(), 0, 0, None, []
    try:
        while not inputs.paused and time.perf_counter() < deadline:
            late = time.perf_counter() - (started + slot / FPS)
            if late < 0:
                time.sleep(-late)
            elif late > 0.5 / FPS and frame is not None:              # too late: drop it, and any slot after
                missed = math.floor(late * FPS + 0.5)                 # up to the slot nearest to now
                slot, dropped_after = slot + missed, dropped_after + [n - 1] * missed
                continue
            image = grab()
            if not writer.is_alive():              # it failed: a full disk, an --out that cannot be written
                raise SystemExit(f"cannot write {episode}; the frames before are kept, each with its row")
            row = inputs.row()                     # the inputs since the last grab: the row of the last frame
            if frame is not None:
                pairs.put((frame, row))
            frame, n, slot = fit(image, size), n + 1, slot + 1
    finally:
        if frame is not None:
            pairs.put((frame, inputs.row()))
        pairs.put(None)
        writer.join()
        if n == 0:                                 # paused or failed before the first frame: no episode
            shutil.rmtree(episode, ignore_errors=True)
        else:
            (episode / "meta.json").write_text(json.dumps({**meta, "dropped_after": dropped_after}, indent=2) + "\n")
            print(f"{episode}: {n} frames, {len(dropped_after)} slots dropped", flush=True)


def record_screen(out, region=None, size=None, countdown=3, minutes=None, pause_key="f9"):
    """Record the primary monitor, or region=(x, y, w, h), with the keyboard and mouse into new episodes of the
    dataset folder `out` until Ctrl-C or `minutes`; each stretch between presses of the pause key is an episode."""
    import mss                     # imported here: the rest of the repo runs without a display
    from pynput import keyboard, mouse
    out, inputs = pathlib.Path(out), InputState(mouse.Controller().position, pause_key)
    size, part = size or first_episode(out)[1] or OWN_SIZE, 0
    name, deadline = time.strftime("screen-%Y%m%d-%H%M%S"), time.perf_counter() + 60 * (minutes or math.inf)
    with (mss.MSS() as sct,
          keyboard.Listener(on_press=lambda key, *_: inputs.key(key_name(key), True),
                            on_release=lambda key, *_: inputs.key(key_name(key), False)),
          mouse.Listener(on_move=inputs.move, on_click=lambda x, y, button, down, *_:
                         inputs.key(f"mouse_{button.name}", down))):
        box = sct.monitors[1] if region is None else dict(zip(["left", "top", "width", "height"], region))

        def grab():
            shot = sct.grab(box)
            return Image.frombuffer("RGB", shot.size, shot.bgra, "raw", "BGRX")  # mss gives BGRA bytes

        try:
            print(f"recording in {countdown} s: switch to the game ({pause_key} pauses, Ctrl-C stops)", flush=True)
            time.sleep(countdown)
            while time.perf_counter() < deadline:
                if not inputs.paused:
                    record_stretch(grab, inputs, out / f"{name}-{part:02d}", size, deadline)
                    part += 1
                    if inputs.paused:
                        print(f"paused: {pause_key} resumes into a new episode, Ctrl-C stops", flush=True)
                time.sleep(0.05)
        except KeyboardInterrupt:
            print("stopped", flush=True)


# -----------------------------------------------------------------------------
# Your own game, recorded before: a video or a folder of images with an inputs log, resampled to 15 fps

SYNC = 1e-3                  # seconds: loggers round their times, so times closer than this count as equal
MOVEMENTS = ["mouse_dx", "mouse_dy"]  # default columns that are distances: summed over a frame, not held


def open_footage(source, fps=None):
    """(times float64 (n,), frames): the second at which each footage frame shows, from 0, and a function that
    yields the PIL images of frames wanted[0], wanted[1], ... (never decreasing). A folder of images shows frame
    j at j / fps; a video at its own timestamps, so that a variable frame rate stays in step."""
    if source.is_dir():
        paths = sorted((p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")),
                       key=lambda p: (len(p.stem), p.stem))             # 2.png before 10.png
        if not fps or not paths:
            raise SystemExit(f"{source} is a folder of images, which carries no frame rate: give it with --fps"
                             if paths else f"{source} holds no .png or .jpg images")
        return np.arange(len(paths)) / fps, lambda wanted: (open_image(paths[j]) for j in wanted)
    import av                      # PyAV, which brings its own ffmpeg; only ingest needs it
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        stamps = np.sort([p.pts for p in container.demux(stream) if p.size])  # decoders show frames in this order
        times = (stamps - stamps[0]) * float(stream.time_base)

    def frames(wanted):  # a decoded frame is footage frame j by its timestamp: one that fails to decode (a video
        number = {pts: j for j, pts in enumerate(stamps)}  # cut between keyframes) moves no other out of step
        with av.open(str(source)) as container:
            container.streams.video[0].thread_type = "AUTO"          # ffmpeg decodes on several threads
            k, shown = 0, None
            for frame in (f for f in container.decode(video=0) if f.pts in number):
                while k < len(wanted) and wanted[k] <= number[frame.pts]:  # until then, the frame before shows
                    yield (frame if wanted[k] == number[frame.pts] or shown is None else shown).to_image()
                    k += 1
                shown = frame
            yield from (shown.to_image() for _ in wanted[k:])
    return times, frames


def read_log(path):
    """(names, times float64 (n,), values float32 (n, A)) of a JSON-lines log: ACTIONS, then the log's other
    names in alphabetical order (so logs with the same names get the same columns); a name left out is 0."""
    def parse(number, text):
        try:
            return {name: float(value) for name, value in json.loads(text).items()}
        except (ValueError, TypeError, AttributeError):  # not JSON, not an object, or a value that is no number
            raise SystemExit(f"{path}:{number}: not an object of numbers such as {{\"t\": 0.5, \"w\": 1}}") from None
    lines = [parse(n, text) for n, text in enumerate(pathlib.Path(path).read_text().splitlines(), 1) if text.strip()]
    if not lines or not all("t" in line for line in lines):
        raise SystemExit(f"{path}: every line needs its time in seconds, as in {{\"t\": 0.5, \"w\": 1}}; fix the log")
    times = np.array([line.pop("t") for line in lines], dtype=np.float64)
    if (np.diff(times) < 0).any():
        raise SystemExit(f"{path}: the time t goes backwards on line {np.argmax(np.diff(times) < 0) + 2}; sort the "
                         f"lines by time or fix the logger's clock")
    names = ACTIONS + sorted({name for line in lines for name in line} - set(ACTIONS) - {"frame"})  # no counter
    return names, times, np.array([[line.get(name, 0) for name in names] for line in lines], dtype=np.float32)


def until(times):
    """When each frame (or log line) starting at `times` ends: the next one's time; the last lasts as the one before."""
    distinct = np.unique(times)
    return np.append(times[1:], times[-1] + (distinct[-1] - distinct[-2] if len(distinct) > 1 else 1 / FPS))


def resample(names, times, values, edges, movements):
    """float32 (K, A): a row for each interval edges[k]..edges[k+1] from log lines that start at `times`.
    Movements are summed over the lines that start in it; any other column (a key, a button, an axis) takes its
    value of largest magnitude over the lines that overlap it, so a tap shows and a stick at -1 reads -1."""
    starting = np.searchsorted(times, edges - SYNC)                   # the first line starting at each edge
    overlapping = np.searchsorted(until(times), edges[:-1] + SYNC, side="right")  # the first ending after it
    moving, columns = np.isin(names, movements), np.arange(len(names))
    rows = np.empty((len(edges) - 1, len(names)), dtype=np.float32)   # (K, A)
    for k in range(len(rows)):
        held = values[overlapping[k]:starting[k + 1]]                 # (n, A)
        rows[k] = held[np.abs(held).argmax(axis=0), columns]
        rows[k, moving] = values[starting[k]:starting[k + 1], moving].sum(axis=0)
    return rows


def ingest(source, inputs, out, episode=None, size=None, fps=None, offset=0.0, movements=None, columns=None):
    """A new 15 fps episode of the dataset folder `out`, from footage and its inputs log; returns its folder.
    Output frame k is the footage frame on screen at k/15 s, its row the log over the next 1/15 s (resample)."""
    source, inputs = pathlib.Path(source), pathlib.Path(inputs)
    for path in (source, inputs):
        if not path.exists():
            raise SystemExit(f"{path} does not exist; check the path")
    episode = pathlib.Path(out) / (episode or source.stem)
    if episode.exists():
        raise SystemExit(f"{episode} already exists; pass another --episode (data is never overwritten)")
    shown, footage = open_footage(source, fps)                       # footage frame j shows from shown[j]
    if inputs.suffix.lower() == ".csv":                               # row j: the inputs during footage frame j
        names, values = read_inputs(inputs)
        times, values = shown[:len(values)], values[:len(shown)]
    else:
        names, times, values = read_log(inputs)
    there, there_size = first_episode(out)
    columns = ACTIONS + columns if columns else there or names
    lost = [name for j, name in enumerate(names) if name not in columns and values[:, j].any()]
    if lost:
        raise SystemExit(f"the inputs use {lost}, not among the columns of {out}; pass a new --out or --columns")
    values = np.stack([values[:, names.index(c)] if c in names else np.zeros(len(values)) for c in columns], axis=1)
    times, end = times + offset, until(shown)[-1]
    start, stop = max(0.0, times[0]), min(end, until(times)[-1])
    n_out = math.floor((stop - start + SYNC) * FPS)                  # whole 1/15 s covered by footage and log
    if n_out < 1:
        raise SystemExit(f"the inputs log ({times[0]:.3f}..{until(times)[-1]:.3f} s) does not overlap the footage "
                         f"(0..{end:.3f} s); its times count from the footage's first frame (see --offset)")
    if start > SYNC or stop < end - SYNC:
        print(f"note: the inputs cover {start:.3f}..{stop:.3f} s of the footage's 0..{end:.3f} s; the rest is left out")
    edges = start + np.arange(n_out + 1) / FPS                       # output frame k shows at edges[k]
    rows = resample(columns, times, values, edges, movements or MOVEMENTS)  # (n_out, A)
    wanted = np.searchsorted(shown, edges[:-1] + SYNC, side="right") - 1  # the frame on screen at each edge
    size = size or there_size or OWN_SIZE
    frames = tqdm((fit(image, size) for image in footage(wanted)), total=n_out, desc="ingest")
    meta = {"fps": FPS, "width": size[0], "height": size[1], "source": "ingest", "footage": str(source),
            "inputs": str(inputs), "start": start, "movements": movements or MOVEMENTS}
    try:
        write_episode(episode, zip(frames, rows), columns, meta)
    except BaseException:                                            # an error or Ctrl-C: no half episode
        shutil.rmtree(episode, ignore_errors=True)
        raise
    return episode


# -----------------------------------------------------------------------------

def parse_size(text):
    width, height = text.split("x")
    return int(width), int(height)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Record gameplay into a raw dataset (the format: see record.py).")
    sources = parser.add_subparsers(dest="source", required=True)
    doom = sources.add_parser("doom", help="a scripted player in Doom (Freedoom 2) via ViZDoom")
    atari = sources.add_parser("atari", help="a random player in an Atari game via the Arcade Learning Environment")
    screen = sources.add_parser("screen", help="your own game: the screen, with your keyboard and mouse")
    ingest_ = sources.add_parser("ingest", help="footage you have (a video or a folder of images) and its inputs")
    for source, out in ((doom, "data/doom"), (atari, "data/atari"), (screen, "data/screen"), (ingest_, "data/ingest")):
        source.add_argument("--out", default=out, help="dataset folder" + ", new or empty" * (source in (doom, atari)))
        default = {doom: "64x48", atari: "64x64"}.get(source, "that of the episodes in --out, else 256x144")
        source.add_argument("--size", type=parse_size, help=f"frame size WxH (default: {default}); the centre is cut "
                            "to its aspect ratio, never stretched")
    for game in (doom, atari):
        game.add_argument("--minutes", type=float, default=5.0, help="minutes of play at 15 fps, over all episodes")
        game.add_argument("--episodes", type=int, default=5, help="how many episodes to split the minutes into")
        game.add_argument("--seed", type=int, default=0, help="episode e uses seed + e, for the game and the player")
    atari.add_argument("--game", default="boxing", help="an Atari ROM that ale-py ships, such as boxing or seaquest")
    doom.add_argument("--map", default="map01", help="map01 .. map32, or a ViZDoom scenario such as my_way_home")
    screen.add_argument("--region", type=lambda text: tuple(map(int, text.split(","))),
                        help="x,y,width,height to record (default: the primary monitor); --region=-1920,... if x < 0")
    screen.add_argument("--countdown", type=int, default=3, help="seconds to wait before recording starts")
    screen.add_argument("--minutes", type=float, help="stop after this many minutes (default: at Ctrl-C)")
    screen.add_argument("--pause-key", default="f9", help="pauses and resumes; each stretch is an episode")
    ingest_.add_argument("footage", help="a video file (anything ffmpeg reads) or a folder of numbered images")
    ingest_.add_argument("--inputs", required=True, help="inputs.csv, a row per footage frame, or JSON lines")
    ingest_.add_argument("--episode", help="episode name (default: the footage's name without extension)")
    ingest_.add_argument("--fps", type=float, help="frame rate of a folder of images")
    ingest_.add_argument("--offset", type=float, default=0.0, help="seconds added to every time in the log")
    ingest_.add_argument("--movements", type=lambda text: text.split(","), help="columns a,b,... summed over a "
                         "frame (default: mouse_dx,mouse_dy); the others are keys or axes: their largest magnitude")
    ingest_.add_argument("--columns", type=lambda text: text.split(","), help="extra columns a,b,... of a JSON-lines "
                         "log, in this order (default: those of the episodes in --out, else the log's)")
    args = parser.parse_args(argv)
    if args.source == "doom":
        record_doom(args.out, args.minutes, args.episodes, args.size or (64, 48), args.seed, args.map)
    elif args.source == "atari":
        record_atari(args.out, args.game, args.minutes, args.episodes, args.size or (64, 64), args.seed)
    elif args.source == "screen":
        record_screen(args.out, args.region, args.size, args.countdown, args.minutes, args.pause_key)
    else:
        try:
            ingest(args.footage, args.inputs, args.out, args.episode, args.size, args.fps, args.offset,
                   args.movements, args.columns)
        except KeyboardInterrupt:
            raise SystemExit("stopped: no episode was written; run the same command again") from None


if __name__ == "__main__":
    main()
