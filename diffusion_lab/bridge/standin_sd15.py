"""SD 1.5 and its canny ControlNet as trained stand-ins: the real ``StableDiffusionPipeline`` and
``StableDiffusionControlNetPipeline`` classes at toy size, trained on MNIST with the course's captions, so that
``pipe("a thick three")`` draws a thick three and the ControlNet follows an edge map.

Notation
--------
=========================  ==========  ================================================================================
code                       symbol      meaning
=========================  ==========  ================================================================================
``CANVAS``                 H = W       32: the 28×28 digit centred on a black 32×32 RGB canvas (SD pipelines need
                                       sides that are multiples of 8)
``vae_scale_factor``       f           4 here (3 VAE levels; SD 1.5 has f = 8): latents z (B, 4, 8, 8)
``scaling_factor``         s           1/std of the VAE's posterior means on the training set (SD 1.5: 0.18215)
``alphas_cumprod``         ᾱ_t         SD 1.5's schedule: scaled_linear β from 0.00085 to 0.012, T = 1000
``prediction_type``        —           the UNet's target (``v_prediction`` by default, see below; SD 1.5: ε)
``v``                      v           √ᾱ_t·ε − √(1 − ᾱ_t)·z_0 (Salimans & Ho 2022, §4)
``control``                c_ctl       edges of the digit (B, 3, H, W) in {0, 1}: ``maths.images.edge_map`` (Sobel
                                       gradient magnitude, non-maximum suppression, threshold 0.25: Canny without
                                       hysteresis) of the 28×28 digit, padded to the canvas, 3 equal channels
``down``, ``mid``          r_i, r_mid  ControlNet residuals added to the frozen UNet's skips (Zhang et al. 2023, Eq. 2)
=========================  ==========  ================================================================================

What and why
------------
:func:`build_sd15_standin` makes an untrained ``StableDiffusionPipeline`` from the real classes: one
``CLIPTextModel`` (64 wide, 2 layers) with a word-level ``CLIPTokenizer`` built in memory
(:func:`mnist_clip_tokenizer`: every caption word is one BPE token), a 2-level ``UNet2DConditionModel`` (32/64
channels, cross-attention at the lower level and in the middle, as SD's), a 3-level ``AutoencoderKL`` (f = 4) and
SD 1.5's ``PNDMScheduler`` configuration. :func:`train_sd15_standin` trains it in three phases of fixed step counts
(autoencoder; latents of the training digits; text encoder + UNet jointly, on the course's captions with attribute
words dropped and 10 % empty captions for classifier-free guidance). :func:`build_controlnet_standin` adds
``ControlNetModel.from_unet(unet)`` (zero convolutions: at first it changes nothing) and
:func:`train_sd15_controlnet` trains only the ControlNet on edge maps, the base frozen (Eq. 4: the base's own loss).

The UNet predicts v, not ε as SD 1.5 does (SD 2.x uses the same pipeline class and scheduler with
``prediction_type="v_prediction"``): with this recipe and its 1,500 steps, ε-prediction reached digit adherence 0.785 /
0.925 / 0.96 at w = 2 / 4 / 7.5 (n = 200, PNDM-20; December 2026) where v-prediction reaches 1.000 at w = 2 and 4.
The control maps match ``family.canny_edges`` (the torch Canny, thresholds 100/200) of the canvas within one pixel
(F1 1.0 on 50 test digits), and the ControlNet follows either alike. Everything a pipeline needs comes through
``from_pretrained`` of the saved folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import diffusers
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from diffusion_lab.bridge.tiny import _byte_level_symbols, _clip_text_config
from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.images import edge_f1, edge_map
from diffusion_lab.mnist.captions import ATTRIBUTE_WORDS, DIGIT_NAMES, attributes, fit_bins, sample_caption_batch
from diffusion_lab.mnist.classifier import classify
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.training.loop import EMA, check_config_fields, optimizer_step, warmup_cosine
from diffusion_lab.training.loss import training_target
from diffusion_lab.utils.errors import check_choice, check_int

__all__ = [
    "CANVAS",
    "CAPTION_WORDS",
    "SD15_SCHEDULER_CONFIG",
    "Sd15StandinConfig",
    "build_controlnet_standin",
    "build_sd15_standin",
    "sd15_generate",
    "digit_prompts",
    "edge_control",
    "edge_f1_comparison",
    "from_canvas",
    "generate_digits",
    "mnist_clip_tokenizer",
    "denoising_loss",
    "measure_adherence",
    "to_canvas",
    "train_sd15_controlnet",
    "train_sd15_standin",
    "vae_loss",
]

CANVAS = 32  # pixels; the 28×28 digit sits at rows/columns 2..29
_PAD = (CANVAS - 28) // 2
SD15_SCHEDULER_CONFIG = {  # scheduler_config.json of stable-diffusion-v1-5 (PNDM, PLMS steps), prediction type aside
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,  # a DDIM-only key: from_config keeps it, so a DDIM built from this config matches SD's
}
CAPTION_WORDS = ("a", "an", "digit", *DIGIT_NAMES, *(w for pair in ATTRIBUTE_WORDS.values() for w in pair))


def mnist_clip_tokenizer(model_max_length: int = 16) -> transformers.CLIPTokenizer:
    """A ``CLIPTokenizer`` built in memory whose BPE merges spell each caption word as one token ("thick</w>"),
    other text falling back to CLIP's byte-level characters; then ``<|startoftext|>`` and ``<|endoftext|>`` (the
    highest id, as in CLIP). Merges are chains ("t h" → "th", "th r" → "thr", …) ranked longest word first, so no
    shorter word's merge splits a longer one (checked here: every caption word is a single token)."""
    model_max_length = check_int("model_max_length", model_max_length, minimum=4)
    symbols = _byte_level_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    known, merges = set(tokens), []
    for word in sorted(CAPTION_WORDS, key=len, reverse=True):
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            if (current, part) not in merges:
                merges.append((current, part))
            current += part
            if current not in known:
                known.add(current)
                tokens.append(current)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tok = transformers.CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=model_max_length
    )
    split = [w for w in CAPTION_WORDS if len(tok.tokenize(w)) != 1]
    if split:  # a merge order that splits a word would silently weaken the text encoder
        raise RuntimeError(f"the MNIST CLIP tokenizer splits {split}")
    return tok


