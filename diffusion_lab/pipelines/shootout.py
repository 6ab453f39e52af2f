"""The sampler shoot-out: quality against network evaluations (NFE) for the tiny SD (U-Net, v-prediction) and the
tiny SD3 (MMDiT, rectified flow), with standard errors and common random numbers.

Notation
--------
=======================  ==========  ==============================================================================
code                     symbol      meaning
=======================  ==========  ==============================================================================
``steps``                N           ``num_inference_steps`` given to ``scheduler.set_timesteps``
``nfe``                  NFE         network function evaluations of one run: how often the denoiser is called
``Sampler.cost(N)``      NFE(N)      N for Euler, DDIM, DPM-Solver++(2M), Euler-a; 2N − 1 for Heun (its last step
                                     to σ = 0 is Euler, Karras et al. 2022, Alg. 1 line 8)
``guidance_scale``       w           classifier-free guidance ε̃ = ε_∅ + w·(ε_c − ε_∅): its batch [∅; c] of 2 is ONE
                                     evaluation of the denoiser at one (x, t), so guidance does not double the NFE
``n``                    n           images per point (one prompt each); the same prompts and the same initial noise
                                     z_T for every sampler and NFE (common random numbers: differences are paired)
``digit_adherence``      A           (1/n) Σᵢ 1[ŷᵢ = yᵢ] (:func:`~diffusion_lab.mnist.metrics.prompt_adherence`),
                                     SE √(A(1 − A)/n) (binomial)
``attribute_adherence``  A_attr      share of attribute words met (:func:`~diffusion_lab.mnist.captions.attribute_adherence`),
                                     SE √(p(1 − p)/m) over its m requests
``fid``                  FID         FID-MNIST (:func:`~diffusion_lab.mnist.metrics.fid_mnist`'s number, to 1e-8,
                                     in the eigenvalue form the bootstrap needs: no scipy ``sqrtm`` per point), SE = sd
                                     of the FID over bootstrap resamples of the n images (Efron 1979)
=======================  ==========  ==============================================================================

Indexing: ``records`` is one :class:`ShootoutRecord` per (sampler, N), samplers in the order given, N increasing.
Image i of every record was drawn from the same prompt ``prompts[i]`` and the same noise z_T[i].

The prompts are those :mod:`benchmarks.cpu_train` evaluates the tiny SD with (``latent_prompts``): digits cycling
0..9, and per digit 4 plain prompts ("a seven") and one for each attribute word ("a thick seven"), so that 60 % of the
prompts ask for an attribute and every word is asked equally often (for n a multiple of 100).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from diffusion_lab.mnist.captions import DIGIT_NAMES, attribute_adherence
from diffusion_lab.mnist.classifier import MnistClassifier, classify, load_classifier
from diffusion_lab.mnist.metrics import ReferenceStats, fid_floor, reference_stats
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusion_lab.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusion_lab.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusion_lab.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusion_lab.schedulers.scheduling_sigma_utils import FLOW_CONFIG_MESSAGE
from diffusion_lab.utils.errors import check_int, check_number
from diffusion_lab.utils.progress import tqdm

__all__ = [
    "FLOW_LABELS",
    "METRICS",
    "VP_LABELS",
    "Sampler",
    "ShootoutRecord",
    "bootstrap_fid",
    "eval_prompts",
    "flow_samplers",
    "paired_difference",
    "run_shootout",
    "steps_for_nfe",
    "vp_samplers",
]

# --------------------------------------------------------------------------------------------- the samplers


def one_per_step(steps: int) -> int:
    """NFE(N) = N: one denoiser call per step (DDIM, Euler, Euler-a, DPM-Solver++(2M): a multistep method reuses the
    previous step's x̂_0 instead of calling the network again, Lu et al. 2022, Alg. 2)."""
    return steps


def heun_cost(steps: int) -> int:
    """NFE(N) = 2N − 1: Heun evaluates at σ_i and at the Euler guess at σ_{i+1}, except on the last step to σ = 0,
    which is plain Euler (Karras et al. 2022, Alg. 1 line 8); diffusers' HeunDiscreteScheduler has 2N − 1 timesteps."""
    return 2 * steps - 1


@dataclass(frozen=True)
class Sampler:
    """One line of the shoot-out: ``label``, ``make(base_config) → scheduler`` (a fresh scheduler built from the
    pipeline's shipped scheduler config) and ``cost(N) → NFE`` for a run of N steps (classifier-free guidance counted
    as one evaluation: the guided batch [∅; c] is one call of the denoiser at one (x, t))."""

    label: str
    make: Callable[[dict], object]
    cost: Callable[[int], int] = one_per_step

    def nfe(self, steps: int) -> int:
        """Network evaluations of a run of ``steps`` steps."""
        return self.cost(check_int("steps", steps))


def steps_for_nfe(sampler: Sampler, nfe: int) -> tuple[int, int]:
    """(num_inference_steps, actual NFE): the most steps whose NFE does not exceed ``nfe``.

    Heun costs 2N − 1, so an even NFE is not reachable: NFE 4 gives N = 2 (3 evaluations). ``ValueError`` if no step
    count fits (``nfe`` < 1, or below the cost of one step)."""
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a Sampler (from vp_samplers / flow_samplers), got {type(sampler).__name__}")
    try:
        nfe = check_int("nfe", nfe)
    except ValueError:
        raise ValueError(f"nfe must be an integer >= 1 (network evaluations per sample), got {nfe!r}") from None
    if sampler.nfe(1) > nfe:
        raise ValueError(
            f"{sampler.label} needs {sampler.nfe(1)} network evaluations for one step, more than nfe={nfe}: "
            f"ask for nfe >= {sampler.nfe(1)}"
        )
    steps = 1
    while sampler.nfe(steps + 1) <= nfe:  # the costs grow with N
        steps += 1
    return steps, sampler.nfe(steps)


def _from_base(cls, **options) -> Callable[[dict], object]:
    def make(config):
        return cls.from_config(config, **options)

    make.__qualname__ = f"{cls.__name__}.from_config(config, **{options})"
    return make


def _vp_lineup() -> dict[str, tuple[type, dict, Callable[[int], int]]]:
    """label → (our scheduler class, options on top of the shipped config, cost)."""
    dpm = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    return {
        "DDIM": (DDIMScheduler, {}, one_per_step),  # as shipped: trailing spacing, η = 0
        "Euler": (EulerDiscreteScheduler, {}, one_per_step),
        "Euler Karras": (EulerDiscreteScheduler, {"use_karras_sigmas": True}, one_per_step),
        "Heun": (HeunDiscreteScheduler, {}, heun_cost),
        "Heun Karras": (HeunDiscreteScheduler, {"use_karras_sigmas": True}, heun_cost),
        "DPM++ 2M": (DPMSolverMultistepScheduler, dpm, one_per_step),
        "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {**dpm, "use_karras_sigmas": True}, one_per_step),
        "Euler a": (EulerAncestralDiscreteScheduler, {}, one_per_step),
    }


VP_LABELS = tuple(_vp_lineup())
FLOW_LABELS = ("flow Euler shift 1", "flow Euler shift 3", "flow Heun shift 1")


def _pick(labels: Sequence[str] | None, known: tuple[str, ...], other: tuple[str, ...], why_not: str) -> list[str]:
    if labels is None:
        return list(known)
    if isinstance(labels, str) or not all(isinstance(s, str) for s in labels):
        raise TypeError(f"labels must be a list of sampler labels from {list(known)}, got {labels!r}")
    for label in labels:
        if label in other:
            raise ValueError(f"{label!r}: {why_not}")
        if label not in known:
            raise ValueError(f"unknown sampler {label!r}: choose from {list(known)}")
    return list(labels)


def vp_samplers(config, labels: Sequence[str] | None = None) -> list[Sampler]:
    """The U-Net line-up (all our schedulers, each ``from_config`` of the shipped DDIM config, so v-prediction and
    its ᾱ-schedule carry over): DDIM (trailing, as shipped), Euler, Euler + Karras σ, Heun, Heun + Karras σ,
    DPM-Solver++(2M), DPM-Solver++(2M) + Karras σ, Euler-ancestral; ``labels`` picks some of :data:`VP_LABELS`.

    Each scheduler is built once here, so a flow-matching config fails now, with the schedulers' own message."""
    lineup = _vp_lineup()
    picked = _pick(labels, VP_LABELS, FLOW_LABELS, "a flow-matching sampler: use flow_samplers(config)")
    out = []
    for label in picked:
        cls, options, cost = lineup[label]
        if cls is DDIMScheduler and _looks_flow(config):  # DDIM's from_config would silently drop the flow keys
            raise ValueError(FLOW_CONFIG_MESSAGE.format(cls=cls.__name__))
        sampler = Sampler(label, _from_base(cls, **options), cost)
        sampler.make(config)  # the schedulers refuse flow configs (and Karras σ on them) with FLOW_CONFIG_MESSAGE
        out.append(sampler)
    return out


def _looks_flow(config) -> bool:
    return hasattr(config, "get") and ("shift" in config or str(config.get("_class_name", "")).startswith("FlowMatch"))


def _flow_euler(shift: float) -> Callable[[dict], object]:
    def make(config):
        return FlowMatchEulerDiscreteScheduler.from_config(config, shift=shift)

    make.__qualname__ = f"FlowMatchEulerDiscreteScheduler.from_config(config, shift={shift})"
    return make


def _flow_heun(shift: float) -> Callable[[dict], object]:
    def make(config):
        from diffusers import FlowMatchHeunDiscreteScheduler  # lazy: diffusers' top level is heavy; only this needs it

        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=config["num_train_timesteps"], shift=shift)

    make.__qualname__ = f"diffusers.FlowMatchHeunDiscreteScheduler(shift={shift})"
    return make


