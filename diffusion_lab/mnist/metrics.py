"""Metrics for generated MNIST digits, judged by a small classifier trained on MNIST.

Notation
--------
=========================  ============  ==================================================================
code                       symbol        meaning
=========================  ============  ==================================================================
``x``                      x             an image (1, 28, 28) in [−1, 1], the range the diffusion models use
``y``                      y             the digit the image was asked for (its prompt, class label 0..9)
``classifier(x)``          logits        (B, 10); the predicted digit is ŷ = argmax_c logits_c
``classifier.features``    f(x)          (B, D) penultimate layer (D = 128) before its ReLU; logits = W·ReLU(f) + b
``mu, sigma``              μ, Σ          mean (D,) and covariance (D, D) of f over a set of images
``frechet_distance``       FID           ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)
``fid_floor(n)``           FID₀(n)       FID of n *real* training images against the test set: what a perfect
                                         generator would score with n samples
``prompt_adherence``       A             (1/N) Σᵢ 1[ŷᵢ = yᵢ]
``diversity``              d, d_c, H     relative spread of f and entropy of the predicted digits
=========================  ============  ==================================================================

FID-MNIST
---------
The Fréchet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium") fits a Gaussian N(μ, Σ) to network features of generated and of real images and takes the
Fréchet (2-Wasserstein) distance between the two Gaussians (Dowson & Landau 1982). Inception-v3 features mean little
on 28×28 digits, so here the features are the penultimate layer of an MNIST classifier (``data/mnist_classifier.*``,
trained by ``data/train_classifier.py``), and the real statistics are those of the 10,000 MNIST test images.

Read an FID-MNIST with three cautions:

1. It is not comparable with Inception FIDs in papers, nor across classifier weights.
2. It is biased upwards for a finite number n of samples (Chong & Forsyth 2020, "Effectively Unbiased FID"): even
   real images score above 0, and the fewer images the higher. Compare FIDs only at equal n, and report each with
   :func:`fid_floor` for its n (:func:`evaluate` does both).
3. n should be well above D = 128, or Σ is singular (the distance still computes, with an ε offset, but is noisy).

Everything runs batched under ``torch.no_grad()`` on the classifier's device, with the classifier switched to eval
mode for the call (and put back as it was). Images are clamped to [−1, 1], as they would be when saved. Reference
statistics are computed per call (nothing is cached in the module); compute them once with :func:`reference_stats`
and pass them as ``reference=`` to score many sets of samples.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_lab.mnist.classifier import NUM_CLASSES, MnistClassifier, _check_images, _check_labels, classify
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.utils.errors import check_int

__all__ = [
    "ReferenceStats",
    "diversity",
    "evaluate",
    "feature_stats",
    "fid_floor",
    "fid_mnist",
    "frechet_distance",
    "prompt_adherence",
    "reference_stats",
]

_N_TRAIN = 60_000  # MNIST training images: the largest n a floor can draw


def prompt_adherence(
    images: torch.Tensor, labels: torch.Tensor, classifier: MnistClassifier, *, batch_size: int = 256
) -> float:
    """Share of images that the classifier reads as the digit they were asked for: A = (1/N) Σᵢ 1[ŷᵢ = yᵢ].

    images (N, 1, 28, 28) in [−1, 1], labels (N,) digits 0..9. On real test images and their true labels this is the
    classifier's test accuracy (≥ 0.99); for images unrelated to their labels it is about 0.1 (chance).
    """
    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    logits, _ = classify(images, classifier, batch_size=batch_size)
    return _adherence(logits, labels)


def _adherence(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).double().mean().item()


def _gaussian_fit(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """μ = (1/n) Σᵢ fᵢ and Σ = 1/(n−1) Σᵢ (fᵢ − μ)(fᵢ − μ)ᵀ (unbiased, as ``np.cov`` in pytorch-fid), float64."""
    f = feats.double()  # (n, D)
    if len(f) < 2:
        raise ValueError(f"a covariance needs at least 2 images, got {len(f)}")
    mu = f.mean(0)  # (D,)
    c = f - mu  # (n, D)
    sigma = c.T @ c / (len(f) - 1)  # (D, D)
    return mu.numpy(), sigma.numpy()


def feature_stats(
    images: torch.Tensor, classifier: MnistClassifier, *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of the classifier features f(x) over ``images`` (N ≥ 2): float64 arrays (D,) and (D, D).

    μ = (1/N) Σᵢ f(xᵢ), Σ = 1/(N−1) Σᵢ (f(xᵢ) − μ)(f(xᵢ) − μ)ᵀ.
    """
    _, feats = classify(images, classifier, batch_size=batch_size)
    return _gaussian_fit(feats)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂): ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁Σ₂)^½).

    As in the reference implementation (pytorch-fid's ``calculate_frechet_distance``): the square root is
    ``scipy.linalg.sqrtm``; if Σ₁Σ₂ is singular (e.g. fewer images than features), ε·I is added to both covariances
    and the root is taken again; tiny imaginary parts from rounding are dropped. The reference retries only when the
    root is not finite; here SciPy's "matrix is singular" warning, or an imaginary part that is not tiny, also
    triggers the retry, so no warning reaches the caller. Accepts numpy arrays or tensors; symmetric in its two
    Gaussians; 0 for identical ones.
    """
    from scipy import linalg  # lazy: only the FID matrix square root needs scipy (~0.5 s to import)

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    for name, a, shape in (
        ("mu1", mu1, (d,)),
        ("mu2", mu2, (d,)),
        ("sigma1", sigma1, (d, d)),
        ("sigma2", sigma2, (d, d)),
    ):
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match mu1 {(d,)}, got {a.shape}")

    def sqrt_product(s1: np.ndarray, s2: np.ndarray, *, strict: bool = True) -> np.ndarray | None:
        with warnings.catch_warnings():
            warnings.simplefilter("error" if strict else "ignore", linalg.LinAlgWarning)
            try:
                covmean = linalg.sqrtm(s1 @ s2)
            except linalg.LinAlgWarning:  # singular: the result may be inaccurate
                return None
        if not np.isfinite(covmean).all():
            return None
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                return None
            covmean = covmean.real
        return covmean

    covmean = sqrt_product(sigma1, sigma2)
    if covmean is None:  # singular product: offset both covariances by ε·I
        offset = np.eye(d) * eps
        covmean = sqrt_product(sigma1 + offset, sigma2 + offset, strict=False)
        if covmean is None:
            raise ValueError("frechet_distance: no real square root of sigma1 @ sigma2, even with the eps offset")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields do not compare to one bool
class ReferenceStats:
    """Statistics of the classifier features over a set of real images (by default the 10,000 MNIST test images).

    mu (D,), sigma (D, D): the Gaussian fit of FID. mean_distance: d̄ = mean over pairs i ≠ j of ‖fᵢ − fⱼ‖ (on a
    fixed random subset of 2,000 images). class_mean_distance (10,): the same within each digit. n: the number of images.
    """

    mu: np.ndarray
    sigma: np.ndarray
    mean_distance: float
    class_mean_distance: np.ndarray
    n: int
    split: str = "test"


def _mean_pairwise_distance(feats: torch.Tensor, max_points: int = 2000) -> float:
    """d̄ = 1/(m(m−1)) Σ_{i≠j} ‖fᵢ − fⱼ‖ over m = min(n, ``max_points``) images, float64 (NaN if n < 2).

    Above ``max_points`` a fixed-seed random subset is used: d̄ is a U-statistic, unbiased on any random subset, and
    2,000 images give 4 million pairs (measured error under 1%) for 1/25 of the cost of all 10,000 test images.
    """
    n = len(feats)
    if n < 2:
        return float("nan")
    if n > max_points:
        feats = feats[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_points]]
    f = feats.double()
    f = f - f.mean(0)  # (m, D); centring keeps ‖a‖² + ‖b‖² − 2a·b accurate (exactly 0 for copies)
    sq = (f * f).sum(1)  # (m,)
    d2 = sq[:, None] + sq[None, :] - 2 * f @ f.T  # (m, m) squared distances, diagonal ≈ 0
    m = len(f)
    return float(d2.clamp_min(0).sqrt().sum()) / (m * (m - 1))


def _class_mean_distances(feats: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(10,) d̄_c: mean pairwise distance among images of digit c (NaN for a digit with fewer than 2 images)."""
    return np.array([_mean_pairwise_distance(feats[labels == c]) for c in range(NUM_CLASSES)])


def _stats(feats: torch.Tensor, labels: torch.Tensor, split: str) -> ReferenceStats:
    mu, sigma = _gaussian_fit(feats)
    return ReferenceStats(
        mu=mu,
        sigma=sigma,
        mean_distance=_mean_pairwise_distance(feats),
        class_mean_distance=_class_mean_distances(feats, labels),
        n=len(feats),
        split=split,
    )


def reference_stats(classifier: MnistClassifier, *, split: str = "test", batch_size: int = 256) -> ReferenceStats:
    """:class:`ReferenceStats` of real MNIST (``split`` ``"test"``: 10,000 images; ``"train"``: 60,000).

    Computing them passes the whole split through the classifier (a few seconds on a CPU for the test set): do it
    once and pass the result as ``reference=`` to :func:`fid_mnist`, :func:`fid_floor`, :func:`diversity` and
    :func:`evaluate`.
    """
    images, labels = load_mnist(split)  # checks split
    _, feats = classify(images, classifier, batch_size=batch_size)
    return _stats(feats, labels, split)


def _resolve_reference(reference: str | ReferenceStats, classifier: MnistClassifier, batch_size: int) -> ReferenceStats:
    if isinstance(reference, ReferenceStats):
        d = classifier.config.feature_dim
        if reference.mu.shape != (d,):
            raise ValueError(
                f"reference statistics have {reference.mu.shape[0]} features but the classifier gives {d}: "
                "compute them with reference_stats(classifier)"
            )
        return reference
    if not isinstance(reference, str):
        raise TypeError(
            f"reference must be 'test' or a ReferenceStats from reference_stats(), got {type(reference).__name__}"
        )
    if reference != "test":
        raise ValueError(f"reference must be 'test' or a ReferenceStats from reference_stats(), got {reference!r}")
    return reference_stats(classifier, split="test", batch_size=batch_size)


def fid_mnist(
    images: torch.Tensor,
    classifier: MnistClassifier,
    *,
    reference: str | ReferenceStats = "test",
    batch_size: int = 256,
) -> float:
    """FID-MNIST of ``images`` (N ≥ 2, (N, 1, 28, 28) in [−1, 1]) against the MNIST test set.

    FID = ‖μ_g − μ_r‖² + tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^½), with (μ_g, Σ_g) from the images' features and (μ_r, Σ_r)
    from ``reference`` (``"test"`` computes them now; or pass :func:`reference_stats`). Lower is better; always
    report it next to :func:`fid_floor` for the same N.
    """
    mu, sigma = feature_stats(images, classifier, batch_size=batch_size)
    ref = _resolve_reference(reference, classifier, batch_size)
    return frechet_distance(mu, sigma, ref.mu, ref.sigma)


def _check_n(n: object, n_max: int) -> int:
    """``n`` as a Python int in 2..n_max (NumPy / torch integer scalars accepted, bools refused)."""
    try:
        n = check_int("n", n, minimum=None)
    except TypeError:
        raise TypeError(f"n must be an integer between 2 and {n_max} (the MNIST training set), got {n!r}") from None
    if not 2 <= n <= n_max:
        raise ValueError(f"n must be an integer between 2 and {n_max} (the MNIST training set), got {n!r}")
    return n


def _train_subset(n: int, seed: int) -> torch.Tensor:
    """n training images (n, 1, 28, 28), drawn without replacement by a seeded generator (no global RNG touched)."""
    n = _check_n(n, _N_TRAIN)  # before loading, so that bad input fails fast
    seed = check_int("seed", seed, minimum=0)
    images, _ = load_mnist("train")
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=g)[:n]]


