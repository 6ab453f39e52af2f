"""Teaching a trained tiny Stable Diffusion a new concept: the shared loss, textual inversion and DreamBooth.

Notation
--------
=====================  ============  ==================================================================================
code                   symbol        meaning
=====================  ============  ==================================================================================
``images``             x             (N, 1, 28, 28) in [−1, 1]: the few examples of the new concept
``latents``            z_0           (N, L, 7, 7) = s · E(x), the autoencoder's posterior means times its scale s
``prompts``            y             one caption per example, e.g. "a <wide-three>"
``t``                  t             (B,) timesteps, uniform in 0 … T − 1 (0-based, as the schedulers)
``target``             ε or v        what the U-Net predicts (the scheduler's ``prediction_type``)
=====================  ============  ==================================================================================

All three fine-tuning methods of notebook 12 minimise the training loss of the model they start from, on new data,
and differ only in *which* parameters move:

- textual inversion (Gal et al. 2022): one new row of the text encoder's token-embedding table, everything else frozen;
- LoRA (Hu et al. 2021, :mod:`diffusion_lab.bridge.lora`): low-rank updates ΔW = (α/r)·B·A beside frozen attention weights;
- DreamBooth (Ruiz et al. 2023): the whole U-Net, with a prior-preservation term on images of the class.

The loss is the one the model was trained with (DDPM Eq. 14 with the v target of Progressive Distillation §4):
L = E_{t, ε} ‖v − v_θ(√ᾱ_t z_0 + √(1 − ᾱ_t) ε, t, y)‖²,  v = √ᾱ_t ε − √(1 − ᾱ_t) z_0.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.mnist.captions import _ink, _moments, is_placeholder
from diffusion_lab.mnist.data import from_unit_range, to_unit_range
from diffusion_lab.training.loop import optimizer_step
from diffusion_lab.training.loss import training_target
from diffusion_lab.utils.checkpoint import save_tensors_atomic
from diffusion_lab.utils.errors import FileError, check_int, check_number, check_tensor
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick
from diffusion_lab.utils.validation import check_images

__all__ = [
    "IMAGE_SUFFIXES",
    "encode_images",
    "encode_text",
    "denoising_loss",
    "load_concept_images",
    "save_concept_images",
    "aspect_ratio",
    "copy_pipeline",
    "add_placeholder_token",
    "TextualInversionResult",
    "textual_inversion",
    "save_learned_embeds",
    "load_learned_embeds",
    "DreamBoothResult",
    "dreambooth",
]


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor) -> torch.Tensor:
    """z_0 = s · μ(x): the latents (N, L, h, w) the tiny model was trained on, for images (N, 1, H, W) in [−1, 1]."""
    images = _check_examples(images)
    vae = pipe.vae
    mean = vae.encode(images.to(pipe.device)).latent_dist.mode()  # (N, L, h, w)
    return mean * vae.config.scaling_factor


def encode_text(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token states c (B, M, D), mask (B, M) and pooled c̄ (B, D) **with gradients** (the pipeline's encode_prompt
    runs under no_grad: textual inversion and DreamBooth need the gradient through the text encoder)."""
    tokens = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.max_length, return_tensors="pt")
    ids = tokens["input_ids"].to(pipe.device)  # (B, M)
    mask = tokens["attention_mask"].to(pipe.device)  # (B, M)
    out = pipe.text_encoder(ids, attention_mask=mask)
    return out.last_hidden_state, mask, out.pooler_output


