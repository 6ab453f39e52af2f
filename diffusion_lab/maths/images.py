"""Image operators and their scores: Sobel edges, coarse masks, down/upsampling, edge F1, mask IoU and PSNR (inputs in [-1, 1], (B, C, H, W))."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffusion_lab.utils.errors import check_int, check_number, check_tensor
from diffusion_lab.utils.validation import check_images

__all__ = ["coarse_mask", "edge_f1", "edge_map", "mask_iou", "sobel", "bicubic_upscale", "downsample", "psnr"]


def _brightness(images: object, name: str = "images") -> torch.Tensor:
    """Checked images (B, 1, H, W) in [−1, 1] → brightness b = (x + 1)/2 clamped to [0, 1], float."""
    images = check_images(images, name, channels=1)
    return ((images.float() + 1) / 2).clamp(0, 1)


def sobel(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives of the brightness, (B, 1, H, W) each: g_u (to the right) and g_v (downwards), zero padding.

    g_u = [[−1, 0, 1], [−2, 0, 2], [−1, 0, 1]] ⋆ b; a black-to-white step gives |g| = 4.
    """
    b = _brightness(images)
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=b.device)
    kernels = torch.stack([k, k.T])[:, None]  # (2, 1, 3, 3): d/du, d/dv
    g = F.conv2d(F.pad(b, (1, 1, 1, 1)), kernels)  # (B, 2, H, W)
    return g[:, :1], g[:, 1:]


