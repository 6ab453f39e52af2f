"""SDXL base and refiner stand-ins of the real diffusers classes, trained on MNIST, with micro-conditioning that
means something on MNIST (the SDXL paper, Podell et al. 2023, §2.2 and §2.5).

The *real* ``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` with small components: two CLIP text
encoders (``CLIPTextModel`` + ``CLIPTextModelWithProjection``; the penultimate hidden states side by side, the pooled
vector from the second), a ``UNet2DConditionModel`` with SDXL's ``text_time`` added embedding, an ``AutoencoderKL``
(f = 4) trained first on the canvases, SDXL's Euler scheduler config (ε-prediction, scaled-linear β). The refiner
shares the base's VAE and second text encoder (as the real one does) and has its own UNet, trained on t < 200 only,
with an *aesthetic score* instead of the target size in its 5 time ids.

Notation
--------
======================  ============  ================================================================================
code                    symbol        meaning (paper)
======================  ============  ================================================================================
``canvas``              H = W         the generated image side, 32 px (MNIST's 28² with its 2-px border, as the digit)
``original``            c_size        the source's side before it was resized to the canvas (SDXL §2.2, Eq. for
                                      c_size = (h_orig, w_orig)): the digit is area-downsampled to s × s, then
                                      bilinearly upsampled back, so a small s means a blurred digit
``crop``                c_crop        (c_top, c_left): the top-left corner of the random H × W crop out of the
                                      (H + m) × (H + m) frame that holds the digit's canvas in its top-left corner;
                                      the digit moves by −c_crop pixels, and c_crop = (0, 0) is the centred digit
``time_ids``            —             base: (c_size, c_crop, target) = 6 numbers; refiner: (c_size, c_crop, a) = 5
``score``               a             aesthetic score = 10 × solid-ink fraction (:func:`sharpness`) of the training
                                      canvas; the pipeline's defaults a = 6 (conditional) and 2.5 (unconditional)
``z``                   z_0           VAE latents × ``scaling_factor`` (1 / their std), (B, 4, 8, 8)
``alphas_cumprod``      ᾱ_t           SDXL's scaled-linear schedule, T = 1000
``eps``                 ε             ε-prediction: L = ‖ε − ε_θ(√ᾱ_t z_0 + √(1 − ᾱ_t) ε, t, c, time_ids)‖²
======================  ============  ================================================================================

Why these choices: the caption dropout uses what the pipelines feed for the unconditional branch: the base pipeline
(``force_zeros_for_empty_prompt=True``, no negative prompt) feeds *zeros* for both the token states and the pooled
vector, so dropped captions are zeros here; the refiner (``force_zeros_for_empty_prompt=False``) encodes ``""``, so
its dropped captions are ``""``. Both pipelines give the unconditional branch the *same* size and crop ids as the
conditional one (the refiner a = 2.5), so the training samples keep their own ids when their caption is dropped.
Half of the training canvases are at native resolution (c_size = 32) and half uncropped (c_crop = (0, 0)), as in
SDXL's data most images need no upscaling and no crop; the rest are spread over s ∈ [8, 31] and c ∈ [0, 8]².
The loss is the ε-loss weighted by min(1/ᾱ_t, 5) (1/ᾱ_t would be the v-loss; the network still predicts ε, as SDXL),
to push the high-noise steps where the digit is decided: a first run with the plain ε-loss (600 steps, 10,000 images,
300 VAE steps) drew the prompted digit in 0.70 of 50 samples at w = 5, the shipped run (weighted, 1,800 steps) in 1.00
of 200 — not an A/B at equal steps. The text encoders stay frozen at their seeded initialisation (SDXL froze its CLIP
encoders). The tokenizer knows the captions' words as whole tokens (BPE merges built in memory), so per-word attention
maps have one column per word. The measurements (adherence, crop shift, blur, refiner) are in
:mod:`diffusion_lab.bridge.standin_sdxl_eval`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import diffusers
import torch
import torch.nn.functional as F
import transformers

from diffusion_lab.bridge.tiny import SDXL_SCHEDULER_CONFIG, _byte_level_symbols, _clip_text_config, refiner_pipeline
from diffusion_lab.mnist.captions import ATTRIBUTE_WORDS, DIGIT_NAMES, attributes, captions_for, fit_bins
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.utils.errors import check_int, check_number, check_tensor

__all__ = [
    "CAPTION_WORDS",
    "SDXLStandinConfig",
    "standin_tokenizer",
    "build_sdxl_standin",
    "build_sdxl_refiner_standin",
    "render_canvases",
    "sample_micro_conditions",
    "sharpness",
    "aesthetic_score",
    "base_time_ids",
    "refiner_time_ids",
    "epsilon_loss",
    "train_canvas_vae",
    "train_sdxl_standin",
]

CAPTION_WORDS = ("a", "an", "digit", *DIGIT_NAMES, *(w for pair in ATTRIBUTE_WORDS.values() for w in pair))
INK, SOLID = 0.1, 0.9  # brightness (x + 1)/2 above INK is visible, above SOLID is solid ink (sharpness)


@dataclass
class SDXLStandinConfig:
    """Everything :func:`train_sdxl_standin` does, as fixed step counts (never seconds). The defaults are the
    shipped stand-ins' recipe (``python data/train_sdxl_standin.py``; its figures in their ``recipe.json``)."""

    canvas: int = 32  # H = W of the generated image
    margin: int = 8  # crop range: c_top, c_left ∈ [0, margin]
    min_original: int = 8  # smallest source side s (c_size)
    p_native: float = 0.5  # share of canvases at native resolution (s = canvas)
    p_uncropped: float = 0.5  # share with c_crop = (0, 0)
    num_images: int = 20_000  # first N MNIST training images (each rendered once, with its own s and crop)
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    base_steps: int = 1_800
    refiner_steps: int = 500
    batch: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    caption_drop_prob: float = 0.25  # each attribute word dropped (short prompts: "a three")
    cond_drop_prob: float = 0.1  # whole caption dropped (classifier-free guidance)
    refiner_t_max: int = 200  # the refiner trains on t < 200: the last 20 % of the noise levels
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    max_loss_weight: float = 5.0  # ε-loss weight min(1/ᾱ_t, this): 1 = plain ε-loss (epsilon_loss)
    train_text_encoders: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("canvas", "min_original", "num_images", "vae_steps", "vae_batch", "base_steps", "batch"):
            check_int(name, getattr(self, name))
        for name in ("refiner_steps", "margin", "warmup_steps", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("p_native", "p_uncropped", "caption_drop_prob", "cond_drop_prob", "final_lr_fraction"):
            check_number(name, getattr(self, name), minimum=0.0, maximum=1.0)
        if self.canvas % 8:
            raise ValueError(f"canvas must be a multiple of 8 (the SDXL pipeline checks it), got {self.canvas}")
        if not 1 <= self.min_original <= self.canvas:
            raise ValueError(f"min_original must be in 1..canvas={self.canvas}, got {self.min_original}")
        if not 1 <= self.refiner_t_max <= 1000:
            raise ValueError(f"refiner_t_max must be in 1..1000, got {self.refiner_t_max}")


# --- the components -------------------------------------------------------------------------------------------------


def standin_tokenizer(words: Sequence[str] = CAPTION_WORDS) -> transformers.CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer built in memory: every byte symbol and its end-of-word form (any text
    tokenizes), plus merges that make each of ``words`` one token ("a thick three" → 3 tokens + start/end)."""
    symbols = _byte_level_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], merges)  # what the merges so far make of it
        left = pieces[0]
        for right in pieces[1:]:  # new merges rank after all earlier ones: earlier words keep their tokens
            merges.append((left, right))
            left += right
            if left not in tokens:
                tokens.append(left)
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # end-of-text has the highest id (CLIP pools there)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word: merge the adjacent pair of lowest rank until none is a merge."""
    rank = {m: i for i, m in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(rank.get(p, len(rank)), i) for i, p in enumerate(zip(pieces, pieces[1:], strict=False))]
        best, i = min(pairs)
        if best == len(rank):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def _text_encoder(tokenizer, hidden: int, projection: bool, seed: int, std: float = 1.0):
    torch.manual_seed(seed)
    config = _clip_text_config(tokenizer, hidden, 2, hidden)
    model = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)
    model.get_input_embeddings().weight.data.normal_(0.0, std)  # N(0, 1) words: the text path learns fast
    return model.eval()