def denoising_loss(
    pipe, latents: torch.Tensor, prompts: list[str], generator: torch.Generator, *, reduce: bool = True
) -> torch.Tensor:
    """The tiny model's training loss on latents z_0 (B, L, h, w) captioned by ``prompts`` (B strings).

    t ~ U{0 … T − 1}, ε ~ N(0, I) from ``generator`` (CPU), z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (DDPM Eq. 4); the target
    is ε or v = √ᾱ_t ε − √(1 − ᾱ_t) z_0 following the scheduler's ``prediction_type``. Returns the mean squared error
    (a scalar), or one value per example (B,) with ``reduce=False``.
    """
    if latents.ndim != 4 or len(prompts) != len(latents):
        raise ValueError(
            f"need latents (B, L, h, w) and one prompt per latent, got shape {tuple(latents.shape)} and "
            f"{len(prompts)} prompts"
        )
    sched = pipe.scheduler
    ab = sched.alphas_cumprod.float()  # (T,) ᾱ_t
    b = len(latents)
    t = torch.randint(0, len(ab), (b,), generator=generator)  # (B,)
    noise = torch.randn(latents.shape, generator=generator).to(latents)  # (B, L, h, w)
    z_t = q_sample(latents, t.to(latents.device), noise, ab.to(latents.device))
    c, mask, pooled = encode_text(pipe, prompts)
    kw = {"pooled_text": pooled} if pipe.unet.config.pooled_dim else {}
    out = pipe.unet(z_t, t.to(latents.device), encoder_hidden_states=c, encoder_attention_mask=mask, **kw)
    ab_t = ab.to(latents.device)[t][:, None, None, None]  # (B, 1, 1, 1)
    prediction_type = sched.config["prediction_type"]
    target = training_target(prediction_type, latents, noise, ab_t)
    per_example = (out - target).pow(2).flatten(1).mean(1)  # (B,)
    return per_example.mean() if reduce else per_example


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_concept_images(folder: str | os.PathLike, size: int = 28, *, invert: bool | None = None) -> torch.Tensor:
    """The example images of a new concept, (N, 1, size, size) in [−1, 1], sorted by file name.

    Conversions (each one warned about, so nothing happens silently): colour or alpha → grey ("L"); a square image
    of another size → resized to ``size`` (Lanczos); dark ink on a light background (mean brightness > 0.5, or
    ``invert=True``) → inverted to MNIST's light ink on black.
    Transparency (RGBA, LA, PA, P with a transparent colour): the transparent pixels become the background the ink
    stands out on — white under dark ink (then inverted like a scan), black under light ink (mean brightness of the
    opaque pixels ≤ 0.5 is dark ink; ``invert=True``/``False`` decides it instead) — so black ink on a transparent
    PNG gives the same digit as black ink on white paper. 16-bit grey ("I;16", "I") is scaled by its bit depth
    (p₈ = round(p₁₆ / 257)), as the same drawing saved with 8 bits.
    Rejected with a ValueError naming the files: a missing or empty folder, files that are not images, and images
    that are not square (crop them square first: resizing them would squash the digit).
    """

    if not isinstance(folder, str | os.PathLike):
        raise TypeError(f"folder must be a path (str or Path) to the folder of example images, got {folder!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {folder} is not a folder: pass the folder that holds the example images")
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise ValueError(f"{folder} is empty: put 3-10 example images (PNG or JPEG) of the new concept in it")
    size = check_int("size", size)
    if invert is not None and not isinstance(invert, bool):
        raise TypeError(f"invert must be True, False or None (decide from the brightness), got {invert!r}")
    images, not_images, not_square, converted, resized, inverted = [], [], [], [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                img = im.copy()
        except (UnidentifiedImageError, OSError):
            not_images.append(f.name)
            continue
        if img.width != img.height:
            not_square.append(f"{f.name} ({img.width}×{img.height})")
            continue
        if img.mode != "L":
            converted.append(f"{f.name} ({img.mode})")
            img = _to_grey(img, invert)
        if img.size != (size, size):
            resized.append(f"{f.name} ({img.width}×{img.height})")
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        x = to_unit_range(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))[None]  # (1, H, W)
        flip = invert if invert is not None else bool(x.mean() > 0)  # mean brightness > 0.5: dark ink on white
        if flip:
            inverted.append(f.name)
            x = -x
        images.append(x)
    if not_images:
        raise ValueError(
            f"{folder} holds files that are not images: {not_images}; remove them or move the images to their own folder"
        )
    if not_square:
        raise ValueError(f"images must be square (crop them first, resizing would squash the digit): {not_square}")
    for what, names in (
        ("converted to grey", converted), (f"resized to {size}×{size}", resized),
        ("inverted to light ink on black (MNIST's look; pass invert=False to keep them)", inverted),
    ):  # fmt: skip
        if names and (what[0] != "i" or invert is None):
            warnings.warn(f"{len(names)} image(s) {what}: {names}", stacklevel=2)
    return torch.stack(images)  # (N, 1, size, size)


