"""
Record gameplay into a raw dataset, and read such datasets back.

The raw dataset format, shared by every source and read by encode.py:

    DATASET/                 a folder of episodes
      EPISODE/               one continuous recording, any name
        frames/00000000.png  consecutive RGB frames, all the same size, numbered from 0 (.png or .jpg)
        inputs.csv           header "frame,<action names>" (distinct names), then one row per frame
        meta.json            {"fps": 15, "width": W, "height": H, "actions": [...], "source": "...", ...}

Row i of inputs.csv holds the inputs applied AFTER frame i was shown, i.e. the action that leads from
frame i to frame i+1. The model that predicts frame t+1 sees frames t-9..t and actions t-9..t.

The standard action columns our own sources write are

    w,a,s,d,space,shift,mouse_left,mouse_right,mouse_dx,mouse_dy

with keys and buttons as 0/1 and mouse deltas as floats (in Doom and screen recordings, meta.json "units"
says in what). Every later stage accepts any set of columns: the action dimension comes from the data.
meta.json is optional; without it a folder is read as fps 15, with width and height taken from the frames.
Missing fields get the same defaults.

The Doom source (ViZDoom, Freedoom 2 MAP01 unless --map says otherwise, no monsters, a scripted player)
records at 15 fps and maps the columns to Doom's controls as follows:

    w, s         MOVE_FORWARD, MOVE_BACKWARD
    a, d         MOVE_LEFT, MOVE_RIGHT (strafe)
    space        USE (open doors, press switches)
    shift        SPEED (run)
    mouse_left   ATTACK (the pistol)
    mouse_right  unused, always 0
    mouse_dx     degrees turned during the frame, positive = turn right (like moving a mouse right)
    mouse_dy     degrees of pitch change during the frame, positive = look down (like moving a mouse
                 toward you); the scripted player keeps it 0, and Doom limits how far one can look

A key counts as held when its value is above 0.5. Doom turns in steps of 1/65536 of a circle, so
mouse_dx and mouse_dy are rounded to that step (0.0055 degrees): the scripted player turns by whole steps,
and the CSV's 6 significant digits round back to the same step.
meta.json["doom"] holds everything needed to replay an episode exactly (see replay()).

The screen source (`record.py screen`, your own game) grabs the screen with mss and listens to the keyboard
and mouse with pynput. It keeps a fixed 15 fps clock; a key or button is 1 in row i if it was down at any
moment between frames i and i+1 (a tap shorter than a frame still shows), mouse_dx/mouse_dy are the pixels
the pointer moved in that time. A frame the machine was too busy to grab is dropped, never faked with a
copy, and meta.json["capture"] counts the drops and says where they were. Frames are saved by a background
thread as they come, each with its inputs row, so Ctrl-C or a crash keeps everything captured so far.
Each stretch between presses of the pause key (F9) is an episode of its own.

The ingest source (`record.py ingest`) turns existing footage, a video file (decoded with PyAV) or a folder
of images, into a 15 fps episode. Its inputs log is either our inputs.csv with one row per footage frame, or
JSON lines with one object per frame of the logger and its time in seconds from the footage's first frame:

    {"t": 0.000, "w": 1, "mouse_dx": -3.5}
    {"t": 0.017, "w": 1, "shift": 1}              names left out are 0; names beyond ACTIONS become columns

Footage at another rate is resampled: output frame k is the frame on screen at k/15 s (by the video's own
timestamps, so a variable frame rate stays in step), and its row takes the log over the next 1/15 s with the
same rules as the screen source: keys held at any moment (any other column: its value of largest
magnitude, so an axis at -1 reads -1), mouse deltas and the columns named by --movements summed. Where the
log starts later or ends earlier than the footage, the footage is cut to it, with a note. An episode added
to a dataset takes the columns of the episodes already there (or --columns), so that they encode together.

Launch:

    python record.py doom --out data/doom --minutes 5                  # 5 episodes of 1 minute, 64x48
    python record.py doom --out data/doom_big --minutes 30 --episodes 10 --size 160x120 --seed 1
    python record.py doom --out data/arena --map deathmatch            # a ViZDoom scenario's map instead of MAP01
    python record.py screen --out data/mygame                          # primary monitor, 256x144, until Ctrl-C
    python record.py screen --out data/mygame --region 0,0,1280,720 --countdown 5 --minutes 30
    python record.py ingest gameplay.mp4 --inputs gameplay.jsonl --out data/mygame       # 30/60 fps -> 15 fps
    python record.py ingest shots/ --fps 30 --inputs inputs.csv --out data/mygame --episode run1 --size 256x144
"""

import argparse
import contextlib
import json
import math
import os
import pathlib
import queue
import random
import re
import shutil
import signal
import sys
import threading
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

ACTIONS = ["w", "a", "s", "d", "space", "shift", "mouse_left", "mouse_right", "mouse_dx", "mouse_dy"]
FPS = 15                     # frames per second of our recordings, and the default for folders without meta.json
SEED_MAX = 2**32 - 1         # the largest seed ViZDoom takes, and the largest --seed of train.py and sample.py
                             # (train.py's step_seed stays below 2**63 for 10^9 steps; torch takes < 2**64)
FLOAT32_MAX = float(np.finfo(np.float32).max)  # inputs are float32: a value beyond it would be stored as inf
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # frame files we read; we write PNG, which is lossless
# what Image.open and reading the pixels raise for a bad image file: an OSError for a damaged or foreign file
# (UnidentifiedImageError is one) or one that cannot be read, and for one of more pixels than Pillow opens
# (2 x MAX_IMAGE_PIXELS, 179 million) a DecompressionBombError, which is no OSError
IMAGE_ERRORS = (OSError, Image.DecompressionBombError)
RESIZE = Image.Resampling.BOX  # averages whole source pixels: deterministic, no ringing or aliasing when shrinking


class DataError(Exception):
    """Bad input data; the scripts print its message as a one-line error."""


class Stopped(DataError):
    """The person stopped the work (Ctrl-C, or `kill`); the message says what is kept and how to go on. The
    scripts print it as it is, not as an error, and exit with the shell's status for that signal (130 for
    Ctrl-C, 143 for kill), so that a script that runs them can tell a stop from a failure."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.status = 128 + signum


class Terminated(KeyboardInterrupt):
    """`kill` (SIGTERM) where the scripts raise it: the same cleanup as Ctrl-C, and a message that says which."""


def terminate(signum, frame):
    raise Terminated


def stopped_by(interrupt):
    """The name and number of the signal behind a KeyboardInterrupt: Ctrl-C, or SIGTERM (a Terminated)."""
    return ("SIGTERM", signal.SIGTERM) if isinstance(interrupt, Terminated) else ("Ctrl-C", signal.SIGINT)


def exit_stopped(message, status=128 + signal.SIGINT):
    """The end of a script that was stopped: its one line on stderr, and the status of the signal."""
    print(message, file=sys.stderr)
    sys.exit(status)


# -----------------------------------------------------------------------------
# Reading and writing the raw dataset format

def episode_folders(dataset):
    """The episodes of a dataset folder, in name order: its sub-folders with an inputs.csv (not latents-*)."""
    return sorted(p.parent for p in pathlib.Path(dataset).glob("*/inputs.csv"))


def list_episodes(dataset):
    dataset = pathlib.Path(dataset)
    if not dataset.is_dir():
        raise DataError(f"dataset folder {dataset} does not exist; record one with "
                        f"`python record.py doom --out {dataset}` or check the path")
    episodes = episode_folders(dataset)
    no_inputs = sorted(p.parent.name for p in dataset.glob("*/frames") if not (p.parent / "inputs.csv").is_file())
    if no_inputs:                                  # an episode left out in silence would look like less data
        raise DataError(f"{dataset / no_inputs[0]} has frames/ but no inputs.csv (named exactly so); add it, or move "
                        f"the folder out of {dataset}" + (f" ({len(no_inputs)} such folders)" if len(no_inputs) > 1
                                                          else ""))
    if not episodes:
        raise DataError(f"{dataset} holds no episodes (sub-folders with an inputs.csv); "
                        f"point at the dataset folder that contains the episode folders")
    return episodes


def read_text(path):
    """A text file that people may have saved from a spreadsheet or an editor: UTF-8, with or without a BOM."""
    try:
        return pathlib.Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:                        # no permission; on Windows, a logger that still holds it open
        raise DataError(f"{path} cannot be read ({e.strerror or e}); check that you may read it and that no "
                        f"program holds it locked") from None


def read_inputs(episode):
    """(action names, float32 array (N, A)) from EPISODE/inputs.csv (or a .csv file), checking every row."""
    path = pathlib.Path(episode)
    path = path if path.suffix.lower() == ".csv" and not path.is_dir() else path / "inputs.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing or not a file; every episode needs one (see the format in record.py)")
    lines = read_text(path).splitlines()
    header = [name.strip() for name in lines[0].split(",")] if lines else []  # "frame, w, a" as "frame,w,a"
    if not header or header[0] != "frame" or len(header) < 2:
        raise DataError(f"{path}:1: the header must be 'frame,<action names>' but is {lines[:1]}; "
                        f"fix the first line")
    names = header[1:]
    for name in names:
        if not name or name == "frame" or names.count(name) > 1:
            problem = "an empty name" if not name else f"{name!r} " + ("again" if name == "frame" else "twice")
            raise DataError(f"{path}:1: the header has {problem}; every column needs its own name: fix the first line")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = line.strip().split(",")
        if len(values) != len(header):
            problem = f"missing column {header[len(values)]!r}" if len(values) < len(header) else "extra values"
            raise DataError(f"{path}:{line_no}: {problem} (the row has {len(values)} values, the header "
                            f"{len(header)}); fix or delete the row")
        if values[0].strip() != str(len(rows)):
            raise DataError(f"{path}:{line_no}: column 'frame' is {values[0]!r} but should be {len(rows)}; "
                            f"rows must be numbered 0, 1, 2, ... without gaps")
        row = []
        for name, value in zip(names, values[1:]):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not abs(number) <= FLOAT32_MAX:                          # inputs are stored as float32
                raise DataError(f"{path}:{line_no}: column {name!r} is {value!r}, not a finite number; "
                                f"fix the value (keys are 0/1, mouse deltas floats)")
            row.append(number)
        rows.append(row)
    return names, np.array(rows, dtype=np.float32).reshape(len(rows), len(names))


def is_image(path):
    """A frame file: .png or .jpg, and not hidden (macOS puts ._5.png beside 5.png on a copy to a USB stick)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def frame_paths(episode):
    folder = pathlib.Path(episode) / "frames"
    paths = [p for p in folder.glob("*") if is_image(p)]
    if not paths:
        raise DataError(f"{folder} holds no .png or .jpg frames; record the episode again or delete it")
    for p in paths:
        if not p.stem.isdigit():
            raise DataError(f"{p} is not named by a frame number; name frames 00000000.png, 00000001.png, ...")
    paths.sort(key=lambda p: int(p.stem))
    for i, p in enumerate(paths):
        if int(p.stem) != i:
            problem = f"frame {i} is missing" if int(p.stem) > i else f"frame {int(p.stem)} appears twice"
            raise DataError(f"{folder}: {problem} (at {p.name}); frames must be numbered 0, 1, 2, ... without "
                            f"gaps, so renumber them or record the episode again")
    return paths