def fid_floor(
    n: int,
    classifier: MnistClassifier,
    *,
    seed: int = 0,
    reference: str | ReferenceStats = "test",
    batch_size: int = 256,
) -> float:
    """FID₀(n): the FID-MNIST of n *real* images (a seeded random subset of the training set) against the test set.

    A generator that samples exactly from the data distribution scores about this for n samples; it falls roughly
    like 1/n. Report every FID together with the floor for its n.
    """
    return fid_mnist(_train_subset(n, seed), classifier, reference=reference, batch_size=batch_size)


def _class_entropy(logits: torch.Tensor) -> float:
    counts = torch.bincount(logits.argmax(1), minlength=NUM_CLASSES).double()  # (10,)
    p = counts / counts.sum()
    p = p[p > 0]
    return float((p * (1 / p).log()).sum()) / math.log(NUM_CLASSES)  # Σ p log(1/p): 0.0, not −0.0, for one digit


def _diversity(logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor | None, ref: ReferenceStats) -> dict:
    out = {"diversity": _mean_pairwise_distance(feats) / ref.mean_distance, "class_entropy": _class_entropy(logits)}
    if labels is not None:
        ratios = [
            _mean_pairwise_distance(feats[labels == c]) / ref.class_mean_distance[c]
            for c in range(NUM_CLASSES)
            if (labels == c).sum() >= 2
        ]
        out["within_class_diversity"] = float(np.mean(ratios)) if ratios else float("nan")
    return out


