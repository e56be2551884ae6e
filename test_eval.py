"""
sample.py: the metrics of --eval on synthetic videos, checked formula by formula; --eval, --compare and
plain rollouts on the tiny run, with known dreams standing in for the model where that pins a metric.

    python -m pytest -q test_eval.py
"""
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from encode import encode_dataset, load_latents
from record import record_doom
from sample import (changes, counterfactual_scripts, frame_mse, is_stuck, margin_of_mean_mse, psnr,
                    sharpness, ssim)

rng = np.random.default_rng(0)
VIDEO = rng.integers(0, 256, (20, 24, 32, 3), dtype=np.uint8)


def blur(video):
    v = video.astype(np.float64)
    return ((v + np.roll(v, 1, 1) + np.roll(v, 1, 2) + np.roll(v, (1, 1), (1, 2))) / 4).astype(np.uint8)


def drifting(levels, n=20):
    """n frames (n, 4, 5, 3) that each differ from the one before by `levels` gray levels on average."""
    total = round(levels * 60)                             # gray levels added per frame over the 60 values
    step = np.full(60, total // 60)
    step[:total % 60] += 1
    return (np.arange(n)[:, None] * step).reshape(n, 4, 5, 3).astype(np.uint8)


def ssim_by_hand(a, b):
    """SSIM of two frames (H, W, 3) by Wang et al. 2004's formula, one 7x7 window at a time."""
    x, y = (np.asarray(f, np.float64) @ [0.299, 0.587, 0.114] for f in (a, b))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for i in range(x.shape[0] - 6):
        for j in range(x.shape[1] - 6):
            wx, wy = x[i:i + 7, j:j + 7], y[i:i + 7, j:j + 7]
            mx, my, vx, vy = wx.mean(), wy.mean(), wx.var(), wy.var()
            cxy = ((wx - mx) * (wy - my)).mean()
            scores.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return np.mean(scores)


def test_psnr_is_not_swamped_by_identical_frames():
    truth = np.stack([VIDEO, VIDEO])                       # (S=2, N, H, W, 3)
    guess = truth.copy()
    guess[1] = 255 - guess[1]                              # one start perfect, one start awful
    p = psnr(guess, truth)
    assert p.shape == (20,) and np.all(p < 10)             # an average of per-frame PSNR would say ~50 dB


def test_margin_is_not_swamped_by_one_pixel_exact_start():
    err_a = np.full((20, 3), 100.0)                        # MSE against the truth of the inputs given, 3 horizons
    err_a[0] = 0                                           # one start (a still player) pixel-exact
    err_b = np.stack([np.full((20, 3), 200.0),             # against the truths of 2 other scripts: the first
                      np.full((20, 3), [100.0, 400.0, 1000.0])])  # 200 everywhere, the second grows with the horizon
    margin, (lo, hi) = margin_of_mean_mse(err_a, err_b)
    # start-averaged MSE per script, then dB, then the mean over scripts (per-start PSNR averaged: ~10+ dB)
    want = (10 * np.log10(200 / 95) + 10 * np.log10(np.array([100, 400, 1000]) / 95)) / 2
    assert np.allclose(margin, want)
    assert np.all((lo <= margin) & (margin <= hi)) and np.all(hi - lo < 1)
    same = np.full((20, 3), 100.0)
    margin, (lo, hi) = margin_of_mean_mse(same, same[None] * np.linspace(0.5, 1.5, 20)[:, None])
    assert np.allclose(margin, 0) and np.all(lo < 0) and np.all(hi > 0)  # no difference: the interval holds 0


def test_psnr_is_10_log10_of_255_squared_over_the_mse_floored_at_1e_minus_10():
    dream, truth = np.zeros((2, 3, 4, 5, 3), np.uint8)
    truth[0] = 10                                          # MSE 100 (dream - truth would wrap around in uint8)
    dream[1, 0, 0, 0] = 1                                  # MSE 1/60
    p = psnr(dream[None], truth[None])                     # frame 2 pixel-exact: the floor, 148 dB
    assert np.allclose(p, 10 * np.log10(255**2 / np.array([100, 1 / 60, 1e-10]))) and round(p[2], 2) == 148.13
    guess, truth = np.stack([dream, dream]), np.stack([truth, truth])  # (S=2, N=3, H, W, 3)
    guess[1, 0] = 10
    guess[1, 0].flat[:45] = 30                             # the second start's frame 0: MSE 45 * 400 / 60 = 300
    assert np.allclose(psnr(guess, truth), 10 * np.log10(255**2 / np.array([200, 1 / 60, 1e-10])))


def test_margin_is_psnr_against_a_minus_against_b_averaged_over_the_scripts():
    r = np.random.default_rng(1)
    dream = r.integers(0, 256, (4, 3, 6, 7, 3), dtype=np.uint8)   # (S=4, N=3, H, W, 3)
    truth_a = dream.copy()
    truth_a[:, 1:, :3] = 255 - truth_a[:, 1:, :3]                 # horizon 0 pixel-exact: the 1e-10 floor
    truths_b = [r.integers(0, 256, dream.shape, dtype=np.uint8), np.roll(dream, 1, axis=2)]
    margin, _ = margin_of_mean_mse(frame_mse(dream, truth_a), np.stack([frame_mse(dream, t) for t in truths_b]))
    want = np.mean([psnr(dream, truth_a) - psnr(dream, t) for t in truths_b], axis=0)
    assert np.allclose(margin, want) and margin[0] > 100


def test_margins_interval_resamples_the_starts_with_replacement():
    by_horizon = np.tile([50.0, 100.0, 200.0], (40, 1))            # (S=40, N=3): alike starts, unlike horizons
    margin, (lo, hi) = margin_of_mean_mse(by_horizon, np.full((1, 40, 3), 100.0))
    assert np.allclose(margin, 10 * np.log10([2, 1, 0.5])) and np.allclose(lo, margin) and np.allclose(hi, margin)
    # half the 400 starts off by 10, half by 1000: a resample with k of the first kind has a margin of
    # 10 log10(100 / mean MSE), mean MSE = 1000 - 990 k/S, and k is binomial(S, 1/2), so the interval is known
    S = 400
    err_a = np.repeat([[10.0], [1000.0]], S // 2, axis=0)
    margin, (lo, hi) = margin_of_mean_mse(err_a, np.full((1, S, 1), 100.0), n_boot=10000)
    cdf = np.cumsum([math.comb(S, k) for k in range(S + 1)]) / 2**S
    k = np.searchsorted(cdf, [0.025, 0.975])                       # 180 and 220 (a 90% interval: 184 and 216)
    want = 10 * np.log10(100 / (1000 - 990 * k / S))               # 0.02 dB apart per k
    assert np.allclose(margin, 10 * np.log10(100 / 505)) and np.allclose([lo[0], hi[0]], want, atol=0.05)


def test_ssim_and_sharpness():
    assert np.allclose(ssim(VIDEO, VIDEO), 1)
    assert np.all(ssim(blur(VIDEO), VIDEO) < 0.9)
    assert np.all(sharpness(blur(VIDEO)) < 0.5 * sharpness(VIDEO))


def test_ssim_is_wang_et_al_on_the_luma_in_7x7_windows():
    r = np.random.default_rng(2)
    a = r.integers(0, 256, (3, 12, 14, 3), dtype=np.uint8)
    b = np.clip(0.6 * a + r.normal(40, 30, a.shape), 0, 255).astype(np.uint8)  # less contrast, noisier
    a[2], b[2] = a[2] // 12, np.roll(a[2] // 12, 3, axis=1)       # dark, where C1 and C2 weigh most
    b[1, :, :7] = 255 - b[1, :, :7]                                 # half the frame unlike a
    want = [ssim_by_hand(x, y) for x, y in zip(a, b)]
    assert np.allclose(ssim(a, b), want, rtol=1e-9, atol=0)


def test_sharpness_is_the_variance_of_the_lumas_laplacian():
    frames = np.zeros((2, 5, 5, 3), np.uint8)
    frames[0, 2, 2] = [100, 50, 20]                        # luma 61.53
    frames[1, 2, 2] = [200, 100, 40]                       # luma 123.06
    # where all 4 neighbours exist (the middle 3x3) the Laplacian is -4 luma at the dot, +luma beside it and 0
    # at the corners: mean 0, variance (16 + 4) luma^2 / 9
    assert np.allclose(sharpness(frames), 20 * np.array([61.53, 123.06]) ** 2 / 9)


def test_changes_are_the_mean_absolute_difference_in_gray_levels():
    video = np.zeros((4, 2, 3, 3), np.uint8)
    video[1, ..., 0] = 3                                   # one channel up by 3: 1 gray level on average
    assert np.allclose(changes(video), [1, 1, 0])          # and back down (no uint8 wrap-around), then still


def test_stuck_means_frozen_while_the_truth_moves():
    frozen = np.repeat(VIDEO[:1], 20, axis=0)
    assert is_stuck(frozen, VIDEO)
    assert not is_stuck(VIDEO, VIDEO)
    assert not is_stuck(frozen, frozen)                    # standing still in the game is not stuck


def test_stuck_is_15_frames_under_one_gray_level_while_the_truth_changes_by_more():
    assert np.allclose(changes(drifting(0.9)), 0.9) and np.allclose(changes(drifting(1.1)), 1.1)
    assert is_stuck(drifting(0.9), drifting(1.1))
    assert not is_stuck(drifting(1.1), drifting(2.0))     # the dream changes by more than STILL: it moves
    assert not is_stuck(drifting(0), drifting(0.9))       # the truth changes by less: the player stands still
    truth = drifting(2.0, 40)
    def freezes(k, end=40):                                # the truth, but k frames up to `end` change by 0
        dream = truth.copy()
        dream[end - k:end] = truth[end - k - 1]
        return dream
    # STUCK_RUN = 15 frames, 1 s: in the middle of the rollout or at its end
    assert is_stuck(freezes(15, 30), truth) and not is_stuck(freezes(14, 30), truth)
    assert is_stuck(freezes(15), truth) and not is_stuck(freezes(14), truth)


def test_counterfactual_scripts_follow_the_columns():
    names = ["w", "a", "s", "d", "space", "shift", "mouse_left", "mouse_right", "mouse_dx", "mouse_dy"]
    scripts = counterfactual_scripts(names, 5)
    assert list(scripts) == ["none", "forward", "turn_left", "turn_right"]
    assert scripts["forward"][:, 0].tolist() == [1] * 5 and scripts["turn_left"][:, 8].max() < 0
    atari = counterfactual_scripts(["noop", "fire", "up", "right", "left", "down"], 5)
    assert list(atari) == ["none", "left", "right", "up", "down"] and atari["none"][:, 0].tolist() == [1] * 5
    assert list(counterfactual_scripts(["throttle", "brake"], 5)) == ["none"]  # footage with other columns


@pytest.fixture(scope="module")
def dreamer(run):
    return sample.Dreamer(run, steps=1)


def test_evaluate_reports_fidelity_adherence_and_stability(dreamer, monkeypatch):
    replays, replay = [], sample.Dreamer.replay                     # record what the adherence replays
    monkeypatch.setattr(sample.Dreamer, "replay", lambda self, *a: replays.append(a) or replay(self, *a))
    r = sample.evaluate(dreamer, n_starts=2, n_stable=1, stable_frames=20)
    for key in ("psnr", "psnr_copy_last", "ssim", "ssim_copy_last", "margin", "response_ratio", "dream_response",
                "sharpness"):
        assert len(r[key]) == len(r["horizons"]) == 6 and np.all(np.isfinite(r[key])), key
    assert all(lo <= m <= hi for m, (lo, hi) in zip(r["margin"], r["margin_ci95"])) and r["stable_rollouts"] == 1
    # the first replays are the recorded inputs from the last context frame on: they give back the encoded truth
    assert len(replays) == 2 + 2 * len(r["scripts"])
    for name, start, actions in replays[:2]:
        ep = dreamer.episode(name)
        assert np.array_equal(dreamer.replay(name, start, actions), dreamer.real([(ep, start - 9)], 32)[0, 1:])


@pytest.mark.parametrize("dream", ["truth", "frozen", "gray"])
def test_evaluate_scores_known_dreams_as_they_are(dreamer, monkeypatch, dream):
    """A dream that is the recorded truth whatever the inputs, the last context frame forever, or flat gray:
    each metric must read what such a dream is."""
    def stub(self, starts, future, seed=0, progress=None):
        real = self.real(starts, future.shape[1])                        # (S, n+1, H, W, 3)
        return {"truth": real[:, 1:], "frozen": np.repeat(real[:, :1], future.shape[1], axis=1),
                "gray": np.full_like(real[:, 1:], 128)}[dream]

    monkeypatch.setattr(sample.Dreamer, "dream", stub)
    r = sample.evaluate(dreamer, n_starts=2, n_stable=1, stable_frames=20)
    psnr, copy = np.array(r["psnr"]), np.array(r["psnr_copy_last"])
    assert np.all(np.array(r["dream_response"]) == 0)                   # it ignores its inputs
    if dream == "truth":
        assert np.all(psnr > copy + 10) and np.allclose(r["sharpness"], 1) and np.all(np.array(r["ssim"]) > 0.99)
        assert r["response_ratio"] == [0] * len(psnr) and r["stuck_share"] == r["blur_share"] == 0
        assert np.all(np.array(r["margin"]) > 0)                        # closer to the recorded truth than others
    elif dream == "frozen":
        assert np.allclose(psnr, copy) and np.allclose(r["ssim"], r["ssim_copy_last"])
        assert r["stuck_share"] == 1 and r["noise_share"] == 0
    else:
        assert r["blur_share"] == 1 and r["sharpness_ratio"] < 0.01 and np.allclose(r["sharpness"], 0)


def test_evaluate_blurred_out_is_below_half_the_truths_sharpness_and_noise_out_above_twice(dreamer, monkeypatch):
    """Five long rollouts, flat gray until their last STUCK_RUN frames, which are the truth with its contrast
    about mid-gray scaled by k: over those frames, sharpness k^2 times the truth's. Footage (no replay): no margin."""
    squares = np.array([0.45, 0.49, 0.51, 1.96, 2.04])                # blurred out twice, noise once

    def stub(self, starts, future, seed=0, progress=None):
        real = self.real(starts, future.shape[1])[:, 1:].astype(np.float64)
        dream = 128 + np.sqrt(squares[:len(starts), None, None, None, None]) * (real - 128)
        dream[:, :-sample.STUCK_RUN] = 128
        return dream

    monkeypatch.setattr(sample.Dreamer, "dream", stub)
    monkeypatch.setattr(sample.Dreamer, "replayable", lambda self, name: False)
    r = sample.evaluate(dreamer, n_starts=5, n_stable=5, stable_frames=20)
    assert r["stable_rollouts"] == 5 and r["blur_share"] == 0.4 and r["noise_share"] == 0.2
    assert np.isclose(r["sharpness_ratio"], 0.51) and "margin" not in r  # the median of the five


def test_compare_has_one_row_per_script(dreamer):
    video, names = sample.compare(dreamer, frames=6)
    assert names == ["recorded", "none", "forward", "turn_left", "turn_right"]
    assert video.shape == (6, 5 * 48 + 4 * 2, 2 * 64 + 2, 3)
    truths = [video[:, i * 50:i * 50 + 48, :64] for i in range(5)]   # recorded, then replayed
    dreams = [video[:, i * 50:i * 50 + 48, 66:] for i in range(5)]   # the same noise: only the inputs differ
    assert not np.array_equal(truths[3], truths[4]) and not np.array_equal(dreams[3], dreams[4])


def test_dream_gives_the_context_its_recorded_inputs_then_the_script(dreamer, monkeypatch):
    """The context frames keep their own recorded rows; the script's first row leads from the last context
    frame to the first dreamed one (record.py's convention)."""
    seen, rollout = [], sample.rollout
    monkeypatch.setattr(sample, "rollout", lambda model, ctx, actions, *a: seen.append(actions) or
                        rollout(model, ctx, actions, *a))
    ep, T = dreamer.episode(), dreamer.T
    dreamer.dream([(ep, 3)], np.full((1, 4, dreamer.actions.shape[1]), 7, np.float32))
    first = ep["start"] + 3
    assert np.array_equal(seen[0][0, :T - 1].numpy(), dreamer.actions[first:first + T - 1])
    assert seen[0].shape[1] == T - 1 + 4 and (seen[0][0, T - 1:] == 7).all()


def test_evaluate_on_a_test_recording_the_run_never_saw(run, latents, tmp_path):
    record_doom(tmp_path / "test", minutes=100 / 900, episodes=2, seed=9)  # 2 episodes of 50 frames
    test = sample.Dreamer(run, steps=1, data=encode_dataset(tmp_path / "test", "pixels"))
    assert [e["split"] for e in test.meta["episodes"]] == ["val", "val"]         # none of it was trained on
    assert sample.Dreamer(run, data=latents).meta["episodes"] == load_latents(latents)[2]["episodes"]
    r = sample.evaluate(test, n_starts=2, n_stable=1)                            # 300 frames do not fit
    assert np.all(np.isfinite(r["margin"])) and r["stable_frames"] == 50 - 10 and r["stable_rollouts"] == 1


def test_sample_writes_gifs_frames_and_psnr_and_dreams_under_other_inputs(run, dataset, tmp_path, capsys):
    gif, npy = tmp_path / "dream.gif", tmp_path / "dream.npy"
    sample.main(["--run", str(run), "--frames", "12", "--out", str(gif), "--save_frames", str(npy)])
    out = capsys.readouterr().out
    assert "PSNR at frame  8: dream" in out and np.load(npy).shape == (12, 48, 64, 3)
    assert Image.open(gif).n_frames == 12 and Image.open(gif).size[0] > 2 * Image.open(gif).size[1]  # side by side
    names = load_latents(torch.load(run / "ckpt.pt", weights_only=True)["args"]["data"])[2]["actions"]
    script = tmp_path / "turn.csv"
    script.write_text("\n".join([",".join(["frame", *names])] + [f"{i},0,0,0,0,0,0,0,0,10,0" for i in range(6)]))
    dreamer = sample.Dreamer(run, steps=1)
    turn, truth, _, _ = sample.dream(dreamer, None, 0, 6, str(script))
    still = sample.dream(dreamer, None, 0, 6, "none")[0]
    assert truth is None and turn.shape == (6, 48, 64, 3) and not np.array_equal(turn, still)
    for args, message in ((["--episode", "ep9"], "no episode 'ep9'"), (["--start", "75"], "--start 75 leaves"),
                          (["--actions", str(dataset / "ep000" / "inputs.csv"), "--frames", "99"], "at least")):
        with pytest.raises(SystemExit, match=message):
            sample.main(["--run", str(run), *args])
    with pytest.raises(SystemExit, match="has no checkpoint"):
        sample.main(["--run", str(tmp_path)])


def test_the_speed_leaves_out_the_first_frame(dreamer, monkeypatch):
    """Its time is mostly warm-up (with --compile, compiling): here a first frame that takes 1 s more."""
    real = sample.rollout

    def slow_start(*args):
        time.sleep(1.0)
        return real(*args)

    monkeypatch.setattr(sample, "rollout", slow_start)
    t0 = time.time()
    fps = sample.dream(dreamer, None, 0, 4, "recorded")[3]
    assert fps >= 3 / (time.time() - t0 - 1.0)                    # 3 frames in the time after the first


def test_an_atari_run_is_measured_against_the_emulator_under_its_joystick(tmp_path):
    """A tiny pipeline on Boxing (64x64 frames, 18 one-hot columns): the emulator renders the truth of other
    inputs too, so --eval has a margin and a response, under holding left, right, up and down."""
    pytest.importorskip("ale_py", reason="the Atari source needs ale-py (pip install ale-py)")
    import train
    from conftest import TINY
    from record import record_atari
    record_atari(tmp_path / "boxing", minutes=200 / 900, episodes=2)        # 2 episodes of 100 frames
    latents = encode_dataset(tmp_path / "boxing", "pixels")
    train.main(["--data", str(latents), "--run", str(tmp_path / "run"), *TINY, "--steps", "10", "--eval_every", "10",
                "--patch_size", "2"])
    dreamer = sample.Dreamer(tmp_path / "run", steps=1, cfg_scale=1)
    r = sample.evaluate(dreamer, n_starts=2, n_stable=1, stable_frames=20)
    assert r["scripts"] == ["none", "left", "right", "up", "down"]
    assert np.all(np.isfinite(r["margin"])) and np.all(np.isfinite(r["response_ratio"]))
