"""Small matplotlib helpers for the notebooks (imported only where plots are drawn).

Images are tensors (B, C, H, W) in [−1, 1] (C = 1 or 3) unless said otherwise. Bad arguments follow the library's
error convention (:mod:`diffusion_lab.utils.errors`): ``TypeError`` for a wrong type (a bool or float for a count
included), ``ValueError`` for a wrong value (a shape, an empty batch, NaN), each naming the parameter.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from diffusion_lab.training.loop import Trainer
from diffusion_lab.utils.errors import check_choice, check_int, check_number, check_tensor

__all__ = ["LossPlot", "as_image_batch", "image_grid", "show_images", "figure_to_png", "plot_shootout"]


class LossPlot:
    """A live loss curve for notebooks: one ``ipywidgets.Image`` redrawn every ``every`` steps.

    It never prints and never clears output (both break strict nbval); the cell shows one widget.
    """

    TEXT = "LossPlot: a live loss curve (an ipywidgets.Image, drawn while the kernel runs)"

    def __init__(self, every: int = 50, smooth: int = 25):
        self.every, self.smooth, self.image = check_int("every", every), check_int("smooth", smooth), None

    def __call__(self, trainer: Trainer) -> None:
        if trainer.step % self.every:
            return
        try:
            import ipywidgets as w  # lazy: only inside Jupyter
            from IPython.display import display  # lazy: only inside Jupyter
        except ImportError:  # plain Python: nothing to draw on
            return
        import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

        if self.image is None:
            self.image = w.Image(format="png")
            # the text shown where widgets are not rendered: a sentence, not the repr of the still-empty image
            display({**self.image._repr_mimebundle_(), "text/plain": self.TEXT}, raw=True)
        losses = torch.tensor(trainer.losses)
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.plot(losses.numpy(), alpha=0.3, lw=0.8)
        if len(losses) >= self.smooth:
            kernel = torch.ones(self.smooth) / self.smooth
            ax.plot(
                range(self.smooth - 1, len(losses)), torch.conv1d(losses[None, None], kernel[None, None])[0, 0].numpy()
            )
        ax.set(xlabel="step", ylabel="loss", yscale="log", title=f"step {trainer.step}")
        self.image.value = figure_to_png(fig)


def as_image_batch(images) -> torch.Tensor:
    """A diffusers pipeline's images (a list of PIL images, or an array (B, H, W, C) in [0, 1]) as a tensor
    (B, C, H, W) in [−1, 1], the convention of :func:`image_grid`. A tensor is returned unchanged."""
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[0] == 0 or images.dtype.kind not in "uif":
            raise ValueError(
                f"images must be an array (B, H, W, C) of numbers in [0, 1] with B >= 1, got {images.dtype} array "
                f"of shape {images.shape}"
            )
        arr = images.astype(np.float32)  # (B, H, W, C) in [0, 1]
    elif isinstance(images, list | tuple) and images and all(isinstance(im, Image.Image) for im in images):
        arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])  # (B, H, W, 3)
    elif isinstance(images, list | tuple) and not images:
        raise ValueError("images is an empty list: give at least one image")
    else:
        raise TypeError(
            "images must be a list of PIL images, an array (B, H, W, C) in [0, 1] or a tensor (B, C, H, W), got "
            f"{type(images).__name__}"
        )
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1  # (B, C, H, W) in [−1, 1]


def image_grid(x: torch.Tensor, nrow: int = 8, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch (B, C, H, W) in [−1, 1] into one array (rows·(H+pad), cols·(W+pad)[, 3]) in [0, 1]."""
    check_tensor("x", x, "of images (B, 1 or 3, H, W) in [-1, 1]")
    nrow, pad = check_int("nrow", nrow), check_int("pad", pad, minimum=0)
    pad_value = check_number("pad_value", pad_value)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"x: expected images of shape (B, 1 or 3, H, W) with B >= 1, got {tuple(x.shape)}")
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()  # (B, C, H, W) in [0, 1]
    b, c, h, w = x.shape
    ncol = min(nrow, b)
    nrows = -(-b // ncol)
    grid = np.full((c, nrows * (h + pad) - pad, ncol * (w + pad) - pad), pad_value, dtype=np.float32)
    for i in range(b):
        r, k = divmod(i, ncol)
        grid[:, r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def show_images(x: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, **imshow_kw):
    """Draw :func:`image_grid` on ``ax`` (a new figure if None), grey for one channel; returns the axes."""
    import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

    grid = image_grid(x, nrow)  # checks x and nrow before a figure is made
    if ax is None:
        b = x.shape[0]
        ncol = min(nrow, b)
        _, ax = plt.subplots(figsize=(1.1 * ncol, 1.1 * -(-b // ncol) + (0.3 if title else 0)))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, **imshow_kw)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def figure_to_png(fig, dpi: int = 80) -> bytes:
    """Render a matplotlib figure to PNG bytes (for ``ipywidgets.Image``) and close it."""
    import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib figure, got {type(fig).__name__}")
    dpi = check_int("dpi", dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


_SHOOTOUT_METRICS = {  # metric → (axis label, better)
    "digit_adherence": ("digit adherence", "higher is better"),
    "attribute_adherence": ("attribute adherence", "higher is better"),
    "fid": ("FID-MNIST", "lower is better"),
}


def plot_shootout(records, metric: str, ax=None):
    """Quality against network evaluations: x the NFE (log axis), one line per sampler, error bars ±1 SE.

    ``records``: :class:`~diffusion_lab.pipelines.shootout.ShootoutRecord` objects or their ``to_dict()``s (as in
    ``benchmarks/results/sampler_shootout.json``) of one model; ``metric``: ``"digit_adherence"``,
    ``"attribute_adherence"`` or ``"fid"``. The title names the model, n and w. Returns the axes."""
    import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

    check_choice("metric", metric, tuple(_SHOOTOUT_METRICS))
    rows = [r.to_dict() if hasattr(r, "to_dict") else r for r in records]
    need = {"sampler", "nfe", metric, f"{metric}_se"}
    if not rows or not all(isinstance(r, dict) and need <= r.keys() for r in rows):
        raise ValueError(
            f"records must be a non-empty list of shoot-out records (run_shootout's, or their to_dict()) with "
            f"'sampler', 'nfe', {metric!r} and '{metric}_se'"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    for label in dict.fromkeys(r["sampler"] for r in rows):  # first-seen order
        line = sorted((r for r in rows if r["sampler"] == label), key=lambda r: r["nfe"])
        ax.errorbar([r["nfe"] for r in line], [r[metric] for r in line], yerr=[r[f"{metric}_se"] for r in line],
                    marker="o", ms=3, capsize=2, lw=1, label=label)  # fmt: skip
    name, better = _SHOOTOUT_METRICS[metric]
    models = sorted({str(r.get("model", "?")) for r in rows})
    ns = sorted({r.get("n", "?") for r in rows}, key=str)
    ws = sorted({r.get("guidance_scale", "?") for r in rows}, key=str)
    ax.set_xscale("log")
    ticks = []
    for k in sorted({r["nfe"] for r in rows}, reverse=True):  # from the largest: 50 labelled rather than 49
        if not ticks or 1.25 * k <= ticks[-1]:  # labels that do not overlap on the log axis
            ticks.append(k)
    ax.set_xticks(ticks[::-1], labels=[str(k) for k in ticks[::-1]])
    ax.xaxis.set_minor_locator(plt.NullLocator())  # no overlapping minor labels on the log axis
    ax.set(xlabel="network evaluations (NFE, a guided pair = 1)", ylabel=f"{name} (±1 SE)")
    ax.set_title(f"{', '.join(models)}: {name}, {better} (n = {', '.join(map(str, ns))}, "
                 f"w = {', '.join(map(str, ws))})", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7)
    return ax