def read_meta(episode):
    """meta.json with defaults filled in: fps 15, width/height of the first frame, actions of inputs.csv."""
    path = pathlib.Path(episode) / "meta.json"
    meta = {}
    if path.is_file():
        try:
            meta = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); fix it or delete it to use the defaults")
        if not isinstance(meta, dict):
            raise DataError(f"{path} must hold a JSON object {{...}}; fix it or delete it to use the defaults")
    meta.setdefault("fps", FPS)
    meta.setdefault("source", "unknown")
    for key in ("fps", "width", "height"):  # numbers, not "64" (or true); a width of 64.0 is read as 64
        if key in meta:
            value = meta[key]
            if not (type(value) in (int, float) and 0 < value < math.inf and (key == "fps" or value == int(value))):
                what = "number" if key == "fps" else "whole number of pixels"
                raise DataError(f"{path}: {key!r} is {value!r}, not a positive {what}; fix it or delete it to use "
                                f"the default")
            meta[key] = value if key == "fps" else int(value)
    if "width" not in meta or "height" not in meta:
        first = frame_paths(episode)[0]
        try:
            with Image.open(first) as image:
                meta["width"], meta["height"] = image.size
        except IMAGE_ERRORS as e:
            raise DataError(f"{first} cannot be read as an image ({e}); delete the episode or record it again")
    if "actions" not in meta:
        meta["actions"] = read_inputs(episode)[0]
    return meta


def rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode, decoded in full. 16-bit greys (PNG mode I;16, or I) are
    scaled to 8 bits: convert("RGB") alone would clip them, and a frame that holds 3084 would turn white."""
    if image.mode.startswith("I"):
        image = Image.fromarray(np.clip(np.asarray(image) >> 8, 0, 255).astype(np.uint8))  # 0..65535 -> 0..255
    return image.convert("RGB")


def read_frames(episode):
    """uint8 (N, H, W, 3) of all frames."""
    paths = frame_paths(episode)
    frames, first_size = None, None
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = rgb(image)
        except IMAGE_ERRORS as e:
            raise DataError(f"{path} is corrupt or not an image ({e}); delete the episode or record it again")
        if first_size is None:
            first_size = W, H = image.size
            frames = np.empty((len(paths), H, W, 3), dtype=np.uint8)  # (N, H, W, 3)
        if image.size != first_size:
            raise DataError(f"{path} is {image.size[0]}x{image.size[1]} but {paths[0].name} is "
                            f"{first_size[0]}x{first_size[1]}; all frames of an episode must have one size")
        frames[i] = np.asarray(image)
    return frames


def check_episode(episode):
    """(action names, actions float32 (N, A), frame paths, meta) of one episode, checked as far as that is
    possible without decoding every frame (encode.py decodes them later, on background workers)."""
    names, actions = read_inputs(episode)
    paths = frame_paths(episode)
    if len(paths) != len(actions):
        raise DataError(f"{pathlib.Path(episode) / 'inputs.csv'} has {len(actions)} rows but frames/ has "
                        f"{len(paths)} images; every frame needs exactly one row: re-record the episode or "
                        f"delete the extra rows or images")
    meta = read_meta(episode)
    if meta["actions"] != names:
        raise DataError(f"{pathlib.Path(episode) / 'meta.json'} lists actions {meta['actions']} but inputs.csv "
                        f"has columns {names}; make them agree or delete 'actions' from meta.json")
    return names, actions, paths, meta


def read_episode(episode):
    """(frames uint8 (N, H, W, 3), actions float32 (N, A), action names, meta) of one episode."""
    names, actions, _, meta = check_episode(episode)
    frames = read_frames(episode)
    N, H, W, _ = frames.shape
    if (meta["width"], meta["height"]) != (W, H):
        raise DataError(f"{pathlib.Path(episode) / 'meta.json'} says {meta['width']}x{meta['height']} but the "
                        f"frames are {W}x{H}; fix width and height or delete them to use the frame size")
    return frames, actions, names, meta


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C and kill


def stop_handlers():
    """{signal: handler} of STOP_SIGNALS where Python can swap them: in the main thread only, the one that runs
    signal handlers, and not a handler set outside Python (None)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    return {signum: handler for signum, handler in handlers.items() if handler is not None}


@contextlib.contextmanager
def stops_held():
    """Ctrl-C or kill (SIGTERM) during the block takes effect when it ends."""
    previous = {signum: handler for signum, handler in stop_handlers().items() if handler != signal.SIG_IGN}
    caught = []
    for signum in previous:
        signal.signal(signum, lambda *args: caught.append(args))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum, frame in caught:  # in order, each to the handler it finds now (a first Ctrl-C may change it)
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, frame)                                   # e.g. raises KeyboardInterrupt now
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)                             # the default: the process ends now


@contextlib.contextmanager
def signals_restored():
    """SIGINT's and SIGTERM's handlers as they were before the block: a main() that sets its own for the run
    leaves its caller's (a test, a notebook) as it found them."""
    handlers = stop_handlers()
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def dataset_folder(out):
    """pathlib.Path(out), refused in one line where it, or a folder above it, is a file."""
    out = pathlib.Path(out)
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise DataError(f"{path} is a file, so --out {out} cannot be a dataset folder; pass another --out")
    return out