def flow_samplers(config, labels: Sequence[str] | None = None) -> list[Sampler]:
    """The flow line-up for the tiny SD3: our flow Euler at shift 1 (as shipped) and 3 (SD3's), and diffusers'
    ``FlowMatchHeunDiscreteScheduler`` at shift 1 (second order, 2N − 1 evaluations; it runs unchanged through
    :class:`~diffusion_lab.pipelines.stable_diffusion_3.TinySD3Pipeline`); ``labels`` picks some of :data:`FLOW_LABELS`.

    Karras σ and the other ᾱ-schedule samplers do not apply to a flow model: asking for them raises the schedulers'
    ``FLOW_CONFIG_MESSAGE``."""
    if not _looks_flow(config):
        raise ValueError(
            "flow_samplers needs a flow-matching scheduler config (tiny_sd3's FlowMatchEulerDiscreteScheduler), got "
            f"{dict(config).get('_class_name', type(config).__name__)}: for the U-Net use vp_samplers(config)"
        )
    why = FLOW_CONFIG_MESSAGE.format(cls="the ᾱ-schedule samplers (vp_samplers)")
    picked = _pick(labels, FLOW_LABELS, VP_LABELS, why)
    makers = {
        "flow Euler shift 1": (_flow_euler(1.0), one_per_step),
        "flow Euler shift 3": (_flow_euler(3.0), one_per_step),
        "flow Heun shift 1": (_flow_heun(1.0), heun_cost),
    }
    return [Sampler(label, *makers[label]) for label in picked]


