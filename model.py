"""
The world model: a transformer denoiser that paints the next frame's latent, given the 10 previous
frames (through cross-attention) and the player's inputs, trained and sampled with EDM. Like a video
codec, it first moves the latest frame where the inputs take it (motion compensation), and the
diffusion model paints what that cannot explain.

Reading order:
  1. Config and presets           what every size knob means
  2. Building blocks              patchify, sinusoidal embedding, attention, the DiT block
  3. Motion                       the flow of the next frame under the inputs, and moving pixels by it
  4. Denoiser                     the network F(x; sigma, context, actions)
  5. EDM                          preconditioning, training loss, few-step sampler, rollout

References:
  EDM    Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
         (arXiv:2206.00364): preconditioning (Table 1), training loss (eq. 8), sampler (Algorithm 1).
  DiT    Peebles & Xie 2023, "Scalable Diffusion Models with Transformers": patch tokens, adaLN-Zero.
  DIAMOND Alonso et al. 2024: EDM world model sampled in 3 steps; actions join the noise embedding.
  GameNGen Valevski et al. 2024: noise augmentation of the context frames for stable long rollouts.
  JiT    Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise": predict the clean image
         when tokens are narrower than the pixels they carry.
  Finn   Finn, Goodfellow & Levine 2016, "Unsupervised Learning for Physical Interaction through Video
         Prediction": predict how pixels move under the actions and move the last frame, rather than paint
         every pixel anew; learned from the frames alone, no flow labels.

    from model import Config, WorldModel, diffusion_loss, rollout
"""
import math
from dataclasses import dataclass, fields

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
    latent_mean: float = 0.0        # mean of the training latents; subtracted so the model sees zero-mean data
    latent_std: float = 1.0         # std of the training latents; data is rescaled to std `sigma_data`
    action_scale: tuple = ()        # per input column, its std in the training data (keys are 0/1 but mouse
                                    #   deltas can be tens of degrees); actions are divided by it. () = all 1
    frame_shuffle: int = 1          # the latents are F.pixel_unshuffle(frame, this): 8 for `pixels` (a latent is an
                                    #   8x8 block of RGB pixels), 1 for an autoencoder's latents. Motion moves the
                                    #   pixels of this "frame view", where neighbours are neighbours
    # --- context
    context: int = 10               # previous frames the model sees (the mission's 10; 0.67 s at 15 FPS)
    motion: bool = True             # motion compensation (Finn): a small conv net predicts from the latest frame and
                                    #   the inputs where each pixel of the next frame comes from, and the latest frame
                                    #   is moved there before the denoiser sees it. A turn slides the picture, walking
                                    #   zooms it: the denoiser no longer has to learn to move content (off: the latest
                                    #   frame as it is; rollouts then hardly follow a turn, README Results)
    keep_moved: bool = True         # sampling keeps the moved pixels as they are (moved to the nearest pixel, so they
                                    #   stay sharp however long the rollout) and takes the denoiser's paint only where
                                    #   the motion uncovered the frame. Off: the denoiser repaints every pixel of a
                                    #   smooth (bilinear) move; a short-trained denoiser then blurs a little each frame
                                    #   and rollouts fade within a second. Off suits a long-trained model on SD latents,
                                    #   whose positions are 8 pixels wide, too coarse to move by whole positions
    concat_last: bool = True        # also feed the (moved) latest frame by channel concatenation (pixel-aligned path)
    residual: bool = True           # diffuse the change from the (moved) latest frame, not the frame: an untrained
                                    #   model starts at "keep the frame" and learning adds the change (off, the
                                    #   model paints the blurry average frame and rollouts fade; README Results)
    embed_ring: bool = True         # a token of the noisy frame also sees the ring of patches around it (a 3x3
                                    #   convolution as the patch embedding): a turn slides the picture across token
                                    #   borders, and the content that slides in is then already at hand
    rope: bool = False              # rotary 2-D positions in every attention (RoPE, Su et al. 2021): attention
                                    #   scores depend on the offset between two tokens, so "fetch what is one token
                                    #   to my left" is one pattern to learn, not one per position
    ctx_pool: int = 1               # average-pool context frames by this factor before cross-attention: ctx_pool^2
                                    #   fewer context tokens; the latest frame still arrives in full via concat_last
    # --- transformer
    patch_size: int = 2             # latent pixels per token side; tokens per frame = (h/p)*(w/p); compute ~ 1/p^2
    dim: int = 768                  # token width (DiT-B); compute ~ dim^2
    depth: int = 12                 # number of blocks
    heads: int = 12                 # attention heads; head size dim/heads = 64 suits flash attention
    mlp_ratio: float = 4.0          # hidden width of the MLP relative to dim
    # --- conditioning tricks (each can be switched off to measure it)
    action_adaln: bool = True       # all T actions also join the noise embedding for adaptive norm (DIAMOND, Oasis)
    ctx_noise: float = 0.7          # max sigma of noise added to context frames in training (GameNGen; 0 = off)
    ctx_noise_sample: float = 0.02  # fixed context noise sigma when sampling (small: the model saw it in training;
                                    #   capped at ctx_noise, so a run trained without context noise samples without)
    action_dropout: float = 0.1     # share of training samples whose actions are hidden from the denoiser (enables
                                    #   --cfg guidance); the motion net still moves the latest frame by them
    self_rollout: float = 0.0       # share of training samples whose latest context frame is the model's own
                                    #   prediction (ROLLOUT_STEPS Euler steps, no gradient): it learns to correct
                                    #   its own mistakes instead of compounding them. Costs, on that share,
                                    #   ROLLOUT_STEPS forwards of the denoiser and one of the motion net
    # --- EDM diffusion (Karras et al. 2022); sigmas are in units where the data has std sigma_data
    predict_x: bool = True          # the network outputs the clean target (JiT) instead of EDM's skip mix; see denoise
    sigma_data: float = 0.5         # std of the data the model sees (EDM's default for images in [-1, 1])
    P_mean: float = 0.4             # log-normal training noise: ln(sigma) ~ N(P_mean, P_std^2). EDM trains its
    P_std: float = 1.2              #   images at -1.2; here most training is at high noise, where the frame is
                                    #   unknown and only the context and the inputs can say what comes next (it
                                    #   raised the response to the inputs before motion; with it, -0.4 measures
                                    #   the same: README Results)
    sigma_min: float = 0.002        # smallest sigma of the sampling schedule (EDM); sampling only
    sigma_max: float = 5.0          # largest; 10x sigma_data is plenty when 10 frames of context pin the answer
    rho: float = 7.0                # schedule curvature (EDM eq. 5): steps crowd near sigma_min
    sample_steps: int = 4           # default denoising steps per frame (Euler); the mission asks for at most 4


