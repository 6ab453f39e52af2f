"""Stable Video Diffusion as a trained stand-in: the real ``StableVideoDiffusionPipeline`` classes at toy size,
trained on clips of a moving MNIST digit, so that ``pipe(first_frame, num_frames=4)`` returns the digit moving right.

Notation
--------
=========================  ==========  ================================================================================
code                       symbol      meaning
=========================  ==========  ================================================================================
``CANVAS``                 H = W       32: the 28×28 digit on a black 32×32 RGB canvas, shifted sideways per frame
``num_frames``             F           frames per clip (4); frame k shows the digit ``o_0 + k·step_px`` pixels right
                                       of the centre (``o_0`` drawn once per clip from ``start_offsets``)
``vae_scale_factor``       f           4 (3 VAE levels; SVD has f = 8): latents z (B, F, 4, 8, 8)
``scaling_factor``         s           1/std of the VAE's posterior means of the training frames (SVD: 0.18215)
``sigma``                  σ           EDM noise level (Karras et al. 2022): z_σ = z_0 + σ·ε, ln σ ~ N(P_mean, P_std²)
``c_in``, ``c_noise``      c_in, c_n   1/√(σ² + 1) and ¼·ln σ: the UNet reads F(c_in·z_σ; c_n) (EDM Table 1, what the
                                       pipeline's ``EulerDiscreteScheduler`` does: ``scale_model_input``, timesteps)
``v_target``               F*          (ε − σ·z_0)/√(σ² + 1): the UNet's target, so the scheduler's
                                       ẑ_0 = z_σ/(σ² + 1) − σ/√(σ² + 1)·F is z_0 (v-prediction, σ_data = 1)
``cond_latent``            c_z         VAE posterior mode of the first frame + ``noise_aug``·ε, NOT scaled by s (as
                                       the pipeline), concatenated to every frame's noisy latent: UNet input 8 chans
``image_embeds``           c_clip      CLIP image embedding of the first frame (B, 1, 32): the cross-attention context
``added_time_ids``         —           (fps − 1, motion_bucket_id, noise_aug) = (6, 127, 0.02), the call's defaults
=========================  ==========  ================================================================================

What and why
------------
:func:`build_svd_standin` makes an untrained pipeline from the real classes: a 2-level
``UNetSpatioTemporalConditionModel`` (32/64 channels, spatial and temporal attention and convolutions), an
``AutoencoderKLTemporalDecoder`` (f = 4; its decoder mixes neighbouring frames), ``bridge.tiny``'s random CLIP image
tower (224² input, frozen: the digit reaches the UNet through c_z; c_clip only adds a little) and SVD's Karras/Euler
scheduler configuration. The decoder's last layer (``time_conv_out``, a convolution over neighbouring frames) starts as
the identity: from PyTorch's random start, 150 autoencoder steps left the first and last frame of each clip tinted
(their zero-padded neighbour) and the digit classified in 0.70 / 0.50 of them against 0.975 in the middle frames. :func:`train_svd_standin` trains it in fixed step counts: (1) the autoencoder on clips
(decoding F frames together, as the pipeline does); (2) latents, conditioning latents and CLIP embeddings of every
clip, computed once; (3) the UNet with the EDM loss above, the conditioning (c_clip and c_z together) zeroed for
``cond_drop_prob`` of the clips — the pipeline's unconditional branch for its frame-wise guidance w = 1 → 3.

The motion is not a prompt: SVD is image-to-video with no text, so one fixed direction (right) is learnt; the
micro-conditioning (fps, motion bucket) is held at the call's defaults. :func:`measure_motion` runs the real
``pipe(images, ...)`` and reads the ink centroid of every frame and the classifier's digit (after re-centring).
Shipped (``data/pretrained/svd_mnist``, 300 + 500 steps): on 100 MNIST test digits, 10 steps, the call's defaults,
0.9675 of the frames read as the first frame's digit and the ink moves 5.93 ± 0.03 px right (the clips: 6) with
0.05 px vertical drift; the random tiny SVD: 0.02 and 1.4 ± 0.2 px (noise). December 2026.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import diffusers
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffusion_lab.bridge.tiny import SVD_SCHEDULER_CONFIG, _clip_image_processor, _clip_vision
from diffusion_lab.mnist.classifier import classify
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.training.loop import EMA, check_config_fields, optimizer_step, warmup_cosine
from diffusion_lab.utils.errors import check_int

__all__ = [
    "CANVAS",
    "SvdStandinConfig",
    "build_svd_standin",
    "centre_crop_digits",
    "edm_inputs",
    "generate_clips",
    "ink_centroid",
    "measure_motion",
    "moving_clips",
    "svd_loss",
    "to_pil",
    "train_svd_standin",
    "v_target",
]

CANVAS = 32
FPS, MOTION_BUCKET_ID, NOISE_AUG = 7, 127, 0.02  # the pipeline's defaults; it passes fps − 1 to the UNet


@dataclass
class SvdStandinConfig:
    """Sizes, data and the fixed step counts of the SVD stand-in (never seconds)."""

    # sizes
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int] = (32, 32, 32)
    # data: clips of a digit moving right
    num_images: int = 4_000  # the first N MNIST training images, one clip each
    num_frames: int = 4
    step_px: int = 2  # pixels per frame (to the right)
    start_offsets: tuple[int, int] = (-4, 0)  # o_0 drawn uniformly from this closed range (pixels)
    # phase 1: the autoencoder
    vae_steps: int = 300
    vae_batch_clips: int = 8
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    # phase 3: the UNet
    steps: int = 500
    batch_size: int = 16  # clips
    lr: float = 2e-3
    warmup_steps: int = 20
    final_lr_fraction: float = 0.3
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    cond_drop_prob: float = 0.1
    p_mean: float = 0.7  # ln σ ~ N(P_mean, P_std²): SVD's values
    p_std: float = 1.6
    noise_aug: float = NOISE_AUG
    seed: int = 0

    def __post_init__(self):
        check_config_fields(
            self,
            counts=("num_images", "num_frames", "vae_steps", "vae_batch_clips", "steps", "batch_size"),
            indices=("step_px", "warmup_steps", "seed"),
            positive=("vae_lr", "lr", "grad_clip", "p_std"),
            non_negative=("kl_weight", "noise_aug"),
            fractions=("final_lr_fraction", "cond_drop_prob"),
            decays=("ema_decay",),
        )  # fmt: skip
        lo, hi = self.start_offsets
        travel = (self.num_frames - 1) * self.step_px
        if lo > hi or lo < -6 or hi + travel > 6:  # MNIST ink fits 20×20: 6 pixels of room on each side
            raise ValueError(f"start_offsets {self.start_offsets} with {travel} px of travel leave the canvas")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- data, pure
def moving_clips(images: torch.Tensor, offsets: torch.Tensor, num_frames: int, step_px: int) -> torch.Tensor:
    """Digits (B, 1, 28, 28) in [−1, 1] → clips (B, F, 3, 32, 32) in [−1, 1]: frame k is the digit centred on the
    black canvas and moved ``offsets[b] + k·step_px`` pixels right (negative: left); nothing wraps around."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must be (B, 1, 28, 28) in [-1, 1], got shape {tuple(images.shape)}")
    num_frames, step_px = check_int("num_frames", num_frames), check_int("step_px", step_px, minimum=0)
    if offsets.shape != (len(images),):
        raise ValueError(f"offsets must be (B,) = ({len(images)},), got {tuple(offsets.shape)}")
    margin = 2 + 16  # canvas border + room for any shift of up to 16 pixels
    wide = F.pad(images, (margin,) * 4, value=-1.0)  # (B, 1, 64, 64)
    frames = []
    for k in range(num_frames):
        shift = offsets + k * step_px  # (B,)
        if shift.abs().max() > 16:
            raise ValueError("offsets + (num_frames - 1) * step_px must stay within ±16 pixels")
        cols = [wide[b, :, 16:48, 16 - int(s) : 48 - int(s)] for b, s in enumerate(shift)]  # each (1, 32, 32)
        frames.append(torch.stack(cols))
    return torch.stack(frames, 1).expand(-1, -1, 3, -1, -1).contiguous()  # (B, F, 3, 32, 32)


