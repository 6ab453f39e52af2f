"""Metrics on real MNIST: the shipped classifier, FID-MNIST and its floor, prompt adherence, diversity, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from diffusion_lab.mnist import metrics
from diffusion_lab.mnist.classifier import (
    ClassifierConfig,
    MnistClassifier,
    classify,
    default_classifier_path,
    load_classifier,
)
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.mnist.metrics import (
    diversity,
    evaluate,
    feature_stats,
    fid_floor,
    fid_mnist,
    frechet_distance,
    prompt_adherence,
    reference_stats,
)
from diffusion_lab.utils.errors import FileError


@pytest.fixture(scope="module")
def clf():
    return load_classifier()


@pytest.fixture(scope="module")
def test_set():
    return load_mnist("test")


@pytest.fixture(scope="module")
def ref(clf):
    return reference_stats(clf)


@pytest.fixture(scope="module")
def train_1000():
    """The same 1000 training images that fid_floor(1000, seed=0) draws, with their labels."""
    x, y = load_mnist("train")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:1000]
    return x[idx], y[idx]


# ---------------------------------------------------------------------------------------------------------------------
# The shipped classifier
# ---------------------------------------------------------------------------------------------------------------------


def test_shipped_classifier_reaches_99_percent(clf, test_set):
    x, y = test_set
    acc = prompt_adherence(x, y, clf)
    assert acc >= 0.99
    path = default_classifier_path()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["test_accuracy"] == pytest.approx(acc, abs=3e-4)  # the JSON tells the truth
    assert meta["config"] == {"channels": [32, 64], "feature_dim": 128, "dropout": 0.5, "num_classes": 10}
    assert path.stat().st_size < 5 * 2**20
    assert not clf.training


def test_classify_shapes_and_batching(clf, test_set):
    x = test_set[0][:300]
    logits, feats = classify(x, clf, batch_size=64)
    assert logits.shape == (300, 10) and feats.shape == (300, 128)
    torch.testing.assert_close(classify(x, clf, batch_size=300)[1], feats, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(clf.features(x), feats, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(clf(x), logits, atol=1e-4, rtol=1e-4)


def test_metrics_restore_train_mode_and_leave_batchnorm_alone(test_set):
    model = load_classifier().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = test_set[0][:200], test_set[1][:200]
    assert prompt_adherence(x, y, model) > 0.95  # eval mode inside (train-mode BatchNorm would differ)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------------
# Prompt adherence
# ---------------------------------------------------------------------------------------------------------------------


def test_shuffled_labels_give_chance_adherence(clf, test_set):
    x, y = test_set[0][:2000], test_set[1][:2000]
    shuffled = y[torch.randperm(2000, generator=torch.Generator().manual_seed(0))]
    assert 0.07 < prompt_adherence(x, shuffled, clf) < 0.13


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------------------


def _random_gaussian(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return rng.standard_normal(d), a @ a.T / d


def test_frechet_distance_identical_symmetric_and_closed_form():
    rng = np.random.default_rng(0)
    mu1, s1 = _random_gaussian(rng, 20)
    mu2, s2 = _random_gaussian(rng, 20)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0 and d12 == pytest.approx(d21, rel=1e-8)
    # tr (Σ₁Σ₂)^½ = Σ √λ(Σ₁^½ Σ₂ Σ₁^½), a symmetric PSD matrix: an independent way to the same number
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert d12 == pytest.approx(expected, rel=1e-8)
    # diagonal covariances: ‖μ₁ − μ₂‖² + Σ (√a − √b)²; in 1-D the Fréchet distance of N(m₁, s₁²) and N(m₂, s₂²)
    a, b = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    assert frechet_distance(np.zeros(5), np.diag(a), np.ones(5), np.diag(b)) == pytest.approx(
        5 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-10
    )
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1, rel=1e-12)
    assert frechet_distance(torch.tensor(mu1), torch.tensor(s1), mu2, s2) == pytest.approx(d12)  # tensors work


def test_frechet_distance_singular_covariances_are_finite():
    rng = np.random.default_rng(1)
    mu1, s1 = _random_gaussian(rng, 30, rank=5)  # fewer samples than dimensions: singular Σ
    mu2, s2 = _random_gaussian(rng, 30, rank=5)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(d) and d > 0
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-2


def test_feature_stats_are_mean_and_unbiased_covariance(clf, test_set):
    x = test_set[0][:300]
    mu, sigma = feature_stats(x, clf)
    with torch.no_grad():
        f = clf.features(x).double().numpy()
    np.testing.assert_allclose(mu, f.mean(0), atol=1e-4)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), atol=1e-4)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (128, 128)


# ---------------------------------------------------------------------------------------------------------------------
# FID-MNIST and its floor
# ---------------------------------------------------------------------------------------------------------------------


def test_real_vs_real_floor(clf, ref, train_1000):
    assert ref.n == 10_000 and ref.mu.shape == (128,)
    floor = fid_floor(1000, clf, reference=ref)
    assert floor == pytest.approx(fid_mnist(train_1000[0], clf, reference=ref), rel=1e-6)
    assert 5 < floor < 30  # measured 16.9 (seeds 1, 2: 21.8, 22.4); pure noise scores about 52,000
    other_seed = fid_floor(1000, clf, seed=1, reference=ref)
    assert other_seed != floor and other_seed == pytest.approx(floor, rel=0.3)
    assert fid_floor(250, clf, reference=ref) > 1.5 * floor  # the floor rises as n falls


def test_reference_test_computes_the_test_statistics(clf, ref, monkeypatch):
    calls = []

    def fake_reference_stats(classifier, *, split, batch_size):  # spares a second pass over the 10,000 test images
        calls.append(split)
        return ref

    monkeypatch.setattr(metrics, "reference_stats", fake_reference_stats)
    assert fid_floor(1000, clf) == pytest.approx(fid_floor(1000, clf, reference=ref), rel=1e-9)
    assert calls == ["test"]


def test_pure_noise_scores_far_above_the_floor(clf, ref):
    noise = torch.randn(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    labels = torch.arange(1000) % 10
    r = evaluate(noise, labels, clf, reference=ref)
    assert set(r) == {
        "n",
        "adherence",
        "fid_mnist",
        "fid_floor",
        "diversity",
        "within_class_diversity",
        "class_entropy",
    }
    assert r["n"] == 1000
    assert r["fid_floor"] == pytest.approx(fid_floor(1000, clf, reference=ref), rel=1e-6)
    assert r["fid_mnist"] > 20 * r["fid_floor"]
    assert 0.05 < r["adherence"] < 0.15


def test_evaluate_on_real_images(clf, ref, train_1000):
    x, y = train_1000
    r = evaluate(x, y, clf, reference=ref)
    assert r["adherence"] > 0.98
    assert r["fid_mnist"] == pytest.approx(r["fid_floor"], rel=1e-6)  # the floor's own images
    assert 0.9 < r["diversity"] < 1.1 and 0.9 < r["within_class_diversity"] < 1.1 and r["class_entropy"] > 0.99


# ---------------------------------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------------------------------


def test_diversity_of_real_data_copies_and_one_image_per_digit(clf, ref, test_set, train_1000):
    x, y = test_set
    copies = x[:1].expand(1000, -1, -1, -1)
    d = diversity(copies, clf, y[:1].expand(1000), reference=ref)
    assert d["diversity"] < 1e-3 and d["within_class_diversity"] < 1e-3 and d["class_entropy"] == 0.0
    # a "model" that draws one fixed image per digit: all ten digits, so the overall spread and the class entropy look
    # fine; the within-class diversity sees the collapse
    first = torch.tensor([int(torch.nonzero(y == c)[0]) for c in range(10)])  # (10,) first test image of each digit
    labels = torch.arange(1000) % 10
    d = diversity(x[first[labels]], clf, labels, reference=ref)
    assert d["diversity"] > 0.5 and d["class_entropy"] > 0.99 and d["within_class_diversity"] < 1e-3
    d = diversity(train_1000[0], clf, reference=ref)
    assert 0.9 < d["diversity"] < 1.1 and "within_class_diversity" not in d


# ---------------------------------------------------------------------------------------------------------------------
# Bad input and bad files
# ---------------------------------------------------------------------------------------------------------------------

_IMG = torch.zeros(4, 1, 28, 28)
_LAB = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize(
    "images,labels,pattern",
    [
        (torch.zeros(4, 28, 28), _LAB, r"images must be a tensor \(B, 1, 28, 28\), got shape \(4, 28, 28\)"),
        (
            torch.zeros(4, 3, 28, 28),
            _LAB,
            r"got shape \(4, 3, 28, 28\): it has 3 channels, not 1 \(MNIST digits have 1",
        ),
        (torch.zeros(4, 1, 32, 32), _LAB, r"got 32x32 images \(MNIST digits are 28x28\)"),
        (torch.zeros(0, 1, 28, 28), _LAB[:0], r"empty batch"),
        (_IMG.to(torch.uint8), _LAB, r"of floats, got dtype torch.uint8"),
        (torch.full((4, 1, 28, 28), float("nan")), _LAB, r"NaN or inf"),
        (_IMG, torch.tensor([0, 1, 2, 10]), r"labels must be digits 0..9, got values from 0 to 10"),
        (_IMG, torch.tensor([-1, 1, 2, 3]), r"labels must be digits 0..9"),
        (_IMG, _LAB[:3], r"same length, got 4 images and 3 labels"),
        (_IMG, _LAB.float(), r"labels must be a 1-D integer tensor"),
        (_IMG, _LAB[:, None], r"labels must be a 1-D integer tensor"),
    ],
)
def test_bad_images_and_labels(clf, images, labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        prompt_adherence(images, labels, clf)


def test_images_that_are_not_a_tensor_are_a_type_error(clf):
    with pytest.raises(TypeError, match=r"images must be a tensor \(B, 1, 28, 28\), got ndarray"):
        prompt_adherence(np.zeros((4, 1, 28, 28), np.float32), _LAB, clf)


def test_bad_arguments(clf, ref):
    with pytest.raises(ValueError, match=r"x must be a tensor \(B, 1, 28, 28\), got shape"):
        clf(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        classify(_IMG, clf, batch_size=0)
    for n in (1, 60_001):
        with pytest.raises(ValueError, match="n must be an integer between 2 and 60000"):
            fid_floor(n, clf, reference=ref)
    with pytest.raises(TypeError, match="n must be an integer between 2 and 60000"):
        fid_floor(10.0, clf, reference=ref)
    with pytest.raises(ValueError, match="reference must be 'test' or a ReferenceStats"):
        fid_mnist(_IMG, clf, reference="train")
    with pytest.raises(ValueError, match="reference statistics have 128 features but the classifier gives 64"):
        fid_mnist(_IMG, MnistClassifier(ClassifierConfig(feature_dim=64)), reference=ref)
    with pytest.raises(ValueError, match="at least 2 images"):
        feature_stats(_IMG[:1], clf)
    with pytest.raises(ValueError, match="diversity needs at least 2 images"):
        diversity(_IMG[:1], clf, reference=ref)
    with pytest.raises(ValueError, match="evaluate needs between 2 and 60000 images"):
        evaluate(_IMG[:1], _LAB[:1], clf, reference=ref)
    with pytest.raises(ValueError, match=r"sigma2 must have shape \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="channels must be 1 to 3 positive integers"):
        ClassifierConfig(channels=())
    with pytest.raises(ValueError, match="dropout must be in"):
        ClassifierConfig(dropout=1.0)


def test_missing_corrupt_and_mismatched_classifier_files(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    with pytest.raises(FileError, match="classifier file not found"):
        load_classifier(tmp_path / "nope.safetensors")
    src = default_classifier_path()
    monkeypatch.setenv("DIFFUSION_LAB_DATA", str(tmp_path))  # the same override as data/mnist.npz
    assert default_classifier_path() == tmp_path / "mnist_classifier.safetensors"
    with pytest.raises(FileError, match=r"not found: .*Rebuild both files with `python data/train_classifier.py`"):
        load_classifier()
    monkeypatch.delenv("DIFFUSION_LAB_DATA")
    weights, meta_path = tmp_path / src.name, tmp_path / src.with_suffix(".json").name
    shutil.copy(src, weights)
    shutil.copy(src.with_suffix(".json"), meta_path)
    assert isinstance(load_classifier(weights), MnistClassifier)  # the copies load
    meta = json.loads(meta_path.read_text())

    blob = bytearray(weights.read_bytes())
    blob[-100] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(FileError, match="corrupt or not the file described by"):
        load_classifier(weights)

    del meta["weights_sha256"]  # without the checksum, what safetensors itself detects
    meta_path.write_text(json.dumps(meta))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(FileError, match="could not read .* as safetensors"):
        load_classifier(weights)

    state = load_file(src)
    state["extra.weight"] = state.pop("head.bias")
    save_file(state, weights)
    with pytest.raises(FileError, match=r"missing keys \['head.bias'\], unexpected keys \['extra.weight'\]"):
        load_classifier(weights)

    shutil.copy(src, weights)
    meta["config"]["feature_dim"] = 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileError, match=r"wrong shapes \['fc.weight: file \(128, 3136\), model \(64, 3136\)"):
        load_classifier(weights)

    meta_path.write_text("{not json")
    with pytest.raises(FileError, match="could not read the classifier config"):
        load_classifier(weights)