def write_episode(episode, steps, names, meta):
    """Write an episode from an iterable of (frame uint8 (H, W, 3), action) pairs, saving each frame
    as soon as it arrives. Refuses to write into an existing episode. Returns the number of frames.
    A frame is written under a temporary name, then renamed and its row written with Ctrl-C and kill held back, so an
    interruption leaves at most a stray .part file, which no reader sees, never a frame without its row or a
    half-written one."""
    episode = pathlib.Path(episode)
    episode.parent.mkdir(parents=True, exist_ok=True)
    episode.mkdir()                      # FileExistsError for a folder that is there: another run's, not ours
    (episode / "frames").mkdir()
    (episode / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    n_frames = 0
    with open(episode / "inputs.csv", "w", encoding="utf-8", newline="\n") as f:  # read back as UTF-8
        f.write(",".join(["frame"] + names) + "\n")
        for frame, action in steps:
            path = episode / "frames" / f"{n_frames:08d}.png"
            Image.fromarray(frame).save(path.with_suffix(".png.part"), format="PNG")
            with stops_held():                                           # the frame and its row, or neither
                os.replace(path.with_suffix(".png.part"), path)
                f.write(",".join([str(n_frames)] + [f"{float(v):.6g}" for v in action]) + "\n")
                f.flush()                                                # a crash keeps every row written so far
            n_frames += 1
    return n_frames


def cannot_write(episode, error, kept):
    """The one-line DataError for an OSError while writing `episode`: a read-only or missing --out, a full disk."""
    return DataError(f"cannot write {episode} ({error.strerror or error}); {kept}: pass an --out that you can "
                     f"write to, on a disk with free space")


# -----------------------------------------------------------------------------
# The Doom game: one setup and one step function, shared by recording and replay so both are identical

DOOM_WIDTHS = [160, 200, 256, 320, 400, 512, 640, 800, 1024, 1280, 1400, 1600]  # ViZDoom's 4:3 render sizes
TIC_PATTERN = [2, 2, 3]      # Doom runs 35 tics/s; frame i is followed by TIC_PATTERN[i % 3] tics: 7 tics = 3 frames
WARMUP_TICS = 7              # ViZDoom ignores turning in the first 7 tics of a map (measured), so we skip them
TURN_UNIT = 360 / 65536      # Doom turns in whole steps of 1/65536 circle per tic (its input commands hold 16 bits)
DOOM_BUTTONS = {             # our action column -> the ViZDoom button it holds (None: not used in Doom)
    "w": "MOVE_FORWARD", "s": "MOVE_BACKWARD", "a": "MOVE_LEFT", "d": "MOVE_RIGHT", "space": "USE",
    "shift": "SPEED", "mouse_left": "ATTACK", "mouse_right": None,
    "mouse_dx": "TURN_LEFT_RIGHT_DELTA", "mouse_dy": "LOOK_UP_DOWN_DELTA",
}
DOOM_KEYS = ["w", "s", "a", "d", "space", "shift", "mouse_left"]  # the on/off buttons, in set_action's order
DOOM_VARIABLES = ["ANGLE", "PITCH", "POSITION_X", "POSITION_Y"]   # what state.game_variables holds, in this order
DOOM_UNITS = {
    "keys": "1 = held during the whole frame (2 or 3 Doom tics), 0 = released",
    "mouse_dx": "degrees turned during the frame, positive = turn right, in steps of 360/65536",
    "mouse_dy": "degrees of pitch change during the frame, positive = look down (always 0 here)",
    "mouse_right": "unused in Doom, always 0",
}


def in_vizdoom(path):
    """A file that ships inside the vizdoom wheel (its .wad files), given its path in the package."""
    import vizdoom

    return os.path.join(os.path.dirname(vizdoom.__file__), path)


CRASHING_SCENARIOS = {"cig", "cig_with_unknown", "multi_duel"}  # a segmentation fault in init (vizdoom 1.3.2)


def doom_level(name):
    """(scenario, map) for --map: a Freedoom 2 map (map01 .. map32) or one of ViZDoom's scenario maps."""
    name = name.lower()                                  # MAP01, as Doom players write it, works too
    if re.fullmatch(r"map(0[1-9]|[12][0-9]|3[0-2])", name):
        return None, name
    if name in CRASHING_SCENARIOS:
        raise DataError(f"--map {name}: ViZDoom crashes starting this scenario (a multiplayer map); pick another, "
                        f"such as basic or deathmatch")
    if os.path.exists(in_vizdoom(f"scenarios/{name}.wad")):
        return f"scenarios/{name}.wad", "map01"
    raise DataError(f"--map {name} is neither a Freedoom 2 map (map01 .. map32) nor a ViZDoom scenario "
                    f"(basic, deathmatch, my_way_home, ...: the .wad names in vizdoom/scenarios/)")


def doom_resolution(size):
    """ViZDoom's smallest 4:3 render size of at least size=(W, H) both ways, so that its centre cut to W:H is
    shrunk, never enlarged; the largest, 1600x1200, for a size beyond it."""
    for w in DOOM_WIDTHS:
        if w >= size[0] and w * 3 // 4 >= size[1]:
            break
    return w, w * 3 // 4


def doom_settings(seed, level="map01", size=(64, 48)):
    """meta.json["doom"]: every setting that affects what the game shows, so replay() can redo it exactly."""
    scenario, map_ = doom_level(level)
    return {
        "wad": "freedoom2.wad",          # Freedoom's Doom II replacement, shipped inside the vizdoom wheel
        "scenario": scenario,            # a ViZDoom scenario .wad played on top of it, or None
        "map": map_,
        "seed": seed,                    # Doom's random number generator (pistol spread, flickering lights)
        "game_args": ["-nomonsters"],    # nothing can hurt the player, so episodes run as long as we like
        "resolution": "RES_{}X{}".format(*doom_resolution(size)),  # the smallest that need not be enlarged
        "cut_to_aspect": True,           # a --size not 4:3 keeps the centre (recordings without this stretched it)
        "render": {                      # a clean first-person view: no status bar, weapon, crosshair or text
            "hud": False, "weapon": False, "crosshair": False, "messages": False,
        },
        "warmup_tics": WARMUP_TICS,
        "tic_pattern": TIC_PATTERN,
        "buttons": DOOM_BUTTONS,
        "resize_filter": RESIZE.name,
    }


def start_doom(doom):
    """A headless game started as meta.json["doom"] describes, advanced to frame 0."""
    import vizdoom

    game = vizdoom.DoomGame()
    game.set_doom_game_path(in_vizdoom(doom["wad"]))
    if doom.get("scenario"):                   # recordings from before --map have no such key
        game.set_doom_scenario_path(in_vizdoom(doom["scenario"]))
    game.set_doom_map(doom["map"])
    for arg in doom["game_args"]:
        game.add_game_args(arg)
    game.set_seed(doom["seed"])
    game.set_screen_resolution(getattr(vizdoom.ScreenResolution, doom["resolution"]))
    game.set_screen_format(vizdoom.ScreenFormat.RGB24)
    for part, visible in doom["render"].items():
        getattr(game, f"set_render_{part}")(visible)
    buttons = [doom["buttons"][k] for k in DOOM_KEYS + ["mouse_dx", "mouse_dy"]]
    game.set_available_buttons([getattr(vizdoom.Button, b) for b in buttons])
    game.set_available_game_variables([getattr(vizdoom.GameVariable, v) for v in DOOM_VARIABLES])
    game.set_depth_buffer_enabled(True)        # only the scripted player looks at it, to find open space
    game.set_window_visible(False)
    game.set_sound_enabled(False)
    game.set_doom_config_path(os.devnull)      # built-in defaults every time, no _vizdoom.ini left behind
    # (ViZDoom still creates an empty _vizdoom/ folder in the working directory; git ignores empty folders)
    game.init()
    game.advance_action(doom["warmup_tics"])
    return game


def turn_per_tic(degrees, tics):
    """ViZDoom delta-button values for `tics` tics that together turn `degrees`, rounded to whole steps.

    ViZDoom applies a delta button's value on every tic it is held (make_action(a, 3) turns three times
    as far as make_action(a, 1)) and floors each tic's value to whole steps. So we split the frame's
    turn into whole steps per tic and aim each value at the middle of its step."""
    steps = round(degrees / TURN_UNIT)
    base, extra = divmod(steps, tics)                    # floor division, also right for negative turns
    return [(base + (t < extra) + 0.5) * TURN_UNIT for t in range(tics)]


def doom_step(game, doom, i, action, update=True):
    """Apply `action` (a row of inputs.csv, columns in ACTIONS order) after frame i, up to frame i+1.
    With update=False the new state (screen, depth, variables) is not fetched, which is faster."""
    a = dict(zip(ACTIONS, action))
    keys = [float(a[k] > 0.5) for k in DOOM_KEYS]
    tics = doom["tic_pattern"][i % len(doom["tic_pattern"])]
    yaw = turn_per_tic(a["mouse_dx"], tics)
    pitch = turn_per_tic(-a["mouse_dy"], tics)          # ViZDoom looks up for positive values
    for t in range(tics):
        game.set_action(keys + [yaw[t], pitch[t]])
        game.advance_action(1, update and t == tics - 1)  # fetch the state only after the last tic


def doom_frame(screen, size, doom):
    """A (h, w, 3) screen buffer as stored in frames/: brought to size=(W, H) by fit (recordings made before
    cut_to_aspect stretched it, and replay() does as they did)."""
    if doom.get("cut_to_aspect"):
        return fit(Image.fromarray(screen), size)
    return np.asarray(Image.fromarray(screen).resize(size, RESIZE))


# -----------------------------------------------------------------------------
# The scripted player

SEGMENTS = {                 # behaviour -> weight; in the quickstart recording 17% of rows hold no input
    "walk": 40, "turn": 14, "strafe": 12, "back": 6, "still": 20, "mash": 10,
}
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
    """A random but purposeful keyboard-and-mouse player.

    It plays a queue of segments, each holding one behaviour for a random number of frames: walk (often
    curving, sometimes running or strafing as well), turn in place, strafe, back up, stand still, or mash a
    random key combination. Taps of use and attack are sprinkled on top, and every frame there is a
    FLICK chance of breaking off for a few frames of a random other action (turn either way, stop, walk,
    strafe) before going on, which doubles how often the input changes from one frame to the next: the
    less the last ten frames give the next input away, the more a model must read it. The depth buffer
    tells it which side is open, so it mostly walks into rooms rather than into walls, and when its moving
    keys have not moved it for a while it backs off and turns away. The point is variety: a world model
    only learns to obey the actions if the data shows many different actions from similar views.
    """

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


def play_doom(doom, n_frames, size):
    """Yield (frame, action) for up to n_frames frames of the scripted player in a fresh game."""
    game = start_doom(doom)
    player = ScriptedPlayer(random.Random(doom["seed"]))
    try:
        for i in range(n_frames):
            state = game.get_state()
            if state is None:                                         # the level ended (the exit switch was used)
                break
            _, _, x, y = state.game_variables
            action = player.act(x, y, state.depth_buffer)
            yield doom_frame(state.screen_buffer, size, doom), action
            doom_step(game, doom, i, action)
    finally:
        game.close()


def record_doom(out, minutes=5.0, episodes=5, size=(64, 48), seed=0, level="map01"):
    """Record `minutes` of scripted play split over `episodes` episodes into the dataset folder `out`."""
    out = dataset_folder(out)
    if seed + episodes - 1 > SEED_MAX:
        raise DataError(f"--seed {seed} with --episodes {episodes} passes {SEED_MAX}, the largest seed Doom takes "
                        f"(episode e uses seed + e); pass a smaller --seed")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already exists and is not empty; pass a new --out or delete it yourself "
                        f"(recorded data is never overwritten)")
    total = round(minutes * 60 * FPS)
    if total < episodes:
        raise DataError(f"--minutes {minutes} gives {total} frames, fewer than --episodes {episodes}; "
                        f"record longer")
    started, recorded = time.time(), 0
    for e in range(episodes):
        n_frames = total // episodes + (e < total % episodes)
        doom = doom_settings(seed + e, level, size)
        if e == 0:
            note_fit(*doom_resolution(size), size, "Doom's picture")
        meta = {"fps": FPS, "width": size[0], "height": size[1], "actions": ACTIONS,
                "source": "vizdoom", "units": DOOM_UNITS, "doom": doom}
        steps = tqdm(play_doom(doom, n_frames, size), total=n_frames, desc=f"ep{e:03d}")
        try:
            recorded += write_episode(out / f"ep{e:03d}", steps, ACTIONS, meta)
        except BaseException as error:
            steps.close()
            episode = out / f"ep{e:03d}"
            if not any((episode / "frames").glob("*.png")):                # ended before its first frame
                shutil.rmtree(episode, ignore_errors=True)
                e -= 1
            if not isinstance(error, KeyboardInterrupt):
                raise
            by, signum = stopped_by(error)
            if e < 0:
                raise Stopped(f"stopped by {by} before the first frame; nothing was recorded", signum) from None
            raise Stopped(f"stopped by {by}: {out} keeps episodes ep000 to ep{e:03d}, every frame with its inputs "
                          f"row (ep{e:03d} may end early); encode them as they are, or record again into a new "
                          f"--out", signum) from None
    print(f"recorded {recorded} frames ({recorded / FPS / 60:.1f} min of play) in {episodes} "
          f"episode{'s' * (episodes != 1)} "
          f"to {out} in {time.time() - started:.1f}s")