def _to_grey(img: Image.Image, invert: bool | None) -> Image.Image:
    """One image of any mode → 8-bit grey "L": transparency composited onto the background its ink stands out on
    (white under dark ink, black under light ink), 16/32-bit grey scaled by its bit depth."""
    if img.mode.startswith("I"):  # "I;16", "I;16B", "I" (16-bit PNG / TIFF): 0..65535
        p = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(p / 257), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        alpha = np.asarray(img, dtype=np.float64)[..., 3] / 255  # (H, W) 1 = opaque
        grey = np.asarray(img.convert("RGB").convert("L"), dtype=np.float64) / 255  # (H, W) the ink's brightness
        dark_ink = invert if invert is not None else (grey * alpha).sum() <= 0.5 * alpha.sum()
        shade = 255 if dark_ink else 0
        img = Image.alpha_composite(Image.new("RGBA", img.size, (shade, shade, shade, 255)), img)
    return img.convert("L")


def save_concept_images(images: torch.Tensor, folder: str | os.PathLike, prefix: str = "example") -> list[Path]:
    """Write images (N, 1, H, W) in [−1, 1] as grey PNGs ``<prefix>-00.png`` … into ``folder`` (each atomically)."""

    check_tensor("images", images, "(N, 1, H, W) in [-1, 1]")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be a (N, 1, H, W) tensor in [-1, 1], got shape {tuple(images.shape)}")
    check_images(images, "images", channels=1)  # NaN / inf would be written as black pixels
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(from_unit_range(images[:, 0]).cpu().numpy()):  # (H, W) uint8 each
        path = folder / f"{prefix}-{i:02d}.png"
        tmp = folder / f".{path.name}.tmp"
        Image.fromarray(x, mode="L").save(tmp, format="PNG")
        os.replace(tmp, path)
        paths.append(path)
    return paths


def aspect_ratio(images: torch.Tensor) -> torch.Tensor:
    """Width over height of the ink, slant removed: √(μ₂₀μ₀₂ − μ₁₁²)/μ₀₂, (B, 1, H, W) → (B,).

    The height is √μ₀₂ (the rows' spread); the width is the spread of the columns left over once the slant's linear
    lean is regressed out, √(μ₂₀ − μ₁₁²/μ₀₂) (shearing the digit does not change it). MNIST threes: median 0.56,
    90th percentile 0.74. Not a caption attribute: the concept "wide" of notebook 12.
    """
    _, mu20, mu02, mu11 = _moments(_ink(images))
    return (mu20 * mu02 - mu11**2).clamp_min(0).sqrt() / mu02.clamp_min(1e-6)


def copy_pipeline(pipe):
    """A pipeline to fine-tune without touching ``pipe``: its own text encoder, tokenizer and denoiser (deep copies);
    the autoencoder and the scheduler are shared (fine-tuning never changes them)."""
    parts = dict(pipe.components)
    for name in ("text_encoder", "tokenizer", "unet", "transformer"):
        if name in parts:
            parts[name] = copy.deepcopy(parts[name])
    return type(pipe)(**parts)


def add_placeholder_token(pipe, token: str, initializer_word: str) -> int:
    """Add ``token`` to the tokenizer and a row to the text encoder's table, started at ``initializer_word``'s row
    (Gal et al. §4: start from a coarse description). Returns the new token id."""
    tok = pipe.tokenizer
    if not isinstance(token, str) or not is_placeholder(token):
        raise ValueError(
            f"the placeholder must look like '<my-concept>' (lower-case, in angle brackets), got {token!r}"
        )
    if token in tok.token_to_id:
        raise ValueError(
            f"{token!r} is already in the vocabulary (id {tok.token_to_id[token]}): pick a new name, or start from "
            "a fresh copy of the model (finetune.copy_pipeline) to learn it again"
        )
    if initializer_word not in tok.token_to_id:
        raise ValueError(
            f"initializer_word {initializer_word!r} is not in the vocabulary; choose one of {tok.vocab[4:]}"
        )
    tok.add_tokens([token])
    table = pipe.text_encoder.resize_token_embeddings(tok.vocab_size)
    token_id = tok.token_to_id[token]
    with torch.no_grad():
        table.weight[token_id] = table.weight[tok.token_to_id[initializer_word]]
    return token_id


@dataclass
class TextualInversionResult:
    token: str
    token_id: int
    embedding: torch.Tensor  # (D,) the learned row v*
    losses: list[float] = field(default_factory=list)