def to_pil(frames: torch.Tensor) -> list[Image.Image]:
    """RGB frames (B, 3, H, W) in [−1, 1] → PIL images (the pipeline's usual input; MNIST's 8-bit pixels survive)."""
    pixels = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


def ink_centroid(frames: torch.Tensor) -> torch.Tensor:
    """Ink centroid (x, y) in pixels of frames (..., 3, H, W) in [0, 1] (the pipeline's ``output_type="pt"``): the
    mean of the channels above the frame's median (its background: a digit covers far less than half the canvas) as
    ink weight. Returns (..., 2); a blank frame gives the canvas centre."""
    grey = frames.float().mean(-3).clamp(0, 1)  # (..., H, W)
    w = (grey - grey.flatten(-2).median(-1).values[..., None, None]).clamp_min(0)  # ink above the background
    h, wd = w.shape[-2:]
    total = w.sum((-2, -1)).clamp_min(1e-6)  # (...)
    x = (w.sum(-2) * torch.arange(wd, dtype=w.dtype)).sum(-1) / total
    y = (w.sum(-1) * torch.arange(h, dtype=w.dtype)).sum(-1) / total
    blank = w.sum((-2, -1)) < 1e-6
    return torch.stack([x.masked_fill(blank, (wd - 1) / 2), y.masked_fill(blank, (h - 1) / 2)], -1)


