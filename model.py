"""
The world model: a transformer denoiser that paints the next frame's latent, given the 10 previous frames
(through cross-attention) and the player's inputs, trained and sampled with EDM. Like a video codec, it first
moves the latest frame where the inputs take it (motion compensation), and the diffusion model paints what
that cannot explain. In order: Config and presets; building blocks; Motion; the denoiser; EDM and rollout.

References:
  EDM    Karras et al. 2022 (arXiv:2206.00364): preconditioning (Table 1), loss (eq. 8), sampler (Alg. 1).
  DiT    Peebles & Xie 2023, "Scalable Diffusion Models with Transformers": patch tokens, adaLN-Zero.
  DIAMOND Alonso et al. 2024: EDM world model sampled in 3 steps; actions join the noise embedding.
  GameNGen Valevski et al. 2024: noise augmentation of the context frames for stable long rollouts.
  JiT    Li & He 2025, "Back to Basics": predict the clean image when tokens are narrower than their pixels.
  Finn   Finn, Goodfellow & Levine 2016: move the last frame by a flow predicted from the actions, no labels.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Config and presets


@dataclass
class Config:
    # --- data: filled in by train.py from the encoded dataset, not chosen by hand
    latent_channels: int = 4        # channels of one frame's latent (4 for the SD VAE, 192 for `pixels`)
    latent_height: int = 32         # latent rows (frame height / 8 for every autoencoder here)
    latent_width: int = 32          # latent columns (frame width / 8)
    action_dim: int = 10            # number of input columns in inputs.csv
    latent_mean: float = 0.0        # mean of the training latents, subtracted
    latent_std: float = 1.0         # std of the training latents; the model sees data of std sigma_data
    action_scale: tuple = ()        # each input column's std in the training data; inputs are divided by it
    frame_shuffle: int = 1          # latents = pixel_unshuffle(frame, this): 8 for `pixels`, 1 for a VAE's
    # --- context and motion
    context: int = 10               # previous frames the model sees (the mission's 10; 0.67 s at 15 FPS)
    motion: bool = True             # move the latest frame by a flow predicted from it and the inputs (Finn)
    keep_moved: float = 1.0         # sampling keeps moved pixels the paint changes by less (model units); 0: none
    ctx_pool: int = 1               # average-pool context frames by this before cross-attention (pool^2 fewer tokens)
    # --- transformer
    patch_size: int = 2             # latent pixels per token side; tokens per frame = (h/p)*(w/p)
    dim: int = 768                  # token width (DiT-B); compute ~ dim^2
    depth: int = 12                 # number of blocks
    heads: int = 12                 # attention heads; head size dim/heads = 64 suits flash attention
    mlp_ratio: float = 4.0          # hidden width of the MLP relative to dim
    # --- conditioning
    ctx_noise: float = 0.7          # max sigma of the noise added to context frames in training (GameNGen)
    ctx_noise_sample: float = 0.02  # context noise sigma when sampling (capped at ctx_noise)
    action_dropout: float = 0.1     # share of training samples whose actions the denoiser does not see (for CFG)
    # --- EDM diffusion; sigmas are in units where the data has std sigma_data
    predict_x: bool = True          # the network outputs the clean target (JiT), not EDM's skip mix
    sigma_data: float = 0.5         # std of the data the model sees (EDM's default for images in [-1, 1])
    P_mean: float = 0.4             # training noise ln(sigma) ~ N(P_mean, P_std^2); above EDM's -1.2, so that
    P_std: float = 1.2              #   most training is at high noise, where only context and inputs tell
    sigma_min: float = 0.002        # smallest sigma of the sampling schedule (EDM)
    sigma_max: float = 5.0          # largest: 10x sigma_data is plenty when 10 frames of context pin the answer
    rho: float = 7.0                # schedule curvature (EDM eq. 5): steps crowd near sigma_min
    sample_steps: int = 4           # denoising steps per frame (Euler)


PRESETS = {
    "tiny": dict(patch_size=1, dim=64, depth=2, heads=2),  # tests: seconds on a CPU
    # the quickstart, minutes on 2 CPU cores: 256-wide tokens of 192-value pixel patches, the context pooled
    # 2x2 to pay for them; 2 sampling steps measure the same as 4 here, at twice the speed
    "cpu": dict(patch_size=1, dim=256, depth=4, heads=4, ctx_pool=2, sample_steps=2),
    # one A100/H100, SD latents of 256x256 frames; on TAESD's latents of Doom, motion and keep_moved measured
    # best there too (a latent position is 8 pixels wide, yet repainting all or no motion fell below copy-last)
    "base": dict(patch_size=2, dim=768, depth=12, heads=12),
}


def make_config(preset, **overrides):
    return Config(**{**PRESETS[preset], **overrides})


def normalize(cfg, latents):  # encoded latents -> the model's units: zero mean, std sigma_data
    return (latents.float() - cfg.latent_mean) / cfg.latent_std * cfg.sigma_data


def denormalize(cfg, z):
    return z / cfg.sigma_data * cfg.latent_std + cfg.latent_mean


# -----------------------------------------------------------------------------
# Building blocks (a frame's p x p patches are tokens: F.pixel_unshuffle stacks each patch's values)


def sinusoidal(c, dim):
    """Transformer-style sin/cos features of a scalar per sample: (B,) -> (B, dim)."""
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=c.device) / (dim // 2))
    angles = c.float()[:, None] * freqs[None] * 100  # x100: EDM's c_noise spans about [-2, 1]; spread it out
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Attention(nn.Module):  # multi-head attention of x over source (self-attention when source is x)

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, source):
        B, N, D = x.shape
        M, H = source.shape[1], self.heads
        q = self.q(x).view(B, N, H, D // H).transpose(1, 2)                     # (B, H, N, D/H)
        k, v = self.kv(source).view(B, M, 2, H, D // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, M, D/H)
        y = F.scaled_dot_product_attention(q, k, v)                             # (B, H, N, D/H), fused kernel
        return self.out(y.transpose(1, 2).reshape(B, N, D))                     # (B, N, D)


class Block(nn.Module):
    """DiT block with adaLN-Zero, plus cross-attention to the context frames' tokens."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 9 * dim)  # shift, scale, gate for each of the three sublayers

    def forward(self, x, ctx, c):
        mod = self.ada(F.silu(c))[:, None].chunk(9, dim=2)                # 9 x (B, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2, shift3, scale3, gate3 = mod
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.attn(h, h)                                     # (B, N, D) frame tokens talk
        h = modulate(self.norm2(x), shift2, scale2)
        x = x + gate2 * self.cross(h, ctx)                                  # (B, N, D) ...look at the past
        x = x + gate3 * self.mlp(modulate(self.norm3(x), shift3, scale3))  # (B, N, D)
        return x


