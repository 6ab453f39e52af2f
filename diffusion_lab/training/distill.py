"""Few-step distillation: latent consistency distillation (LCD) of the tiny Stable Diffusion into a 1-4 step student.

Papers: Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models" (CD: Algorithm 2; the c_skip/c_out
parametrisation, §3; multistep sampling, Algorithm 1); Luo, Tan, Huang, Li & Zhao 2023, "Latent Consistency Models"
(LCD: Algorithm 1, the guided teacher step of §4.2, the skipping-step solver); Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models" (iCT: the pseudo-Huber loss).

Notation
--------
======================  ===============  ==========================================================================
code                    symbol           meaning
======================  ===============  ==========================================================================
``alphas_cumprod``      ᾱ_t              the teacher's schedule (T,) (DDPM's ᾱ; the DDIM paper calls it α_t)
``skip``                k                skipping step: the teacher jumps k training timesteps at once (LCM's skipping-step technique)
``num_grid``            N = T / k        the discrete timesteps the student is distilled on (diffusers' LCMScheduler's
                                         ``original_inference_steps``)
``grid``                t_n              t_n = n·k − 1 for n = 1 … N (LCMScheduler's ``lcm_origin_timesteps``), t_0 = 0
``teacher`` (pred)      v_φ(x_t, t, c)   the frozen teacher's v-prediction; v_φ(x_t, t, ∅) with the empty prompt
``guidance_scale``      w                classifier-free guidance folded into the teacher's ODE step (LCM §4.2)
``student`` (pred)      F_θ(x_t, t, c)   the student's raw network output (a v-prediction, as the teacher's)
``c_skip``, ``c_out``   c_skip, c_out    boundary scalings: c_skip(t) = σ_d² / ((s·t)² + σ_d²),
                                         c_out(t) = s·t / √((s·t)² + σ_d²)  (diffusers' discrete form, s = 10)
``sigma_data``          σ_d              0.5 (Consistency Models / LCM; diffusers hard-codes it)
``timestep_scaling``    s                10 (LCMScheduler default): c_skip(1) = 0.0025, c_skip(t) < 1e-4 for t ≥ 5
``f``                   f_θ(x_t, t, c)   consistency function f_θ = c_skip(t)·x_t + c_out(t)·x̂_0(F_θ(x_t, t, c))
                                         (CM §3's parametrisation, F_θ read as LCM's x̂_0); f_θ(x, 0) = x exactly
``target``              f_θ⁻(x̂_{t_n})   the target network θ⁻ (EMA of θ, decay μ; CM Alg. 2) at the teacher's step
``ema_decay``           μ                θ⁻ ← μ·θ⁻ + (1 − μ)·θ (stop-gradient when μ = 0)
``huber_c``             c                pseudo-Huber d(a, b) = √(‖a − b‖² + c²) − c (iCT); None: L2
======================  ===============  ==========================================================================

Indexing: timesteps are the teacher's discrete training timesteps t ∈ {0, …, T − 1} (T = 1000), ᾱ_t =
``alphas_cumprod[t]``; a grid index n ∈ {1, …, N} names t_n, and the teacher steps from t_n to t_{n−1} (= t_{n+k} →
t_n in LCM's numbering, where the index counts training timesteps). Latents are (B, L, h, w) = (B, 4, 7, 7).

One training step (CD Algorithm 2 / LCD Algorithm 1), for latents z_0 and captions c:

1. n ~ U{1, …, N}; ε ~ N(0, I); x_{t_n} = √ᾱ_{t_n}·z_0 + √(1 − ᾱ_{t_n})·ε                      (DDPM Eq. 4)
2. the teacher's guided DDIM step, no gradient:
   v̂ = v_φ(x, t_n, ∅) + w·(v_φ(x, t_n, c) − v_φ(x, t_n, ∅))                                    (LCM §4.2)
   x̂_0 = √ᾱ_{t_n}·x − √(1 − ᾱ_{t_n})·v̂,  ε̂ = √ᾱ_{t_n}·v̂ + √(1 − ᾱ_{t_n})·x          (v-parametrisation)
   x̂_{t_{n−1}} = √ᾱ_{t_{n−1}}·x̂_0 + √(1 − ᾱ_{t_{n−1}})·ε̂                                  (DDIM Eq. 12, η = 0)
3. target y = f_θ⁻(x̂_{t_{n−1}}, t_{n−1}, c), no gradient                                            (CM Alg. 2)
4. loss d(f_θ(x_{t_n}, t_n, c), y); AdamW step on θ; θ⁻ ← μ·θ⁻ + (1 − μ)·θ

Why pseudo-Huber and not L2: some targets can be far off (the teacher's coarse skipping step at high noise, the
moving target network early on); L2 lets such samples dominate the gradient, while the pseudo-Huber distance grows
only linearly in ‖a − b‖ beyond c, so each sample's gradient has bounded norm. iCT (Song & Dhariwal 2023)
found it better than L2 without LPIPS's bias; diffusers' LCM distillation script offers it (``--loss_type huber``,
elementwise). c = 0.00054·√d for d = L·h·w entries (iCT's choice): ≈ 0.0076 for 4×7×7 latents. L2 is one setting
away (``huber_c=None``). Measured at the default 185 steps (n = 500, benchmarks/results/distill_lcm.json): 2-step
digit adherence 0.960 (pseudo-Huber) and 0.964 (L2), FID-MNIST 227 and 226, SEs ~0.009 and ~25: no difference a run
this short can see, so the choice rests on the robustness argument above.

Sampling (CM Algorithm 1, the multistep consistency sampler = diffusers' ``LCMScheduler``): x = ε_T;
for each chosen timestep τ_i: x̂_0 = f_θ(x, τ_i, c); x ← √ᾱ_{τ_{i+1}}·x̂_0 + √(1 − ᾱ_{τ_{i+1}})·ε_i (fresh noise),
and the last x̂_0 is the sample. No classifier-free guidance at sampling time: w is inside the student.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from diffusion_lab.maths.diffusion import PREDICTION_TYPES, q_sample
from diffusion_lab.maths.guidance import cfg_combine
from diffusion_lab.mnist.captions import AttributeBins, attributes, captions_for
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.training.finetune import encode_images
from diffusion_lab.training.loop import EMA, check_config_fields, optimizer_step
from diffusion_lab.training.tiny_sd_io import load_tiny_sd, pretrained_tiny_sd_path, save_tiny_sd
from diffusion_lab.utils.checkpoint import write_json_atomic
from diffusion_lab.utils.errors import FileError, check_choice, check_int, check_number, check_tensor
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick

__all__ = [
    "RECIPE_FILE",
    "SIGMA_DATA",
    "DistillConfig",
    "boundary_scalings",
    "consistency_function",
    "consistency_loss",
    "consistency_multistep_sample",
    "consistency_target",
    "distill_consistency",
    "distillation_grid",
    "guided_ddim_skip_step",
    "lcm_scheduler_for",
    "load_student",
    "pretrained_student_path",
    "quick_config",
    "sample_student",
    "save_student",
]

SIGMA_DATA = 0.5  # σ_d of the boundary scalings (diffusers' LCMScheduler sets self.sigma_data = 0.5)
TIMESTEP_SCALING = 10.0  # s: LCMScheduler's default ``timestep_scaling``
RECIPE_FILE = "recipe.json"


# ------------------------------------------------------------------------------------------------ the maths


def distillation_grid(num_train_timesteps: int, skip: int) -> torch.Tensor:
    """[t_0, t_1, …, t_N] = [0, k − 1, 2k − 1, …, N·k − 1] (N + 1,), N = T / k: the timesteps the student is distilled
    on. t_1 … t_N are diffusers' LCMScheduler's ``lcm_origin_timesteps`` for ``original_inference_steps = N``
    (k = T // N there, so k must divide T for the two grids to be the same); t_0 = 0, where f(x, 0) = x."""
    num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps)
    skip = check_int("skip", skip)
    if skip >= num_train_timesteps or num_train_timesteps % skip:
        divisors = [
            d for d in (10, 20, 25, 40, 50, 100, 125, 200) if num_train_timesteps % d == 0 and d < num_train_timesteps
        ]
        raise ValueError(
            f"skip k must divide num_train_timesteps T = {num_train_timesteps} and be smaller than it (the grid "
            f"t_n = n·k − 1 must end at T − 1 as LCMScheduler's does), got k = {skip}; e.g. k in {divisors}"
        )
    n = num_train_timesteps // skip
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1, n + 1, dtype=torch.long) * skip - 1])  # (N+1,)


