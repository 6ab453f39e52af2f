"""The one image-batch validator: every pipeline and image operator checks its images here, by the error convention.

An image batch x is a float tensor (B, C, H, W), B ≥ 1, finite, with values in [−1, 1] where a range is asked
(pixels p ∈ {0..255} map to x = p/127.5 − 1). A PIL image or a list of them (where ``allow_pil``) is converted
with that map. Not a tensor (``None`` included) → ``TypeError``; wrong shape, channels, size, batch, dtype, range or
NaN → ``ValueError`` (:mod:`diffusion_lab.utils.errors`); every message names the argument, what it got and what to
do instead.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["check_images", "pil_to_tensor"]

_UINT8_HINT = "(uint8 pixels: convert with diffusion_lab.mnist.data.to_unit_range, x = p / 127.5 - 1)"


def pil_to_tensor(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """PIL image(s) of one size → float tensor (B, C, H, W) in [−1, 1] (C = 1 for "L", 3 for "RGB")."""
    items = [images] if isinstance(images, Image.Image) else list(images)
    arrays = [np.asarray(im, dtype=np.float32) for im in items]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"the PIL images must share one size and mode, got shapes {[a.shape for a in arrays]}")
    x = torch.from_numpy(np.stack(arrays))  # (B, H, W) or (B, H, W, C)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (B, C, H, W)
    return x / 127.5 - 1


def check_images(
    images: object,
    name: str,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    batch: int | None = None,
    value_range: tuple[float, float] | None = None,
    allow_pil: bool = False,
    hints: dict[str, str] | None = None,
) -> torch.Tensor:
    """``images`` as a checked float tensor (B, C, H, W) (converted from PIL where ``allow_pil``).

    channels: C required; size: (H, W) required; batch: B must be 1 or ``batch``; value_range: (lo, hi) the values
    must lie in (1e-3 slack for rounding); hints: extra advice appended to the message of a failed check, keyed
    ``"channels"``, ``"size"``, ``"range"``. Returns the tensor itself (no copy, no expansion).
    """
    hints = hints or {}
    c = "C" if channels is None else str(channels)
    h, w = ("H", "W") if size is None else size
    b = "B" if batch is None else "B or 1"
    lo_hi = "" if value_range is None else f" with values in [{value_range[0]:g}, {value_range[1]:g}]"
    want = f"a tensor ({b}, {c}, {h}, {w}){lo_hi}"
    if allow_pil and (
        isinstance(images, Image.Image)
        or (isinstance(images, list | tuple) and images and all(isinstance(i, Image.Image) for i in images))
    ):
        images = pil_to_tensor(images)
    if not isinstance(images, torch.Tensor):
        pil = " or PIL image(s)" if allow_pil else ""
        raise TypeError(f"{name} must be {want}{pil}, got {type(images).__name__}")
    if images.ndim != 4:
        hint = {2: "; one image (H, W): pass image[None, None]", 3: "; one image (C, H, W): pass image[None]"}
        raise ValueError(f"{name} must be {want}, got shape {tuple(images.shape)}{hint.get(images.ndim, '')}")
    if not images.is_floating_point():
        extra = f" {_UINT8_HINT}" if images.dtype == torch.uint8 else ""
        raise ValueError(f"{name} must be {want} of floats, got dtype {images.dtype}{extra}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0): give at least one image")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"{name} must be {want}, got shape {tuple(images.shape)}: it has {images.shape[1]} channels, "
            f"not {channels}{hints.get('channels', '')}"
        )
    if size is not None and tuple(images.shape[2:]) != tuple(size):
        raise ValueError(
            f"{name} must be {want}, got {images.shape[2]}x{images.shape[3]} images{hints.get('size', '')}"
        )
    if batch is not None and images.shape[0] not in (1, batch):
        raise ValueError(f"{name} holds {images.shape[0]} images; give 1 (for every prompt) or one each ({batch})")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if value_range is not None:
        lo, hi = images.min().item(), images.max().item()
        if lo < value_range[0] - 1e-3 or hi > value_range[1] + 1e-3:
            raise ValueError(
                f"{name} values must be in [{value_range[0]:g}, {value_range[1]:g}], got {lo:.3g} to {hi:.3g}"
                f"{hints.get('range', '')}"
            )
    return images