PRESETS = {
    "tiny": dict(patch_size=1, dim=64, depth=2, heads=2),     # tests: seconds on a CPU
    # the quickstart, minutes on 2 CPU cores: tokens (256) wider than a pixels patch (192 values), paid for
    # by pooling the context 2x2. 2 sampling steps: they measure the same as 4 (README Results), at twice
    # the speed
    "cpu": dict(patch_size=1, dim=256, depth=4, heads=4, ctx_pool=2, sample_steps=2),
    # one A100/H100, SD latents of 256x256 frames; a latent position is 8 pixels wide, so moves are smooth
    # (bilinear) and the long-trained denoiser repaints every position
    "base": dict(patch_size=2, dim=768, depth=12, heads=12, keep_moved=False),
}


def make_config(preset, **overrides):
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    names = {f.name for f in fields(Config)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(sorted(unknown))}")
    return Config(**{**PRESETS[preset], **overrides})


def normalize(cfg, latents):
    """Encoded latents -> the model's units (zero mean, std sigma_data)."""
    return (latents.float() - cfg.latent_mean) / cfg.latent_std * cfg.sigma_data


def denormalize(cfg, z):
    return z / cfg.sigma_data * cfg.latent_std + cfg.latent_mean


# -----------------------------------------------------------------------------
# Building blocks


def patchify(x, p):
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)                  # (B, N, C*p*p)


def unpatchify(x, p, C, H, W):
    B = x.shape[0]
    x = x.reshape(B, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, H/p, p, W/p, p)
    return x.reshape(B, C, H, W)