def boundary_scalings(
    t: torch.Tensor | int, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip(t), c_out(t)) at discrete timesteps t (int or (B,)), exactly as diffusers'
    ``LCMScheduler.get_scalings_for_boundary_condition_discrete``: with τ = s·t (float32),
    c_skip = σ_d² / (τ² + σ_d²), c_out = τ / √(τ² + σ_d²) (CM's boundary scalings with the time τ). c_skip(0) = 1, c_out(0) = 0."""
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"t must hold integer timesteps (0 … T − 1), got dtype {t.dtype}")
        tau = t * timestep_scaling  # float32 from a LongTensor, as in diffusers
    else:
        tau = torch.tensor(check_int("t", t, minimum=0)) * timestep_scaling
    c_skip = sigma_data**2 / (tau**2 + sigma_data**2)
    c_out = tau / (tau**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _x0_from(pred: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x̂_0 from a network output of any prediction type (as LCMScheduler.step's item 4); ab_t broadcasts to x_t."""
    if prediction_type == "v_prediction":
        return ab_t.sqrt() * x_t - (1 - ab_t).sqrt() * pred  # x̂_0 = √ᾱ·x − √(1−ᾱ)·v
    if prediction_type == "epsilon":
        return (x_t - (1 - ab_t).sqrt() * pred) / ab_t.sqrt()  # x̂_0 = (x − √(1−ᾱ)·ε) / √ᾱ
    return pred


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) table value shaped (B, 1, 1, 1) (or (1, 1, 1, 1)) to broadcast over ``like``."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def consistency_function(
    pred: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "v_prediction",
) -> torch.Tensor:
    """f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂_0(pred) (CM §3; LCMScheduler.step items 3, 4 and 6).

    pred, x_t: (B, L, h, w); t: int or (B,) discrete timesteps; alphas_cumprod (T,). Returns (B, L, h, w)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    t = torch.as_tensor(t, dtype=torch.long)
    ab_t = _per_sample(alphas_cumprod[t], x_t)  # (B or 1, 1, 1, 1)
    c_skip, c_out = boundary_scalings(t)
    x0 = _x0_from(pred, x_t, ab_t, prediction_type)  # (B, L, h, w)
    return _per_sample(c_out, x_t) * x0 + _per_sample(c_skip, x_t) * x_t


def guided_ddim_skip_step(
    x_t: torch.Tensor,
    pred_cond: torch.Tensor,
    pred_uncond: torch.Tensor,
    guidance_scale: float,
    ab_t: torch.Tensor,
    ab_s: torch.Tensor,
    prediction_type: str = "v_prediction",
) -> torch.Tensor:
    """The teacher's ODE step from t = t_{n} to s = t_{n−1} (k training timesteps at once), with classifier-free
    guidance folded in (LCM §4.2): the guided prediction, then DDIM with η = 0 (DDIM Eq. 12).

    x_t, pred_cond, pred_uncond: (B, L, h, w); ab_t, ab_s: ᾱ at t and s, scalars or (B,). Returns x̂_s (B, L, h, w)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    w = check_number("guidance_scale", guidance_scale, minimum=0)
    pred = cfg_combine(pred_cond, pred_uncond, w)  # v̂ = v_∅ + w·(v_c − v_∅)   (B, L, h, w)
    ab_t, ab_s = _per_sample(torch.as_tensor(ab_t), x_t), _per_sample(torch.as_tensor(ab_s), x_t)
    x0 = _x0_from(pred, x_t, ab_t, prediction_type)  # x̂_0
    eps = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()  # ε̂ = (x_t − √ᾱ_t·x̂_0) / √(1−ᾱ_t)
    return ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps  # x̂_s = √ᾱ_s·x̂_0 + √(1−ᾱ_s)·ε̂   (DDIM Eq. 12, η = 0)


@torch.no_grad()
def consistency_target(
    target_pred: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_s: torch.Tensor,
    s: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "v_prediction",
) -> torch.Tensor:
    """y = f_θ⁻(x̂_s, s): the target network's consistency function at the teacher's step (CM Algorithm 2), with no
    gradient (stop-gradient). ``target_pred(x, s)`` is the target network's raw output (B, L, h, w) at timesteps s (B,)."""
    return consistency_function(target_pred(x_s, s), x_s, s, alphas_cumprod, prediction_type)


def consistency_loss(prediction: torch.Tensor, target: torch.Tensor, huber_c: float | None) -> torch.Tensor:
    """Mean over the batch of d(f_θ, y): pseudo-Huber √(‖a − b‖² + c²) − c over each sample's entries (iCT),
    or the mean squared error per entry when ``huber_c`` is None (L2). Returns a scalar."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have one shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    diff = (prediction - target).flatten(1)  # (B, d)
    if huber_c is None:
        return diff.pow(2).mean()
    c = check_number("huber_c", huber_c, minimum=0)
    return ((diff.pow(2).sum(1) + c**2).sqrt() - c).mean()


def consistency_multistep_sample(
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    timesteps: Sequence[int] | torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The multistep consistency sampler (CM Algorithm 1; what diffusers' LCMScheduler does), in a few lines.

    ``f(x, t)`` is the consistency function (B, L, h, w) at timestep t; ``timesteps`` descending (τ_1 > … > τ_m).
    The noise is drawn from ``generator`` in the pipeline's order: ε_T first, then one ε per step but the last."""
    timesteps = [int(t) for t in timesteps]
    x = torch.randn(shape, generator=generator)  # x_{τ_1} = ε_T  (init_noise_sigma = 1)
    for i, t in enumerate(timesteps):
        x0 = f(x, torch.tensor(t))  # x̂_0 = f_θ(x_τ, τ)
        if i == len(timesteps) - 1:
            return x0
        ab_next = alphas_cumprod[timesteps[i + 1]]
        noise = torch.randn(shape, generator=generator)
        x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * noise  # x_{τ'} = √ᾱ_{τ'}·x̂_0 + √(1−ᾱ_{τ'})·ε
    raise ValueError("timesteps must not be empty: give at least one timestep")


# ------------------------------------------------------------------------------------------- configuration


# Why these defaults (benchmarks/distill_lcm.py, benchmarks/results/distill_lcm.json; n = 500 prompts, the same
# prompts and z_T for every point, teacher DDIM-25 at w = 3: digit adherence 0.956, FID-MNIST 245 ± 26):
# - the student converges towards the *guided* teacher: at 100 steps its 2-step samples are still under-guided (FID
#   158-186, lower than the teacher's own 245 because w = 3 costs FID) and by 300-800 steps their FID is the
#   teacher's (within its paired SE of ~14); adherence stays within 0.02 of the teacher all along;
# - skip k = 100 (N = 10 grid timesteps) against k = 40 (N = 25, the teacher's own DDIM-25 grid), 800 steps each:
#   2-step adherence minus the teacher's −0.008 ± 0.010 against −0.018 ± 0.011, FID +30 ± 14 against +14 ± 15
#   (fewer hops for the consistency to propagate through; the coarser teacher step costs a little FID);
# - lr 2e-4 constant after 20 warm-up steps (the loop is then the same whether it stops on steps or on time, so a
#   time-limited run is reproduced by max_steps = the steps it reached); EMA target μ = 0.95 as LCM; batch 32;
# - 185 steps: what 300 s on 2 threads reached on this shared machine (load average 4-5; 0.62 steps/s, where one
#   thread made 4.5 steps/s): 2-step adherence 0.960 against the teacher's 0.956 (+0.004 ± 0.010), FID 227 (−18 ±
#   13). The 800-step run above stays within 0.02 as well, so more steps (a faster machine) do not break the target.
#   Speed depends on the load far more than on the code: 100 steps at load ~1 took 6.4 s on 2 threads (15.6
#   steps/s) and 10.1 s on 1 thread (9.9 steps/s); at load 4-5, 2 threads fell to 0.62 steps/s.
@dataclass
class DistillConfig:
    """Settings of :func:`distill_consistency`. The defaults are the run shipped in ``data/pretrained/tiny_sd_lcm``
    (benchmarks/distill_lcm.py): one call ``distill_consistency(*load_tiny_sd(), DistillConfig())`` reproduces it
    (same seed, same data, same 185 steps; no time limit, so a slower machine gives the same weights)."""

    max_steps: int | None = 185  # stop after this many steps …
    time_budget_s: float | None = None  # … or after this many seconds of the loop, whichever comes first
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 20
    skip: int = 100  # k: N = T / k = 10 grid timesteps (LCMScheduler's original_inference_steps)
    guidance_scale: float = 3.0  # w of the teacher's step: the course's tiny SD guidance (notebook 07)
    ema_decay: float = 0.95  # μ of the target network (LCM: 0.95); 0 = stop-gradient copy of θ
    huber_c: float | None = 0.0076  # pseudo-Huber c = 0.00054·√(4·7·7) (iCT); None: L2
    grad_clip: float | None = 1.0
    num_images: int | None = 8_000  # the first N MNIST training images (their latents), as the teacher's recipe
    caption_drop_prob: float = 0.25  # attribute words dropped as in the teacher's training captions
    seed: int = 0

    def __post_init__(self):
        check_config_fields(
            self, counts=("batch_size", "skip"), optional_counts=("max_steps", "num_images"),
            indices=("warmup_steps", "seed"), positive=("lr",), non_negative=("guidance_scale", "grad_clip"),
            fractions=("caption_drop_prob",), decays=("ema_decay",),
        )  # fmt: skip
        if self.time_budget_s is not None:
            check_number("time_budget_s", self.time_budget_s, minimum=0)
            if self.time_budget_s <= 0:
                raise ValueError(f"time_budget_s must be > 0 seconds (None: no time limit), got {self.time_budget_s}")
        if self.huber_c is not None:
            check_number("huber_c", self.huber_c, minimum=0)
        if self.max_steps is None and self.time_budget_s is None:
            raise ValueError("give max_steps or time_budget_s (or both): the loop needs a point to stop")

    def to_dict(self) -> dict:
        return asdict(self)


def quick_config(**overrides) -> DistillConfig:
    """The default config, shrunk in quick mode (``DIFFUSION_LAB_SMOKE=1``: 10 steps on 500 images)."""
    base = {"max_steps": pick(DistillConfig.max_steps, 10), "num_images": pick(DistillConfig.num_images, 500)}
    return DistillConfig(**{**base, **overrides})


# ------------------------------------------------------------------------------------------- schedulers


def lcm_scheduler_for(teacher_scheduler, original_inference_steps: int):
    """diffusers' ``LCMScheduler.from_config`` with the teacher's betas and prediction type, and
    ``original_inference_steps`` = N, the number of grid timesteps the student was distilled on."""
    from diffusers import LCMScheduler  # lazy: the bridge layer's dependency

    cfg = teacher_scheduler.config
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "set_alpha_to_one", "rescale_betas_zero_snr")  # fmt: skip
    kwargs = {key: cfg[key] for key in keys if key in cfg}
    if kwargs.get("rescale_betas_zero_snr"):
        raise ValueError("a zero-terminal-SNR teacher is not supported: LCM's c_out needs ᾱ_{T−1} > 0")
    n = check_int("original_inference_steps", original_inference_steps)
    return LCMScheduler.from_config({**kwargs, "original_inference_steps": n, "clip_sample": False})