@dataclass
class Sd15StandinConfig:
    """Sizes and the fixed step counts of the SD 1.5 stand-in and its ControlNet (never seconds)."""

    # sizes
    text_hidden: int = 64
    text_layers: int = 2
    max_length: int = 16  # tokens: the longest caption, "a small thick slanted seven", is 7
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int] = (16, 32, 32)
    # data
    num_images: int = 8_000  # the first N MNIST training images
    # phase 1: the autoencoder
    vae_steps: int = 300
    vae_batch_size: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    # phase 3: text encoder + UNet
    steps: int = 1_500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    final_lr_fraction: float = 0.5
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    caption_drop_prob: float = 0.25  # each attribute word dropped, so "a seven" and "a thick seven" are both seen
    cond_drop_prob: float = 0.1  # whole caption → "" (classifier-free guidance's unconditional branch)
    token_embedding_std: float = 1.0  # word embeddings N(0, 1): distinct prompts from the first step
    prediction_type: str = "v_prediction"
    # the ControlNet (base frozen)
    controlnet_steps: int = 800
    controlnet_batch_size: int = 32
    controlnet_lr: float = 2e-3
    controlnet_final_lr_fraction: float = 0.1
    empty_prompt_prob: float = 0.5  # Zhang et al. §3.3: half the prompts empty, so the map itself is read
    edge_threshold: float = 0.25
    seed: int = 0

    def __post_init__(self):
        check_choice("prediction_type", self.prediction_type, ("epsilon", "v_prediction"))
        check_config_fields(
            self,
            counts=("text_hidden", "text_layers", "max_length", "num_images", "vae_steps", "vae_batch_size",
                    "steps", "batch_size", "controlnet_steps", "controlnet_batch_size"),
            indices=("warmup_steps", "seed"),
            positive=("vae_lr", "lr", "controlnet_lr", "grad_clip"),
            non_negative=("kl_weight", "token_embedding_std"),
            fractions=("final_lr_fraction", "caption_drop_prob", "cond_drop_prob", "controlnet_final_lr_fraction",
                       "empty_prompt_prob"),
            decays=("ema_decay",),
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- data, pure
def to_canvas(images: torch.Tensor) -> torch.Tensor:
    """MNIST digits (B, 1, 28, 28) in [−1, 1] → RGB canvases (B, 3, 32, 32) in [−1, 1], black border of 2 pixels."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must be (B, 1, 28, 28) in [-1, 1], got shape {tuple(images.shape)}")
    return F.pad(images, (_PAD,) * 4, value=-1.0).expand(-1, 3, -1, -1).contiguous()  # (B, 3, 32, 32)


def from_canvas(images: torch.Tensor) -> torch.Tensor:
    """A pipeline's ``output_type="pt"`` images (B, 3, 32, 32) in [0, 1] → grey digits (B, 1, 28, 28) in [−1, 1]
    for the classifier and the edge maps: the centre 28×28, mean of the channels, x ↦ 2x − 1."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, CANVAS, CANVAS):
        raise ValueError(f"images must be (B, 3, {CANVAS}, {CANVAS}) in [0, 1], got shape {tuple(images.shape)}")
    crop = images[:, :, _PAD : _PAD + 28, _PAD : _PAD + 28].float().mean(1, keepdim=True)  # (B, 1, 28, 28)
    return (crop * 2 - 1).clamp(-1, 1)


def edge_control(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """The canny-like control map of digits (B, 1, 28, 28) in [−1, 1]: ``edge_map`` (gradient magnitude, thinned,
    thresholded), padded to the canvas with 0, repeated on 3 channels → (B, 3, 32, 32) in {0, 1}."""
    edges = edge_map(images, threshold)  # (B, 1, 28, 28)
    return F.pad(edges, (_PAD,) * 4).expand(-1, 3, -1, -1).contiguous()


def digit_prompts(labels: torch.Tensor | list[int]) -> list[str]:
    """ "a zero", "a one", …, "an eight": the shortest caption of each digit."""
    return [("an " if DIGIT_NAMES[int(d)][0] in "ae" else "a ") + DIGIT_NAMES[int(d)] for d in labels]


def vae_loss(vae: diffusers.AutoencoderKL, x: torch.Tensor, kl_weight: float, generator: torch.Generator):
    """The autoencoder's loss on canvases x (B, 3, H, W): mean squared reconstruction error of a posterior sample
    plus ``kl_weight`` × KL(q(z|x) ‖ N(0, I)) per latent number. Returns (loss, reconstruction error)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)  # (B, 4, h, w)
    recon = (vae.decode(z).sample - x).pow(2).mean()
    kl = posterior.kl().sum() / posterior.mean.numel()
    return recon + kl_weight * kl, recon


def denoising_loss(
    unet: diffusers.UNet2DConditionModel,
    z0: torch.Tensor,
    states: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    controlnet: diffusers.ControlNetModel | None = None,
    control: torch.Tensor | None = None,
) -> torch.Tensor:
    """E‖target − UNet(z_t, t, c)‖² with z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (DDPM Eq. 4) and the target of
    ``prediction_type``; with a ``controlnet`` its residuals for ``control`` (B, 3, H, W) are added to the UNet's
    skips and middle block (ControlNet Eq. 2 and 4). z0, noise (B, 4, h, w); states (B, L, D); t (B,)."""
    z_t = q_sample(z0, t, noise, alphas_cumprod)
    extra = {}
    if controlnet is not None:
        down, mid = controlnet(z_t, t, encoder_hidden_states=states, controlnet_cond=control, return_dict=False)
        extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    out = unet(z_t, t, encoder_hidden_states=states, **extra).sample  # (B, 4, h, w)
    target = training_target(prediction_type, z0, noise, alphas_cumprod[t][:, None, None, None])
    return (out - target).pow(2).mean()


# ---------------------------------------------------------------------------------------------------- builders
def _seeded(seed: int, build) -> nn.Module:
    torch.manual_seed(seed)
    return build()


def build_sd15_standin(config: Sd15StandinConfig | None = None) -> diffusers.StableDiffusionPipeline:
    """The untrained stand-in: the real SD 1.5 classes at toy size (see the module docstring), seeded."""
    cfg = config or Sd15StandinConfig()
    tok = mnist_clip_tokenizer(cfg.max_length)
    text_config = _clip_text_config(tok, cfg.text_hidden, cfg.text_layers, cfg.text_hidden)
    text_encoder = _seeded(cfg.seed, lambda: transformers.CLIPTextModel(text_config))
    if cfg.token_embedding_std:
        nn.init.normal_(text_encoder.get_input_embeddings().weight, std=cfg.token_embedding_std)
    c0, c1 = cfg.unet_channels
    unet = _seeded(
        cfg.seed + 1,
        lambda: diffusers.UNet2DConditionModel(
            sample_size=CANVAS // 4, in_channels=4, out_channels=4, block_out_channels=(c0, c1), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=cfg.text_hidden, attention_head_dim=8, norm_num_groups=min(32, c0),
        ),
    )  # fmt: skip
    vae = _seeded(
        cfg.seed + 2,
        lambda: diffusers.AutoencoderKL(
            block_out_channels=list(cfg.vae_channels), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
            layers_per_block=1, norm_num_groups=8, sample_size=CANVAS, mid_block_add_attention=False,
            scaling_factor=0.18215,
        ),
    )  # fmt: skip
    scheduler = diffusers.PNDMScheduler.from_config({**SD15_SCHEDULER_CONFIG, "prediction_type": cfg.prediction_type})
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tok, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_controlnet_standin(
    base: diffusers.StableDiffusionPipeline, seed: int = 0
) -> diffusers.StableDiffusionControlNetPipeline:
    """``StableDiffusionControlNetPipeline`` sharing ``base``'s components plus ``ControlNetModel.from_unet`` (the
    encoder half and middle block copied, zero convolutions, and a hint network with two stride-2 convolutions:
    32 → 8 = f). Untrained it is the base model exactly (every residual is 0)."""
    torch.manual_seed(seed)
    controlnet = diffusers.ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(16, 16, 32))
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        controlnet=controlnet.eval(), scheduler=diffusers.PNDMScheduler.from_config(base.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _text_states(pipe, captions: list[str]) -> torch.Tensor:
    """What the pipeline's ``encode_prompt`` computes: ids padded to ``model_max_length``, last hidden state."""
    ids = pipe.tokenizer(
        captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    return pipe.text_encoder(ids)[0]  # (B, L, D)


def _training_data(cfg: Sd15StandinConfig, images, labels):
    if images is None:
        images, labels = load_mnist("train", limit=cfg.num_images)
    if labels is None or len(labels) != len(images):
        raise ValueError("pass labels (N,) with images (N, 1, 28, 28)")
    return images[: cfg.num_images], labels[: cfg.num_images]


@torch.no_grad()
def _encode(vae: diffusers.AutoencoderKL, canvases: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([vae.encode(canvases[i : i + batch]).latent_dist.mode() for i in range(0, len(canvases), batch)])


# ---------------------------------------------------------------------------------------------------- training
def train_sd15_standin(
    config: Sd15StandinConfig | None = None, *, images=None, labels=None, progress: bool = False
) -> tuple[diffusers.StableDiffusionPipeline, dict]:
    """Train :func:`build_sd15_standin` on MNIST in fixed step counts: (1) the autoencoder ``vae_steps`` steps
    (:func:`vae_loss`); (2) latents s·μ of the training canvases, s = 1/std, and the caption bins; (3) text encoder +
    UNet jointly ``steps`` steps (:func:`denoising_loss`, fresh captions each step, EMA of both). Returns the pipeline
    (EMA weights, eval mode) and ``info`` (seconds and steps per phase, losses, caption ``bins``, parameter counts)."""
    cfg = config or Sd15StandinConfig()
    images, labels = _training_data(cfg, images, labels)
    pipe = build_sd15_standin(cfg)
    info: dict = {}
    g = torch.Generator().manual_seed(cfg.seed)
    canvases = to_canvas(images)  # (N, 3, 32, 32)

    t0 = time.perf_counter()  # 1. the autoencoder
    vae = pipe.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    recon = []
    for step in range(cfg.vae_steps):
        x = canvases[torch.randint(0, len(canvases), (cfg.vae_batch_size,), generator=g)]
        loss, r = vae_loss(vae, x, cfg.kl_weight, g)
        lr = warmup_cosine(step, cfg.vae_steps, cfg.warmup_steps, cfg.vae_lr, 0.1)
        optimizer_step(loss, opt, vae.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, step=step)
        recon.append(r.item())
        if progress and step % 50 == 0:
            print(f"vae {step} recon {r.item():.4f}", flush=True)
    vae.eval().requires_grad_(False)
    info.update(vae_seconds=time.perf_counter() - t0, vae_steps=cfg.vae_steps, vae_recon=sum(recon[-20:]) / 20)

    t0 = time.perf_counter()  # 2. latents and caption bins
    means = _encode(vae, canvases)  # (N, 4, 8, 8)
    s = 1.0 / means.double().std().item()
    vae.register_to_config(scaling_factor=s)
    latents = means * s
    attrs, bins = attributes(images), fit_bins(images, labels)
    info.update(encode_seconds=time.perf_counter() - t0, scaling_factor=s)

    t0 = time.perf_counter()  # 3. text encoder + UNet
    both = nn.ModuleDict({"text_encoder": pipe.text_encoder, "unet": pipe.unet}).train()
    opt = torch.optim.AdamW(both.parameters(), lr=cfg.lr)
    ema = EMA(both, cfg.ema_decay)
    ab = pipe.scheduler.alphas_cumprod.float()  # (T,)
    losses = []
    for step in range(cfg.steps):
        idx, captions = sample_caption_batch(
            labels, attrs, bins, cfg.batch_size, g, drop_prob=cfg.caption_drop_prob, empty_prob=cfg.cond_drop_prob
        )
        t = torch.randint(0, len(ab), (cfg.batch_size,), generator=g)
        noise = torch.randn(latents[idx].shape, generator=g)
        loss = denoising_loss(pipe.unet, latents[idx], _text_states(pipe, captions), t, noise, ab, cfg.prediction_type)
        lr = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.final_lr_fraction)
        optimizer_step(loss, opt, both.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, ema=ema, model=both, step=step)
        losses.append(loss.item())
        if progress and step % 100 == 0:
            print(f"unet {step} loss {sum(losses[-100:]) / len(losses[-100:]):.4f}", flush=True)
    pipe.text_encoder.load_state_dict(ema.model["text_encoder"].state_dict())
    pipe.unet.load_state_dict(ema.model["unet"].state_dict())
    for module in (pipe.text_encoder, pipe.unet):
        module.eval().requires_grad_(False)
    info.update(
        denoiser_seconds=time.perf_counter() - t0, denoiser_steps=cfg.steps, final_loss=sum(losses[-50:]) / 50,
        losses=losses, bins=bins, parameters=_parameters(pipe),
    )  # fmt: skip
    return pipe, info


def train_sd15_controlnet(
    base: diffusers.StableDiffusionPipeline,
    config: Sd15StandinConfig | None = None,
    *,
    images=None,
    labels=None,
    bins=None,
    progress: bool = False,
) -> tuple[diffusers.StableDiffusionControlNetPipeline, dict]:
    """Train a ControlNet (:func:`build_controlnet_standin`) on edge maps of MNIST digits, ``base`` frozen and
    unchanged: ``controlnet_steps`` AdamW steps on :func:`denoising_loss` with the residuals, captions as the base
    was trained with, half of them empty (§3.3). Returns the ControlNet pipeline and ``info``."""
    cfg = config or Sd15StandinConfig()
    images, labels = _training_data(cfg, images, labels)
    for module in (base.vae, base.text_encoder, base.unet):
        module.eval().requires_grad_(False)
    t0 = time.perf_counter()
    latents = _encode(base.vae, to_canvas(images)) * base.vae.config.scaling_factor  # (N, 4, 8, 8)
    controls = edge_control(images, cfg.edge_threshold)  # (N, 3, 32, 32)
    attrs = attributes(images)
    bins = bins if bins is not None else fit_bins(images, labels)
    pipe = build_controlnet_standin(base, cfg.seed)
    controlnet = pipe.controlnet.train().requires_grad_(True)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=cfg.controlnet_lr)
    ab = base.scheduler.alphas_cumprod.float()
    g = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    n_steps, batch = cfg.controlnet_steps, cfg.controlnet_batch_size
    for step in range(n_steps):
        idx, captions = sample_caption_batch(
            labels, attrs, bins, batch, g, drop_prob=cfg.caption_drop_prob, empty_prob=cfg.empty_prompt_prob
        )
        with torch.no_grad():
            states = _text_states(base, captions)
        t = torch.randint(0, len(ab), (batch,), generator=g)
        noise = torch.randn(latents[idx].shape, generator=g)
        loss = denoising_loss(
            base.unet, latents[idx], states, t, noise, ab, cfg.prediction_type, controlnet, controls[idx]
        )
        lr = warmup_cosine(step, n_steps, cfg.warmup_steps, cfg.controlnet_lr, cfg.controlnet_final_lr_fraction)
        optimizer_step(loss, opt, controlnet.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, step=step)
        losses.append(loss.item())
        if progress and step % 100 == 0:
            print(f"controlnet {step} loss {sum(losses[-100:]) / len(losses[-100:]):.4f}", flush=True)
    controlnet.eval().requires_grad_(False)
    info = {
        "controlnet_seconds": time.perf_counter() - t0, "controlnet_steps": n_steps,
        "final_loss": sum(losses[-50:]) / 50, "losses": losses,
        "controlnet_parameters": sum(p.numel() for p in controlnet.parameters()),
    }  # fmt: skip
    return pipe, info


def _parameters(pipe) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, nn.Module)
    }