# -----------------------------------------------------------------------------
# Replay: the true frames that other actions would have produced

def replay(episode, start, actions):
    """uint8 (K, H, W, 3): frames start+1 .. start+K of a Doom episode when `actions` (K, A), in the
    episode's action columns, are applied from frame `start` on instead of the recorded ones.

    The game is set up again from meta.json and the recorded actions of frames 0..start-1 are replayed
    without keeping their frames. Replaying the recorded actions gives back the recorded frames bit for bit.
    """
    names, recorded = read_inputs(episode)
    meta = read_meta(episode)
    if "doom" not in meta or names != ACTIONS:
        raise DataError(f"{episode} is not a Doom recording (no 'doom' settings in meta.json or other action "
                        f"columns); replay only works on episodes from `python record.py doom`")
    if not 0 <= start < len(recorded):
        raise DataError(f"replay start {start} is outside {episode}, which has frames 0..{len(recorded) - 1}")
    doom, size = meta["doom"], (meta["width"], meta["height"])
    actions = np.asarray(actions, dtype=np.float32)                       # (K, A)
    if actions.ndim != 2 or actions.shape[1] != len(ACTIONS):
        raise ValueError(f"replay wants actions of shape (K, {len(ACTIONS)}), got {actions.shape}")
    game = start_doom(doom)
    try:
        for i in range(start):
            doom_step(game, doom, i, recorded[i], update=False)
        frames = np.empty((len(actions), size[1], size[0], 3), dtype=np.uint8)  # (K, H, W, 3)
        for k, action in enumerate(actions):
            doom_step(game, doom, start + k, action)
            state = game.get_state()
            if state is None:
                raise DataError(f"the level ended at frame {start + k + 1} of the replay of {episode} "
                                f"(the exit was used); replay fewer actions")
            frames[k] = doom_frame(state.screen_buffer, size, doom)
    finally:
        game.close()
    return frames


# -----------------------------------------------------------------------------
# Your own game, part 1: frames of any shape brought to one size without distortion

def cut_box(w, h, size):
    """(width, height) of the largest box of size's aspect ratio W:H inside a w x h picture."""
    W, H = size
    return min(w, h * W / H), min(h, w * H / W)


def fit(image, size):
    """uint8 (H, W, 3) of a PIL image brought to size=(W, H) without distortion: the centre is cut to the
    aspect ratio of W:H, then resized. A 16:9 screen fitted to 4:3 loses equal strips left and right."""
    w, h = image.size
    cut_w, cut_h = cut_box(w, h, size)
    box = ((w - cut_w) / 2, (h - cut_h) / 2, (w + cut_w) / 2, (h + cut_h) / 2)
    return np.asarray(image.convert("RGB").resize(size, RESIZE, box=box))  # (H, W, 3)


def note_fit(w, h, size, what):
    """Notes on what fit does to frames of w x h for `size`: a part cut away for another aspect ratio, and an
    enlargement, which adds no detail, only time in encoding and training."""
    W, H = size
    cut_w, cut_h = cut_box(w, h, size)                                    # what fit keeps
    if cut_w * cut_h < 0.98 * w * h:
        where = "left and right" if cut_w < w else "top and bottom"
        pct = 100 * (1 - cut_w * cut_h / (w * h))                      # above 99: 2 decimals, cut, never up to 100
        pct = f"{pct:.0f}" if pct < 99 else f"{math.floor(pct * 100) / 100:.2f}"
        tqdm.write(f"note: {what} is {w}x{h} and --size {W}x{H} has another aspect ratio, so "
                   f"{pct}% of the picture, at its {where}, is cut away (never "
                   f"stretched); pass a --size of the picture's own shape to keep it whole", file=sys.stdout)
    if cut_w < W:
        tqdm.write(f"note: {what} is {w}x{h}, so its frames are enlarged to --size {W}x{H}, which adds no detail "
                   f"but costs time in encoding and training; pass --size {max(8, int(cut_w) // 8 * 8)}x"
                   f"{max(8, int(cut_h) // 8 * 8)} or smaller to keep them as they are", file=sys.stdout)


def dataset_columns(out):
    """(episode, its input columns) of the first readable episode already in the dataset `out`, whose columns
    a new episode must have to encode with them, or (None, None)."""
    for episode in episode_folders(out):
        try:
            return episode, read_inputs(episode)[0]
        except (DataError, OSError):
            continue                                                      # a damaged episode: encode.py says so
    return None, None


def episode_size(out, size):
    """`size`, or where it is None the frame size of the episodes already in the dataset `out` (so that its
    episodes encode together), else OWN_SIZE."""
    if size is not None:
        return size
    for episode in episode_folders(out):
        try:
            meta = read_meta(episode)
        except (DataError, OSError):
            continue                                                      # a damaged episode: encode.py says so
        found = meta["width"], meta["height"]
        if all(0 < side <= 4096 for side in found):
            print(f"note: the episode gets the frame size of {episode}: {found[0]}x{found[1]} (--size sets another)")
            return found
    return OWN_SIZE


# -----------------------------------------------------------------------------
# Your own game, part 2: live screen capture with the keyboard and mouse (mss and pynput)

OWN_SIZE = (256, 144)        # default frame size for your own footage: 16:9 like most screens, sides multiples of 8
PAUSE_KEY = "f9"             # default pause/resume hotkey: few games bind F9, and it is never a recorded column
SHIFT_KEYS = {"shift_l": "shift", "shift_r": "shift"}  # pynput tells the two shift keys apart; we record one column
SCREEN_UNITS = {
    "keys": "1 = held at any moment between this frame and the next (a short tap counts), 0 = not",
    "mouse_dx": "pixels the pointer moved right between this frame and the next (negative = left)",
    "mouse_dy": "pixels the pointer moved down between this frame and the next (negative = up)",
}


def key_name(key):
    """pynput key -> column name: 'w' for the W key with or without shift, 'space', 'shift', 'f9', ..."""
    name = (getattr(key, "char", None) or getattr(key, "name", None) or str(key)).lower()
    return SHIFT_KEYS.get(name, name)


class InputState:
    """The keyboard and mouse between two frames, fed by pynput's listener threads.

    row() returns one inputs.csv row and starts the next. A key or button counts as held if it was down at
    any moment since the last row, so a tap shorter than a frame is not lost; the mouse deltas add up all
    pointer movement since then. The pause key toggles `paused` and is never recorded."""

    def __init__(self, pause_key=PAUSE_KEY, pointer=None):
        self.pause_key, self.pointer = pause_key, pointer  # pointer: last (x, y), to turn positions into moves
        self.lock = threading.Lock()
        self.held = set()            # keys and buttons down now
        self.touched = set()         # keys and buttons down at any moment since the last row
        self.dx = self.dy = 0.0
        self.paused = False

    def press(self, name):
        if name == self.pause_key:
            self.paused = not self.paused
            return
        with self.lock:
            self.held.add(name)
            self.touched.add(name)

    def release(self, name):
        with self.lock:
            self.held.discard(name)

    def move(self, x, y, *_):
        with self.lock:
            if self.pointer is not None:
                self.dx += x - self.pointer[0]
                self.dy += y - self.pointer[1]
            self.pointer = (x, y)

    def row(self):
        with self.lock:
            row = [float(k in self.touched) for k in ACTIONS[:8]] + [self.dx, self.dy]
            self.touched, self.dx, self.dy = set(self.held), 0.0, 0.0
        return row


