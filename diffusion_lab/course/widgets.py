"""Interactive explorers for the notebooks (ipywidgets; imported only by the notebooks that use them).

Each explorer is a small class: its controls are attributes (so a test or a reader can move them from code),
``widget`` is the whole box, and displaying the object displays the box. Pictures are re-rendered to PNG
bytes in an ``ipywidgets.Image`` on every change, which works in JupyterLab, VS Code and on Kaggle/Colab. Bad
constructor arguments follow the library's error convention (``TypeError`` for a wrong type, a bool for a count
included; ``ValueError`` for a wrong value, NaN or a NaN image included), each naming the parameter; NumPy and torch
scalars are taken as the numbers they hold.
"""

from __future__ import annotations

import torch

from diffusion_lab.course.plots import as_image_batch, figure_to_png, show_images
from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.schedules import BETA_SCHEDULES, schedule_table, snr_db
from diffusion_lab.mnist.classifier import classify
from diffusion_lab.pipelines.sampling import sample
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusion_lab.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusion_lab.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusion_lab.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusion_lab.utils.errors import check_choice, check_int, check_number, check_tensor
from diffusion_lab.utils.torch_utils import randn
from diffusion_lab.utils.validation import check_images

__all__ = ["FastSamplerExplorer", "ForwardProcessExplorer", "GuidanceExplorer", "Img2ImgExplorer", "SamplerExplorer"]

_SAMPLER_STEPS = (1, 2, 5, 10, 20, 50, 100)  # the steps slider's stops
_MAX_SEED = 2**31 - 1  # the seed box's largest value


def _check_seed(seed: object) -> int:
    """A seed for the seed box: an integer in [0, 2³¹ − 1] (a larger one would be clipped by the box)."""
    seed = check_int("seed", seed, minimum=0)
    if seed > _MAX_SEED:
        raise ValueError(f"seed must be <= {_MAX_SEED} (the seed box's largest value), got {seed}")
    return seed


def _check_prompts(**prompts: object) -> None:
    """``TypeError`` naming the first of ``prompts`` (name=value) that is not a string."""
    for name, value in prompts.items():
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string ('' for none), got {type(value).__name__}")