# ---------------------------------------------------------------------------------------------------- measuring
@torch.no_grad()
def generate_digits(
    pipe,
    prompts: list[str],
    *,
    seed: int = 0,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    control: torch.Tensor | None = None,
    controlnet_conditioning_scale: float = 1.0,
    batch_size: int = 100,
) -> torch.Tensor:
    """``pipe(prompts, ...)`` at the canvas size with ``output_type="pt"``, in batches (batch k seeded with
    ``seed + k``, so two pipelines given the same prompts start from the same noise), → grey digits
    (B, 1, 28, 28) in [−1, 1] (:func:`from_canvas`). ``control`` (B, 3, 32, 32): the ControlNet pipeline's ``image``."""
    out = []
    for k, start in enumerate(range(0, len(prompts), batch_size)):
        kwargs = dict(
            height=CANVAS, width=CANVAS, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed + k), output_type="pt",
        )  # fmt: skip
        if control is not None:
            kwargs.update(
                image=control[start : start + batch_size], controlnet_conditioning_scale=controlnet_conditioning_scale
            )
        images = pipe(prompts[start : start + batch_size], **kwargs).images  # (b, 3, 32, 32) in [0, 1]
        out.append(from_canvas(images.float().cpu()))
    return torch.cat(out)


def measure_adherence(pipe, classifier, n: int = 200, **kwargs) -> dict:
    """Digit adherence through ``pipe(...)``: n prompts "a zero" … "a nine" (n/10 each), the share the MNIST
    classifier reads as the digit asked for, with its binomial standard error."""
    n = check_int("n", n, minimum=10)
    labels = torch.arange(n) % 10
    digits = generate_digits(pipe, digit_prompts(labels), **kwargs)
    logits, _ = classify(digits, classifier)
    hits = (logits.argmax(1) == labels).double()
    a = hits.mean().item()
    return {"adherence": a, "stderr": math.sqrt(a * (1 - a) / n), "n": n, "per_digit": _per_digit(hits, labels)}