def edge_map(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """A Canny-like edge map (B, 1, H, W) in {0, 1} of images (B, 1, H, W) in [−1, 1]: the MNIST canny control.

    1. gradient magnitude m = |∇b| / 4 of the brightness b = (x + 1)/2 (:func:`sobel`; 1 at a black-to-white step);
    2. non-maximum suppression: keep a pixel only if m is a maximum among its two neighbours along the gradient
       direction (rounded to 0°, 45°, 90° or 135°; of two equal values the first along that direction is kept),
       which thins the two-pixel-wide gradient band to a 1-pixel outline (Canny 1986);
    3. edges where the kept m > ``threshold`` (one threshold, no hysteresis).
    """
    threshold = check_number("threshold", threshold)
    if not 0.0 <= threshold < 1.5:
        raise ValueError(f"threshold must be in [0, 1.5) (a share of a full black-to-white step), got {threshold!r}")
    gu, gv = sobel(images)
    m = torch.sqrt(gu**2 + gv**2) / 4  # (B, 1, H, W)
    angle = torch.atan2(gv, gu) % math.pi  # direction of the gradient, in [0, π)
    sector = torch.round(angle / (math.pi / 4)).long() % 4  # 0: 0°, 1: 45°, 2: 90°, 3: 135°
    padded = F.pad(m, (1, 1, 1, 1))
    h, w = m.shape[-2:]

    def shifted(du: int, dv: int) -> torch.Tensor:  # m at (u + du, v + dv)
        return padded[..., 1 + dv : 1 + dv + h, 1 + du : 1 + du + w]

    keep = torch.zeros_like(m, dtype=torch.bool)
    for s, (du, dv) in enumerate(((1, 0), (1, 1), (0, 1), (-1, 1))):  # rows go down: 45° points right and down
        is_max = (m >= shifted(du, dv)) & (m > shifted(-du, -dv))  # a tie (a sharp step) keeps one pixel of two
        keep |= (sector == s) & is_max
    return (keep & (m > threshold)).float()


def coarse_mask(images: torch.Tensor, cell: int = 4, threshold: float = 0.2) -> torch.Tensor:
    """The digit's coarse silhouette (B, 1, H, W) in {0, 1}: the "semantic synthesis" control (a segmentation map).

    The mean brightness of each ``cell`` × ``cell`` block (7×7 blocks for 28×28 and cell 4) above ``threshold`` marks
    the block as digit; the blocks are drawn back at full size (nearest neighbour), so the map says where the digit
    is but not how its strokes run.
    """
    b = _brightness(images)
    cell = check_int("cell", cell, minimum=None)
    threshold = check_number("threshold", threshold)
    if cell < 1 or b.shape[-1] % cell or b.shape[-2] % cell:
        raise ValueError(f"cell must be a positive integer dividing the image size {tuple(b.shape[-2:])}, got {cell!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (a share of ink in a cell), got {threshold!r}")
    low = F.avg_pool2d(b, cell)  # (B, 1, H/cell, W/cell): ink share per block
    return F.interpolate((low > threshold).float(), scale_factor=cell, mode="nearest")  # (B, 1, H, W)


def _binary(maps: object, name: str) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (B, 1, H, W) in [0, 1], got {type(maps).__name__}")
    if maps.ndim != 4:
        raise ValueError(f"{name} must be a tensor (B, 1, H, W) in [0, 1], got shape {tuple(maps.shape)}")
    return maps > 0.5


def edge_f1(edges: torch.Tensor, target: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """F1 of two edge maps (B, 1, H, W) in {0, 1}, per image (B,), with a ``tolerance`` in pixels.

    precision = share of ``edges`` pixels within ``tolerance`` (Chebyshev distance) of a ``target`` edge, recall =
    share of ``target`` pixels within ``tolerance`` of an ``edges`` pixel, F1 = 2PR / (P + R) (0 when either map is
    empty). Edge benchmarks (BSDS, Martin et al. 2004) match within a tolerance; on 28×28 digits exact pixels
    (``tolerance=0``) separate "this outline" from "an outline of the same digit" far better (module docstring, §6).
    """
    a, b = _binary(edges, "edges"), _binary(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"edges and target must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    tolerance = check_int("tolerance", tolerance, minimum=None)
    if tolerance < 0:
        raise ValueError(f"tolerance must be an integer >= 0 (pixels), got {tolerance!r}")
    k = 2 * tolerance + 1

    def near(m: torch.Tensor) -> torch.Tensor:  # pixels within the tolerance of m
        return F.max_pool2d(m.float(), k, stride=1, padding=tolerance) > 0

    n_a, n_b = a.flatten(1).sum(1).float(), b.flatten(1).sum(1).float()  # (B,)
    precision = (a & near(b)).flatten(1).sum(1) / n_a.clamp_min(1)
    recall = (b & near(a)).flatten(1).sum(1) / n_b.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return torch.where((n_a > 0) & (n_b > 0), f1, torch.zeros_like(f1))


def mask_iou(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two masks (B, 1, H, W) in {0, 1}, per image (B,) (0 when both are empty)."""
    a, b = _binary(masks, "masks"), _binary(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"masks and target must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return inter / union.clamp_min(1)


def _check_batch(x: object, name: str) -> torch.Tensor:
    """A non-empty finite float batch (B, C, H, W) (:func:`~diffusion_lab.utils.validation.check_images`)."""
    return check_images(x, name)


def _check_factor(factor: object) -> int:
    factor = check_int("factor", factor, minimum=None)
    if not 1 <= factor <= 64:
        raise ValueError(f"factor must be a positive integer up to 64 (4 for the x4 upscaler), got {factor!r}")
    return factor


def downsample(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """The low-resolution image: each factor×factor block of pixels replaced by its mean ("area" resizing).

    y[i, j] = (1/r²) Σ_{a,b < r} x[r·i + a, r·j + b]; (B, C, H, W) → (B, C, H/r, W/r). H and W must be multiples
    of r. Averaging is what a camera sensor with r× larger pixels would record, and it never overshoots [−1, 1].
    """
    x = _check_batch(x, "x")
    factor = _check_factor(factor)
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(
            f"height and width ({x.shape[2]}x{x.shape[3]}) must be multiples of factor={factor}; crop or pad first"
        )
    return F.avg_pool2d(x, factor)


def bicubic_upscale(low: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """The classical baseline: bicubic interpolation (Keys 1981, a = −0.75 as in PyTorch and OpenCV), clamped.

    (B, C, h, w) → (B, C, r·h, r·w). Pixel centres are aligned (``align_corners=False``); the cubic kernel
    overshoots near sharp edges, so the result is clamped back to [−1, 1].
    """
    low = _check_batch(low, "low")
    factor = _check_factor(factor)
    return F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in decibels: PSNR = 10·log10(R² / MSE), MSE = (1/D) Σ_i (a_i − b_i)².

    a, b: (B, ...) of one shape; D: the number of values per image; R: the range of a pixel (2 for images in
    [−1, 1], i.e. the usual PSNR of the same images in [0, 1] with R = 1). Returns (B,); +inf for identical images.
    Higher is better; +6 dB is half the RMS error. Average it over images yourself (the mean of per-image PSNRs, as
    super-resolution papers report).
    """
    check_tensor("a", a, "(B, ...)")
    check_tensor("b", b, "(B, ...)")
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"a and b must be tensors (B, ...) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    data_range = check_number("data_range", data_range)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0 (2 for images in [-1, 1]), got {data_range!r}")
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)  # (B,)
    return (10 * torch.log10(data_range**2 / mse)).float()