def sinusoidal(c, dim):
    """Transformer-style sin/cos features of a scalar per sample: (B,) -> (B, dim)."""
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=c.device) / (dim // 2))
    angles = c.float()[:, None] * freqs[None] * 100  # x100: EDM's c_noise spans about [-2, 1]; spread it out
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def rope_angles(rows, cols, head_dim, base=100.0):
    """(N, head_dim/2) rotation angles of tokens at grid positions (rows, cols) (N,): half of each head's
    channel pairs turn with the row, half with the column, at frequencies from 1 down to 1/base per token.
    base 100, not a language model's 10000: a frame is at most ~32 tokens across, and the slowest pair should
    still turn a little over that distance (0.3 rad), or it carries no position."""
    freqs = base ** (-torch.arange(head_dim // 4) / (head_dim // 4))  # (head_dim/4,)
    return torch.cat([rows.float()[:, None] * freqs, cols.float()[:, None] * freqs], dim=1)


def rotate(x, angles):
    """Rotate channel pairs (i, i + d/2) of x (B, H, N, d) by angles (N, d/2): RoPE."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    """Multi-head attention of `x` over `source` (self-attention when source is x), with RoPE when the
    rotation angles of the queries and keys are given."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, source, q_angles=None, k_angles=None):
        B, N, D = x.shape
        M, H = source.shape[1], self.heads
        q = self.q(x).view(B, N, H, D // H).transpose(1, 2)                   # (B, H, N, D/H)
        k, v = self.kv(source).view(B, M, 2, H, D // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, M, D/H)
        if q_angles is not None:
            q, k = rotate(q, q_angles), rotate(k, k_angles)
        y = F.scaled_dot_product_attention(q, k, v)                           # (B, H, N, D/H), fused kernel
        return self.out(y.transpose(1, 2).reshape(B, N, D))                   # (B, N, D)


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

    def forward(self, x, ctx, c, angles=None, ctx_angles=None):
        mod = self.ada(F.silu(c))[:, None].chunk(9, dim=2)  # 9 x (B, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2, shift3, scale3, gate3 = mod
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.attn(h, h, angles, angles)                            # (B, N, D) frame tokens talk
        h = modulate(self.norm2(x), shift2, scale2)
        x = x + gate2 * self.cross(h, ctx, angles, ctx_angles)                     # (B, N, D) ...look at the past
        x = x + gate3 * self.mlp(modulate(self.norm3(x), shift3, scale3))         # (B, N, D)
        return x


# -----------------------------------------------------------------------------
# Motion: where each pixel of the next frame comes from


def frame_view(cfg, z):
    """Latents (B, C, h, w) -> the frame view (B, C/r^2, h*r, w*r), r = frame_shuffle: pixels for `pixels`."""
    return F.pixel_shuffle(z, cfg.frame_shuffle)


def latent_view(cfg, x):
    return F.pixel_unshuffle(x, cfg.frame_shuffle)


def warp(x, flow, mode):
    """Move the pixels of x (B, c, H, W): out(p) = x(p + flow(p)), with flow (B, 2, H, W) in pixels (x, y).
    Also returns the mask (B, 1, H, W) of the pixels whose source lies outside the frame: what the motion
    uncovered, which the denoiser must paint. There the edge pixel is repeated, a neutral first guess."""
    B, c, H, W = x.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=x.device), torch.arange(W, device=x.device), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0] + 0.5) / W, (ys + flow[:, 1] + 0.5) / H], dim=-1) * 2 - 1  # (B, H, W, 2)
    grid = grid.nan_to_num(2.0, 2.0, -2.0).clamp(-2, 2)  # a diverged flow (lr too high) must not crash grid_sample
    out = F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=False)  # -1, 1: the edges
    uncovered = (grid.abs() > 1).any(dim=-1)[:, None]                                   # (B, 1, H, W)
    return out, uncovered