# -------------------------------------------------------------------------------------------- the loop


def _latents_and_captions_data(teacher_pipe, config: DistillConfig, images, labels):
    """z_0 (N, L, h, w) = s·μ(x) through the teacher's autoencoder (:func:`encode_images`), labels and attributes."""
    if images is None:
        images, labels = load_mnist("train", limit=config.num_images)
    elif labels is None:
        raise ValueError("pass labels (N,) with images")
    check_tensor("images", images, "(N, 1, 28, 28) in [-1, 1]")
    with torch.no_grad():
        latents = torch.cat([encode_images(teacher_pipe, images[i : i + 1000]) for i in range(0, len(images), 1000)])
    return latents, labels, attributes(images)


def distill_consistency(
    teacher_pipe: TinyStableDiffusionPipeline,
    bins: AttributeBins,
    config: DistillConfig | None = None,
    *,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    progress: bool = True,
    callback: Callable[[int, float, nn.Module], None] | None = None,
) -> tuple[TinyStableDiffusionPipeline, dict]:
    """Latent consistency distillation (LCD Algorithm 1) of ``teacher_pipe`` (a v- or ε-prediction tiny SD) into a
    few-step student, starting from the teacher's U-Net weights; the text encoder and autoencoder are the teacher's
    (frozen, shared). Stops at ``config.max_steps`` or ``config.time_budget_s`` seconds of the loop, whichever first.

    Data: MNIST training images (the first ``num_images``, or ``images``/``labels``) encoded once by the teacher's
    autoencoder, captioned as in training (:func:`captions_for`, attribute words dropped with
    ``caption_drop_prob``). ``callback(step, loss, student_unet)`` runs after each step.

    Returns the student pipeline (diffusers' LCMScheduler with ``original_inference_steps`` = N; sample it with
    :func:`sample_student`) and a log: steps, seconds (loop and data), losses, config, grid size N, threads, load
    average.
    """
    config = config or DistillConfig()
    if not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig or None, got {type(config).__name__}")
    if not isinstance(teacher_pipe, TinyStableDiffusionPipeline):
        raise TypeError(
            f"teacher_pipe must be a TinyStableDiffusionPipeline (load_tiny_sd()), got {type(teacher_pipe).__name__}"
        )
    sched = teacher_pipe.scheduler
    prediction_type = sched.config["prediction_type"]
    grid = distillation_grid(sched.config["num_train_timesteps"], config.skip)  # (N+1,) [0, k−1, …, T−1]
    num_grid = len(grid) - 1
    ab = sched.alphas_cumprod.float()  # (T,)
    device = teacher_pipe.device

    t0 = time.perf_counter()
    latents, labels, attrs = _latents_and_captions_data(teacher_pipe, config, images, labels)
    data_seconds = time.perf_counter() - t0

    teacher = teacher_pipe.unet.eval()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(config.seed)
    student = copy.deepcopy(teacher).train().requires_grad_(True)  # θ ← φ (LCD starts from the teacher)
    ema = EMA(student, config.ema_decay, warmup=False)  # θ⁻: the target network
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(config.seed)
    tok = teacher_pipe.tokenizer
    kw = {"pooled": bool(teacher.config.pooled_dim)}
    uc, umask, upooled = teacher_pipe.encode_prompt([""])  # (1, M, D), (1, M), (1, D): the empty prompt ∅

    def net(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, c, mask, pooled) -> torch.Tensor:
        extra = {"pooled_text": pooled} if kw["pooled"] else {}
        return unet(x, t, encoder_hidden_states=c, encoder_attention_mask=mask, **extra)

    losses: list[float] = []
    step, n_data = 0, len(latents)
    bar = tqdm(total=config.max_steps, desc="consistency distillation", disable=not progress, mininterval=1.0)
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if (config.max_steps is not None and step >= config.max_steps) or (
            config.time_budget_s is not None and elapsed >= config.time_budget_s and step > 0
        ):
            break
        idx = torch.randint(0, n_data, (config.batch_size,), generator=g)
        z0 = latents[idx].to(device)  # (B, L, h, w)
        captions = captions_for(labels[idx], None, bins, attrs={k: v[idx] for k, v in attrs.items()}, generator=g,
                                drop_prob=config.caption_drop_prob)  # fmt: skip
        with torch.no_grad():
            ids = tok(captions, padding="max_length", max_length=teacher_pipe.max_length, return_tensors="pt")
            mask = ids["attention_mask"].to(device)  # (B, M)
            text = teacher_pipe.text_encoder(ids["input_ids"].to(device), attention_mask=mask)
            c, pooled = text.last_hidden_state, text.pooler_output  # (B, M, D), (B, D)
        b = len(z0)
        n = torch.randint(1, num_grid + 1, (b,), generator=g)  # grid index n ∈ {1 … N}  (B,)
        t, s = grid[n], grid[n - 1]  # t_n, t_{n−1}  (B,)
        noise = torch.randn(z0.shape, generator=g)
        x_t = q_sample(z0, t, noise.to(device), ab)  # 1. x_{t_n} = √ᾱ z_0 + √(1−ᾱ) ε   (B, L, h, w)
        with torch.no_grad():
            # 2. the teacher's guided DDIM step t_n → t_{n−1}: both branches as one batch [∅; c]
            both = net(teacher, torch.cat([x_t, x_t]), torch.cat([t, t]).to(device),
                       torch.cat([uc.expand_as(c), c]), torch.cat([umask.expand_as(mask), mask]),
                       torch.cat([upooled.expand_as(pooled), pooled]))  # fmt: skip
            # (2B, L, h, w)
            v_uncond, v_cond = both.chunk(2)
            x_s = guided_ddim_skip_step(x_t, v_cond, v_uncond, config.guidance_scale, ab[t], ab[s], prediction_type)

            # 3. the target y = f_θ⁻(x̂_{t_{n−1}}, t_{n−1})
            def target_pred(x, tt, c=c, mask=mask, pooled=pooled):  # the target network θ⁻ on this batch's text
                return net(ema.model, x, tt.to(device), c, mask, pooled)

            target = consistency_target(target_pred, x_s, s, ab, prediction_type)
        # 4. the student's f_θ(x_{t_n}, t_n) and the loss
        pred = consistency_function(net(student, x_t, t.to(device), c, mask, pooled), x_t, t, ab, prediction_type)
        loss = consistency_loss(pred, target, config.huber_c)
        lr = config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))  # linear warm-up, then constant
        optimizer_step(loss, optimizer, student.parameters(), lr=lr, max_grad_norm=config.grad_clip, ema=ema,
                       model=student, step=step)  # fmt: skip
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.4f}", refresh=False)
        if callback is not None:
            callback(step, losses[-1], student)
    seconds = time.perf_counter() - t0
    bar.close()
    for key, value in teacher.state_dict().items():  # the teacher must come out exactly as it went in
        if not torch.equal(value, teacher_state[key]):
            raise RuntimeError(f"the teacher's {key} changed during distillation: it must stay frozen")

    student.eval().requires_grad_(False)
    scheduler = lcm_scheduler_for(sched, num_grid)
    student_pipe = TinyStableDiffusionPipeline(
        teacher_pipe.vae, teacher_pipe.text_encoder, teacher_pipe.tokenizer, student, scheduler
    )
    log = {
        "steps": step,
        "seconds": seconds,
        "steps_per_s": step / seconds if seconds > 0 else float("nan"),
        "data_seconds": data_seconds,
        "num_images": n_data,
        "losses": losses,
        "final_loss": sum(losses[-50:]) / max(1, min(50, len(losses))),
        "original_inference_steps": num_grid,
        "config": config.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    return student_pipe, log


# ---------------------------------------------------------------------------------------------- sampling


def _distilled_steps(pipe: TinyStableDiffusionPipeline) -> int:
    """N, the number of grid timesteps the student was distilled on (its LCMScheduler's original_inference_steps)."""
    sched = pipe.scheduler
    if type(sched).__name__ != "LCMScheduler":
        raise ValueError(
            f"this pipeline samples with {type(sched).__name__}, not LCMScheduler: sample_student is for a distilled "
            "student (distill_consistency or load_student); sample a teacher with pipe(prompt, ...) instead"
        )
    return int(sched.config["original_inference_steps"])


def sample_student(
    pipe: TinyStableDiffusionPipeline,
    prompt: str | Sequence[str],
    num_inference_steps: int = 2,
    generator: torch.Generator | None = None,
    **kwargs,
):
    """Sample a distilled student with its LCMScheduler in 1 … N steps and *no* classifier-free guidance (w is folded
    into the student: ``guidance_scale`` = 1). More steps than the N timesteps it was distilled on is a ValueError
    that says what to do. Other keyword arguments go to the pipeline (``latents``, ``output_type``, …)."""
    steps = check_int("num_inference_steps", num_inference_steps)
    limit = _distilled_steps(pipe)
    if steps > limit:
        raise ValueError(
            f"num_inference_steps={steps} is more than the {limit} timesteps this student was distilled on "
            f"(original_inference_steps = {limit}): ask for 1 … {limit} steps (1-4 is what it is for), sample the "
            f"teacher (load_tiny_sd()) with DDIM for more, or distil again with a smaller skip k (N = T / k)"
        )
    if "guidance_scale" in kwargs and kwargs["guidance_scale"] != 1.0:
        raise ValueError(
            f"guidance_scale={kwargs['guidance_scale']}: the student has the teacher's guidance folded in "
            "(DistillConfig.guidance_scale); sample it with guidance_scale=1 (leave it out)"
        )
    kwargs.pop("guidance_scale", None)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=1.0, generator=generator, **kwargs)


