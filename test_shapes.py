"""
Fast checks of the world model on the `tiny` preset, on the CPU, with random data.

    python -m pytest -q test_shapes.py
"""
import pytest
import torch

import torch.nn.functional as F

import model as model_py
from model import (Attention, Block, WorldModel, denoise, diffusion_loss, karras_sigmas, make_config, move, rollout,
                   sample_next, warp)

B, T, C, H, W, A = 2, 10, 4, 6, 8, 5


def tiny(**overrides):
    cfg = make_config("tiny", latent_channels=C, latent_height=H, latent_width=W, action_dim=A, **overrides)
    torch.manual_seed(0)
    return WorldModel(cfg)


def batch():
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(B, C, H, W, generator=g), torch.randn(B, T, C, H, W, generator=g)
    return x, ctx, torch.randn(B, T, A, generator=g)


def test_module_shapes():
    D = 32
    x, src = torch.randn(B, 7, D), torch.randn(B, 30, D)
    assert Attention(D, 4)(x, src).shape == (B, 7, D)
    assert Block(D, 4, 4.0)(x, src, torch.randn(B, D)).shape == (B, 7, D)
    model = tiny(patch_size=2)
    x, ctx, act = batch()
    out = model(x, torch.zeros(B), ctx, torch.zeros(B), act)
    assert out.shape == (B, C, H, W)


def test_forward_backward_reaches_every_parameter():
    model = tiny()
    x, ctx, act = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # adaLN-Zero and the zero output layer: at first only the output layer gets a gradient ...
    diffusion_loss(model, x, ctx, act).backward()
    assert model.out.weight.grad.abs().sum() > 0
    assert model.blocks[0].ada.weight.grad.abs().sum() == 0
    # ... then the gates open, and after a few steps every parameter gets one
    for _ in range(3):
        opt.step()
        opt.zero_grad()
        diffusion_loss(model, x, ctx, act).backward()
    opt.zero_grad()
    keep = torch.tensor([True, False])  # one sample with its actions, one with them hidden
    moved, _ = move(model.cfg, ctx[:, -1], model.flow(ctx[:, -1], act), "bilinear")
    D = denoise(model, x + torch.randn_like(x), torch.ones(B), ctx, torch.full((B,), 0.1), act, keep, moved)
    loss = ((D - x) ** 2).mean() + ((moved - x) ** 2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    silent = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert silent == [], silent


def test_a_token_sees_its_patch_and_the_ring_of_patches_around_it():
    model = tiny(patch_size=2)
    for p in model.x_in.parameters():
        torch.nn.init.normal_(p)
    x = torch.zeros(1, 2 * C, H, W)
    y = x.clone()
    y[:, :, 2:4, 2:4] = 1                                  # change one patch: token (1, 1) of the 3x4 grid
    moved = (model.x_in(y) - model.x_in(x)).abs().sum(1)[0] > 0  # (3, 4) tokens whose embedding changed
    neighbours = torch.zeros(3, 4, dtype=torch.bool)
    neighbours[0:3, 0:3] = True
    assert torch.equal(moved, neighbours)


def test_model_starts_as_c_skip():
    """With zero-initialised outputs, D(x) = c_skip * x exactly (EDM Table 1); c_skip = 0 with predict_x."""
    x, ctx, act = batch()
    sigma = torch.full((B,), 0.7)
    edm = tiny(predict_x=False)
    sd = edm.cfg.sigma_data
    assert torch.allclose(denoise(edm, x, sigma, ctx, torch.zeros(B), act), sd**2 / (0.7**2 + sd**2) * x)
    assert torch.equal(denoise(tiny(predict_x=True), x, sigma, ctx, torch.zeros(B), act), torch.zeros_like(x))


def test_actions_change_the_output_once_trained():
    model = tiny()
    for p in model.parameters():  # leave the zero init behind so every path carries signal
        torch.nn.init.normal_(p, std=0.05)
    x, ctx, act = batch()
    sigma = torch.ones(B)
    a = denoise(model, x, sigma, ctx, torch.zeros(B), act)
    b = denoise(model, x, sigma, ctx, torch.zeros(B), act + 1)
    hidden = denoise(model, x, sigma, ctx, torch.zeros(B), act, keep=torch.zeros(B, dtype=torch.bool))
    hidden2 = denoise(model, x, sigma, ctx, torch.zeros(B), act + 1, keep=torch.zeros(B, dtype=torch.bool))
    assert not torch.allclose(a, b)
    assert torch.allclose(hidden, hidden2)  # hidden actions really are hidden


def test_sampler_step_and_rollout_shapes():
    model = tiny()
    sigmas = karras_sigmas(model.cfg, 4)
    assert len(sigmas) == 5 and sigmas[0] == model.cfg.sigma_max and sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > sigmas[1:])
    x, ctx, act = batch()
    g = torch.Generator().manual_seed(0)
    nxt = sample_next(model, ctx, act, steps=1, generator=g)
    assert nxt.shape == (B, C, H, W) and torch.isfinite(nxt).all()
    guided = sample_next(model, ctx, act, steps=2, cfg_scale=2.0, generator=g)
    assert guided.shape == (B, C, H, W)
    frames = rollout(model, ctx, torch.randn(B, T + 4, A), steps=1)
    assert frames.shape == (B, 5, C, H, W)