def move(cfg, frame, flow, mode):
    """A frame (B, C, h, w) as latents moved by flow (see warp), and the mask (B, C, h, w) of what it uncovered."""
    moved, uncovered = warp(frame_view(cfg, frame), flow, mode)                      # (B, c, H, W), (B, 1, H, W)
    return latent_view(cfg, moved), latent_view(cfg, uncovered.expand_as(moved).to(moved.dtype)).bool()


def move_latest(cfg, ctx, seen, flow):
    """The latest context frame, clean (ctx) and as the denoiser sees it (seen, with the context's noise),
    moved by flow the way sampling moves it: to the nearest pixel with keep_moved, else smoothly. Returns
    both and the mask of what the move uncovered."""
    mode = "nearest" if cfg.keep_moved else "bilinear"
    base, uncovered = move(cfg, ctx[:, -1], flow, mode)
    latest, _ = move(cfg, seen[:, -1], flow, mode)
    return base, latest, uncovered


MOTION_DIM = 48  # channels of the motion net: a smooth field from a few cues needs little (3% of the cpu model's
                 #   weights, 7% of its FLOPs)
ACTION_PLANES = 16  # the T x A inputs squeezed to 16 numbers, each a constant plane beside the frame: a turn, the
                    #   speed the held keys give, and room to spare (10 columns x 10 frames in the quickstart)