def diversity(
    images: torch.Tensor,
    classifier: MnistClassifier,
    labels: torch.Tensor | None = None,
    *,
    reference: str | ReferenceStats = "test",
    batch_size: int = 256,
) -> dict[str, float]:
    """How varied a set of images (N ≥ 2) is, in the classifier's feature space. Returns a dict:

    - ``"diversity"``: d = d̄(generated) / d̄(real test images), with d̄ = 1/(N(N−1)) Σ_{i≠j} ‖f(xᵢ) − f(xⱼ)‖ the
      mean pairwise feature distance (over a fixed random subset of 2,000 images when N is larger). 1.0 means as
      spread out as real digits; 0 means N copies of one image.
    - ``"class_entropy"``: H = −Σ_c p̂_c log p̂_c / log 10, with p̂_c the share of images *predicted* as digit c.
      1.0 means all ten digits equally often (real MNIST ≈ 0.998); 0 means a single digit.
    - ``"within_class_diversity"`` (only when ``labels`` (N,) are given): d_c = (1/|C|) Σ_{c∈C} d̄_c(generated) /
      d̄_c(real), d̄_c over the images asked to be digit c, C the digits asked for at least twice. It catches a
      class-conditional model that draws one image per digit, which ``"diversity"`` barely notices.
    """
    images = _check_images(images)
    if len(images) < 2:
        raise ValueError(f"diversity needs at least 2 images, got {len(images)}")
    labels = _check_labels(labels, len(images)) if labels is not None else None
    logits, feats = classify(images, classifier, batch_size=batch_size)
    return _diversity(logits, feats, labels, _resolve_reference(reference, classifier, batch_size))


def evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    classifier: MnistClassifier,
    *,
    reference: str | ReferenceStats = "test",
    floor_seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float | int]:
    """All metrics for class-conditional samples in one call: images (N, 1, 28, 28) in [−1, 1], N ≥ 2, and the
    digits (N,) they were asked to be. One pass over the images; the reference statistics are computed once.

    Returns ``n``, ``adherence`` (:func:`prompt_adherence`), ``fid_mnist`` (:func:`fid_mnist`), ``fid_floor``
    (:func:`fid_floor` for the same n, seed ``floor_seed``), ``diversity``, ``within_class_diversity`` and
    ``class_entropy`` (:func:`diversity`).
    """
    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    n = len(images)
    if not 2 <= n <= _N_TRAIN:
        raise ValueError(f"evaluate needs between 2 and {_N_TRAIN} images (the floor draws as many real ones), got {n}")
    ref = _resolve_reference(reference, classifier, batch_size)
    logits, feats = classify(images, classifier, batch_size=batch_size)
    mu, sigma = _gaussian_fit(feats)
    return {
        "n": n,
        "adherence": _adherence(logits, labels),
        "fid_mnist": frechet_distance(mu, sigma, ref.mu, ref.sigma),
        "fid_floor": fid_floor(n, classifier, seed=floor_seed, reference=ref, batch_size=batch_size),
        **_diversity(logits, feats, labels, ref),
    }