def test_karras_schedule_is_edm_eq_5():
    cfg = tiny().cfg
    sigmas = karras_sigmas(cfg, 4).double()
    i = torch.arange(4, dtype=torch.float64)
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    assert torch.allclose(sigmas[:-1], (hi + i / 3 * (lo - hi)) ** cfg.rho, rtol=1e-6)
    assert sigmas[-2] == pytest.approx(cfg.sigma_min, rel=1e-6) and sigmas[-1] == 0  # the last step lands on 0


def test_rollout_rolls_its_context(monkeypatch):
    """Frame i is painted from the 10 frames before it: the newest last, the oldest dropped, and the inputs
    moved along with them."""
    seen = []

    def marker(model, ctx, actions, *args):
        seen.append((ctx[0, :, 0, 0, 0].clone(), actions[0, :, 0].clone()))
        return torch.full_like(ctx[:, -1], 100.0 + len(seen))            # frame i is the constant 100 + i

    monkeypatch.setattr(model_py, "sample_next", marker)
    ctx = torch.arange(T, dtype=torch.float32)[None, :, None, None, None].expand(B, T, C, H, W).clone()
    actions = torch.arange(T + 3, dtype=torch.float32)[None, :, None].expand(B, T + 3, A).clone()
    frames = rollout(tiny(), ctx, actions)
    assert frames[0, :, 0, 0, 0].tolist() == [101, 102, 103, 104]
    for i, (context, inputs) in enumerate(seen):
        assert context.tolist() == list(range(i, T)) + [101 + k for k in range(i)]
        assert inputs.tolist() == list(range(i, i + T))