# -----------------------------------------------------------------------------
# Motion: where each pixel of the next frame comes from


def warp(x, flow, mode):
    """Move the pixels of x (B, c, H, W): out(p) = x(p + flow(p)), with flow (B, 2, H, W) in pixels (x, y).
    Also returns the mask (B, 1, H, W) of the pixels whose source lies outside the frame: what the motion
    uncovered, which the denoiser must paint. There the edge pixel is repeated, a neutral first guess."""
    B, c, H, W = x.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=x.device), torch.arange(W, device=x.device), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0] + 0.5) / W, (ys + flow[:, 1] + 0.5) / H], dim=-1) * 2 - 1  # (B, H, W, 2)
    out = F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=False)
    uncovered = (grid.abs() > 1).any(dim=-1)[:, None]                                # (B, 1, H, W)
    return out, uncovered


def move(cfg, frame, flow, mode):
    """A frame (B, C, h, w) as latents moved by flow (see warp), and the mask (B, C, h, w) of what it uncovered.
    The move is in the frame view (B, C/r^2, h*r, w*r), r = frame_shuffle, where neighbours are neighbours:
    the pixels themselves for `pixels`, whose latents stack 8x8 blocks of them."""
    moved, uncovered = warp(F.pixel_shuffle(frame, cfg.frame_shuffle), flow, mode)   # (B, c, H, W), (B, 1, H, W)
    return F.pixel_unshuffle(moved, cfg.frame_shuffle), in_latents(cfg, uncovered)