class ForwardProcessExplorer:
    """A slider over t and a schedule menu showing x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε for a few images.

    The noise ε is drawn once, so moving the slider shows the same images drowning continuously. The right
    panel marks t on the SNR curves of all schedules. x0: (B, C, H, W) in [−1, 1], B ≤ 16 shown.
    """

    def __init__(self, x0: torch.Tensor, t: int = 250, schedule: str = "linear", seed: int = 0, T: int = 1000):
        import ipywidgets as w  # lazy: only inside Jupyter

        check_tensor("x0", x0, "batch of images (B, C, H, W) in [-1, 1]")
        if x0.ndim != 4:
            raise ValueError(f"x0 must be a batch of images (B, C, H, W), got shape {tuple(x0.shape)}")
        check_images(x0, "x0", value_range=(-1.0, 1.0))  # floats, B ≥ 1, no NaN
        check_choice("schedule", schedule, tuple(BETA_SCHEDULES))
        T, t, seed = check_int("T", T), check_int("t", t, minimum=0), check_int("seed", seed, minimum=0)
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
        import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

        check_choice("schedule", schedule, tuple(self.tables))
        ab, t = self.tables[schedule], check_int("t", t, minimum=0)
        if t >= len(ab):
            raise ValueError(f"t must be in [0, {len(ab) - 1}], got {t}")
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
        from IPython.display import display  # lazy: only inside Jupyter

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
        import ipywidgets as w  # lazy: only inside Jupyter

        steps = check_int("steps", steps, minimum=None)
        if steps not in _SAMPLER_STEPS:
            raise ValueError(f"steps must be one of the slider's values {list(_SAMPLER_STEPS)}, got {steps}")
        eta = check_number("eta", eta, minimum=0.0, maximum=1.0)
        seed = _check_seed(seed)
        guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0.0)
        num_classes = check_int("num_classes", num_classes)
        self.model, self.scheduler, self.guidance_scale, self.num_classes = (
            model,
            scheduler,
            guidance_scale,
            num_classes,
        )
        self.steps = w.SelectionSlider(
            options=list(_SAMPLER_STEPS), value=steps, description="steps", continuous_update=False
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
        import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

        steps, eta = check_int("steps", steps), check_number("eta", eta, minimum=0.0, maximum=1.0)
        seed = _check_seed(seed)
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
        from IPython.display import display  # lazy: only inside Jupyter

        display(self.widget)


class GuidanceExplorer:
    """Classifier-free guidance by hand: a guidance-scale slider, a prompt, a negative prompt and a seed over a
    text-to-image pipeline (``pipe(prompt, negative_prompt=..., guidance_scale=..., generator=...)``).

    Every change re-samples ``n`` images of the prompt from the same seed (``steps`` DDIM steps, two network calls
    each when w ≠ 1) and redraws the row. An empty negative prompt is the empty prompt ∅ of plain guidance. With a
    ``classifier`` (:func:`~diffusion_lab.mnist.classifier.load_classifier`) the title shows the digit it reads in each image.
    """

    def __init__(
        self,
        pipe,
        prompt: str = "a seven",
        guidance_scale: float = 3.0,
        negative_prompt: str = "",
        seed: int = 0,
        n: int = 8,
        steps: int = 20,
        max_guidance: float = 15.0,
        classifier=None,
    ):
        import ipywidgets as w  # lazy: only inside Jupyter

        _check_prompts(prompt=prompt, negative_prompt=negative_prompt)
        n, steps = check_int("n", n, minimum=None), check_int("steps", steps, minimum=None)
        seed = _check_seed(seed)
        max_guidance = check_number("max_guidance", max_guidance, minimum=0.0)
        guidance_scale = check_number("guidance_scale", guidance_scale)
        if not 1 <= n <= 16:
            raise ValueError(f"n must be between 1 and 16 images, got {n}")
        if not 1 <= steps <= 50:
            raise ValueError(f"steps must be between 1 and 50 (each redraw runs them), got {steps}")
        if not 0 <= guidance_scale <= max_guidance:
            raise ValueError(f"guidance_scale must be in [0, max_guidance={max_guidance}], got {guidance_scale}")
        self.pipe, self.n, self.steps, self.classifier = pipe, n, steps, classifier
        self.guidance = w.FloatSlider(
            value=guidance_scale, min=0.0, max=max_guidance, step=0.5, description="guidance",
            continuous_update=False, layout=w.Layout(width="420px"),
        )  # fmt: skip
        self.seed = w.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
        self.prompt = w.Text(value=prompt, description="prompt", continuous_update=False)
        self.negative_prompt = w.Text(value=negative_prompt, description="negative", continuous_update=False)
        self.image = w.Image(format="png")
        for control in (self.guidance, self.seed, self.prompt, self.negative_prompt):
            control.observe(self._redraw, names="value")
        self.widget = w.VBox(
            [w.HBox([self.guidance, self.seed]), w.HBox([self.prompt, self.negative_prompt]), self.image]
        )
        self._redraw()

    def render(self, guidance_scale: float, prompt: str, negative_prompt: str, seed: int) -> bytes:
        """The picture for these settings as PNG bytes."""
        import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

        guidance_scale, seed = check_number("guidance_scale", guidance_scale, minimum=0.0), _check_seed(seed)
        _check_prompts(prompt=prompt, negative_prompt=negative_prompt)
        out = self.pipe(
            [prompt] * self.n,
            negative_prompt=negative_prompt or None,
            num_inference_steps=self.steps,
            guidance_scale=float(guidance_scale),
            generator=torch.Generator().manual_seed(seed),
        )
        images = as_image_batch(out.images).clamp(-1, 1)  # (n, C, H, W); diffusers' PIL images converted
        minus = f' − "{negative_prompt}"' if negative_prompt else ""
        title = f'"{prompt}"{minus}, w = {guidance_scale:g}, seed {seed}'
        if self.classifier is not None:
            read = classify(images, self.classifier)[0].argmax(1).tolist()
            title += "\nthe classifier reads: " + " ".join(str(d) for d in read)
        fig, ax = plt.subplots(figsize=(1.0 * self.n, 1.6))
        show_images(images, nrow=self.n, ax=ax, title=title)
        return figure_to_png(fig)

    def _redraw(self, change=None) -> None:
        self.image.value = self.render(
            self.guidance.value, self.prompt.value, self.negative_prompt.value, self.seed.value
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display  # lazy: only inside Jupyter

        display(self.widget)


class Img2ImgExplorer:
    """img2img by hand: a strength slider, a prompt and a seed over a text-to-image pipeline's
    ``pipe(prompt, image=..., strength=...)``.

    One input image (1, C, H, W) in [−1, 1] is redrawn ``n`` times (seeds ``seed`` … ``seed + n − 1``, one start noise
    each) on every change. Strength γ keeps the last int(γ·steps) of the ``steps`` DDIM steps (diffusers' rule): the
    title says how many ran. γ = 0 returns the input through the autoencoder; γ = 1 ignores it. With a
    ``classifier`` (:func:`~diffusion_lab.mnist.classifier.load_classifier`) the title shows the digit it reads in each image.
    """

    def __init__(
        self,
        pipe,
        image: torch.Tensor,
        prompt: str = "an eight",
        strength: float = 0.6,
        seed: int = 0,
        n: int = 4,
        steps: int = 20,
        guidance_scale: float = 3.0,
        classifier=None,
    ):
        import ipywidgets as w  # lazy: only inside Jupyter

        check_tensor("image", image, "(1, C, H, W) in [-1, 1]")
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"image must be one image (1, C, H, W) in [-1, 1], got {tuple(image.shape)}")
        check_images(image, "image", value_range=(-1.0, 1.0))  # floats, no NaN
        _check_prompts(prompt=prompt)
        n, steps = check_int("n", n, minimum=None), check_int("steps", steps, minimum=None)
        seed = _check_seed(seed)
        strength = check_number("strength", strength)
        guidance_scale = check_number("guidance_scale", guidance_scale)
        if not 1 <= n <= 8:
            raise ValueError(f"n must be between 1 and 8 images, got {n}")
        if not 1 <= steps <= 50:
            raise ValueError(f"steps must be between 1 and 50 (each redraw runs up to that many), got {steps}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1] (0 = keep the image, 1 = ignore it), got {strength}")
        self.pipe, self.input, self.n, self.steps = pipe, image, n, steps
        self.guidance_scale, self.classifier = guidance_scale, classifier
        self.strength = w.FloatSlider(
            value=strength, min=0.0, max=1.0, step=0.05, description="strength", continuous_update=False,
            readout_format=".2f", layout=w.Layout(width="420px"),
        )  # fmt: skip
        self.seed = w.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
        self.prompt = w.Text(value=prompt, description="prompt", continuous_update=False)
        self.image = w.Image(format="png")
        for control in (self.strength, self.seed, self.prompt):
            control.observe(self._redraw, names="value")
        self.widget = w.VBox([w.HBox([self.strength, self.seed]), self.prompt, self.image])
        self._redraw()

    def render(self, strength: float, prompt: str, seed: int) -> bytes:
        """The picture for these settings as PNG bytes: the input, then ``n`` results."""
        import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

        strength = min(max(check_number("strength", strength), 0.0), 1.0)
        _check_prompts(prompt=prompt)
        seed = _check_seed(seed)

        c, f = self.pipe.vae.config.latent_channels, self.pipe.vae_scale_factor
        shape = (1, c, self.input.shape[-2] // f, self.input.shape[-1] // f)
        # one start noise per seed, drawn alone: image i depends on seed + i only, not on n (one batched call)
        noise = torch.cat([randn(shape, torch.Generator().manual_seed(seed + i)) for i in range(self.n)])
        out = self.pipe(
            [prompt] * self.n, image=self.input, strength=strength, num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale, latents=noise.to(self.pipe.device),
        )  # fmt: skip
        images = out.images.clamp(-1, 1)  # (n, C, H, W)
        ran = min(int(self.steps * strength), self.steps)  # the steps img2img keeps (diffusers' get_timesteps)
        title = f'"{prompt}", strength {strength:.2f}: {ran} of {self.steps} steps run'
        if self.classifier is not None:
            read = classify(images, self.classifier)[0].argmax(1).tolist()
            title += "\nthe classifier reads: " + " ".join(str(d) for d in read)
        fig, (ax_in, ax_out) = plt.subplots(
            1, 2, figsize=(1.1 * (self.n + 1) + 0.4, 1.7), gridspec_kw={"width_ratios": [1, self.n]}
        )
        show_images(self.input.clamp(-1, 1), nrow=1, ax=ax_in, title="input")
        show_images(images, nrow=self.n, ax=ax_out, title=title)
        return figure_to_png(fig)

    def _redraw(self, change=None) -> None:
        self.image.value = self.render(self.strength.value, self.prompt.value, self.seed.value)

    def _ipython_display_(self) -> None:
        from IPython.display import display  # lazy: only inside Jupyter

        display(self.widget)


_FAST_STEPS = (1, 2, 4, 8, 25)  # the steps slider's stops (FastSamplerExplorer)
_SPACINGS = ("as shipped", "Karras σ")  # the spacing menu: the scheduler's own grid, or use_karras_sigmas=True


def _fast_samplers() -> dict:
    """label → (scheduler class, options on top of the pipeline's scheduler config): notebook 09's line-up."""
    return {
        "DDIM": (DDIMScheduler, {}),
        "Euler": (EulerDiscreteScheduler, {}),
        "Heun": (HeunDiscreteScheduler, {}),
        "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "Euler a": (EulerAncestralDiscreteScheduler, {}),
    }


class FastSamplerExplorer:
    """Sampler × steps × Karras σ over a tiny text-to-image pipeline (notebook 09): one row of ``prompts`` from the
    same starting noise (``seed``), redrawn on every change.

    ``sampler`` is one of DDIM, Euler, Heun, DPM++ 2M (DPM-Solver++(2M)) and Euler a (Euler-ancestral), each built
    ``from_config`` of the pipeline's own scheduler (so its ᾱ-schedule and prediction type carry over); ``spacing``
    "Karras σ" sets ``use_karras_sigmas=True`` (DDIM has no such option: its row stays on the shipped grid and the
    title says so). The title gives the network evaluations per image (Heun: 2·steps − 1). :meth:`images` returns
    the row as a tensor, for static figures.
    """

    def __init__(
        self,
        pipe,
        prompts: list[str],
        sampler: str = "DPM++ 2M",
        steps: int = 4,
        spacing: str = "as shipped",
        seed: int = 0,
        guidance_scale: float = 2.0,
    ):
        import ipywidgets as w  # lazy: only inside Jupyter

        if not isinstance(prompts, list | tuple) or not prompts:
            raise TypeError(f"prompts must be a non-empty list of strings, got {type(prompts).__name__}")
        _check_prompts(**{f"prompts[{i}]": p for i, p in enumerate(prompts)})
        if len(prompts) > 10:
            raise ValueError(f"prompts must hold at most 10 prompts (one row), got {len(prompts)}")
        self.samplers = _fast_samplers()
        check_choice("sampler", sampler, tuple(self.samplers))
        check_choice("spacing", spacing, _SPACINGS)
        steps = check_int("steps", steps, minimum=None)
        if steps not in _FAST_STEPS:
            raise ValueError(f"steps must be one of the slider's values {list(_FAST_STEPS)}, got {steps}")
        seed = _check_seed(seed)
        self.pipe, self.prompts = pipe, list(prompts)
        self.guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0.0)
        self.sampler = w.Dropdown(options=list(self.samplers), value=sampler, description="sampler")
        self.steps = w.SelectionSlider(
            options=list(_FAST_STEPS), value=steps, description="steps", continuous_update=False
        )
        self.spacing = w.Dropdown(options=list(_SPACINGS), value=spacing, description="spacing")
        self.seed = w.BoundedIntText(value=seed, min=0, max=_MAX_SEED, description="seed")
        self.image = w.Image(format="png")
        for control in (self.sampler, self.steps, self.spacing, self.seed):
            control.observe(self._redraw, names="value")
        self.widget = w.VBox([w.HBox([self.sampler, self.steps]), w.HBox([self.spacing, self.seed]), self.image])
        self._redraw()

    def scheduler(self, sampler: str, spacing: str):
        """A fresh scheduler for these settings, from the pipeline's scheduler config."""
        check_choice("sampler", sampler, tuple(self.samplers))
        check_choice("spacing", spacing, _SPACINGS)
        cls, options = self.samplers[sampler]
        if spacing == "Karras σ" and sampler != "DDIM":
            options = {**options, "use_karras_sigmas": True}
        return cls.from_config(self.pipe.scheduler.config, **options)

    def images(self, sampler: str, steps: int, spacing: str, seed: int) -> torch.Tensor:
        """The row for these settings: (len(prompts), C, H, W) in [−1, 1], starting noise from ``seed``."""
        steps, seed = check_int("steps", steps), _check_seed(seed)
        base = self.pipe.scheduler
        self.pipe.scheduler = self.scheduler(sampler, spacing)
        try:
            out = self.pipe(
                self.prompts, num_inference_steps=steps, guidance_scale=self.guidance_scale,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
        finally:
            self.pipe.scheduler = base
        return out.images.clamp(-1, 1)

    @staticmethod
    def title(sampler: str, steps: int, spacing: str) -> str:
        """What a row shows: the sampler, steps, network evaluations per image and the σ grid."""
        nfe = 2 * steps - 1 if sampler == "Heun" else steps
        grid = "shipped grid (DDIM has no Karras option)" if sampler == "DDIM" and spacing == "Karras σ" else spacing
        return f"{sampler}, {steps} step{'s' if steps > 1 else ''} = {nfe} NFE, {grid}"

    def render(self, sampler: str, steps: int, spacing: str, seed: int) -> bytes:
        """The picture for these settings as PNG bytes: each prompt above its image, at 4 screen pixels per pixel."""
        import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

        images = self.images(sampler, steps, spacing, seed)
        n = len(images)
        fig, axes = plt.subplots(1, n, figsize=(1.65 * n, 2.1), squeeze=False)
        for ax, image, prompt in zip(axes[0], images, self.prompts, strict=True):
            show_images(image[None], nrow=1, ax=ax)
            ax.set_title(prompt, fontsize=8)
        fig.suptitle(f"{self.title(sampler, steps, spacing)}, seed {seed}", fontsize=9)
        return figure_to_png(fig)

    def _redraw(self, change=None) -> None:
        self.image.value = self.render(self.sampler.value, self.steps.value, self.spacing.value, self.seed.value)

    def _ipython_display_(self) -> None:
        from IPython.display import display  # lazy: only inside Jupyter

        display(self.widget)
