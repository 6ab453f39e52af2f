"""The x4 upscaler as a trained stand-in: the real ``StableDiffusionUpscalePipeline`` at toy size, trained to turn
8×8 MNIST canvases into 32×32 ones, measured against bicubic interpolation.

Notation
--------
=========================  ==========  ================================================================================
code                       symbol      meaning
=========================  ==========  ================================================================================
``low_res``                c_lr        the low-resolution canvas (B, 3, 8, 8): 4×4 block means of the 32×32 canvas
                                       (``maths.images.downsample``), what the pipeline's ``image=`` gets (in [0, 1])
``noise_level``            s           conditioning augmentation: c̃ = √ᾱ_s·c_lr + √(1 − ᾱ_s)·ε by the
                                       ``low_res_scheduler`` (DDPM, LDM's linear β 1e-4 → 2e-2), s ∈ {0 … 350}; the
                                       UNet also reads s as a class label (cascaded diffusion, Ho et al. 2022)
``latents``                z_t         (B, 4, 8, 8): the latent lives at the low-res size; UNet input z_t ⊕ c̃ (7 ch.)
``vae_scale_factor``       f           4: the VAE's factor *is* the upscaling factor (as the real x4 upscaler's)
``scaling_factor``         s_vae       0.08333, the value the pipeline insists on (it resets any other)
=========================  ==========  ================================================================================

What and why
------------
:func:`build_upscaler_standin` reuses the trained SD 1.5 stand-in's autoencoder (f = 4 already) and text encoder:
the autoencoder is reparametrised so that its latents times 0.08333 have unit variance (:func:`rescale_latents`:
the encoder's ``quant_conv`` mean rows × k, the decoder's ``post_quant_conv`` columns ÷ k, an exact change of
units), and a new UNet with 7 input channels and ``num_class_embeds`` = 351 is trained with v-prediction (the real
upscaler's DDIM is v-prediction) on (digit canvas, its 8×8 block means) pairs with s drawn uniformly, prompts being
the course's captions (10 % empty). :func:`measure_upscaler` compares the pipeline's output with bicubic
interpolation of the same low-res input: PSNR against the true digit and the classifier's accuracy.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import diffusers
import torch

from diffusion_lab.bridge.standin_sd15 import CANVAS, _encode, _text_states, digit_prompts, from_canvas, to_canvas
from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.images import bicubic_upscale, downsample, psnr
from diffusion_lab.mnist.captions import attributes, fit_bins, sample_caption_batch
from diffusion_lab.mnist.classifier import classify
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.training.loop import EMA, check_config_fields, optimizer_step, warmup_cosine
from diffusion_lab.training.loss import training_target

__all__ = [
    "UPSCALER_SCALING",
    "UpscalerStandinConfig",
    "build_upscaler_standin",
    "low_res_of",
    "measure_upscaler",
    "rescale_latents",
    "train_upscaler_standin",
    "upscaler_loss",
]

UPSCALER_SCALING = 0.08333  # StableDiffusionUpscalePipeline resets any other vae.config.scaling_factor to this
FACTOR = 4


@dataclass
class UpscalerStandinConfig:
    """Sizes and fixed step counts of the x4 upscaler stand-in."""

    unet_channels: tuple[int, int] = (32, 64)
    max_noise_level: int = 350
    num_images: int = 8_000
    steps: int = 1_000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    final_lr_fraction: float = 0.5
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    caption_drop_prob: float = 0.25
    cond_drop_prob: float = 0.1
    seed: int = 0

    def __post_init__(self):
        check_config_fields(
            self, counts=("max_noise_level", "num_images", "steps", "batch_size"), indices=("warmup_steps", "seed"),
            positive=("lr", "grad_clip"), fractions=("final_lr_fraction", "caption_drop_prob", "cond_drop_prob"),
            decays=("ema_decay",),
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def low_res_of(canvases: torch.Tensor) -> torch.Tensor:
    """Canvases (B, 3, 32, 32) in [−1, 1] → their 8×8 block means (B, 3, 8, 8) in [−1, 1]."""
    return downsample(canvases, FACTOR)


@torch.no_grad()
def rescale_latents(vae: diffusers.AutoencoderKL, k: float) -> diffusers.AutoencoderKL:
    """A copy of ``vae`` whose latents are k times larger and decode to the same images: the rows of ``quant_conv``
    that give the posterior mean × k (log-variance + 2 log k), the input columns of ``post_quant_conv`` ÷ k."""
    vae = copy.deepcopy(vae)
    c = vae.config.latent_channels
    q, p = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] *= k
    q.bias[:c] *= k
    q.bias[c:] += 2 * math.log(k)
    p.weight /= k
    return vae


def build_upscaler_standin(
    base: diffusers.StableDiffusionPipeline, config: UpscalerStandinConfig | None = None
) -> diffusers.StableDiffusionUpscalePipeline:
    """The untrained upscaler: ``base``'s autoencoder (rescaled to unit-variance latents at s_vae = 0.08333) and text
    encoder, a new 7-channel UNet with the noise level as class label, the DDPM ``low_res_scheduler`` and a
    v-prediction DDIM with SD's schedule, ``max_noise_level`` as configured."""
    cfg = config or UpscalerStandinConfig()
    vae = rescale_latents(base.vae, base.vae.config.scaling_factor / UPSCALER_SCALING)
    vae.register_to_config(scaling_factor=UPSCALER_SCALING)
    c0, c1 = cfg.unet_channels
    torch.manual_seed(cfg.seed + 5)
    unet = diffusers.UNet2DConditionModel(
        sample_size=CANVAS // FACTOR, in_channels=7, out_channels=4, block_out_channels=(c0, c1), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=base.text_encoder.config.hidden_size, attention_head_dim=8, norm_num_groups=min(32, c0),
        num_class_embeds=cfg.max_noise_level + 1,
    ).eval()  # fmt: skip
    low_res = dict(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000)
    sd_schedule = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
    pipe = diffusers.StableDiffusionUpscalePipeline(
        vae=vae.eval(), text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        low_res_scheduler=diffusers.DDPMScheduler(**low_res, clip_sample=False),
        scheduler=diffusers.DDIMScheduler(
            **sd_schedule, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        max_noise_level=cfg.max_noise_level,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscaler_loss(
    pipe: diffusers.StableDiffusionUpscalePipeline,
    z0: torch.Tensor,
    low_res: torch.Tensor,
    states: torch.Tensor,
    generator: torch.Generator,
    max_noise_level: int,
) -> torch.Tensor:
    """One batch of the upscaler's loss: s ~ U{0 … max}, c̃ = low_res_scheduler.add_noise(c_lr, ε', s), t ~ U{0 …
    T − 1}, z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, and ‖v − UNet(z_t ⊕ c̃, t, c, class = s)‖². z0 (B, 4, 8, 8), low_res
    (B, 3, 8, 8) in [−1, 1], states (B, L, D)."""
    b = len(z0)
    s = torch.randint(0, max_noise_level + 1, (b,), generator=generator)
    noisy_low = pipe.low_res_scheduler.add_noise(low_res, torch.randn(low_res.shape, generator=generator), s)
    ab = pipe.scheduler.alphas_cumprod.float()
    t = torch.randint(0, len(ab), (b,), generator=generator)
    noise = torch.randn(z0.shape, generator=generator)
    z_t = q_sample(z0, t, noise, ab)
    out = pipe.unet(torch.cat([z_t, noisy_low], 1), t, encoder_hidden_states=states, class_labels=s).sample
    return (out - training_target("v_prediction", z0, noise, ab[t][:, None, None, None])).pow(2).mean()


def train_upscaler_standin(
    base: diffusers.StableDiffusionPipeline,
    config: UpscalerStandinConfig | None = None,
    *,
    images=None,
    labels=None,
    progress: bool = False,
) -> tuple[diffusers.StableDiffusionUpscalePipeline, dict]:
    """Train :func:`build_upscaler_standin`'s UNet (``steps`` AdamW steps, EMA) on MNIST canvases; the autoencoder
    and text encoder stay frozen. Returns the pipeline and ``info`` (seconds, steps, losses, parameters)."""
    cfg = config or UpscalerStandinConfig()
    if images is None:
        images, labels = load_mnist("train", limit=cfg.num_images)
    images, labels = images[: cfg.num_images], labels[: cfg.num_images]
    pipe = build_upscaler_standin(base, cfg)
    t0 = time.perf_counter()
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    canvases = to_canvas(images)  # (N, 3, 32, 32)
    latents = _encode(pipe.vae, canvases) * UPSCALER_SCALING  # (N, 4, 8, 8)
    low = low_res_of(canvases)  # (N, 3, 8, 8)
    attrs, bins = attributes(images), fit_bins(images, labels)
    unet = pipe.unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    ema = EMA(unet, cfg.ema_decay)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    losses = []
    for step in range(cfg.steps):
        idx, captions = sample_caption_batch(
            labels, attrs, bins, cfg.batch_size, g, drop_prob=cfg.caption_drop_prob, empty_prob=cfg.cond_drop_prob
        )
        with torch.no_grad():
            states = _text_states(pipe, captions)
        loss = upscaler_loss(pipe, latents[idx], low[idx], states, g, cfg.max_noise_level)
        lr = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.final_lr_fraction)
        optimizer_step(loss, opt, unet.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, ema=ema, model=unet, step=step)
        losses.append(loss.item())
        if progress and step % 100 == 0:
            print(f"upscaler {step} loss {sum(losses[-100:]) / len(losses[-100:]):.4f}", flush=True)
    unet.load_state_dict(ema.model.state_dict())
    unet.eval().requires_grad_(False)
    info = {
        "seconds": time.perf_counter() - t0, "steps": cfg.steps, "final_loss": sum(losses[-50:]) / 50,
        "losses": losses, "bins": bins, "unet_parameters": sum(p.numel() for p in unet.parameters()),
    }  # fmt: skip
    return pipe, info


@torch.no_grad()
def measure_upscaler(
    pipe: diffusers.StableDiffusionUpscalePipeline,
    classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    noise_level: int = 20,
    seed: int = 0,
    batch_size: int = 100,
    with_prompt: bool = True,
) -> dict:
    """Upscale the 8×8 block means of ``images`` (B, 1, 28, 28) with ``pipe(prompt, image=low_res, ...)`` (prompt
    "a ⟨digit⟩" of ``labels``, or "" without ``with_prompt``) and with bicubic interpolation; mean PSNR (dB, against the true 28×28 digit, with standard errors) and
    the classifier's accuracy on each. Returns the numbers and the images ``(upscaled, bicubic, low_res)``."""
    canvases = to_canvas(images)
    low = low_res_of(canvases)  # (B, 3, 8, 8) in [−1, 1]
    out = []
    for k, start in enumerate(range(0, len(images), batch_size)):
        part = slice(start, start + batch_size)
        result = pipe(
            digit_prompts(labels[part]) if with_prompt else [""] * len(labels[part]), image=(low[part] + 1) / 2, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, noise_level=noise_level, output_type="pt",
            generator=torch.Generator().manual_seed(seed + k),
        ).images  # fmt: skip
        out.append(from_canvas(result.float().cpu()))
    upscaled = torch.cat(out)  # (B, 1, 28, 28)
    bicubic = from_canvas((bicubic_upscale(low, FACTOR) + 1) / 2)
    n = len(images)

    def scores(x: torch.Tensor) -> dict:
        p = psnr(x, images).double()
        acc = (classify(x, classifier)[0].argmax(1) == labels).double().mean().item()
        return {"psnr_db": p.mean().item(), "psnr_stderr": (p.std() / math.sqrt(n)).item(), "accuracy": acc}

    return {
        "n": n, "with_prompt": with_prompt, "noise_level": noise_level, "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale, "upscaler": scores(upscaled), "bicubic": scores(bicubic),
        "images": (upscaled, bicubic, from_canvas((torch.nn.functional.interpolate(low, scale_factor=4) + 1) / 2)),
    }  # fmt: skip