# ------------------------------------------------------------------------------------------------ the prompts

# as benchmarks/cpu_train.py EVAL_WORDS: per digit 4 plain prompts and one per attribute word
EVAL_WORDS = (None, "thick", None, "thin", "slanted", None, "upright", "small", None, "large")


def eval_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """n prompts (digits cycling 0..9, attribute words cycling through EVAL_WORDS per digit) and their digits (n,):
    the evaluation prompts of ``benchmarks/cpu_train.py`` (``latent_prompts``)."""
    n = check_int("n", n)
    labels = torch.arange(n) % 10  # (n,)
    prompts = []
    for i, d in enumerate(labels.tolist()):
        word = EVAL_WORDS[(i // 10 + d) % len(EVAL_WORDS)]  # any 10 consecutive prompts ask for every word once
        words = [word, DIGIT_NAMES[d]] if word else [DIGIT_NAMES[d]]
        prompts.append(("an " if words[0][0] in "aeiu" else "a ") + " ".join(words))
    return prompts, labels


# ------------------------------------------------------------------------------------------------ the metrics


def _sqrtm_psd(sigma: torch.Tensor) -> torch.Tensor:
    lam, u = torch.linalg.eigh(sigma)  # Σ = U Λ Uᵀ
    return u @ lam.clamp(min=0).sqrt().diag() @ u.T  # Σ^½, symmetric


def _fid_from_features(f: torch.Tensor, ref_mu: torch.Tensor, ref_sigma: torch.Tensor, ref_half: torch.Tensor) -> float:
    """FID = ‖μ − μ_r‖² + tr Σ + tr Σ_r − 2 tr (Σ Σ_r)^½ (Heusel et al. 2017, Eq. 6), with tr (Σ Σ_r)^½ = Σ √λ over
    the eigenvalues λ of Σ_r^½ Σ Σ_r^½ (similar to Σ Σ_r, and symmetric)."""
    mu = f.mean(0)  # (D,)
    c = f - mu  # (n, D)
    sigma = c.T @ c / (len(f) - 1)  # (D, D)
    root = torch.linalg.eigvalsh(ref_half @ sigma @ ref_half).clamp(min=0).sqrt().sum()
    return ((mu - ref_mu).pow(2).sum() + sigma.trace() + ref_sigma.trace() - 2 * root).item()


def bootstrap_fid(
    features: Sequence[torch.Tensor], reference: ReferenceStats, *, draws: int = 200, seed: int = 0
) -> torch.Tensor:
    """FIDs of ``draws`` bootstrap resamples (draws, k): each draw resamples the image indices i ∈ 1..n with
    replacement and applies the SAME indices to each of the k feature sets (n, D) (paired, for runs that share their
    prompts and noise). Its sd over the draws is the FID's standard error; for a difference of two runs, the sd of
    the per-draw differences is the paired SE."""
    draws = check_int("draws", draws, minimum=2)
    n = len(features[0])
    if any(len(f) != n for f in features):
        raise ValueError(f"every feature set must hold the same n images, got {[len(f) for f in features]}")
    ref_mu, ref_sigma = torch.as_tensor(reference.mu), torch.as_tensor(reference.sigma)  # (D,), (D, D) float64
    ref_half = _sqrtm_psd(ref_sigma)
    g = torch.Generator().manual_seed(seed)
    feats = [f.double() for f in features]
    out = torch.empty(draws, len(feats), dtype=torch.float64)
    for b in range(draws):
        idx = torch.randint(n, (n,), generator=g)  # (n,) with replacement
        for k, f in enumerate(feats):
            out[b, k] = _fid_from_features(f[idx], ref_mu, ref_sigma, ref_half)
    return out


METRICS = ("digit_adherence", "attribute_adherence", "fid")


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields do not compare to one bool
class ShootoutRecord:
    """One point of the shoot-out. Numbers are plain floats; the per-image fields (``digit_hits`` (n,) bool,
    ``attribute_hits`` (n,) float, NaN where the prompt names no attribute, ``features`` (n, D) classifier features)
    let :func:`paired_difference` compare two records image by image. ``seconds``: wall time of sampling the n
    images (text encoding, the loop and decoding; not the metrics), at ``threads`` torch threads and ``load`` (the
    1-minute load average when it finished)."""

    model: str
    sampler: str
    steps: int
    nfe: int
    n: int
    guidance_scale: float
    digit_adherence: float
    digit_adherence_se: float
    attribute_adherence: float
    attribute_adherence_se: float
    attribute_requests: int
    fid: float
    fid_se: float
    fid_floor: float
    seconds: float
    threads: int
    load: float
    digit_hits: torch.Tensor = field(repr=False)
    attribute_hits: torch.Tensor = field(repr=False)
    features: torch.Tensor = field(repr=False)

    def to_dict(self, digits: int = 4) -> dict:
        """The plain numbers (for JSON), rounded to ``digits`` decimals."""
        skip = ("digit_hits", "attribute_hits", "features")
        out = {}
        for name in self.__dataclass_fields__:
            if name in skip:
                continue
            value = getattr(self, name)
            out[name] = round(value, digits) if isinstance(value, float) else value
        return out


def paired_difference(
    a: ShootoutRecord, b: ShootoutRecord, metric: str, *, reference: ReferenceStats | None = None, draws: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """(a − b, its paired SE) for ``metric`` in :data:`METRICS`, for two records of one :func:`run_shootout` call
    (the same prompts and noise). Adherence: the mean of the per-image differences dᵢ = hitᵢ(a) − hitᵢ(b), SE =
    sd(d)/√n (paired: what the shared noise does to both cancels). FID: the sd of FID(a) − FID(b) over bootstrap
    resamples that take the same images from both; needs ``reference`` (:func:`reference_stats`)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if a.n != b.n or not torch.equal(a.attribute_hits.isnan(), b.attribute_hits.isnan()):
        raise ValueError("the two records must come from the same prompts and noise (one run_shootout call)")
    if metric == "fid":
        if not isinstance(reference, ReferenceStats):
            raise TypeError("metric='fid' needs reference=reference_stats(classifier), the statistics the FIDs used")
        fids = bootstrap_fid([a.features, b.features], reference, draws=draws, seed=seed)  # (draws, 2)
        return a.fid - b.fid, (fids[:, 0] - fids[:, 1]).std().item()
    if metric == "digit_adherence":
        d = a.digit_hits.double() - b.digit_hits.double()  # (n,)
    else:
        asked = ~a.attribute_hits.isnan()  # (n,) prompts that name an attribute
        d = a.attribute_hits[asked].double() - b.attribute_hits[asked].double()  # (m,)
    return d.mean().item(), (d.std() / len(d) ** 0.5).item()


# ------------------------------------------------------------------------------------------------ the run


def _attribute_hits(images: torch.Tensor, prompts: list[str], bins) -> torch.Tensor:
    """(n,) 1.0 / 0.0 where the image meets its prompt's attribute word, NaN where the prompt names none (each prompt
    of :func:`eval_prompts` names at most one), by :func:`attribute_adherence` on the image alone."""
    out = torch.full((len(images),), float("nan"), dtype=torch.float64)
    for i, p in enumerate(prompts):
        a = attribute_adherence(images[i : i + 1], [p], bins)
        if a["requests"]:
            out[i] = a["adherence"]
    return out


def _binomial_se(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5 if n else float("nan")  # √(p(1 − p)/n)


def run_shootout(
    pipe,
    bins,
    samplers: Sequence[Sampler],
    nfes: Sequence[int],
    *,
    n: int = 500,
    guidance_scale: float = 2.0,
    seed: int = 0,
    batch_size: int = 250,
    classifier: MnistClassifier | None = None,
    reference: ReferenceStats | None = None,
    fid_draws: int = 200,
    model: str | None = None,
    progress: bool = True,
) -> list[ShootoutRecord]:
    """Sample n images per (sampler, NFE) with ``pipe`` (a tiny SD or SD3 pipeline loaded with its caption ``bins``)
    and score them: one :class:`ShootoutRecord` per distinct step count, samplers in order, NFE increasing.

    Every NFE of ``nfes`` becomes the most steps that fit it (:func:`steps_for_nfe`); two NFEs that give the same
    steps (Heun at NFE 1 and 2) are run once. The prompts are :func:`eval_prompts` (n), the initial noise z_T one
    draw from ``seed``, both the same for every point; Euler-a's per-step noise comes from a generator seeded
    ``seed + 1`` afresh for each point. The denoiser's calls are counted by a forward hook and must equal the
    sampler's NFE (guidance's batch [∅; c] is one call). ``guidance_scale`` 2 is the one ``benchmarks/cpu_train.py``
    compares the two tiny models at. The pipeline's scheduler is put back afterwards.
    """
    n = check_int("n", n, minimum=2)
    batch_size = check_int("batch_size", batch_size)
    guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)
    if not samplers or not all(isinstance(s, Sampler) for s in samplers):
        raise TypeError("samplers must be a non-empty list of Sampler (from vp_samplers / flow_samplers)")
    if isinstance(nfes, int) or not nfes:
        raise TypeError(f"nfes must be a non-empty list of integers >= 1, e.g. [1, 2, 4, 8], got {nfes!r}")
    plan = []  # (sampler, steps, nfe), checked before any work
    for sampler in samplers:
        seen = set()
        for steps, nfe in sorted(steps_for_nfe(sampler, k) for k in nfes):
            if steps not in seen:
                seen.add(steps)
                plan.append((sampler, steps, nfe))
    classifier = classifier if classifier is not None else load_classifier()
    reference = reference if reference is not None else reference_stats(classifier)
    floor = None  # FID₀(n), computed with the first point (it reads the MNIST training set)
    ref_mu, ref_sigma = torch.as_tensor(reference.mu), torch.as_tensor(reference.sigma)  # (D,), (D, D) float64
    ref_half = _sqrtm_psd(ref_sigma)  # Σ_r^½
    prompts, labels = eval_prompts(n)
    vae = pipe.vae
    latent_shape = (n, vae.config.latent_channels, 28 // pipe.vae_scale_factor, 28 // pipe.vae_scale_factor)
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed))  # (n, L, h, w) z_T, shared
    base, base_config = pipe.scheduler, pipe.scheduler.config
    model = model or type(pipe).__name__
    calls = [0]
    hook = pipe.denoiser.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    records = []
    try:
        for sampler, steps, nfe in tqdm(plan, desc=f"shoot-out {model}", disable=not progress):
            pipe.scheduler = sampler.make(base_config)
            g = torch.Generator().manual_seed(seed + 1)  # Euler-a's per-step noise
            calls[0], chunks, start = 0, [], time.perf_counter()
            for i in range(0, n, batch_size):
                out = pipe(prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance_scale,
                           latents=noise[i : i + batch_size].to(pipe.device), generator=g)  # fmt: skip
                chunks.append(out.images.cpu())
            seconds = time.perf_counter() - start
            batches = -(-n // batch_size)
            if calls[0] != nfe * batches:
                raise RuntimeError(
                    f"{sampler.label} with {steps} steps called the denoiser {calls[0] / batches:g} times per batch, "
                    f"but its cost says {nfe}: fix Sampler.cost"
                )
            images = torch.cat(chunks).clamp(-1, 1)  # (n, 1, 28, 28)
            floor = fid_floor(n, classifier, reference=reference) if floor is None else floor
            logits, feats = classify(images, classifier)  # (n, 10), (n, D)
            digit_hits = logits.argmax(1) == labels  # (n,)
            attr = attribute_adherence(images, prompts, bins)
            attr_hits = _attribute_hits(images, prompts, bins)
            a_digit = digit_hits.double().mean().item()
            fids = bootstrap_fid([feats], reference, draws=fid_draws, seed=seed)[:, 0]  # (draws,)
            records.append(ShootoutRecord(
                model=model, sampler=sampler.label, steps=steps, nfe=nfe, n=n, guidance_scale=guidance_scale,
                digit_adherence=a_digit, digit_adherence_se=_binomial_se(a_digit, n),
                attribute_adherence=attr["adherence"],
                attribute_adherence_se=_binomial_se(attr["adherence"], attr["requests"]),
                attribute_requests=attr["requests"],
                fid=_fid_from_features(feats.double(), ref_mu, ref_sigma, ref_half), fid_se=fids.std().item(),
                fid_floor=floor,
                seconds=seconds, threads=torch.get_num_threads(), load=os.getloadavg()[0],
                digit_hits=digit_hits, attribute_hits=attr_hits, features=feats,
            ))  # fmt: skip
    finally:
        hook.remove()
        pipe.scheduler = base
    return records
