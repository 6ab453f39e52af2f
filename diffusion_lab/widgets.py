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

__all__ = ["ForwardProcessExplorer", "SamplerExplorer", "schedule_table"]

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


class SamplerExplorer:
    """Steps, η and seed controls over DDIM sampling of a class-conditional model: one digit per class.

    Every change re-samples (``steps`` network calls, twice with guidance) and redraws the row of ten digits.
    """

    def __init__(
        self,
        model,
        scheduler,
        steps: int = 20,
        eta: float = 0.0,
        seed: int = 0,
        guidance_scale: float = 2.0,
        num_classes: int = 10,
    ):
        import ipywidgets as w

        self.model, self.scheduler, self.guidance_scale, self.num_classes = (
            model,
            scheduler,
            guidance_scale,
            num_classes,
        )
        self.steps = w.SelectionSlider(
            options=[1, 2, 5, 10, 20, 50, 100], value=steps, description="steps", continuous_update=False
        )
        self.eta = w.FloatSlider(value=eta, min=0.0, max=1.0, step=0.1, description="eta", continuous_update=False)
        self.seed = w.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
        self.image = w.Image(format="png")
        for control in (self.steps, self.eta, self.seed):
            control.observe(self._redraw, names="value")
        self.widget = w.VBox([w.HBox([self.steps, self.eta, self.seed]), self.image])
        self._redraw()

    def render(self, steps: int, eta: float, seed: int) -> bytes:
        """The picture for these settings as PNG bytes."""
        import matplotlib.pyplot as plt

        from diffusion_lab.sampling import sample

        labels = torch.arange(self.num_classes)
        out = sample(
            self.model,
            self.scheduler,
            (self.num_classes, 1, 28, 28),
            num_inference_steps=steps,
            class_labels=labels,
            guidance_scale=self.guidance_scale,
            eta=eta,
            generator=torch.Generator().manual_seed(seed),
        )
        fig, ax = plt.subplots(figsize=(8, 1.2))
        show_images(
            out.images.clamp(-1, 1),
            nrow=self.num_classes,
            ax=ax,
            title=f"DDIM, {steps} steps, eta = {eta:.1f}, seed {seed}: {out.network_evaluations} network calls",
        )
        return figure_to_png(fig)

    def _redraw(self, change=None) -> None:
        self.image.value = self.render(self.steps.value, self.eta.value, self.seed.value)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