def test_guidance_mixes_the_predictions_with_and_without_actions():
    """sample_next batches the guided and unguided passes; by hand with one Euler step (which lands on D):
    next = moved last frame + D_uncond + w (D_cond - D_uncond)."""
    model = tiny(keep_moved=0.0)  # the paint everywhere, so that every value shows the guidance
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    _, ctx, act = batch()
    out = sample_next(model, ctx, act, steps=1, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    g, cfg = torch.Generator().manual_seed(0), model.cfg
    noisy_ctx = ctx + cfg.ctx_noise_sample * torch.randn(ctx.shape, generator=g)   # the sampler's draws, in order
    x = cfg.sigma_max * torch.randn(B, C, H, W, generator=g)
    flow = model.flow(noisy_ctx[:, -1], act)
    (base, _), (latest, _) = move(cfg, ctx[:, -1], flow, "bilinear"), move(cfg, noisy_ctx[:, -1], flow, "bilinear")
    sigma, ctx_sigma = torch.full((B,), cfg.sigma_max), torch.full((B,), cfg.ctx_noise_sample)
    with_actions = denoise(model, x, sigma, noisy_ctx, ctx_sigma, act, None, latest)
    without = denoise(model, x, sigma, noisy_ctx, ctx_sigma, act, torch.zeros(B, dtype=torch.bool), latest)
    assert torch.allclose(out, base + without + 2.0 * (with_actions - without), atol=1e-5)


def test_a_run_trained_without_context_noise_samples_without_it(monkeypatch):
    """ctx_noise 0: training showed clean context with the label of noise 0, so sampling must too."""
    seen = []
    monkeypatch.setattr(model_py, "denoise", lambda m, x, sigma, ctx, ctx_sigma, *rest: seen.append((ctx, ctx_sigma))
                        or torch.zeros_like(x))
    _, ctx, act = batch()
    sample_next(tiny(ctx_noise=0.0, motion=False), ctx, act, steps=1)
    assert torch.equal(seen[0][0], ctx) and torch.equal(seen[0][1], torch.zeros(B))
    sample_next(tiny(motion=False), ctx, act, steps=1)                     # the default: a little noise
    assert not torch.equal(seen[1][0], ctx) and torch.allclose(seen[1][1], torch.full((B,), 0.02))


def test_sigma_min_changes_the_sampler_not_the_trained_model():
    x, ctx, act = batch()
    sigma, clean = torch.full((B,), 0.5), torch.zeros(B)
    outs = []
    for sigma_min in (0.002, 0.3):
        model = tiny(sigma_min=sigma_min)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
        outs.append(denoise(model, x, sigma, ctx, clean, act))
    assert torch.equal(outs[0], outs[1])


def test_the_schedule_is_made_without_float64_on_the_device():
    """Apple GPUs (mps) have no float64: karras_sigmas may use it on the CPU only."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Made(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.made += [(t.dtype, t.device.type) for t in [out] if isinstance(t, torch.Tensor)]
            return out

    with Made() as mode:
        sigmas = karras_sigmas(tiny().cfg, 4, "meta")                     # meta: a device that is not the CPU
    assert sigmas.device.type == "meta" and sigmas.dtype == torch.float32
    assert (torch.float64, "meta") not in mode.made, mode.made


# -----------------------------------------------------------------------------
# Motion


def test_move_shifts_the_pixels_of_pixels_latents_not_their_channels():
    """`pixels` latents are 8x8 blocks of pixels (encode.py): move works on the pixels put back in place."""
    cfg = make_config("tiny", latent_channels=192, latent_height=H, latent_width=W, frame_shuffle=8)
    image = torch.rand(2, 3, 8 * H, 8 * W)
    flow = torch.zeros(2, 2, 8 * H, 8 * W)
    flow[:, 0] = 1                                                         # one pixel, not one 8x8 block
    moved, uncovered = move(cfg, F.pixel_unshuffle(image, 8), flow, "nearest")
    assert torch.equal(F.pixel_shuffle(moved, 8)[..., :-1], image[..., 1:])
    assert torch.equal(F.pixel_shuffle(uncovered.float(), 8)[0, 0], (torch.arange(8 * W) == 8 * W - 1).float()
                       .expand(8 * H, -1))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_warp_moves_pixels_and_marks_what_it_uncovers(mode):
    image = torch.rand(1, 3, 6, 8)
    still, uncovered = warp(image, torch.zeros(1, 2, 6, 8), mode)
    assert torch.allclose(still, image, atol=1e-6) and not uncovered.any()
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0] = 2                                                        # every pixel comes from 2 to its right:
    moved, uncovered = warp(image, flow, mode)                            # the picture slides 2 pixels left
    assert torch.allclose(moved[..., :6], image[..., 2:], atol=1e-6)
    assert torch.equal(uncovered[0, 0], torch.arange(8).expand(6, 8) >= 6)   # the right 2 columns are new
    assert torch.allclose(moved[..., 6:], image[..., 7:].expand(-1, -1, -1, 2), atol=1e-6)  # edge repeated


def test_motion_learns_which_way_an_input_turns_the_picture():
    """Frames whose next frame is the picture slid 2 pixels left (input +1) or right (input -1): the motion
    net, trained by the diffusion loss alone, learns a flow of the right sign from the input."""
    torch.manual_seed(0)
    cfg = make_config("tiny", latent_channels=12, latent_height=H, latent_width=W, frame_shuffle=2, action_dim=1)
    model = WorldModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def windows(n):  # smooth random pictures, so that a slid picture is close to the unslid one's neighbours
        frames = F.interpolate(torch.randn(n, 3, 4, 5), size=(2 * H, 2 * W), mode="bilinear")  # (n, 3, 12, 16)
        turn = torch.randint(0, 2, (n,)).float() * 2 - 1                  # +1 or -1
        nxt = torch.stack([f.roll(-2 * int(t), dims=-1) for f, t in zip(frames, turn)])
        ctx = F.pixel_unshuffle(frames, 2)[:, None].expand(-1, T, -1, -1, -1)
        return F.pixel_unshuffle(nxt, 2), ctx, turn[:, None, None].expand(-1, T, 1).contiguous()

    for _ in range(150):
        loss = diffusion_loss(model, *windows(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, ctx, act = windows(32)
    with torch.no_grad():
        dx = model.flow(ctx[:, -1], act)[:, 0, :, 2:-2].mean(dim=(1, 2))   # away from the wrapped-around edges
    turn = act[:, -1, 0]
    assert (dx[turn > 0] > 1).all() and (dx[turn < 0] < -1).all(), dx


def test_sampling_keeps_the_moved_pixels_the_paint_hardly_changes_and_paints_the_rest():
    """keep_moved: a pixel the move uncovered is painted; a moved pixel is kept exactly, unless the denoiser paints
    a change larger than keep_moved on one of its channels (a sprite that moved on its own, say); 0 paints all."""
    model = tiny(ctx_noise_sample=0.0, keep_moved=1e9)                   # no noise: the flow is the one below
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.nn.init.constant_(model.motion.net[-1].bias, 1.5)              # everything comes from 1.5 to the right
    _, ctx, act = batch()
    moved, uncovered = move(model.cfg, ctx[:, -1], model.flow(ctx[:, -1], act), "nearest")
    assert uncovered.any() and not uncovered.all()
    out = sample_next(model, ctx, act, steps=2)
    assert torch.equal(out[~uncovered], moved[~uncovered])               # kept exactly
    assert not torch.allclose(out[uncovered], moved[uncovered])          # painted
    change = (out - moved)[uncovered].abs()
    model.cfg.keep_moved = float(change.median())                        # about half of what it paints is larger
    out = sample_next(model, ctx, act, steps=2)
    repainted = (out != moved) & ~uncovered
    assert repainted.any() and (~repainted & ~uncovered).any()           # some moved pixels kept, some repainted
    assert ((out - moved)[repainted].abs() > model.cfg.keep_moved).reshape(-1).float().mean() > 0.3
    model.cfg.keep_moved = 0.0
    assert not torch.allclose(sample_next(model, ctx, act, steps=2)[~uncovered], moved[~uncovered])


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = tiny(action_dropout=0.0)
    x, ctx, act = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def fixed_noise_loss():
        torch.manual_seed(123)
        return diffusion_loss(model, x, ctx, act).item()

    before = fixed_noise_loss()
    for step in range(150):
        torch.manual_seed(step)
        loss = diffusion_loss(model, x, ctx, act)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_noise_loss()
    assert after < 0.5 * before, (before, after)


def test_the_denoiser_sees_the_target_plus_noise_of_the_drawn_sigma(monkeypatch):
    """EDM trains on x + sigma n: with an all-zero clip (nothing moves, the change is 0) the denoiser's input
    must be pure noise of std sigma, whatever sigma was drawn for each sample."""
    seen = []
    monkeypatch.setattr(model_py, "denoise", lambda m, noisy, sigma, *rest: seen.append((noisy, sigma)) or noisy)
    x, ctx, act = batch()
    diffusion_loss(tiny(ctx_noise=0.0), torch.zeros_like(x), torch.zeros_like(ctx), act)
    noisy, sigma = seen[0]
    assert torch.allclose(noisy.flatten(1).std(dim=1) / sigma, torch.ones(B), atol=0.25), (noisy.std(), sigma)


def test_flop_count_is_positive_and_grows_with_width():
    small, big = tiny(), tiny(dim=128, heads=2)
    assert 0 < small.flops_per_sample() < big.flops_per_sample()


# -----------------------------------------------------------------------------
# The training loss, draw by draw


def test_the_loss_is_edm_eq_8_on_the_drawn_noise_by_hand():
    """The loss recomputed from the same random draws, in the same order: context noise (GameNGen), the flow
    and the motion's loss, the change from the clean moved latest frame as the target, log-normal sigma around
    P_mean, action dropout. Dropping or mislabelling the context noise, diffusing the frame or its change from
    the noisy latest frame, an inverted or ignored keep, or -P_mean would each give another loss."""
    torch.manual_seed(0)
    model = tiny(action_dropout=0.5)
    for p in model.parameters():  # leave the zero init behind: the flow moves, the actions and noise levels count
        torch.nn.init.normal_(p, std=0.05)
    cfg, n = model.cfg, 6
    x, ctx, act = torch.randn(n, C, H, W), torch.randn(n, T, C, H, W), torch.randn(n, T, A)
    torch.manual_seed(1)
    loss = diffusion_loss(model, x, ctx, act)
    torch.manual_seed(1)
    ctx_sigma = torch.rand(n) * cfg.ctx_noise
    seen = ctx + torch.randn_like(ctx) * ctx_sigma[:, None, None, None, None]
    flow = model.flow(seen[:, -1], act)
    smooth, _ = move(cfg, ctx[:, -1], flow, "bilinear")
    (base, _), (latest, _) = move(cfg, ctx[:, -1], flow, "nearest"), move(cfg, seen[:, -1], flow, "nearest")
    change = x - base
    sigma = (torch.randn(n) * cfg.P_std + cfg.P_mean).exp()
    noisy = change + torch.randn_like(change) * sigma[:, None, None, None]
    keep = torch.rand(n) >= cfg.action_dropout
    assert keep.any() and not keep.all()                                  # both kinds of sample in the batch
    D = denoise(model, noisy, sigma, seen, ctx_sigma, act, keep, latest)
    expected = ((D - change) ** 2).mean() / cfg.sigma_data**2 + ((smooth - x) ** 2).mean() / cfg.sigma_data**2
    assert torch.allclose(loss, expected, rtol=1e-5), (loss, expected)


def loss_inputs(monkeypatch, model, n, x=None, ctx=None):
    """What diffusion_loss hands the denoiser, for n random windows (the denoiser itself predicts 0)."""
    seen = {}

    def fake(m, noisy, sigma, ctx_seen, ctx_sigma, actions, keep=None, latest=None):
        seen.update(noisy=noisy, sigma=sigma, ctx=ctx_seen, ctx_sigma=ctx_sigma, keep=keep, latest=latest)
        return torch.zeros_like(noisy)

    monkeypatch.setattr(model_py, "denoise", fake)
    T = model.cfg.context
    x = torch.randn(n, C, H, W) if x is None else x
    ctx = torch.randn(n, T, C, H, W) if ctx is None else ctx
    seen["loss"] = diffusion_loss(model, x, ctx, torch.randn(n, T, A))
    return seen


def test_the_context_noise_is_drawn_up_to_ctx_noise_and_told_to_the_denoiser(monkeypatch):
    """GameNGen: each window's context gets noise of a level drawn from [0, ctx_noise], and the denoiser is
    told that level. Catches seen = ctx (no noise), and a ctx_sigma that is not the noise's level (zeros)."""
    ctx = torch.randn(64, T, C, H, W)
    got = loss_inputs(monkeypatch, tiny(ctx_noise=0.0, motion=False), 64, ctx=ctx)
    assert torch.equal(got["ctx"], ctx) and torch.equal(got["ctx_sigma"], torch.zeros(64))
    got = loss_inputs(monkeypatch, tiny(ctx_noise=0.7, motion=False), 64, ctx=ctx)
    level = (got["ctx"] - ctx).flatten(1).std(dim=1)                       # the noise each window got
    assert torch.allclose(level, got["ctx_sigma"], rtol=0.1, atol=0.01), (level, got["ctx_sigma"])
    assert 0 <= got["ctx_sigma"].min() and got["ctx_sigma"].max() <= 0.7 and got["ctx_sigma"].max() > 0.35
    assert torch.equal(got["latest"], got["ctx"][:, -1])                   # no motion: the noisy latest frame


@pytest.mark.parametrize("motion", [False, True])
def test_the_target_is_the_change_from_the_clean_latest_frame(monkeypatch, motion):
    """The model diffuses x - base, base the latest context frame before its noise (moved, with motion; an
    untrained motion moves nothing). The denoiser predicting 0 then costs exactly |x - base|^2 / sigma_data^2,
    and with motion the motion's own loss adds as much again (its zero flow keeps the frame). Catches the
    frame as the target and the noisy latest frame as the base."""
    model = tiny(motion=motion)
    x, ctx = torch.randn(8, C, H, W), torch.randn(8, T, C, H, W)
    got = loss_inputs(monkeypatch, model, 8, x=x, ctx=ctx)
    change = ((x - ctx[:, -1]) ** 2).mean() / model.cfg.sigma_data**2
    assert torch.allclose(got["loss"], change * (2 if motion else 1), rtol=1e-5), (got["loss"], change)


def test_action_dropout_hides_the_actions_of_that_share_of_samples(monkeypatch):
    """keep is True for about 1 - action_dropout of the windows, all of them at 0, none at 1.
    Catches an inverted keep (< for >=) and a keep that never reaches the denoiser."""
    for dropout, share in ((0.1, 0.9), (0.0, 1.0), (1.0, 0.0)):
        got = loss_inputs(monkeypatch, tiny(action_dropout=dropout, motion=False, context=2), 2000)
        assert got["keep"] is not None and got["keep"].dtype == torch.bool
        assert got["keep"].float().mean().item() == pytest.approx(share, abs=0.03), dropout


def test_training_sigmas_are_log_normal_around_P_mean(monkeypatch):
    """ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1, with this repo's P_mean 0.4). Catches -P_mean."""
    model = tiny(motion=False, context=2)
    cfg = model.cfg
    log_sigma = loss_inputs(monkeypatch, model, 4000)["sigma"].log()
    assert log_sigma.mean().item() == pytest.approx(cfg.P_mean, abs=0.1)   # standard error 0.02
    assert log_sigma.std().item() == pytest.approx(cfg.P_std, abs=0.1)
    model.cfg.P_mean = -1.2                                                 # EDM's own: follows the field
    assert loss_inputs(monkeypatch, model, 4000)["sigma"].log().mean().item() == pytest.approx(-1.2, abs=0.1)


def test_base_at_its_real_size_counts_its_flops_as_torch_does_and_takes_a_bf16_step():
    """The `base` preset: 180M parameters; on the SD latents of 256x256 frames (4x32x32) its analytic FLOPs per
    training sample (train.py's MFU) match torch's count of a step (on the meta device: no compute); and a
    bf16-autocast training step on the CPU at batch 1 (on 4x4x4 latents: bf16 is slow without the hardware)."""
    from torch.utils.flop_counter import FlopCounterMode

    for shape, device in (((4, 32, 32), "meta"), ((4, 4, 4), "cpu")):
        torch.manual_seed(0)
        with torch.device(device):
            model = WorldModel(make_config("base", latent_channels=4, latent_height=shape[1], latent_width=shape[2]))
            x, ctx, act = torch.randn(1, *shape), torch.randn(1, T, *shape), torch.randn(1, T, 10)
        before = {name: p.clone() for name, p in model.named_parameters()}
        with FlopCounterMode(display=False) as counter:
            with torch.autocast("cpu", torch.bfloat16, enabled=device == "cpu"):
                loss = diffusion_loss(model, x, ctx, act)
            loss.backward()
        torch.optim.AdamW(model.parameters(), lr=1e-4).step()
        assert 175e6 < sum(p.numel() for p in model.parameters()) < 190e6
        if device == "meta":                                             # forward and backward, counted by torch
            assert counter.get_total_flops() == pytest.approx(model.flops_per_sample(), rel=0.01)
        else:
            assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())
            assert not torch.equal(before["out.weight"], model.out.weight)