def _check_examples(images: object, what: str = "images") -> torch.Tensor:
    """User images (N, 1, H, W): TypeError if not a tensor, ValueError for a wrong shape, NaN or values outside
    [−1, 1]."""
    want = "a non-empty (N, 1, 28, 28) tensor in [-1, 1] (finetune.load_concept_images reads a folder)"
    check_tensor(what, images, want)
    if images.ndim != 4 or images.shape[1] != 1 or len(images) == 0:
        raise ValueError(f"{what} must be {want}, got shape {tuple(images.shape)}")
    return check_images(
        images, what, channels=1, value_range=(-1.0, 1.0), hints={"range": " (pixels 0..255: x = p / 127.5 - 1)"}
    )


def _check_steps(steps: object, lr: object, batch_size: object, seed: object = 0) -> tuple[int, float, int, int]:
    """(steps, lr, batch_size, seed) as Python numbers (NumPy / torch scalars accepted, bools refused)."""
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    seed = check_int("seed", seed, minimum=0)
    if not check_number("lr", lr) > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    return steps, check_number("lr", lr), batch_size, seed


def textual_inversion(
    pipe,
    images: torch.Tensor,
    token: str,
    initializer_word: str,
    templates: Sequence[str] = ("a {} three", "the {} three", "a handwritten {} three"),
    *,
    steps: int | None = None,
    lr: float = 0.05,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> TextualInversionResult:
    """Learn one embedding v* for ``token`` from a few ``images`` (N, 1, 28, 28); ``pipe`` is changed in place
    (tokenizer, text encoder's table), every weight but v* stays frozen.

    v* = argmin_v E_{x, y, t, ε} ‖target − f_θ(z_t, t, c_θ(y(v)))‖² (Gal et al. 2022, Eq. 2), y = a template with
    ``{}`` → ``token``. The whole embedding table is a leaf, but a gradient hook zeroes every row except v*'s, so
    AdamW (no weight decay) moves only v* (Adam's update is exactly 0 where every gradient was 0).
    """
    images = _check_examples(images)
    steps = pick(400, 30) if steps is None else steps
    steps, lr, batch_size, seed = _check_steps(steps, lr, batch_size, seed)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a '{{}}' where the token goes, got {list(templates)}")

    token_id = add_placeholder_token(pipe, token, initializer_word)
    encoder = pipe.text_encoder
    for module in (pipe.vae, encoder, pipe.denoiser):
        module.eval().requires_grad_(False)
    table = encoder.token_embedding.weight  # (V, D)
    table.requires_grad_(True)
    keep = torch.zeros(table.shape[0], 1, device=table.device)  # (V, 1): 1 on v*'s row only
    keep[token_id] = 1.0
    hook = table.register_hook(lambda grad: grad * keep)
    optimizer = torch.optim.AdamW([table], lr=lr, weight_decay=0.0)
    latents = encode_images(pipe, images)  # (N, L, h, w), once
    g = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for step in tqdm(range(steps), desc="textual inversion", disable=not progress, mininterval=1.0):
            idx = torch.randint(0, len(latents), (batch_size,), generator=g)  # (B,)
            which = torch.randint(0, len(templates), (batch_size,), generator=g).tolist()
            prompts = [templates[i].format(token) for i in which]
            loss = denoising_loss(pipe, latents[idx], prompts, g)
            optimizer_step(loss, optimizer, [table], step=step)
            losses.append(loss.item())
    finally:
        hook.remove()
        table.requires_grad_(False)
    return TextualInversionResult(token, token_id, table[token_id].detach().clone(), losses)


def save_learned_embeds(pipe, token: str, path: str | os.PathLike) -> Path:
    """``{token: v*}`` as one safetensors file (diffusers' ``learned_embeds.safetensors`` layout), written atomically."""
    tok = pipe.tokenizer
    if token not in tok.token_to_id:
        raise ValueError(f"{token!r} is not in the vocabulary: learn it first (finetune.textual_inversion)")
    row = pipe.text_encoder.token_embedding.weight[tok.token_to_id[token]]  # (D,)
    return save_tensors_atomic(path, {token: row})


def load_learned_embeds(pipe, path: str | os.PathLike) -> list[str]:
    """Add the tokens of a file written by :func:`save_learned_embeds` to ``pipe`` (as diffusers'
    ``pipe.load_textual_inversion``); returns the tokens. The embedding width must match the text encoder's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no learned embedding at {path}")
    try:
        embeds = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as e:  # truncated, or not a safetensors file
        raise FileError(
            f"{path} is not a readable safetensors file ({e}): save it again with finetune.save_learned_embeds "
            "(re-run the cell that wrote it), or delete it"
        ) from e
    table_width = pipe.text_encoder.config.hidden_size
    for token, row in embeds.items():
        if not torch.isfinite(row).all():
            raise FileError(f"{path}: the embedding of {token!r} holds NaN or inf values: learn it again")
        if row.shape != (table_width,):
            raise ValueError(
                f"{token!r} has an embedding of shape {tuple(row.shape)}, this text encoder needs ({table_width},)"
            )
        token_id = add_placeholder_token(pipe, token, pipe.tokenizer.vocab[4])
        with torch.no_grad():
            pipe.text_encoder.token_embedding.weight[token_id] = row.to(pipe.text_encoder.token_embedding.weight)
    return list(embeds)


@dataclass
class DreamBoothResult:
    instance_losses: list[float] = field(default_factory=list)
    prior_losses: list[float] = field(default_factory=list)


def dreambooth(
    pipe,
    images: torch.Tensor,
    instance_prompt: str = "a sks three",
    class_prompt: str = "a three",
    *,
    rare_token: str = "sks",
    class_images: torch.Tensor | None = None,
    prior_weight: float = 1.0,
    steps: int | None = None,
    lr: float = 5e-4,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> DreamBoothResult:
    """Fine-tune the whole denoiser of ``pipe`` (in place) on a subject's ``images`` (N, 1, 28, 28) captioned
    ``instance_prompt``; with ``class_images`` (M, 1, 28, 28) — the frozen model's own samples for ``class_prompt`` —
    and ``prior_weight`` λ > 0, add the prior-preservation loss (Ruiz et al. 2023, Eq. 2):

        L = E ‖target − f_θ(z_t, t, c(instance_prompt))‖² + λ·E ‖target' − f_θ(z'_t, t', c(class_prompt))‖².

    The rare token is added to the vocabulary if missing (our word vocabulary has no rare words; in SD it is an
    existing token the model barely knows, such as "sks"); its row starts at the mean of the table and stays frozen,
    as the text encoder does (DreamBooth for SD commonly trains the U-Net only). λ = 0 or no ``class_images``:
    no prior term, the failure mode the paper calls language drift ("a three" comes to mean the subject).
    """
    images = _check_examples(images)
    steps = pick(300, 20) if steps is None else steps
    steps, lr, batch_size, seed = _check_steps(steps, lr, batch_size, seed)
    if check_number("prior_weight", prior_weight) < 0:
        raise ValueError(f"prior_weight must be a number >= 0 (1.0 in the paper), got {prior_weight!r}")
    prior_weight = check_number("prior_weight", prior_weight)
    if rare_token not in instance_prompt.split():
        raise ValueError(f"instance_prompt {instance_prompt!r} must contain the rare token {rare_token!r}")
    use_prior = class_images is not None and prior_weight > 0
    if use_prior:
        class_images = _check_examples(class_images, "class_images")

    tok = pipe.tokenizer
    if rare_token not in tok.token_to_id:
        tok.add_tokens([rare_token])
        pipe.text_encoder.resize_token_embeddings(tok.vocab_size)
    for module in (pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    unet = pipe.denoiser.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    z_instance = encode_images(pipe, images)  # (N, L, h, w)
    z_class = encode_images(pipe, class_images) if use_prior else None  # (M, L, h, w)
    g = torch.Generator().manual_seed(seed)
    result = DreamBoothResult()
    for step in tqdm(range(steps), desc="DreamBooth", disable=not progress, mininterval=1.0):
        idx = torch.randint(0, len(z_instance), (batch_size,), generator=g)
        loss = denoising_loss(pipe, z_instance[idx], [instance_prompt] * batch_size, g)
        result.instance_losses.append(loss.item())
        if use_prior:
            jdx = torch.randint(0, len(z_class), (batch_size,), generator=g)
            prior = denoising_loss(pipe, z_class[jdx], [class_prompt] * batch_size, g)
            result.prior_losses.append(prior.item())
            loss = loss + prior_weight * prior
        optimizer_step(loss, optimizer, unet.parameters(), step=step)
    unet.eval().requires_grad_(False)
    return result