def _unet(n_time_ids: int, cross_attention_dim: int, pooled_dim: int, seed: int) -> diffusers.UNet2DConditionModel:
    """SDXL's UNet at toy width on 8 × 8 latents: its two lower levels (cross-attention at both, as SDXL's 64² and
    32² levels), ``text_time`` added embedding of n time ids (16 sinusoidal features each) and the pooled text."""
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 48),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=(2, 3),  # diffusers' name for the number of heads: 16 channels per head
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=16,
        projection_class_embeddings_input_dim=n_time_ids * 16 + pooled_dim,
    ).eval()


def _vae(seed: int) -> diffusers.AutoencoderKL:
    """Three levels (f = 4: 32² pixels → 8² × 4 latents; the real SDXL VAE has f = 8, ``bridge.is_tiny``)."""
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        mid_block_add_attention=False,
        latent_channels=4,
        sample_size=32,
        scaling_factor=1.0,  # set to 1 / std of the latents after training
        force_upcast=True,
    ).eval()


def build_sdxl_standin(seed: int = 0) -> diffusers.StableDiffusionXLPipeline:
    """The untrained base: the real pipeline class and components (sizes in the module docstring)."""
    tok = standin_tokenizer()
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_vae(seed + 3),
        text_encoder=_text_encoder(tok, 32, False, seed),
        text_encoder_2=_text_encoder(tok, 32, True, seed + 1),
        tokenizer=tok,
        tokenizer_2=standin_tokenizer(),
        unet=_unet(6, 64, 32, seed + 2),
        scheduler=diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sdxl_refiner_standin(
    base: diffusers.StableDiffusionXLPipeline, seed: int = 10
) -> diffusers.StableDiffusionXLImg2ImgPipeline:
    """The untrained refiner: its own UNet (5 time ids, cross-attention on the second encoder only), the base's
    VAE and second text encoder shared, as the real refiner."""
    text_encoder_2 = base.text_encoder_2.config
    return refiner_pipeline(base, _unet(5, text_encoder_2.hidden_size, text_encoder_2.projection_dim, seed))