def centre_crop_digits(frames: torch.Tensor) -> torch.Tensor:
    """Frames (N, 3, 32, 32) in [0, 1] → grey digits (N, 1, 28, 28) in [−1, 1] for the classifier: each moved (by
    whole pixels, zero fill) so its ink centroid sits where a centred MNIST digit's does, then the centre 28×28."""
    grey = frames.float().mean(1, keepdim=True).clamp(0, 1)  # (N, 1, 32, 32)
    shift = ((CANVAS - 1) / 2 - ink_centroid(frames)).round().long().clamp(-8, 8)  # (N, 2): (dx, dy)
    wide = F.pad(grey, (8,) * 4)  # (N, 1, 48, 48)
    out = [wide[i, :, 8 - dy : 40 - dy, 8 - dx : 40 - dx] for i, (dx, dy) in enumerate(shift.tolist())]
    return torch.stack(out)[:, :, 2:30, 2:30] * 2 - 1  # (N, 1, 28, 28)


# ---------------------------------------------------------------------------------------------------- the loss
def edm_inputs(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_in, c_noise) = (1/√(σ² + 1), ¼·ln σ) for σ (B,): what SVD's ``EulerDiscreteScheduler`` feeds the UNet
    (``scale_model_input`` and its continuous timesteps)."""
    return (sigma**2 + 1).rsqrt(), 0.25 * sigma.log()


def v_target(z0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """F* = (ε − σ·z_0)/√(σ² + 1), σ broadcast from (B,): the output for which the scheduler's v-prediction
    ẑ_0 = z_σ/(σ² + 1) − σ/√(σ² + 1)·F equals z_0 when z_σ = z_0 + σ·ε."""
    s = sigma.view(-1, *([1] * (z0.ndim - 1)))
    return (noise - s * z0) / (s**2 + 1).sqrt()


def svd_loss(
    unet: diffusers.UNetSpatioTemporalConditionModel,
    z0: torch.Tensor,
    cond_latent: torch.Tensor,
    image_embeds: torch.Tensor,
    added_time_ids: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """E‖F* − UNet([c_in·(z_0 + σε), c_z]; c_noise, c_clip, time ids)‖² (EDM with λ(σ) = 1/c_out², σ_data = 1).
    z0, noise (B, F, 4, h, w); cond_latent (B, 4, h, w), repeated over frames; image_embeds (B, 1, D);
    added_time_ids (B, 3); sigma (B,)."""
    c_in, c_noise = edm_inputs(sigma)
    z_sigma = z0 + sigma.view(-1, 1, 1, 1, 1) * noise  # (B, F, 4, h, w)
    cond = cond_latent.unsqueeze(1).expand_as(z0)  # (B, F, 4, h, w)
    x = torch.cat([c_in.view(-1, 1, 1, 1, 1) * z_sigma, cond], 2)  # (B, F, 8, h, w)
    out = unet(x, c_noise, encoder_hidden_states=image_embeds, added_time_ids=added_time_ids).sample
    return (out - v_target(z0, noise, sigma)).pow(2).mean()


# ---------------------------------------------------------------------------------------------------- builder
def _seeded(seed: int, build) -> nn.Module:
    torch.manual_seed(seed)
    return build()


def build_svd_standin(config: SvdStandinConfig | None = None) -> diffusers.StableVideoDiffusionPipeline:
    """The untrained stand-in from the real SVD classes (see the module docstring), seeded."""
    cfg = config or SvdStandinConfig()
    c0, c1 = cfg.unet_channels
    unet = _seeded(
        cfg.seed,
        lambda: diffusers.UNetSpatioTemporalConditionModel(
            sample_size=CANVAS // 4, in_channels=8, out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(c0, c1), addition_time_embed_dim=32, projection_class_embeddings_input_dim=3 * 32,
            layers_per_block=1, cross_attention_dim=32, num_attention_heads=(2, 4), num_frames=cfg.num_frames,
        ),
    )  # fmt: skip
    vae = _seeded(
        cfg.seed + 1,
        lambda: diffusers.AutoencoderKLTemporalDecoder(
            block_out_channels=tuple(cfg.vae_channels), down_block_types=("DownEncoderBlock2D",) * 3,
            latent_channels=4, sample_size=CANVAS,
        ),
    )  # fmt: skip
    with torch.no_grad():  # the decoder's last layer mixes each frame with its neighbours: start it as the identity
        conv = vae.decoder.time_conv_out  # Conv3d over (frame − 1, frame, frame + 1); zero padding at the clip's ends
        conv.weight.zero_()
        conv.weight[:, :, 1, 0, 0] = torch.eye(conv.out_channels)
        conv.bias.zero_()
    pipe = diffusers.StableVideoDiffusionPipeline(
        vae=vae.eval(), image_encoder=_clip_vision(cfg.seed + 2).eval(), unet=unet.eval(),
        scheduler=diffusers.EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG),
        feature_extractor=_clip_image_processor(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _parameters(pipe) -> dict[str, int]:
    return {n: sum(p.numel() for p in m.parameters()) for n, m in pipe.components.items() if isinstance(m, nn.Module)}


# ---------------------------------------------------------------------------------------------------- training
@torch.no_grad()
def _conditioning(pipe, clips: torch.Tensor, noise_aug: float, g: torch.Generator, batch: int = 250):
    """What the pipeline computes from the first frames: CLIP embeddings (its own ``_encode_image`` on PIL images,
    so the 224² antialiased resize too) and VAE posterior modes of frame 0 + ``noise_aug``·ε (unscaled)."""
    embeds, latents = [], []
    for i in range(0, len(clips), batch):
        first = clips[i : i + batch, 0]  # (b, 3, 32, 32) in [−1, 1]
        embeds.append(pipe._encode_image(to_pil(first), "cpu", 1, False))  # (b, 1, D)
        noisy = first + noise_aug * torch.randn(first.shape, generator=g)
        latents.append(pipe.vae.encode(noisy).latent_dist.mode())  # (b, 4, 8, 8)
    return torch.cat(embeds), torch.cat(latents)


def train_svd_standin(
    config: SvdStandinConfig | None = None, *, images=None, progress: bool = False
) -> tuple[diffusers.StableVideoDiffusionPipeline, dict]:
    """Train :func:`build_svd_standin` on clips of moving MNIST digits in fixed step counts (module docstring).
    Returns the pipeline (EMA UNet, eval mode) and ``info`` (seconds and steps per phase, losses, parameters)."""
    cfg = config or SvdStandinConfig()
    if images is None:
        images, _ = load_mnist("train", limit=cfg.num_images)
    images = images[: cfg.num_images]
    pipe = build_svd_standin(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    lo, hi = cfg.start_offsets
    offsets = torch.randint(lo, hi + 1, (len(images),), generator=g)
    clips = moving_clips(images, offsets, cfg.num_frames, cfg.step_px)  # (N, F, 3, 32, 32)
    n, nf = len(clips), cfg.num_frames
    info: dict = {"parameters": _parameters(pipe)}

    t0 = time.perf_counter()  # 1. the autoencoder, F frames decoded together as in pipe.decode_latents
    vae = pipe.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    recon = []
    for step in range(cfg.vae_steps):
        x = clips[torch.randint(0, n, (cfg.vae_batch_clips,), generator=g)].flatten(0, 1)  # (b·F, 3, 32, 32)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)  # (b·F, 4, 8, 8)
        r = (vae.decode(z, num_frames=nf).sample - x).pow(2).mean()
        loss = r + cfg.kl_weight * post.kl().sum() / post.mean.numel()
        lr = warmup_cosine(step, cfg.vae_steps, cfg.warmup_steps, cfg.vae_lr, 0.1)
        optimizer_step(loss, opt, vae.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, step=step)
        recon.append(r.item())
        if progress and step % 25 == 0:
            print(f"vae {step} recon {r.item():.4f}", flush=True)
    vae.eval().requires_grad_(False)
    info.update(vae_seconds=time.perf_counter() - t0, vae_recon=sum(recon[-20:]) / min(20, len(recon)))

    t0 = time.perf_counter()  # 2. latents of every frame, s = 1/std; conditioning of every clip
    with torch.no_grad():
        means = torch.cat([vae.encode(clips[i : i + 100].flatten(0, 1)).latent_dist.mode() for i in range(0, n, 100)])
    s = 1.0 / means.double().std().item()
    vae.register_to_config(scaling_factor=s)
    latents = (means * s).view(n, nf, *means.shape[1:])  # (N, F, 4, 8, 8)
    embeds, cond_latents = _conditioning(pipe, clips, cfg.noise_aug, g)
    time_ids = torch.tensor([[FPS - 1, MOTION_BUCKET_ID, cfg.noise_aug]], dtype=torch.float32)  # (1, 3)
    info.update(encode_seconds=time.perf_counter() - t0, scaling_factor=s)

    t0 = time.perf_counter()  # 3. the UNet
    unet = pipe.unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    ema = EMA(unet, cfg.ema_decay)
    losses = []
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
        keep = (torch.rand(cfg.batch_size, generator=g) >= cfg.cond_drop_prob).float()  # (B,): 0 = unconditional
        sigma = (cfg.p_mean + cfg.p_std * torch.randn(cfg.batch_size, generator=g)).exp()  # (B,)
        noise = torch.randn(latents[idx].shape, generator=g)
        loss = svd_loss(
            unet, latents[idx], cond_latents[idx] * keep.view(-1, 1, 1, 1), embeds[idx] * keep.view(-1, 1, 1),
            time_ids.expand(cfg.batch_size, -1), sigma, noise,
        )  # fmt: skip
        lr = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.final_lr_fraction)
        optimizer_step(loss, opt, unet.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, ema=ema, model=unet, step=step)
        losses.append(loss.item())
        if progress and step % 50 == 0:
            print(f"unet {step} loss {sum(losses[-50:]) / len(losses[-50:]):.4f}", flush=True)
    unet.load_state_dict(ema.model.state_dict())
    unet.eval().requires_grad_(False)
    info.update(
        unet_seconds=time.perf_counter() - t0, final_loss=sum(losses[-50:]) / min(50, len(losses)), losses=losses
    )
    return pipe, info


# ---------------------------------------------------------------------------------------------------- measuring
@torch.no_grad()
def generate_clips(
    pipe, first_frames: torch.Tensor, *, seed: int = 0, num_inference_steps: int = 10, batch_size: int = 50, **call
) -> torch.Tensor:
    """``pipe(images, height=32, width=32, num_frames=F, output_type="pt", ...)`` on first frames (B, 3, 32, 32) in
    [−1, 1] given as PIL images, in batches (batch k seeded ``seed + k``) → frames (B, F, 3, 32, 32) in [0, 1]."""
    call = {"num_frames": pipe.unet.config.num_frames, **call}
    out = []
    for k, start in enumerate(range(0, len(first_frames), batch_size)):
        frames = pipe(
            to_pil(first_frames[start : start + batch_size]), height=CANVAS, width=CANVAS,
            num_inference_steps=num_inference_steps, decode_chunk_size=call["num_frames"],
            generator=torch.Generator().manual_seed(seed + k), output_type="pt", **call,
        ).frames  # fmt: skip
        out.append(frames.float().cpu())
    return torch.cat(out)  # (B, F, 3, 32, 32)


def _mean_se(x: torch.Tensor) -> dict:
    x = x.double()
    return {"mean": x.mean().item(), "stderr": (x.std() / math.sqrt(len(x))).item() if len(x) > 1 else float("nan")}


def measure_motion(
    pipe, classifier, images: torch.Tensor, labels: torch.Tensor, *, start_offset: int = 0, step_px: int = 2, **kwargs
) -> dict:
    """Through the real call: first frames = ``images`` (B, 1, 28, 28) moved ``start_offset`` pixels right;
    (a) the share of generated frames the classifier reads as the first frame's digit (each re-centred by its ink
    centroid: :func:`centre_crop_digits`), per frame index too; (b) the ink centroid's displacement last − first
    frame (dx: the trained direction, right; dy), and the mean centroid x per frame relative to frame 0. The
    clips of the training data move exactly ``(F − 1)·step_px``; numbers with standard errors; clips under "frames"."""
    offsets = torch.full((len(images),), int(start_offset))
    first = moving_clips(images, offsets, 1, step_px)[:, 0]  # (B, 3, 32, 32)
    frames = generate_clips(pipe, first, **kwargs)  # (B, F, 3, 32, 32)
    b, nf = frames.shape[:2]
    logits, _ = classify(centre_crop_digits(frames.flatten(0, 1)), classifier)
    hits = (logits.argmax(1).view(b, nf) == labels.view(-1, 1)).double()  # (B, F)
    c = ink_centroid(frames)  # (B, F, 2)
    d = c[:, -1] - c[:, 0]  # (B, 2)
    return {
        "n": b, "num_frames": nf, "frames_read_as_the_digit": hits.mean().item(),
        "per_frame": [round(v, 4) for v in hits.mean(0).tolist()],
        "displacement_x_px": _mean_se(d[:, 0]), "displacement_y_px": _mean_se(d[:, 1]),
        "displacement_abs_px": _mean_se(d.norm(dim=1)),
        "centroid_x_per_frame_px": [round(v, 3) for v in (c[:, :, 0] - c[:, :1, 0]).mean(0).tolist()],
        "expected_x_px": (nf - 1) * step_px,
        "background_per_frame": [round(v, 4) for v in frames.mean(2).flatten(2).median(-1).values.mean(0).tolist()],
        "frames": frames,
    }  # fmt: skip
