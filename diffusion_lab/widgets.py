"""Interactive explorers for the notebooks (ipywidgets; imported only by the notebooks that use them).

Each explorer is a small class: its controls are attributes (so a test or a reader can move them from code),
``widget`` is the whole box, and displaying the object displays the box. Pictures are re-rendered to PNG
bytes in an ``ipywidgets.Image`` on every change, which works in JupyterLab, VS Code and on Kaggle/Colab.
"""

from __future__ import annotations

import torch

from diffusion_lab.diffusion import q_sample
from diffusion_lab.plots import figure_to_png, show_images
from diffusion_lab.schedules import BETA_SCHEDULES, alphas_cumprod_from_betas, make_betas, snr_db

__all__ = ["ForwardProcessExplorer", "schedule_table"]

_BETA_RANGES = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (1e-4, 0.02)}


def schedule_table(T: int = 1000) -> dict[str, torch.Tensor]:
    """ᾱ (T,) for each of :data:`~diffusion_lab.schedules.BETA_SCHEDULES` with its usual β range
    (DDPM's 1e-4 → 0.02 for linear, Stable Diffusion's 0.00085 → 0.012 for scaled_linear)."""
    return {name: alphas_cumprod_from_betas(make_betas(name, T, *_BETA_RANGES[name])) for name in BETA_SCHEDULES}


class ForwardProcessExplorer:
    """A slider over t and a schedule menu showing x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε for a few images.

    The noise ε is drawn once, so moving the slider shows the same images drowning continuously. The right
    panel marks t on the SNR curves of all schedules. x0: (B, C, H, W) in [−1, 1], B ≤ 16 shown.
    """

    def __init__(self, x0: torch.Tensor, t: int = 250, schedule: str = "linear", seed: int = 0, T: int = 1000):
        import ipywidgets as w

        if x0.ndim != 4:
            raise ValueError(f"x0 must be a batch of images (B, C, H, W), got shape {tuple(x0.shape)}")
        if schedule not in BETA_SCHEDULES:
            raise ValueError(f"schedule must be one of {list(BETA_SCHEDULES)}, got {schedule!r}")
        if not 0 <= t < T:
            raise ValueError(f"t must be in [0, {T - 1}], got {t}")
        self.x0 = x0[:16]
        self.noise = torch.randn(self.x0.shape, generator=torch.Generator().manual_seed(seed))
        self.tables = schedule_table(T)
        self.t = w.IntSlider(
            value=t, min=0, max=T - 1, step=1, description="t", continuous_update=False, layout=w.Layout(width="420px")
        )
        self.schedule = w.Dropdown(options=list(BETA_SCHEDULES), value=schedule, description="schedule")
        self.image = w.Image(format="png")
        self.t.observe(self._redraw, names="value")
        self.schedule.observe(self._redraw, names="value")
        self.widget = w.VBox([w.HBox([self.schedule, self.t]), self.image])
        self._redraw()

    def render(self, t: int, schedule: str) -> bytes:
        """The picture for (t, schedule) as PNG bytes."""
        import matplotlib.pyplot as plt

        ab = self.tables[schedule]
        x_t = q_sample(self.x0, t, self.noise, ab)  # (B, C, H, W)
        fig, (ax_img, ax_snr) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [1.2, 1]})
        show_images(x_t.clamp(-1, 1), nrow=4, ax=ax_img)
        ax_img.set_title(f"x_t at t = {t}  ({schedule}):  ᾱ_t = {ab[t].item():.4f}", fontsize=9)
        for name, table in self.tables.items():
            ax_snr.plot(
                snr_db(table).numpy(),
                lw=2.5 if name == schedule else 1,
                alpha=1 if name == schedule else 0.5,
                label=name,
            )
        ax_snr.axvline(t, color="k", ls="--", lw=1)
        ax_snr.axhline(0, color="grey", lw=0.5)
        ax_snr.set(xlabel="t", ylabel="SNR (dB)", title=f"SNR_t = {snr_db(ab[t]).item():+.1f} dB")
        ax_snr.legend(fontsize=7)
        fig.tight_layout()
        return figure_to_png(fig)

    def _redraw(self, change=None) -> None:
        self.image.value = self.render(self.t.value, self.schedule.value)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