# --- the data: micro-conditioning that means something on MNIST ------------------------------------------------------


def sample_micro_conditions(
    n: int, cfg: SDXLStandinConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(original (n,) sides s, crop (n, 2) = (c_top, c_left)): with probability ``p_native`` s = canvas, else uniform
    in [min_original, canvas − 1]; with probability ``p_uncropped`` the crop is (0, 0), else uniform in [0, margin]²."""
    s = torch.randint(cfg.min_original, cfg.canvas, (n,), generator=generator)
    s = torch.where(torch.rand(n, generator=generator) < cfg.p_native, cfg.canvas, s)
    crop = torch.randint(0, cfg.margin + 1, (n, 2), generator=generator)
    crop = torch.where(torch.rand(n, 1, generator=generator) < cfg.p_uncropped, 0, crop)
    return s, crop


def render_canvases(digits: torch.Tensor, original: torch.Tensor, crop: torch.Tensor, canvas: int = 32) -> torch.Tensor:
    """What SDXL's data pipeline does to an image, on MNIST: digits (B, 1, 28, 28) in [−1, 1] → canvases
    (B, 1, canvas, canvas).

    1. The digit on its canvas (MNIST's 28² padded to ``canvas`` with black): the source at native resolution.
    2. c_size: the source as it was *before resizing*: area-downsampled to s × s, then bilinearly upsampled back to
       the canvas (a small s is an upscaled small image: blurred).
    3. c_crop: the canvas sits in the top-left corner of a larger black frame, and the H × W window at (c_top, c_left)
       is kept: the digit moves up by c_top and left by c_left pixels (and is cut where it leaves the window).
    """
    check_tensor("digits", digits, "(B, 1, 28, 28) in [-1, 1]")
    if digits.ndim != 4 or digits.shape[1] != 1:
        raise ValueError(f"digits must have shape (B, 1, H, W), got {tuple(digits.shape)}")
    b, _, h, w = digits.shape
    if h > canvas or w > canvas:
        raise ValueError(f"digits ({h}×{w}) must fit the canvas ({canvas}²)")
    original, crop = torch.as_tensor(original).long().reshape(b), torch.as_tensor(crop).long().reshape(b, 2)
    top, left = (canvas - h) // 2, (canvas - w) // 2
    x = F.pad(digits, (left, canvas - w - left, top, canvas - h - top), value=-1.0)  # (B, 1, H, W)
    out = x.clone()
    for s in original.unique().tolist():
        if not 1 <= s <= canvas:
            raise ValueError(f"original sides must be in 1..{canvas}, got {s}")
        if s == canvas:
            continue
        idx = (original == s).nonzero().squeeze(1)
        small = F.interpolate(x[idx], size=(s, s), mode="area")  # (b, 1, s, s): the small source
        out[idx] = F.interpolate(small, size=(canvas, canvas), mode="bilinear", align_corners=False)
    if (crop < 0).any():
        raise ValueError("crop coordinates must be ≥ 0")
    m = int(crop.max()) if b else 0
    frame = F.pad(out, (0, m, 0, m), value=-1.0)  # (B, 1, H + m, W + m): canvas in the top-left corner
    rows = crop[:, 0, None] + torch.arange(canvas)  # (B, H)
    cols = crop[:, 1, None] + torch.arange(canvas)  # (B, W)
    return frame[torch.arange(b)[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Solid-ink fraction: of the visible pixels (brightness (x + 1)/2 > 0.1), the share that is solid ink (> 0.9),
    (B, C, H, W) in [−1, 1] → (B,). Blur spreads ink into grey: MNIST digits at native resolution ≈ 0.6, the same
    upsampled from 8² ≈ 0.1. Colour images are averaged over channels first."""
    check_tensor("images", images, "(B, C, H, W) in [-1, 1]")
    b = (images.float().mean(1) + 1) / 2  # (B, H, W)
    visible = (b > INK).sum((1, 2)).clamp_min(1)
    return (b > SOLID).sum((1, 2)) / visible


def aesthetic_score(images: torch.Tensor) -> torch.Tensor:
    """The refiner's aesthetic score a = 10 × :func:`sharpness`, (B,) in [0, 10] (the pipeline asks for 6 and uses
    2.5 for the unconditional branch)."""
    return 10 * sharpness(images)


def base_time_ids(original: torch.Tensor, crop: torch.Tensor, canvas: int) -> torch.Tensor:
    """SDXL base's 6 time ids (c_size, c_crop, target) per sample, (B, 6) float: (s, s, c_top, c_left, H, W)."""
    s = torch.as_tensor(original).float().reshape(-1, 1)
    target = torch.full_like(s, float(canvas))
    return torch.cat([s, s, torch.as_tensor(crop).float().reshape(-1, 2), target, target], 1)


def refiner_time_ids(original: torch.Tensor, crop: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The refiner's 5 time ids (c_size, c_crop, a) per sample, (B, 5) float."""
    s = torch.as_tensor(original).float().reshape(-1, 1)
    return torch.cat([s, s, torch.as_tensor(crop).float().reshape(-1, 2), score.float().reshape(-1, 1)], 1)


# --- training ---------------------------------------------------------------------------------------------------------


def epsilon_loss(unet, z0, t, noise, alphas_cumprod, embeds, pooled, time_ids, max_weight: float = 1.0) -> torch.Tensor:
    """SDXL's objective ‖ε − ε_θ(√ᾱ_t z_0 + √(1 − ᾱ_t) ε, t)‖² (Ho et al. 2020, Eq. 14), each sample weighted by
    min(1/ᾱ_t, ``max_weight``): 1/ᾱ_t = 1 + σ_t² is the v-prediction loss written for an ε-network (‖v − v̂‖² =
    ‖ε − ε̂‖²/ᾱ_t), clipped; ``max_weight`` = 1 is the plain ε-loss. The network still predicts ε."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise  # (B, 4, h, w)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    eps = unet(zt, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
    weight = (1 / a).clamp(max=max_weight)  # (B, 1, 1, 1)
    return (weight * (eps.float() - noise) ** 2).mean()


def _lr(step: int, total: int, cfg: SDXLStandinConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * p))


def train_canvas_vae(vae: diffusers.AutoencoderKL, canvases: torch.Tensor, cfg: SDXLStandinConfig, log=print) -> dict:
    """Train the VAE on canvases (N, 1, H, W) in [−1, 1] (grey → 3 channels): Bernoulli decoder (binary cross-entropy
    on sigmoid(2·x̂), which equals (tanh x̂ + 1)/2, so the pipeline's clamp((x̂ + 1)/2) reads the same image) plus
    ``kl_weight``·KL. Then sets ``scaling_factor`` = 1 / std of the latent means. Returns the figures."""
    g = torch.Generator().manual_seed(cfg.seed + 100)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    start, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr(step, cfg.vae_steps, cfg)
        x = canvases[torch.randint(len(canvases), (cfg.vae_batch,), generator=g)].expand(-1, 3, -1, -1)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        logits = 2 * vae.decode(z).sample  # (B, 3, H, W)
        loss = F.binary_cross_entropy_with_logits(logits, (x + 1) / 2) + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        if step % 200 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(c.expand(-1, 3, -1, -1)).latent_dist.mean for c in canvases[:2000].split(500)])
    vae.register_to_config(scaling_factor=float(1 / means.std()))
    return {"vae_seconds": time.perf_counter() - start, "vae_final_loss": loss.item()}


@torch.no_grad()
def _encode(vae, canvases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the posterior for every canvas, each (N, 4, h, w), in batches."""
    means, stds = [], []
    for c in canvases.split(500):
        post = vae.encode(c.expand(-1, 3, -1, -1)).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


class _TextCache:
    """The frozen text encoders' output per caption, computed once per distinct caption (as SDXL, whose CLIP
    encoders stay frozen): (penultimate states of each encoder side by side (B, 77, ΣD), pooled (B, P))."""

    def __init__(self, tokenizer, encoders: list):
        self.tokenizer, self.encoders, self.cache = tokenizer, encoders, {}
        self.token_ids: dict[str, torch.Tensor] = {}

    def ids(self, captions: list[str]) -> torch.Tensor:
        """Token ids (B, 77), padded as the pipelines pad."""
        missing = [c for c in set(captions) if c not in self.token_ids]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            self.token_ids.update(zip(missing, ids.input_ids, strict=True))
        return torch.stack([self.token_ids[c] for c in captions])

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = sorted(c for c in set(captions) if c not in self.cache)
        if missing:
            ids = self.ids(missing)
            states, pooled = zip(*(_clip(e, ids) for e in self.encoders), strict=True)
            h = torch.cat(states, -1)  # (M, 77, ΣD)
            for i, c in enumerate(missing):
                self.cache[c] = (h[i], pooled[-1][i])  # the pooled vector of the last encoder
        h, p = zip(*(self.cache[c] for c in captions), strict=True)
        return torch.stack(h), torch.stack(p)


def _clip(encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]  # penultimate states (B, 77, D), pooled or last states


def _train_unet(
    what: str,
    unet,
    extra: list,
    batch_fn: Callable[[torch.Generator], tuple],
    steps: int,
    t_max: int,
    cfg: SDXLStandinConfig,
    log=print,
) -> dict:
    """The shared loop: AdamW with warm-up and cosine decay, EMA of every trained weight (copied in at the end)."""
    g = torch.Generator().manual_seed(cfg.seed + (1 if what == "base" else 2))
    alphas_cumprod = diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG).alphas_cumprod
    trained = torch.nn.ModuleList([unet, *extra]).train().requires_grad_(True)  # extra: text encoders trained too
    opt = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = copy.deepcopy(trained).eval().requires_grad_(False)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr(step, steps, cfg)
        z0, embeds, pooled, time_ids = batch_fn(g)
        t = torch.randint(0, t_max, (len(z0),), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        loss = epsilon_loss(unet, z0, t, noise, alphas_cumprod, embeds, pooled, time_ids, cfg.max_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA with warm-up
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in trained.parameters()], 1 - decay)
        losses.append(loss.item())
        if step % 250 == 0 or step == steps - 1:
            log(f"{what} step {step}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    trained.load_state_dict(ema.state_dict())  # the averaged weights are the ones shipped
    trained.eval().requires_grad_(False)
    return {f"{what}_seconds": time.perf_counter() - start, f"{what}_final_loss": sum(losses[-100:]) / 100}


def train_sdxl_standin(cfg: SDXLStandinConfig | None = None, log=print) -> tuple:
    """Train the base and the refiner on MNIST: (base pipeline, refiner pipeline, caption bins, figures).

    1. Render ``num_images`` canvases, each with its own c_size and c_crop (:func:`render_canvases`), captions from
       the course's attribute bins (fitted on the same digits), aesthetic scores from :func:`sharpness`.
    2. Train the VAE on them (:func:`train_canvas_vae`) and encode them once.
    3. Base UNet, t ∈ [0, 1000), dropped captions → zeros (what the pipeline feeds). The text encoders stay frozen
       at their seeded initialisation (SDXL froze its pretrained CLIP encoders); words are single tokens with
       N(0, 1) embeddings, so their features differ clearly, and the UNet's cross-attention learns to read them.
    4. Refiner UNet, t ∈ [0, ``refiner_t_max``), dropped captions → the encoding of "" (what the refiner pipeline
       feeds), the second encoder shared with the base."""
    cfg = cfg or SDXLStandinConfig()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    digits, labels = load_mnist("train", limit=cfg.num_images)
    bins = fit_bins(digits, labels)
    original, crop = sample_micro_conditions(len(digits), cfg, g)
    canvases = render_canvases(digits, original, crop, cfg.canvas)  # (N, 1, H, W)
    scores = aesthetic_score(canvases)  # (N,)
    attrs = attributes(digits)
    base = build_sdxl_standin(cfg.seed)
    refiner = build_sdxl_refiner_standin(base, cfg.seed + 10)
    figures = {"aesthetic_score_mean": scores.mean().item()}
    figures |= train_canvas_vae(base.vae, canvases, cfg, log)
    base.vae.requires_grad_(False)
    mean, std = _encode(base.vae, canvases)
    scale = base.vae.config.scaling_factor
    base_text = _TextCache(base.tokenizer, [base.text_encoder, base.text_encoder_2])
    refiner_text = _TextCache(base.tokenizer_2, [base.text_encoder_2])
    time_base = base_time_ids(original, crop, cfg.canvas)
    time_ref = refiner_time_ids(original, crop, scores)

    def pick(gen):
        idx = torch.randint(len(canvases), (cfg.batch,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale  # (B, 4, h, w)
        caps = captions_for(labels[idx], None, bins, attrs={k: v[idx] for k, v in attrs.items()}, generator=gen,
                            drop_prob=cfg.caption_drop_prob)  # fmt: skip
        keep = torch.rand(cfg.batch, generator=gen) >= cfg.cond_drop_prob  # (B,)
        return idx, z0, caps, keep

    def base_batch(gen):
        idx, z0, caps, keep = pick(gen)
        if cfg.train_text_encoders:
            ids = base_text.ids(caps)
            (h1, _), (h2, pooled) = _clip(base.text_encoder, ids), _clip(base.text_encoder_2, ids)
            embeds = torch.cat([h1, h2], -1)
        else:
            embeds, pooled = base_text(caps)  # (B, 77, 64), (B, 32)
        k = keep.float()
        return z0, embeds * k[:, None, None], pooled * k[:, None], time_base[idx]  # dropped → zeros (the pipeline's ∅)

    def refiner_batch(gen):
        idx, z0, caps, keep = pick(gen)
        embeds, pooled = refiner_text([c if k else "" for c, k in zip(caps, keep.tolist(), strict=True)])  # ∅ = ""
        return z0, embeds, pooled, time_ref[idx]

    encoders = [base.text_encoder, base.text_encoder_2] if cfg.train_text_encoders else []
    figures |= _train_unet("base", base.unet, encoders, base_batch, cfg.base_steps, 1000, cfg, log)
    refiner_text.cache.clear()  # the second encoder may have changed
    figures |= _train_unet("refiner", refiner.unet, [], refiner_batch, cfg.refiner_steps, cfg.refiner_t_max, cfg, log)
    for m in (base.vae, base.text_encoder, base.text_encoder_2, base.unet, refiner.unet):
        m.requires_grad_(False).eval()
    figures["config"] = asdict(cfg)
    return base, refiner, bins, figures