class Motion(nn.Module):
    """The flow of the next frame (B, 2, H, W), in pixels of the frame view: for each of its pixels, where it
    comes from in the latest frame. Predicted at 1/8 of the frame view's resolution and upsampled, because
    camera motion is smooth. It sees the latest frame at half resolution (how far away things are: walking
    moves near things more), the T inputs (the turn of the last one; the keys held before it, which set the
    player's speed: Doom has momentum), and the pixel coordinates (a turn moves the edges more than the
    centre; walking forward moves pixels away from it)."""

    def __init__(self, cfg):
        super().__init__()
        c, D = cfg.latent_channels // cfg.frame_shuffle**2, MOTION_DIM
        # the inputs, as ACTION_PLANES constant planes beside the frame's channels
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
        x = F.avg_pool2d(latest, 2)                                          # (B, c, H/2, W/2)
        h, w = x.shape[-2:]
        planes = self.act(actions.reshape(B, -1))[:, :, None, None].expand(-1, -1, h, w)  # (B, ACTION_PLANES, H/2, W/2)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        coords = torch.stack([xs, ys]).expand(B, -1, -1, -1).to(x.dtype)     # (B, 2, H/2, W/2)
        flow = self.net(torch.cat([x, planes, coords], dim=1))              # (B, 2, H/8, W/8)
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
        assert cfg.latent_height % q == 0 and cfg.latent_width % q == 0, "latent size must divide by p * ctx_pool"
        c_in = C * (2 if cfg.concat_last else 1)                              # noisy frame (+ latest frame) channels
        ring = dict(kernel_size=3 * p, padding=p) if cfg.embed_ring else dict(kernel_size=p)  # 3x3 patches, or 1
        self.x_in = nn.Conv2d(c_in, D, stride=p, **ring)
        self.ctx_in = nn.Linear(C * p * p, D)                                # context frame patches
        # 2-D position (row + column) and frame-index embeddings, for the frame's and the context's token grids;
        # std 0.02 as in GPT-2 and ViT: small next to the unit-variance patch embeddings they are added to
        self.row = nn.Parameter(torch.randn(cfg.latent_height // p, 1, D) * 0.02)
        self.col = nn.Parameter(torch.randn(1, cfg.latent_width // p, D) * 0.02)
        self.ctx_row = nn.Parameter(torch.randn(cfg.latent_height // q, 1, D) * 0.02)
        self.ctx_col = nn.Parameter(torch.randn(1, cfg.latent_width // q, D) * 0.02)
        self.frame = nn.Parameter(torch.randn(T, 1, D) * 0.02)
        if cfg.rope:  # grid positions in tokens of the frame; a pooled context token sits at the centre of its q x q
            h, w = cfg.latent_height // p, cfg.latent_width // p
            r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            self.register_buffer("angles", rope_angles(r.flatten(), c.flatten(), D // cfg.heads), persistent=False)
            centre = (cfg.ctx_pool - 1) / 2
            ctx_angles = rope_angles(r[::cfg.ctx_pool, ::cfg.ctx_pool].flatten() + centre,
                                     c[::cfg.ctx_pool, ::cfg.ctx_pool].flatten() + centre, D // cfg.heads)
            self.register_buffer("ctx_angles", ctx_angles.repeat(T, 1), persistent=False)  # (T*M, D/H/2)
        # actions: each context frame's tokens get that frame's action; all T actions also join the
        # noise embedding and reach every block through adaptive norm (DIAMOND, Oasis)
        self.act_tok = nn.Linear(A, D)
        self.register_buffer("action_scale", torch.tensor(cfg.action_scale or (1.0,) * A), persistent=False)
        if cfg.action_adaln:
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
        # adaLN-Zero (DiT): zero modulation makes every block start as the identity, and a zero output
        # layer makes F start at 0, so D(x) = c_skip * x: a stable start for training from scratch
        for block in self.blocks:
            nn.init.zeros_(block.ada.weight)
            nn.init.zeros_(block.ada.bias)
        for m in (self.ada_out, self.out) + ((self.motion.net[-1],) if self.motion else ()):
            nn.init.zeros_(m.weight)  # ... and a zero flow: the motion net starts by keeping the frame where it is
            nn.init.zeros_(m.bias)

    def flow(self, latest, actions):
        """The motion's flow (B, 2, H, W) for the latest frame (B, C, h, w) as latents, and the inputs (B, T, A)."""
        return self.motion(frame_view(self.cfg, latest), actions / self.action_scale)

    def forward(self, x, c_noise, ctx, c_noise_ctx, actions, keep=None, latest=None):
        """
        x        (B, C, h, w)     noisy next frame, already scaled by c_in
        c_noise  (B,)             EDM noise conditioning ln(sigma)/4
        ctx      (B, T, C, h, w)  the T previous frames (noise-augmented, scaled)
        c_noise_ctx (B,)          noise conditioning of the context's augmentation noise
        actions  (B, T, A)        the action after each context frame; the last one leads to x
        keep     (B,) bool        False hides the actions from the denoiser (action dropout / CFG); the motion,
                                  computed before, has already moved `latest` by them
        latest   (B, C, h, w)     the latest frame moved by the motion (noised, scaled like ctx); default ctx[:, -1]
        returns  (B, C, h, w)
        """
        cfg = self.cfg
        B, T, C, h, w = ctx.shape
        p, D = cfg.patch_size, cfg.dim
        actions = actions / self.action_scale                                  # every column of order 1
        pos = (self.row + self.col).reshape(1, -1, D)                            # (1, N, D)
        ctx_pos = (self.ctx_row + self.ctx_col).reshape(1, 1, -1, D)            # (1, 1, M, D)
        # context tokens: (pooled) patches + 2-D position + frame index + that frame's action
        pooled = F.avg_pool2d(ctx.reshape(B * T, C, h, w), cfg.ctx_pool)       # (B*T, C, h/pool, w/pool)
        tokens = self.ctx_in(patchify(pooled, p))                              # (B*T, M, D)
        tokens = tokens.reshape(B, T, -1, D) + ctx_pos + self.frame[None]      # (B, T, M, D)
        act_tok = self.act_tok(actions)[:, :, None]                           # (B, T, 1, D)
        if keep is not None:
            act_tok = act_tok * keep.float()[:, None, None, None]
        ctx_tokens = self.ctx_norm((tokens + act_tok).reshape(B, -1, D))       # (B, T*M, D)
        # conditioning vector for adaptive norm: noise levels + actions
        c = self.cond(torch.cat([sinusoidal(c_noise, D), sinusoidal(c_noise_ctx, D)], dim=1))  # (B, D)
        if cfg.action_adaln:
            act_vec = self.act_vec(actions.reshape(B, T * actions.shape[2]))  # (B, D)
            if keep is not None:
                k = keep.float()[:, None]
                act_vec = act_vec * k + self.null_action * (1 - k)
            c = c + act_vec
        # the noisy frame's tokens, with the (moved) latest frame concatenated channel-wise
        if cfg.concat_last:
            x = torch.cat([x, ctx[:, -1] if latest is None else latest], dim=1)  # (B, 2C, h, w)
        x = self.x_in(x).flatten(2).transpose(1, 2) + pos                     # (B, N, D): patch (+ ring) embedding
        angles = (self.angles, self.ctx_angles) if cfg.rope else (None, None)
        for block in self.blocks:
            x = block(x, ctx_tokens, c, *angles)                              # (B, N, D)
        shift, scale = self.ada_out(F.silu(c))[:, None].chunk(2, dim=2)
        x = self.out(modulate(self.norm_out(x), shift, scale))                # (B, N, C*p*p)
        return unpatchify(x, p, C, h, w)                                      # (B, C, h, w)

    def flops_per_sample(self):
        """Analytic training FLOPs for one sample (forward + backward = 3x forward; 2 FLOPs per MAC)."""
        cfg = self.cfg
        N = (cfg.latent_height // cfg.patch_size) * (cfg.latent_width // cfg.patch_size)
        M = N // cfg.ctx_pool**2 * cfg.context
        D, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        per_block = (N * (4 * D * D + 2 * N * D)         # self-attention: q, kv, out + scores and values
                     + N * 2 * D * D + M * 2 * D * D      # cross-attention: q, out; kv of the context
                     + 2 * N * M * D                      # cross-attention scores and values
                     + 2 * N * D * hidden)                # MLP
        denoiser = cfg.depth * per_block + M * D * self.ctx_in.in_features + N * D * self.x_in.weight[0].numel()
        motion = 0
        if self.motion is not None:  # its convolutions, at 1/2, 1/4 and 1/8 of the frame view's resolution
            h, w = cfg.latent_height * cfg.frame_shuffle // 2, cfg.latent_width * cfg.frame_shuffle // 2
            for conv in self.motion.net[::2]:
                h, w = -(-h // conv.stride[0]), -(-w // conv.stride[0])
                motion += h * w * conv.weight.numel()
        # plus, on the self_rollout share, the forwards that paint its latest frame, without a backward
        rollout = cfg.self_rollout * (ROLLOUT_STEPS * denoiser + motion)
        return 2 * (3 * (denoiser + motion) + rollout)


# -----------------------------------------------------------------------------
# EDM: preconditioning, loss, sampler


CTX_SIGMA_EPS = 0.002  # added to the context's noise level before its log (0 would give -inf); EDM's sigma_min


def denoise(model, x, sigma, ctx, ctx_sigma, actions, keep=None, latest=None):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise): EDM Table 1 ("Ours" column).

    x (B, C, h, w) is the noisy frame, sigma (B,) its noise level; ctx (B, T, C, h, w) are context
    frames carrying noise of level ctx_sigma (B,), which get the same c_in treatment, as does latest
    (B, C, h, w), the latest context frame moved by the motion.

    With predict_x, c_skip = 0 and c_out = sigma_data: F predicts the clean frame itself. EDM's mix makes
    F output mostly noise at low sigma, and noise is full-rank: a token narrower than the patch it puts
    out (a 64-wide `tiny` token puts out a `pixels` patch of 8x8x3 = 192 values) cannot represent it, and
    sampling leaves blocky noise behind. Clean frames are low-rank, so predicting them works through the bottleneck
    (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise")."""
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


ROLLOUT_STEPS = 2  # Euler steps for the self_rollout frames: cheap, and already as sharp as the 4-step sampler's


def diffusion_loss(model, x, ctx, actions):
    """EDM training loss (eq. 8 with the log-normal p(sigma) and lambda(sigma) of Table 1), plus the motion's.

    x (B, C, h, w) clean next frame, ctx (B, T, C, h, w) clean context, actions (B, T, A). With
    cfg.self_rollout, ctx and actions hold one more frame at the front (T + 1), to predict ctx[:, -1] from.
    With predict_x, lambda = 1/sigma_data^2 = 1/c_out^2 as well: EDM's rule of a unit weight on the
    network's own error, which for a clean-frame prediction is the same at every sigma. (A weight that
    fades with noise, such as min-SNR, starves the high-noise steps where the context matters most.)"""
    cfg = model.cfg
    B, T = x.shape[0], cfg.context
    if ctx.shape[1] > T:  # self_rollout: the first n windows see the model's own frame as their latest
        n = round(cfg.self_rollout * B)       # a fixed count: static shapes (train.py refuses one that rounds to 0)
        shifted = ctx[:, 1:].clone()
        if n:
            shifted[:n, -1] = sample_next(model, ctx[:n, :T], actions[:n, :T], ROLLOUT_STEPS)  # no gradient
        ctx, actions = shifted, actions[:, 1:]
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
    if cfg.residual:
        x = x - base                                                             # the change to paint
    sigma = (torch.randn(B, device=x.device) * cfg.P_std + cfg.P_mean).exp()     # sigma ~ logN(P_mean, P_std^2)
    if cfg.predict_x:
        weight = torch.full_like(sigma, 1 / cfg.sigma_data**2)                 # lambda = 1 / c_out^2
    else:
        weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2  # lambda = 1 / c_out^2
    noisy = x + torch.randn_like(x) * sigma[:, None, None, None]
    keep = torch.rand(B, device=x.device) >= cfg.action_dropout                  # action dropout (for CFG)
    D = denoise(model, noisy, sigma, seen, ctx_sigma, actions, keep, latest)
    return (weight[:, None, None, None] * (D - x) ** 2).mean() + motion_loss


def karras_sigmas(cfg, steps, device=None):
    """EDM eq. 5: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0."""
    i = torch.arange(steps, dtype=torch.float64)  # on the CPU: Apple GPUs (mps) have no float64
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    sigmas = (hi + i / max(steps - 1, 1) * (lo - hi)) ** cfg.rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float().to(device)


@torch.no_grad()
def sample_next(model, ctx, actions, steps=None, cfg_scale=1.0, generator=None):
    """One next frame by EDM's Euler sampler (Algorithm 1 without the Heun correction).

    ctx (B, T, C, h, w) clean context in model units, actions (B, T, A). cfg_scale > 1 applies
    classifier-free guidance on the actions: D = D_uncond + w (D_cond - D_uncond)."""
    cfg = model.cfg
    B = ctx.shape[0]
    shape = (B, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    sigmas = karras_sigmas(cfg, steps or cfg.sample_steps, ctx.device)
    noise = min(cfg.ctx_noise_sample, cfg.ctx_noise)  # no more than training showed: none, if it showed none
    ctx_sigma = torch.full((B,), noise, device=ctx.device)
    seen = ctx + noise * torch.randn(ctx.shape, generator=generator, device=ctx.device)
    base, latest, uncovered = ctx[:, -1], seen[:, -1], None                     # without motion
    if cfg.motion:  # move the latest frame where the inputs take it, once per frame
        base, latest, uncovered = move_latest(cfg, ctx, seen, model.flow(seen[:, -1], actions))
    x = sigmas[0] * torch.randn(shape, generator=generator, device=ctx.device)   # x_0 ~ N(0, sigma_max^2 I)
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
    painted = base + x if cfg.residual else x
    if cfg.keep_moved and uncovered is not None:   # the moved pixels as they are, paint only where uncovered
        return torch.where(uncovered, painted, base)
    return painted


@torch.no_grad()
def rollout(model, ctx, actions, steps=None, cfg_scale=1.0, generator=None, progress=None):
    """Autoregressive rollout, one frame at a time like a game's step(action).

    ctx     (B, T, C, h, w) the T starting frames in model units
    actions (B, T + n - 1, A): the T context actions, then one per new frame (the action after frame t
            leads to frame t+1), so n = actions.shape[1] - T + 1 frames are generated.
    returns (B, n, C, h, w)"""
    T = model.cfg.context
    n = actions.shape[1] - T + 1
    frames = []
    for i in range(n):
        x = sample_next(model, ctx, actions[:, i:i + T], steps, cfg_scale, generator)  # (B, C, h, w)
        frames.append(x)
        ctx = torch.cat([ctx[:, 1:], x[:, None]], dim=1)  # roll the context buffer
        if progress is not None:
            progress.update(1)
    return torch.stack(frames, dim=1)