# ------------------------------------------------------------------------------------------- save / load


def pretrained_student_path() -> Path:
    """Where the shipped student lives: ``data/pretrained/tiny_sd_lcm`` (or under ``$DIFFUSION_LAB_DATA``)."""
    return pretrained_tiny_sd_path("tiny_sd_lcm")


def save_student(
    pipe: TinyStableDiffusionPipeline, bins: AttributeBins, directory: str | os.PathLike, recipe: dict
) -> Path:
    """The student as a pipeline folder (safetensors weights, its LCMScheduler config, caption bins:
    :func:`save_tiny_sd`) plus ``recipe.json``: the config, steps, seconds, load average, threads and any measured
    figures in ``recipe``. recipe.json is written atomically first; ``model_index.json`` (last) marks a whole save."""
    steps = _distilled_steps(pipe)
    if not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict (e.g. the log of distill_consistency), got {type(recipe).__name__}")
    recipe = {k: v for k, v in recipe.items() if k != "losses"}
    recipe["original_inference_steps"] = steps
    directory = Path(directory)
    write_json_atomic(directory / RECIPE_FILE, recipe)
    return save_tiny_sd(pipe, bins, directory)


def load_student(directory: str | os.PathLike | None = None) -> tuple[TinyStableDiffusionPipeline, AttributeBins, dict]:
    """(student pipeline, caption bins, recipe) from a folder written by :func:`save_student` (default: the shipped
    one, :func:`pretrained_student_path`)."""
    directory = Path(directory) if directory is not None else pretrained_student_path()
    path = directory / RECIPE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} holds no {RECIPE_FILE}: pass a folder written by save_student, or distil one with "
            "benchmarks/distill_lcm.py (about 5 minutes on a CPU)"
        )
    try:
        recipe = json.loads(path.read_text("utf-8"))
    except ValueError as e:
        raise FileError(f"{path} is not valid JSON ({e}): save the student again with save_student") from e
    pipe, bins = load_tiny_sd(directory)
    _distilled_steps(pipe)  # a folder without an LCMScheduler is not a student
    return pipe, bins, recipe