def in_latents(cfg, mask):
    """A mask (B, 1, H, W) of the frame view's pixels as a mask (B, C, h, w) of their latents."""
    c = cfg.latent_channels // cfg.frame_shuffle**2
    return F.pixel_unshuffle(mask.expand(-1, c, -1, -1).float(), cfg.frame_shuffle).bool()


def move_latest(cfg, ctx, seen, flow):
    """The latest frame, clean (ctx) and as the denoiser sees it (seen), moved by flow as sampling moves it (to
    the nearest pixel with keep_moved, else smoothly), and the mask of what the move uncovered."""
    mode = "nearest" if cfg.keep_moved else "bilinear"
    base, uncovered = move(cfg, ctx[:, -1], flow, mode)
    latest, _ = move(cfg, seen[:, -1], flow, mode)
    return base, latest, uncovered


MOTION_DIM = 48     # channels of the motion net: a smooth field from a few cues needs little (3% of `cpu`'s weights)
ACTION_PLANES = 16  # the T x A inputs squeezed to 16 numbers, each a constant plane beside the frame


class Motion(nn.Module):
    """The flow of the next frame (B, 2, H, W) in frame-view pixels: where each comes from in the latest frame,
    at 1/8 resolution (camera motion is smooth), from the latest frame (near things move more), the T inputs
    (Doom has momentum) and the pixel coordinates (a turn moves the edges more than the centre)."""

    def __init__(self, cfg):
        super().__init__()
        c, D = cfg.latent_channels // cfg.frame_shuffle**2, MOTION_DIM
        self.act = nn.Linear(cfg.context * cfg.action_dim, ACTION_PLANES)
        self.net = nn.Sequential(
            nn.Conv2d(c + ACTION_PLANES + 2, D, 3, padding=1), nn.SiLU(),   # 1/2 resolution
            nn.Conv2d(D, 2 * D, 3, stride=2, padding=1), nn.SiLU(),         # 1/4
            nn.Conv2d(2 * D, 2 * D, 3, stride=2, padding=1), nn.SiLU(),     # 1/8
            nn.Conv2d(2 * D, 2 * D, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * D, 2, 3, padding=1))                              # (dx, dy) in pixels

    def forward(self, latest, actions):
        """latest (B, c, H, W) frame view of the latest frame, actions (B, T, A) already scaled."""
        B, _, H, W = latest.shape
        x = F.avg_pool2d(latest, 2)                                                       # (B, c, H/2, W/2)
        h, w = x.shape[-2:]
        planes = self.act(actions.reshape(B, -1))[:, :, None, None].expand(-1, -1, h, w)  # (B, 16, H/2, W/2)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        coords = torch.stack([xs, ys]).expand(B, -1, -1, -1).to(x.dtype)                  # (B, 2, H/2, W/2)
        flow = self.net(torch.cat([x, planes, coords], dim=1))                           # (B, 2, H/8, W/8)
        return F.interpolate(flow.float(), size=(H, W), mode="bilinear", align_corners=False)  # (B, 2, H, W)


# -----------------------------------------------------------------------------
# Denoiser