class EpisodeWriter:
    """write_episode() on a background thread, so that capture keeps its pace while PNGs are saved.
    meta.json is written first and every frame lands with its inputs row, flushed, as it arrives."""

    def __init__(self, episode, meta):
        self.queue = queue.Queue()   # (frame, row) pairs, then None to finish
        self.error = None
        self.thread = threading.Thread(target=self.run, args=(episode, meta), daemon=True)
        self.thread.start()

    def run(self, episode, meta):
        try:
            write_episode(episode, iter(self.queue.get, None), meta["actions"], meta)
        except Exception as e:       # a full disk, say: put() and close() raise it in the capturing thread
            self.error = cannot_write(episode, e, "any frames written before are kept") if isinstance(e, OSError) else e

    def put(self, frame, row):
        if self.error:
            raise self.error
        self.queue.put((frame, row))

    def close(self):
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def record_stretch(grab, inputs, episode, meta, size, deadline=math.inf):
    """Capture frames at 15 fps into the new folder `episode` until the pause key, `deadline` (in
    time.perf_counter() seconds), Ctrl-C or an error. Whatever ends it, every captured frame is on disk
    with its inputs row and meta.json, and the episode is valid for encode.py. `grab()` returns a PIL image.

    Frame i is grabbed at slot i of a fixed 1/15 s clock. When the machine was too busy to grab a slot within
    half a slot of its time, that slot is dropped, not filled with a copy: the next frame is the next real
    one and the row before it (the inputs after the last frame) covers the whole gap, so the inputs stay
    true. meta.json["capture"] counts the drops and lists the frames that a gap follows ("dropped_after")."""
    period = 1 / FPS
    if episode.exists():
        raise DataError(f"{episode} already exists; recorded data is never overwritten, pass another --out")
    writer = EpisodeWriter(episode, meta)
    started = time.perf_counter()
    slot, frames, dropped, dropped_after, pending, first, last = 0, 0, 0, [], None, 0.0, 0.0
    try:
        while not inputs.paused and time.perf_counter() < deadline:
            late = time.perf_counter() - (started + slot * period)
            if late < 0:
                time.sleep(-late)
            elif late > period / 2 and pending is not None:           # this slot has passed: drop it
                missed = math.floor(late / period + 0.5)              # up to the slot nearest to now
                slot, dropped = slot + missed, dropped + missed
                dropped_after.append(frames - 1)
                continue
            image = grab()
            now = time.perf_counter()
            row = inputs.row()                     # the inputs since the last grab: the row of the last frame
            frame = fit(image, size)
            if pending is not None:
                writer.put(pending, row)
            pending, frames, slot = frame, frames + 1, slot + 1
            first, last = first or now, now
    finally:
        if pending is not None:
            writer.put(pending, inputs.row())
        writer.close()
        if frames == 0:                            # paused or failed before the first frame: no episode
            shutil.rmtree(episode)
        else:
            fps = (frames - 1) / (last - first) if frames > 1 else 0.0
            meta = {**meta, "capture": {**meta["capture"], "frames": frames, "achieved_fps": round(fps, 3),
                                        "dropped": dropped, "dropped_after": dropped_after}}
            (episode / "meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
            (episode / "meta.json.tmp").replace(episode / "meta.json")
            print(f"{episode}: {frames} frames in {last - first:.1f} s, {fps:.2f} FPS achieved (target {FPS}), "
                  f"{dropped} slots dropped", flush=True)


def record_screen(out, region=None, size=None, countdown=3, minutes=None, pause_key=PAUSE_KEY):
    """Record the primary monitor, or region=(x, y, w, h), with the keyboard and mouse into new episodes
    of the dataset folder `out` until Ctrl-C or `minutes`. Each stretch between pauses is one episode."""
    try:                             # imported here, not at the top: the rest of the repo runs without a display
        import mss
        from pynput import keyboard, mouse
    except ImportError as e:                                              # pynput also fails without a display
        raise DataError(f"screen capture needs mss and pynput and a display they can use "
                        f"({str(e).splitlines()[0]}); `pip install -r requirements.txt` and run it on your "
                        f"desktop") from None
    pause_key = "space" if pause_key == " " else SHIFT_KEYS.get(pause_key.lower(), pause_key.lower())  # key_name's
    if len(pause_key) != 1 and pause_key not in {k.name for k in keyboard.Key}:
        raise DataError(f"--pause-key {pause_key!r} names no key; give one character or a key name such as f9, "
                        f"f10 or scroll_lock")
    if pause_key in ACTIONS:                                              # it is never recorded (InputState)
        raise DataError(f"--pause-key {pause_key} is one of the recorded inputs ({','.join(ACTIONS)}), and the pause "
                        f"key is never recorded; pick another, such as f9")
    out = dataset_folder(out)
    size = episode_size(out, size)
    episode, columns = dataset_columns(out)                               # found now, not by encode.py at the end
    if columns not in (None, ACTIONS):
        raise DataError(f"the episodes already in {out} have other input columns ({','.join(columns)} in "
                        f"{episode.name}) than screen records ({','.join(ACTIONS)}), and encode.py takes one "
                        f"set of columns per dataset; pass a new --out")
    try:
        sct = mss.MSS()
    except mss.exception.ScreenShotError as e:
        raise DataError(f"mss cannot open the screen ({str(e).splitlines()[0]}); run this on your desktop, "
                        f"and on macOS allow Screen Recording for your terminal") from None
    with sct:
        screen = sct.monitors[0]                                         # the box around all monitors
        if region is None:
            box = sct.monitors[1]                                        # the primary monitor
        else:
            x, y, w, h = region
            box = {"left": x, "top": y, "width": w, "height": h}
            if (x < screen["left"] or y < screen["top"] or x + w > screen["left"] + screen["width"]
                    or y + h > screen["top"] + screen["height"]):
                raise DataError(f"--region {x},{y},{w},{h} reaches outside the screen, which spans "
                                f"{screen['width']}x{screen['height']} from {screen['left']},{screen['top']}; "
                                f"give a region inside it")
        inputs = InputState(pause_key, pointer=mouse.Controller().position)
        listeners = [
            keyboard.Listener(on_press=lambda key, *_: inputs.press(key_name(key)),
                              on_release=lambda key, *_: inputs.release(key_name(key))),
            mouse.Listener(on_move=inputs.move, on_click=lambda x, y, button, down, *_:
                           (inputs.press if down else inputs.release)(f"mouse_{button.name}")),
        ]
        for listener in listeners:
            listener.start()

        def grab():
            shot = sct.grab(box)
            return Image.frombuffer("RGB", shot.size, shot.bgra, "raw", "BGRX")  # mss gives BGRA bytes

        meta = {"fps": FPS, "width": size[0], "height": size[1], "actions": ACTIONS, "source": "screen",
                "units": SCREEN_UNITS, "capture": {"region": [box[k] for k in ("left", "top", "width", "height")],
                                                   "pause_key": pause_key}}
        name = "screen-" + time.strftime("%Y%m%d-%H%M%S")
        deadline = time.perf_counter() + 60 * minutes if minutes else math.inf
        part = 0
        try:                                                             # Ctrl-C stops, in the countdown too
            for left in range(countdown, 0, -1):
                print(f"recording in {left} s: switch to the game ({pause_key} pauses, Ctrl-C stops)", flush=True)
                time.sleep(1)
            note_fit(box["width"], box["height"], size, f"the region at {box['left']},{box['top']}")
            print(f"recording {box['width']}x{box['height']} at {box['left']},{box['top']} into {out}, "
                  f"{FPS} FPS, frames {size[0]}x{size[1]}", flush=True)
            while time.perf_counter() < deadline:
                if inputs.paused:
                    time.sleep(0.05)
                    continue
                record_stretch(grab, inputs, out / f"{name}-{part:02d}", meta, size, deadline)
                part += 1
                if inputs.paused:
                    print(f"paused: {pause_key} resumes into a new episode, Ctrl-C stops", flush=True)
        except KeyboardInterrupt:
            print("stopped", flush=True)
        finally:
            for listener in listeners:
                listener.stop()


# -----------------------------------------------------------------------------
# Your own game, part 3: existing footage (a video or a folder of images) with an inputs log, at 15 fps

SYNC = 1e-3                  # seconds: loggers round their timestamps, so times closer than this count as equal
MOVEMENTS = ["mouse_dx", "mouse_dy"]  # columns that are distances: summed over a frame; the rest are keys/buttons


def read_jsonl(path):
    """(names, times float64 (n,), values float32 (n, A)) of a JSON-lines inputs log: one object per frame of
    the logger, {"t": seconds, "w": 1, "mouse_dx": -3.5, ...}. Columns are ACTIONS plus the other names in
    the log in alphabetical order (so two logs with the same names give the same columns); a name missing
    from a line counts as 0 (released, no movement). A "frame" counter is left out: frames go by time."""
    names, times, objects = list(ACTIONS), [], []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if line_no == 1 and line.strip().startswith("frame,"):         # through a pipe, a file has no name
                raise DataError(f"{path} is an inputs.csv, which is read as one only from a file whose name ends "
                                f"in .csv; save it as one and pass that") from None
            raise DataError(f"{path}:{line_no}: not valid JSON ({e}); each line must be one object such as "
                            f'{{"t": 0.5, "w": 1, "mouse_dx": -3}}') from None
        if not isinstance(obj, dict) or "t" not in obj:
            raise DataError(f"{path}:{line_no}: every line needs a timestamp \"t\" in seconds, as in "
                            f'{{"t": 0.5, "w": 1}}; fix the logger')
        for name, value in obj.items():
            if not isinstance(value, (int, float)) or not abs(value) <= FLOAT32_MAX:  # an int of any size too
                raise DataError(f"{path}:{line_no}: {name!r} is {str(value)[:40]!r}, not a finite number; keys are "
                                f"0/1, mouse deltas and \"t\" numbers")
            if name not in names and name not in ("t", "frame"):
                # it becomes a column of inputs.csv, whose header is read with str.splitlines and split at commas
                if not name or "," in name or name != name.strip() or name.splitlines() != [name]:
                    raise DataError(f"{path}:{line_no}: the name {name!r} cannot be a column (it is empty, holds a "
                                    f"comma or a line break, or starts or ends with a space); rename it in the log")
                names.append(name)
        if times and obj["t"] < times[-1]:
            raise DataError(f"{path}:{line_no}: timestamp t={obj['t']} goes backwards (the line before has "
                            f"t={times[-1]}); the lines must be in time order: sort them or fix the logger's clock")
        times.append(obj["t"])
        objects.append(obj)
    if not objects:
        raise DataError(f"{path} holds no inputs; a JSON-lines log has one object per line")
    names = names[:len(ACTIONS)] + sorted(names[len(ACTIONS):])
    values = np.array([[obj.get(n, 0) for n in names] for obj in objects], dtype=np.float32)  # (n, A)
    return names, np.array(times, dtype=np.float64), values


def image_files(folder):
    """The images of a folder of frames in frame order: by the last number in the name, so that 2.png comes
    before 10.png; one missing or repeated number would pair every later frame with the wrong row."""
    paths = [p for p in folder.iterdir() if is_image(p)]
    if not paths:
        raise DataError(f"{folder} holds no .png or .jpg images; pass a video file or a folder of frames")
    numbers = [re.findall(r"\d+", p.stem) for p in paths]
    if not any(numbers):
        return sorted(paths)                                             # unnumbered: by name
    if not all(numbers):
        stray = min(p.name for p, n in zip(paths, numbers) if not n)
        raise DataError(f"{folder / stray} has no frame number in its name, unlike the other images; move it "
                        f"out of the folder of frames")
    order = sorted(range(len(paths)), key=lambda i: (int(numbers[i][-1]), paths[i].name))
    paths, numbers = [paths[i] for i in order], [int(numbers[i][-1]) for i in order]
    for a, b, before, path in zip(numbers, numbers[1:], paths, paths[1:]):
        if b != a + 1:
            problem = f"frame {a + 1} is missing (at" if b > a else f"frame {b} appears twice ({before.name} and"
            raise DataError(f"{folder}: {problem} {path.name}); frame j is paired with row j of the inputs, "
                            f"so number the frames without gaps or repeats")
    return paths


def open_video(path):
    import av                        # PyAV (it brings its own ffmpeg); only ingest needs it

    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise DataError(f"{path} cannot be decoded as a video ({e.strerror or e}); check that the file is "
                        f"complete, or pass a folder of images") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{path} holds no video stream; pass a video file or a folder of images")
    return container


def footage_info(source, fps=None):
    """(average frames per second, float64 (n,) the time in seconds at which each frame shows, from 0, the time
    at which the footage ends, the resolution of those times where they are rounded, else 0, each frame's
    timestamp in the video's own units, or None where frames go by their order, and the number of frames
    that cannot be decoded at the start) of a video or a folder of images. A video's frames show at their own
    timestamps, so a variable frame rate (a phone's or a screen recorder's) keeps its frames in step with the
    log; fps overrides them with k/fps. A GIF's timestamps are whole 1/100 s: 0.07 s for 1/15 s. Frames that
    show before the first keyframe (a video cut with `-c copy`) cannot be decoded: the footage starts at that
    keyframe, at its own time. Frames the file marks as discarded (an MP4 edit list) are not footage."""
    if source.is_dir():
        if not fps:
            raise DataError(f"{source} is a folder of images, which carries no frame rate; give it with --fps")
        n = len(image_files(source))
        return fps, np.arange(n) / fps, n / fps, 0.0, None, 0
    with open_video(source) as container:
        stream = container.streams.video[0]
        rates, time_base = (stream.average_rate, stream.guessed_rate), stream.time_base  # read while open
        packets = [(p.pts, p.duration, p.is_keyframe, p.is_discard) for p in container.demux(stream) if p.size]
    key = next((pts for pts, _, keyframe, _ in packets if keyframe), None)  # the first decodable frame's time
    packets = [(pts, duration) for pts, duration, _, discard in packets if not discard]  # decodes none
    stamps = [pts for pts, _ in packets]
    timed = None not in stamps and time_base is not None
    # a video without timestamps (a raw .h264) goes by its rate, which ffmpeg reads from the stream itself
    # (guessed_rate) where the container's average is only ffmpeg's default of 25
    rate = fps or (rates[0] or rates[1] if timed else rates[1] or rates[0])
    if not rate or not packets:
        raise DataError(f"{source} has no frame rate or no frames that ffmpeg can find; give the rate with --fps")
    rate = float(rate)
    if not timed:
        if not fps:
            print(f"note: {source} has no timestamps; its frames are taken at {rate:g} fps, the rate the stream "
                  f"states (pass --fps if that is wrong)")
        return rate, np.arange(len(stamps)) / rate, len(stamps) / rate, 0.0, None, 0
    stamps = np.sort(np.array(stamps, dtype=np.int64))                   # decoders give frames in this order
    undecodable = int(np.searchsorted(stamps, key)) if key is not None else 0  # the frames that show before it
    if fps:                                                               # --fps: frame j shows at j / fps
        return rate, np.arange(len(stamps)) / rate, len(stamps) / rate, 0.0, stamps.tolist(), undecodable
    tick, last = float(time_base), int(stamps[-1])                        # the last frame to show ...
    gaps = np.diff(stamps)[np.diff(stamps) > 0]
    lasts = (next((d for pts, d in packets if pts == last), None)        # ... for as long as its packet says,
             or (np.median(gaps) if len(gaps) else round(1 / rate / tick)))  # or as long as a frame usually does
    # gaps that are whole multiples of the shortest: the times are exact (an .avi's tick is one frame, and a
    # dropped frame makes a gap of two); others (a GIF's 7, 6, 7 hundredths for 1/15 s) were rounded to ticks
    rounded = len(gaps) > 0 and bool(np.any(gaps % gaps.min()))
    origin = stamps[0]                                                    # the footage's time 0
    return (rate, (stamps - origin) * tick, (last + lasts - origin) * tick, tick if rounded else 0.0,
            stamps.tolist(), undecodable)


def footage_frames(source, wanted, stamps=None):
    """PIL images of the footage's frames number wanted[0], wanted[1], ... (never decreasing; repeats allowed).
    A video's decoded frames are numbered by their timestamps, `stamps` (footage_info's), where it has them, so a
    frame that does not decode shifts no other; where a wanted frame is missing, the one before it stays on
    screen."""
    if source.is_dir():
        paths, i, image = image_files(source), None, None
        for j in wanted:
            if j != i:
                i = j
                try:
                    with Image.open(paths[i]) as file:
                        image = rgb(file)
                except IMAGE_ERRORS as e:
                    raise DataError(f"{paths[i]} is corrupt or not an image ({e}); replace or delete it") from None
            yield image
        return
    import av

    number = {pts: j for j, pts in enumerate(stamps)} if stamps is not None else {}
    k, i, on_screen, image = 0, -1, None, None                            # the last frame decoded, as av and PIL
    with open_video(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"                                     # ffmpeg decodes on several threads
        try:
            for n, frame in enumerate(container.decode(stream)):
                j = number.get(frame.pts) if stamps is not None and frame.pts is not None else n
                if j is None or j <= i:                                   # before the footage's start: left out
                    continue
                while k < len(wanted) and wanted[k] < j:                  # it never decoded: the one before shows
                    image = image or (on_screen or frame).to_image()
                    yield image
                    k += 1
                i, on_screen, image = j, frame, None                      # RGB only for the frames we keep
                while k < len(wanted) and wanted[k] == i:
                    image = image or frame.to_image()
                    yield image
                    k += 1
                if k == len(wanted):
                    break
        except av.FFmpegError as e:
            raise DataError(f"{source} cannot be decoded after frame {i} ({e.strerror or e}); the file may be "
                            f"cut short: re-export it or trim it before that point") from None


def resample_inputs(names, times, ends, values, edges, movements=MOVEMENTS):
    """float32 (K, A): one row for each interval edges[k]..edges[k+1] from log frames that run times[j]..ends[j].
    Movements (columns named in `movements`) are summed over the log frames that start in the interval, so
    no movement is counted twice or lost. Every other column is a key, a button or an axis: it takes the
    value of largest magnitude among the log frames that overlap the interval, so a key is held if it is held
    at any moment (a tap shorter than 1/15 s still shows, as in `record.py screen`), and a stick pushed left
    (-1) for part of the interval reads -1, not the 0 of a max."""
    rows = np.empty((len(edges) - 1, len(names)), dtype=np.float32)       # (K, A)
    moving = np.isin(names, movements)
    starting = np.searchsorted(times, edges - SYNC)                       # first log frame starting at each edge
    overlapping = np.searchsorted(ends, edges[:-1] + SYNC, side="right")  # first log frame ending after it
    columns = np.arange(len(names))
    for k in range(len(rows)):
        held = values[overlapping[k]:starting[k + 1]]                     # (n, A), never empty
        rows[k] = held[np.abs(held).argmax(axis=0), columns]
        rows[k, moving] = values[starting[k]:starting[k + 1], moving].sum(axis=0)
    return rows


def choose_columns(names, values, columns, why, fix="list every name your logs use in --columns and ingest each "
                                                   "session with it (into a new --out)"):
    """values (n, A) of the log's columns `names` rearranged to `columns`: a column the log lacks is 0 (never
    pressed), and one the log has but `columns` lacks is an error unless it is 0 throughout."""
    lost = [n for j, n in enumerate(names) if n not in columns and values[:, j].any()]
    if lost:
        raise DataError(f"the inputs log uses {', '.join(map(repr, lost))}, which {why}; {fix}")
    chosen = np.zeros((len(values), len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        if name in names:
            chosen[:, j] = values[:, names.index(name)]
    return chosen


def ingest(source, inputs, out, episode=None, size=None, fps=None, offset=0.0, movements=None,
           columns=None):
    """Turn footage (a video file or a folder of images) and its inputs log (our inputs.csv, one row per
    footage frame, or JSON lines with timestamps) into one new 15 fps episode of the dataset folder `out`.

    Output frame k is the footage frame on screen at time start + k/15 s, and its row aggregates the log over
    the following 1/15 s (see resample_inputs; `movements` names the columns that are summed). A log that
    starts later or ends earlier than the footage trims it, with a note. The columns of a JSON-lines log are
    ACTIONS + `columns` when given, else those of the episodes already in `out` (so that sessions whose
    logs name different keys encode together), else ACTIONS and the log's other names; an inputs.csv also
    takes the columns of the episodes already there. A failed or interrupted ingest leaves no episode
    behind: just run it again."""
    source, inputs, out = pathlib.Path(source), pathlib.Path(inputs), pathlib.Path(out)
    for path in (source, inputs):
        if not path.exists():
            raise DataError(f"{path} does not exist; check the path")
    if inputs.is_dir():                        # not is_file(): a log may come through a pipe, --inputs <(...)
        raise DataError(f"--inputs {inputs} is a folder; pass the inputs log file (inputs.csv or .jsonl)")
    out = dataset_folder(out)
    name = episode or (source.resolve().stem if source.is_dir() else source.stem)  # `ingest .` is its folder's
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise DataError(f"--episode {name!r} is not a folder name; an episode is one folder inside --out {out}")
    episode = out / name
    taken = f"{episode} already exists; pass another --episode or --out (data is never overwritten)"
    if episode.exists():
        raise DataError(taken)
    rate, shown, duration, tick, stamps, undecodable = footage_info(source, fps)  # frame j shows at shown[j]
    begins = shown[min(undecodable, len(shown) - 1)]                      # where the first keyframe shows
    if undecodable:
        print(f"note: {source} starts {begins:.3f} s ({undecodable} frames) before its first keyframe (cut "
              f"with -c copy?), where no frame can be decoded; the footage starts there, with the inputs of that "
              f"moment (if the log's 0 is the first frame you see, pass --offset)")
    if rate < 0.95 * FPS:                                                 # (a GIF's 0.07 s delays: 14.3 fps)
        print(f"note: {source} runs at {rate:g} fps, below {FPS}: each of its frames is shown about "
              f"{FPS / rate:.1f} times")
    size, n_frames = episode_size(out, size), len(shown)
    csv_log = inputs.suffix.lower() == ".csv"
    if csv_log:                                                          # row j belongs to footage frame j
        if columns is not None:
            raise DataError("--columns is for JSON-lines logs; an inputs.csv keeps its own columns")
        names, values = read_inputs(inputs)
        if len(values) < n_frames:
            raise DataError(f"{inputs} has {len(values)} rows but {source} has {n_frames} frames; inputs.csv "
                            f"needs a row for every frame (they are matched by number); a log that covers only "
                            f"part of the footage needs timestamps (JSON lines)")
        if len(values) > n_frames:
            print(f"note: {inputs} has {len(values) - n_frames} more rows than {source} has frames; "
                  f"the extra rows at the end are ignored")
        values, times, step = values[:n_frames], shown, duration - shown[-1]  # row j lasts as frame j does
    else:
        names, times, values = read_jsonl(inputs)
        if columns is not None:
            standard = [name for name in columns if name in ACTIONS]
            if standard:
                raise DataError(f"--columns lists {', '.join(standard)}, a standard column that every episode has; "
                                f"list only the extra ones")
            names, values = ACTIONS + columns, choose_columns(names, values, ACTIONS + columns, "--columns lacks")
        gaps = np.diff(times)
        gaps = gaps[gaps > 0]                                             # lines may share a timestamp
        step = float(np.median(gaps)) if len(gaps) else 1 / FPS            # how long the last line lasts
    earlier, wanted = dataset_columns(out)
    if wanted and columns is None:           # the dataset's columns, so that its episodes encode together
        fix = ["ingest it into a new --out, or give it the columns of those episodes"] if csv_log else []
        values = choose_columns(names, values, wanted, f"the episodes already in {out} lack", *fix)
        if wanted != names:
            print(f"note: the episode gets the columns of {earlier}: {','.join(wanted)}")
        names = wanted
    unknown = [name for name in movements or [] if name not in names]
    movements = [name for name in MOVEMENTS if name in names] if movements is None else movements
    if unknown:
        raise DataError(f"--movements names {', '.join(unknown)}, not columns of the inputs ({', '.join(names)})")
    times = times + offset
    ends = np.append(times[1:], times[-1] + step)                         # log frame j runs times[j]..ends[j]
    start, end = max(begins, times[0]), min(duration, ends[-1])
    slack = max(SYNC, tick / 2)                                           # how far apart two times may be and match
    n_out = math.floor(max(end - start + slack, 0) * FPS)                 # whole 1/15 s frames covered by both
    if n_out < 1 and end > start:
        raise DataError(f"the footage ({begins:.3f}..{duration:.3f} s) and the inputs log ({times[0]:.3f}.."
                        f"{ends[-1]:.3f} s) overlap for {end - start:.3f} s, less than one frame at {FPS} fps; "
                        f"ingest needs longer footage with inputs")
    if n_out < 1:
        raise DataError(f"the inputs log covers {times[0]:.3f}..{ends[-1]:.3f} s but the footage "
                        f"{begins:.3f}..{duration:.3f} s: they do not overlap; timestamps are seconds from the "
                        f"footage's first frame (shift them with --offset)")
    if times[0] > begins + SYNC:
        print(f"note: the inputs start {start:.3f} s into the footage; the footage before that is left out")
    if end < duration - slack:
        print(f"note: the inputs end at {end:.3f} s, {duration - end:.3f} s before the footage does; "
              f"the rest of the footage is left out")
    # seen: a log in milliseconds. Read in seconds it runs on for 1000 times the footage; read in milliseconds
    # it would end about when the footage does (a long session log in seconds, cut short, ends far later)
    if ends[-1] > 100 * duration and 0.3 * duration <= ends[-1] / 1000 <= 3 * duration:
        raise DataError(f"the inputs log runs to {ends[-1]:.3f} s but the footage lasts {duration:.3f} s: are its "
                        f"timestamps in milliseconds? \"t\" is in seconds from the footage's first frame (divide "
                        f"them by 1000); else cut the log to the footage")
    if ends[-1] > 2 * duration + 1:
        print(f"note: the inputs run on to {ends[-1]:.3f} s, {ends[-1] - duration:.3f} s after the footage ends; "
              f"that part of the log is left out (are the timestamps in seconds?)")
    edges = start + np.arange(n_out + 1) / FPS                            # output frame k shows at edges[k]
    rows = resample_inputs(names, times, ends, values, edges, movements)  # (n_out, A)
    # the last frame shown by edges[k]: exact times match to float error (a 29.97 fps frame that shows 0.07 ms
    # after the edge is not shown yet), rounded ones (to a tick, or a logger's millisecond) within that rounding
    wanted = np.maximum(np.searchsorted(shown, edges[:-1] + (slack if tick else 1e-6), side="right") - 1, 0)
    meta = {"fps": FPS, "width": size[0], "height": size[1], "actions": names, "source": "ingest",
            "ingest": {"footage": str(source), "inputs": str(inputs), "footage_fps": rate, "start": start,
                       "offset": offset, "keys": "the value of largest magnitude in the 1/15 s after the frame",
                       "movements": f"{movements} summed over the 1/15 s after the frame, in the log's units"}}
    started = time.time()

    def fitted(images):
        for k, image in enumerate(images):
            if k == 0:
                note_fit(*image.size, size, source)
            yield fit(image, size)

    frames = fitted(footage_frames(source, wanted, stamps))
    bar = tqdm(frames, total=n_out, desc="ingest", unit="frame", file=sys.stdout)  # stderr is for errors
    try:                                       # write_episode first claims the folder: then it is ours to delete
        written = write_episode(episode, zip(bar, rows), names, meta)
    except FileExistsError:                    # another ingest of that name started meanwhile: not ours to delete
        raise DataError(taken) from None
    except BaseException as error:             # errors and Ctrl-C: no half episode for encode.py to pick up
        shutil.rmtree(episode, ignore_errors=True)
        if isinstance(error, OSError):
            raise cannot_write(episode, error, "no episode was written") from None
        raise
    if written < n_out:
        print(f"note: {source} ended after {written} of the {n_out} frames its header promised")
    seconds = time.time() - started
    print(f"ingested {written} frames ({written / FPS:.1f} s at {FPS} fps) from {source} ({rate:g} fps) into "
          f"{episode} in {seconds:.1f} s ({written / max(seconds, 1e-9):.0f} frames/s)")
    return episode


# -----------------------------------------------------------------------------

def names_list(text):
    """An argparse type: "jump, crouch" -> ["jump", "crouch"], each name once, none of them reserved."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if not name or name in ("frame", "t") or names.count(name) > 1:
            problem = "an empty name" if not name else f"{name!r} " + ("twice" if names.count(name) > 1 else
                                                                       "(a reserved name)")
            raise argparse.ArgumentTypeError(f"{text!r} has {problem}; give comma-separated column names")
    return names


def number(kind, low=0, inclusive=False, high=math.inf):
    """An argparse type: a finite int or float above `low` (or from it, with inclusive) and at most `high`;
    argparse turns the ArgumentTypeError into a one-line usage error."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} {kind.__name__}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if not (value >= low if inclusive else value > low):
            raise argparse.ArgumentTypeError(f"{text} must be {'at least' if inclusive else 'above'} {low}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text} must be at most {high}")
        return value
    return parse


def parse_with_given(parser, argv=None):
    """parser.parse_args(argv), and the names of the flags given on the command line, including those given
    with their default value: argparse fills a default in only where the namespace lacks the name, so a second
    parse into a namespace that holds a marker for every name leaves the marker wherever no flag was given
    (for flags that store a value; an append or count flag would try to add to the marker)."""
    args = parser.parse_args(argv)
    unset = object()
    probe = parser.parse_args(argv, argparse.Namespace(**{name: unset for name in vars(args)}))
    return args, {name for name, value in vars(probe).items() if value is not unset}


def parse_size(text):
    """(width, height) of "WIDTHxHEIGHT", each side 1 to 4096 pixels."""
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", text)
    if not match or not all(0 < int(side) <= 4096 for side in match.groups()):
        raise DataError(f"--size {text!r} is not WIDTHxHEIGHT with sides of 1 to 4096 pixels; use for example "
                        f"--size 64x48")
    return int(match[1]), int(match[2])


def parse_region(text):
    parts = text.split(",")
    if len(parts) != 4 or not all(re.fullmatch(r"\s*-?[0-9]+\s*", p) for p in parts) or min(map(int, parts[2:])) <= 0:
        raise DataError(f"--region {text!r} is not x,y,width,height in screen pixels; use for example "
                        f"--region 0,0,1280,720")
    return tuple(int(p) for p in parts)


def main(argv=None):
    with signals_restored():
        record(argv)


def record(argv=None):
    more = "[--size WxH] ... (--help lists every flag)"  # a bad flag prints a 2-line usage, not all of them
    parser = argparse.ArgumentParser(description="Record gameplay into a raw dataset (format: see record.py).")
    sources = parser.add_subparsers(dest="source", required=True)
    doom = sources.add_parser("doom", usage=f"record.py doom [--out DATA] [--minutes M] [--episodes N] {more}",
                              help="a scripted player in Doom (Freedoom 2) via ViZDoom")
    doom.add_argument("--out", default="data/doom", help="dataset folder to create; must not exist or be empty")
    doom.add_argument("--minutes", type=number(float), default=5.0, help="total minutes of play at 15 fps")
    doom.add_argument("--episodes", type=number(int), default=5, help="number of episodes to split the minutes over")
    doom.add_argument("--size", default="64x48", help="frame size WIDTHxHEIGHT (Doom renders 4:3, at the smallest "
                                                         "size from 160x120 to 1600x1200 that covers it; the "
                                                         "centre is cut to its aspect, never stretched)")
    doom.add_argument("--seed", type=number(int, inclusive=True, high=SEED_MAX), default=0,
                      help="episode e uses seed + e for Doom and the player")
    doom.add_argument("--map", default="map01", help="map01 .. map32 of Freedoom 2, or a ViZDoom scenario map "
                                                     "such as basic (one room) or my_way_home (a small maze)")
    screen = sources.add_parser("screen", usage=f"record.py screen [--out DATA] [--region x,y,w,h] {more}",
                                help="your own game: the screen with your keyboard and mouse")
    screen.add_argument("--out", default="data/screen", help="dataset folder; every recording adds episodes")
    screen.add_argument("--region", help="x,y,width,height of the part of the screen to record, in screen "
                                         "pixels (default: the whole primary monitor); with an = where x is negative "
                                         "(a monitor left of the primary): --region=-1920,0,1920,1080")
    screen.add_argument("--size", help="frame size WIDTHxHEIGHT (default: that of the episodes already in --out, "
                                       "else 256x144); the centre of the region is cut to its aspect, never "
                                       "stretched")
    screen.add_argument("--countdown", type=number(int, inclusive=True), default=3,
                        help="seconds to wait before recording starts")
    screen.add_argument("--minutes", type=number(float), help="stop after this many minutes (default: at Ctrl-C)")
    screen.add_argument("--pause-key", default=PAUSE_KEY, help="key that pauses and resumes; each stretch "
                                                               "between pauses becomes its own episode")
    ingest_ = sources.add_parser("ingest", usage=f"record.py ingest FOOTAGE --inputs LOG [--out DATA] {more}",
                                 help="existing footage: a video or a folder of images, plus inputs")
    ingest_.add_argument("footage", help="a video file (anything ffmpeg reads) or a folder of .png/.jpg frames")
    ingest_.add_argument("--inputs", required=True, help="inputs.csv with one row per footage frame, or a .jsonl "
                                                         "log with one {\"t\": seconds, ...} object per line")
    ingest_.add_argument("--out", default="data/ingest", help="dataset folder to add the episode to")
    ingest_.add_argument("--episode", help="episode name (default: the footage's file name without extension)")
    ingest_.add_argument("--size", help="frame size WIDTHxHEIGHT (default: that of the episodes already in --out, "
                                        "else 256x144); the centre is cut to its aspect, never stretched")
    ingest_.add_argument("--fps", type=number(float, 0.01, inclusive=True, high=1000),
                         help="frame rate of a folder of images (a video carries its own; this overrides it)")
    ingest_.add_argument("--offset", type=number(float, -math.inf), default=0.0,
                         help="seconds added to every timestamp of the log, to line it up with the footage's first "
                              "frame")
    ingest_.add_argument("--movements", type=names_list,
                         help="comma-separated columns that are distances, summed over each 1/15 s (default: "
                              f"those of {','.join(MOVEMENTS)} that the inputs have); every other column is a key, "
                              "button or axis: its value of largest magnitude")
    ingest_.add_argument("--columns", type=names_list,
                         help="comma-separated extra columns of a JSON-lines log, after the standard ones, in this "
                              "order; a name no line mentions is 0 (default: the columns of the episodes already in "
                              "--out, else the log's names in alphabetical order). Give every session the same list "
                              "to encode them together")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said with the usage of the source they were given to, not of record.py
        sources.choices[args.source].error(f"unrecognized arguments: {' '.join(unknown)}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)                       # `kill` stops cleanly, like Ctrl-C
        # and Ctrl-C itself, even when a launcher left SIGINT ignored (as a shell does for jobs started with &)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    size = parse_size(args.size) if args.size is not None else None     # screen and ingest: the dataset's
    if args.source == "doom":
        record_doom(args.out, args.minutes, args.episodes, size, args.seed, args.map)
    if args.source == "screen":
        region = parse_region(args.region) if args.region else None
        record_screen(args.out, region, size, args.countdown, args.minutes, args.pause_key)
    if args.source == "ingest":
        try:
            ingest(args.footage, args.inputs, args.out, args.episode, size, args.fps, args.offset, args.movements,
                   args.columns)
        except KeyboardInterrupt as interrupt:
            by, signum = stopped_by(interrupt)
            raise Stopped(f"stopped by {by}: no episode was written (ingest writes all or nothing); run it again",
                          signum) from None


if __name__ == "__main__":
    try:
        main()
    except Stopped as e:
        exit_stopped(e, e.status)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:  # before or between the sources' own handling (e.g. doom's game start)
        by, signum = stopped_by(interrupt)
        exit_stopped(f"stopped by {by}", 128 + signum)