def _per_digit(hits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return [round(hits[labels == d].mean().item(), 4) for d in range(10)]


def edge_f1_comparison(
    base, controlled, images: torch.Tensor, labels: torch.Tensor, *, tolerances: tuple[int, ...] = (1, 0),
    threshold: float = 0.25, **kwargs,
) -> dict:  # fmt: skip
    """Edge F1 (:func:`maths.images.edge_f1`, at each of ``tolerances`` pixels) of generated digits against the
    control edges of ``images`` (B, 1, 28, 28): the ControlNet pipeline given those edges against the base pipeline,
    same prompts ("a ⟨digit⟩" of ``labels``) and same noise; and, for reference, another real test digit of the same
    class (the next one in ``images``; itself if it is the only one). Means with standard errors, and the paired
    difference ControlNet − base, under ``"tolerance_<k>"``; the generated images under ``"images"``."""
    target = edge_map(images, threshold)  # (B, 1, 28, 28)
    prompts = digit_prompts(labels)
    with_base = generate_digits(base, prompts, **kwargs)
    with_control = generate_digits(controlled, prompts, control=edge_control(images, threshold), **kwargs)
    n = len(images)
    other = [next((j for j in [*range(i + 1, n), *range(i)] if labels[j] == labels[i]), i) for i in range(n)]

    def stats(x: torch.Tensor) -> dict:
        return {"mean": x.mean().item(), "stderr": (x.std() / math.sqrt(n)).item()}

    out: dict = {"n": n, "images": (with_base, with_control)}
    for k in tolerances:
        f_base = edge_f1(edge_map(with_base, threshold), target, k).double()  # (B,)
        f_ctl = edge_f1(edge_map(with_control, threshold), target, k).double()
        f_real = edge_f1(target[other], target, k).double()
        out[f"tolerance_{k}"] = {
            "base": stats(f_base), "controlnet": stats(f_ctl), "difference": stats(f_ctl - f_base),
            "same_class_real_digit": stats(f_real),
        }  # fmt: skip
    return out


@torch.no_grad()
def sd15_generate(
    pipe,
    prompt: str,
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    generator: torch.Generator | None = None,
    control: torch.Tensor | None = None,
    controlnet_conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """The SD 1.5 (+ ControlNet) sampling loop written out, equal to ``pipe(prompt, height=32, width=32,
    output_type="pt", ...)`` for one prompt: CFG ε̃ = ε_∅ + w·(ε_c − ε_∅) (Ho & Salimans 2022, Eq. 6) on the
    scheduler's steps, the ControlNet's residuals (× λ) added to both branches. Returns (1, 3, 32, 32) in [0, 1]."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    states = _text_states(pipe, ["", prompt]).to(dtype)  # (2, L, D): unconditional first, as the pipeline
    h = CANVAS // pipe.vae_scale_factor
    latents = torch.randn((1, pipe.unet.config.in_channels, h, h), generator=generator, dtype=dtype).to(device)
    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * pipe.scheduler.init_noise_sigma  # (1, 4, h, w)
    if control is not None:
        control = torch.cat([control, control]).to(device, dtype)  # (2, 3, H, W): both CFG branches
    for t in pipe.scheduler.timesteps:
        z = pipe.scheduler.scale_model_input(torch.cat([latents, latents]), t)  # (2, 4, h, w)
        extra = {}
        if control is not None:
            down, mid = pipe.controlnet(
                z, t, encoder_hidden_states=states, controlnet_cond=control,
                conditioning_scale=controlnet_conditioning_scale, return_dict=False,
            )  # fmt: skip
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        uncond, cond = pipe.unet(z, t, encoder_hidden_states=states, **extra).sample.chunk(2)
        latents = pipe.scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample  # (1, 3, H, W) in [−1, 1]
    return (images.float() / 2 + 0.5).clamp(0, 1)