class WorldModel(nn.Module):
    """F(x; sigma, context, actions): the raw network inside EDM's preconditioning (see `denoise`)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C, p, D, T, A = cfg.latent_channels, cfg.patch_size, cfg.dim, cfg.context, cfg.action_dim
        q = p * cfg.ctx_pool  # latent pixels per context token side
        if cfg.latent_height % q or cfg.latent_width % q:
            raise SystemExit(f"latents of {cfg.latent_width}x{cfg.latent_height} do not divide into {q}x{q} tokens of "
                             f"--patch_size x --ctx_pool: encode frames whose sides divide by {8 * q} (--size)")
        # the noisy frame and, pixel-aligned beside it, the moved latest frame: each token sees its patch and the
        # ring of patches around it (a 3p x 3p kernel), so content that a turn slides across token borders is at hand
        self.x_in = nn.Conv2d(2 * C, D, 3 * p, stride=p, padding=p)
        self.ctx_in = nn.Linear(C * p * p, D)                                # context frame patches
        # 2-D position (row + column) and frame-index embeddings, for the frame's and the context's token grids;
        # std 0.02 as in GPT-2 and ViT: small next to the unit-variance patch embeddings they are added to
        self.row = nn.Parameter(torch.randn(cfg.latent_height // p, 1, D) * 0.02)
        self.col = nn.Parameter(torch.randn(1, cfg.latent_width // p, D) * 0.02)
        self.ctx_row = nn.Parameter(torch.randn(cfg.latent_height // q, 1, D) * 0.02)
        self.ctx_col = nn.Parameter(torch.randn(1, cfg.latent_width // q, D) * 0.02)
        self.frame = nn.Parameter(torch.randn(T, 1, D) * 0.02)
        # actions: a context frame's tokens get its action; all T also reach every block by adaptive norm (DIAMOND)
        self.act_tok = nn.Linear(A, D)
        self.register_buffer("action_scale", torch.tensor(cfg.action_scale or (1.0,) * A), persistent=False)
        self.act_vec = nn.Linear(T * A, D)
        self.null_action = nn.Parameter(torch.zeros(D))  # stands for "actions hidden" (action dropout, CFG)
        self.cond = nn.Sequential(nn.Linear(2 * D, D), nn.SiLU(), nn.Linear(D, D))  # [sigma, context sigma] -> D
        self.ctx_norm = nn.LayerNorm(D)
        self.blocks = nn.ModuleList([Block(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, C * p * p)
        self.motion = Motion(cfg) if cfg.motion else None
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # adaLN-Zero (DiT): zero modulation makes every block start as the identity, and a zero output layer makes
        # F start at 0, so D(x) = c_skip * x, a stable start from scratch; a zero flow keeps the frame where it is
        zero = [b.ada for b in self.blocks] + [self.ada_out, self.out] + ([self.motion.net[-1]] if self.motion else [])
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def flow(self, latest, actions):
        """The motion's flow (B, 2, H, W) for the latest frame (B, C, h, w) as latents, and the inputs (B, T, A)."""
        return self.motion(F.pixel_shuffle(latest, self.cfg.frame_shuffle), actions / self.action_scale)

    def forward(self, x, c_noise, ctx, c_noise_ctx, actions, keep=None, latest=None):
        """x (B, C, h, w) the noisy next frame scaled by c_in, c_noise (B,) its noise conditioning ln(sigma)/4;
        ctx (B, T, C, h, w) the T previous frames (noised, scaled), c_noise_ctx (B,) their noise's conditioning;
        actions (B, T, A) the action after each context frame (the last leads to x); keep (B,) bool, False
        hides the actions (action dropout, CFG); latest (B, C, h, w) the moved latest frame (default ctx[:, -1]).
        Returns (B, C, h, w)."""
        cfg = self.cfg
        B, T, C, h, w = ctx.shape
        p, D = cfg.patch_size, cfg.dim
        actions = actions / self.action_scale                                  # every column of order 1
        pos = (self.row + self.col).reshape(1, -1, D)                          # (1, N, D)
        ctx_pos = (self.ctx_row + self.ctx_col).reshape(1, 1, -1, D)           # (1, 1, M, D)
        # context tokens: (pooled) patches + 2-D position + frame index + that frame's action
        pooled = F.avg_pool2d(ctx.reshape(B * T, C, h, w), cfg.ctx_pool)       # (B*T, C, h/pool, w/pool)
        patches = F.pixel_unshuffle(pooled, p).flatten(2).transpose(1, 2)      # (B*T, M, C*p*p)
        tokens = self.ctx_in(patches)                                          # (B*T, M, D)
        tokens = tokens.reshape(B, T, -1, D) + ctx_pos + self.frame[None]      # (B, T, M, D)
        act_tok = self.act_tok(actions)[:, :, None]                            # (B, T, 1, D)
        if keep is not None:
            act_tok = act_tok * keep.float()[:, None, None, None]
        ctx_tokens = self.ctx_norm((tokens + act_tok).reshape(B, -1, D))       # (B, T*M, D)
        # conditioning vector for adaptive norm: noise levels + all T actions (DIAMOND, Oasis)
        c = self.cond(torch.cat([sinusoidal(c_noise, D), sinusoidal(c_noise_ctx, D)], dim=1))  # (B, D)
        act_vec = self.act_vec(actions.reshape(B, T * actions.shape[2]))      # (B, D)
        if keep is not None:
            k = keep.float()[:, None]
            act_vec = act_vec * k + self.null_action * (1 - k)
        c = c + act_vec
        # the noisy frame's tokens, with the (moved) latest frame concatenated channel-wise
        x = torch.cat([x, ctx[:, -1] if latest is None else latest], dim=1)    # (B, 2C, h, w)
        x = self.x_in(x).flatten(2).transpose(1, 2) + pos                     # (B, N, D)
        for block in self.blocks:
            x = block(x, ctx_tokens, c)                                       # (B, N, D)
        shift, scale = self.ada_out(F.silu(c))[:, None].chunk(2, dim=2)
        x = self.out(modulate(self.norm_out(x), shift, scale))                # (B, N, C*p*p)
        return F.pixel_shuffle(x.transpose(1, 2).reshape(B, -1, h // p, w // p), p)  # (B, C, h, w)

    def flops_per_sample(self):
        """Analytic training FLOPs for one sample (forward + backward = 3x forward; 2 FLOPs per MAC)."""
        cfg = self.cfg
        N = (cfg.latent_height // cfg.patch_size) * (cfg.latent_width // cfg.patch_size)
        M = N // cfg.ctx_pool**2 * cfg.context
        D, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        per_block = (N * (4 * D * D + 2 * N * D)                  # self-attention: q, kv, out; scores, values
                     + 2 * N * D * D + 2 * M * D * D + 2 * N * M * D  # cross-attention: q, out; kv; scores, values
                     + 2 * N * D * hidden)                         # MLP
        denoiser = cfg.depth * per_block + M * D * self.ctx_in.in_features + N * D * self.x_in.weight[0].numel()
        motion, h, w = 0, cfg.latent_height * cfg.frame_shuffle // 2, cfg.latent_width * cfg.frame_shuffle // 2
        for conv in self.motion.net[::2] if self.motion else ():  # at 1/2, 1/4 and 1/8 of the frame view's size
            h, w = -(-h // conv.stride[0]), -(-w // conv.stride[0])
            motion += h * w * conv.weight.numel()
        return 2 * 3 * (denoiser + motion)


def load_run(run, weights="ema"):
    """(model, checkpoint dict) of a run folder that train.py wrote: the EMA weights by default."""
    path = Path(run) / "ckpt.pt"
    if not path.is_file():
        raise SystemExit(f"{run} has no checkpoint (ckpt.pt): train.py writes one at every validation; train "
                         f"one with `python train.py --data LATENTS --run {run}`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain types only, no code
    model = WorldModel(Config(**ckpt["config"]))
    model.load_state_dict(ckpt[weights])
    return model, ckpt


# -----------------------------------------------------------------------------
# EDM: preconditioning, loss, sampler


CTX_SIGMA_EPS = 0.002  # added to the context's noise level before its log (0 would give -inf); EDM's sigma_min


def denoise(model, x, sigma, ctx, ctx_sigma, actions, keep=None, latest=None):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise): EDM Table 1 ("Ours" column).

    x (B, C, h, w) noisy frame of noise level sigma (B,); ctx (B, T, C, h, w) context frames of noise level
    ctx_sigma (B,), scaled by their own c_in, as is latest (B, C, h, w), the latest frame moved by the motion.
    With predict_x, c_skip = 0 and c_out = sigma_data: F predicts the clean frame. EDM's mix makes F output
    mostly noise at low sigma, which is full-rank: a token narrower than its patch (64 wide for a 192-value
    `pixels` patch in `tiny`) cannot carry it. Clean frames are low-rank (Li & He 2025)."""
    sd = model.cfg.sigma_data
    s = sigma[:, None, None, None]
    c_skip = 0 if model.cfg.predict_x else sd**2 / (s**2 + sd**2)
    c_out = sd if model.cfg.predict_x else s * sd / (s**2 + sd**2).sqrt()
    c_in = 1 / (s**2 + sd**2).sqrt()
    c_noise = sigma.log() / 4
    c_in_ctx = 1 / (ctx_sigma**2 + sd**2).sqrt()[:, None, None, None, None]
    c_noise_ctx = (ctx_sigma + CTX_SIGMA_EPS).log() / 4  # ctx_sigma may be exactly 0
    latest = None if latest is None else c_in_ctx[:, 0] * latest
    F_x = model(c_in * x, c_noise, c_in_ctx * ctx, c_noise_ctx, actions, keep, latest)
    return c_skip * x + c_out * F_x.float()


def diffusion_loss(model, x, ctx, actions):
    """EDM training loss (eq. 8 with the log-normal p(sigma) and lambda(sigma) of Table 1), plus the motion's.

    x (B, C, h, w) clean next frame, ctx (B, T, C, h, w) clean context, actions (B, T, A). lambda = 1/c_out^2,
    EDM's unit weight on the network's own error: for predict_x, 1/sigma_data^2 at every sigma."""
    cfg = model.cfg
    B = x.shape[0]
    # GameNGen: corrupt the context with a random amount of noise, and tell the model how much, so that
    # at sampling time it does not trust its own (imperfect) past frames blindly
    ctx_sigma = torch.rand(B, device=x.device) * cfg.ctx_noise
    seen = ctx + torch.randn_like(ctx) * ctx_sigma[:, None, None, None, None]   # (B, T, C, h, w)
    base, latest, motion_loss = ctx[:, -1], seen[:, -1], 0.0                    # without motion
    if cfg.motion:
        # Finn: the flow learns from how well the latest frame, moved smoothly by it, predicts the next frame:
        # a plain regression, no flow labels. The denoiser then gets the frame moved as sampling moves it
        flow = model.flow(seen[:, -1], actions)                                  # (B, 2, H, W)
        smooth, _ = move(cfg, ctx[:, -1], flow, "bilinear")                      # differentiable in the flow
        motion_loss = ((smooth - x) ** 2).mean() / cfg.sigma_data**2
        base, latest, _ = move_latest(cfg, ctx, seen, flow.detach())             # 2 x (B, C, h, w)
    x = x - base  # the change to paint: an untrained model (F = 0) keeps the moved frame
    sigma = (torch.randn(B, device=x.device) * cfg.P_std + cfg.P_mean).exp()     # sigma ~ logN(P_mean, P_std^2)
    sd = cfg.sigma_data
    weight = 1 / sd**2 if cfg.predict_x else ((sigma**2 + sd**2) / (sigma * sd) ** 2)[:, None, None, None]  # 1/c_out^2
    noisy = x + torch.randn_like(x) * sigma[:, None, None, None]
    keep = torch.rand(B, device=x.device) >= cfg.action_dropout                  # action dropout (for CFG)
    D = denoise(model, noisy, sigma, seen, ctx_sigma, actions, keep, latest)
    return (weight * (D - x) ** 2).mean() + motion_loss


def karras_sigmas(cfg, steps, device=None):
    """EDM eq. 5: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0."""
    i = torch.arange(steps, dtype=torch.float64)  # on the CPU: Apple GPUs (mps) have no float64
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    sigmas = (hi + i / max(steps - 1, 1) * (lo - hi)) ** cfg.rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float().to(device)


@torch.no_grad()
def sample_next(model, ctx, actions, steps=None, cfg_scale=1.0, generator=None):
    """One next frame (B, C, h, w) by EDM's Euler sampler (Algorithm 1 without the Heun correction), from ctx
    (B, T, C, h, w), clean context in model units, and actions (B, T, A). cfg_scale > 1 applies classifier-free
    guidance on the actions: D = D_uncond + w (D_cond - D_uncond)."""
    cfg, B = model.cfg, ctx.shape[0]
    sigmas = karras_sigmas(cfg, steps or cfg.sample_steps, ctx.device)
    noise = min(cfg.ctx_noise_sample, cfg.ctx_noise)  # no more than training showed: none, if it showed none
    ctx_sigma = torch.full((B,), noise, device=ctx.device)
    seen = ctx + noise * torch.randn(ctx.shape, generator=generator, device=ctx.device)
    base, latest, uncovered = ctx[:, -1], seen[:, -1], None                     # without motion
    if cfg.motion:  # move the latest frame where the inputs take it, once per frame
        base, latest, uncovered = move_latest(cfg, ctx, seen, model.flow(seen[:, -1], actions))
    x = sigmas[0] * torch.randn(ctx[:, -1].shape, generator=generator, device=ctx.device)  # ~ N(0, sigma_max^2 I)
    guide = cfg_scale != 1.0
    if guide:  # one batch of 2B: the first B see the actions, the second B have them hidden
        keep = torch.arange(2 * B, device=ctx.device) < B
        seen, ctx_sigma, actions, latest = (torch.cat([t, t]) for t in (seen, ctx_sigma, actions, latest))
    for i in range(len(sigmas) - 1):
        if guide:
            D, D_uncond = denoise(model, torch.cat([x, x]), sigmas[i].expand(2 * B), seen, ctx_sigma, actions,
                                  keep, latest).chunk(2)
            D = D_uncond + cfg_scale * (D - D_uncond)
        else:
            D = denoise(model, x, sigmas[i].expand(B), seen, ctx_sigma, actions, None, latest)
        d = (x - D) / sigmas[i]                    # dx/dsigma of the probability-flow ODE
        x = x + (sigmas[i + 1] - sigmas[i]) * d    # Euler step to the next sigma
    painted = base + x                             # the denoiser painted the change from the moved frame
    if cfg.keep_moved and uncovered is not None:   # paint what the move uncovered and what the paint changes much
        changed = F.pixel_shuffle(x, cfg.frame_shuffle).abs().amax(dim=1, keepdim=True) > cfg.keep_moved
        return torch.where(uncovered | in_latents(cfg, changed), painted, base)
    return painted


@torch.no_grad()
def rollout(model, ctx, actions, steps=None, cfg_scale=1.0, generator=None, progress=None):
    """Autoregressive rollout, one frame at a time like a game's step(action): from ctx (B, T, C, h, w), the T
    starting frames in model units, under actions (B, T + n - 1, A), the T context actions and then one per new
    frame (the action after frame t leads to frame t+1). Returns the n new frames (B, n, C, h, w)."""
    T, frames = model.cfg.context, []
    for i in range(actions.shape[1] - T + 1):
        x = sample_next(model, ctx, actions[:, i:i + T], steps, cfg_scale, generator)  # (B, C, h, w)
        frames.append(x)
        ctx = torch.cat([ctx[:, 1:], x[:, None]], dim=1)  # roll the context buffer
        if progress is not None:
            progress.update(1)
    return torch.stack(frames, dim=1)
