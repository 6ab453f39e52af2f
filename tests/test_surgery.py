"""Model surgery (diffusion_lab.training.surgery): pruning, int8, sizes, the evaluation of variants and the raw weights of
the latent recipe. Small random models where the maths is checked; the shipped tiny_sd where the pipeline is."""

from __future__ import annotations

import copy
import math
import types
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from diffusion_lab.training import surgery as S


def small_net(seed: int = 0) -> nn.Module:
    """Conv2d + GroupNorm + two Linear layers, random weights (no ties among |w|): input (B, 2, 4, 4) → (B, 10)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Flatten(), nn.Linear(128, 32), nn.SiLU(),
        nn.Linear(32, 10),
    )  # fmt: skip


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def shipped():
    from diffusion_lab.training.tiny_sd_io import load_tiny_sd

    return load_tiny_sd()


# ----------------------------------------------------------------------------------------------------------------------
# Pruning
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", S.SCOPES)
@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_pruning_reaches_the_sparsity_and_leaves_the_input_alone(scope, p):
    net = small_net()
    before = copy.deepcopy(net)
    pruned = S.magnitude_prune(net, p, scope=scope)
    assert state_equal(net, before)  # the input model is untouched
    weights = S.prunable_weights(pruned)
    n = sum(w.numel() for _, w in weights)
    if scope == "global":
        assert S.sparsity(pruned) == math.floor(p * n) / n
    else:
        for _, w in weights:
            assert int((w == 0).sum()) == math.floor(p * w.numel())
    sp, sb = pruned.state_dict(), net.state_dict()
    prunable = {name for name, _ in weights}  # the Conv2d and Linear weights, not the GroupNorm's γ ("1.weight")
    for key in sp:  # biases and the norm's γ, β are kept; kept weights unchanged
        if key in prunable:
            kept = sp[key] != 0
            assert torch.equal(sp[key][kept], sb[key][kept])
        else:
            assert torch.equal(sp[key], sb[key]), key


@pytest.mark.parametrize("p", [0.3, 0.77])
def test_pruning_agrees_with_torch_l1_unstructured(p):
    net = small_net(1)
    ours_global, ours_layer = S.magnitude_prune(net, p), S.magnitude_prune(net, p, scope="per_layer")
    theirs = copy.deepcopy(net)
    params = [(m, "weight") for m in theirs.modules() if isinstance(m, S.PRUNABLE)]
    k = math.floor(p * sum(m.weight.numel() for m, _ in params))  # torch rounds p·N, we floor: give it k
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=k)
    for m, name in params:
        prune.remove(m, name)
    assert state_equal(ours_global, theirs)
    theirs = copy.deepcopy(net)
    for m in theirs.modules():
        if isinstance(m, S.PRUNABLE):
            prune.remove(prune.l1_unstructured(m, "weight", amount=math.floor(p * m.weight.numel())), "weight")
    assert state_equal(ours_layer, theirs)


def test_pruning_passes_notebook_13s_exercise_check():
    from diffusion_lab.course.exercises.nb13_surgery import check_magnitude_prune

    def prune_tensor(w: torch.Tensor, p: float) -> torch.Tensor:
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], bias=False)
        with torch.no_grad():
            conv.weight.copy_(w)
        return S.magnitude_prune(conv, p).weight.detach()

    assert check_magnitude_prune(prune_tensor)


def test_sparsity_zero_is_the_identity_on_a_copy():
    net = small_net()
    out = S.magnitude_prune(net, 0.0)
    assert out is not net and state_equal(out, net) and S.sparsity(out) == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\).*1 would delete every weight"):
        S.magnitude_prune(small_net(), bad)


def test_bad_types_and_scopes_are_refused():
    with pytest.raises(TypeError, match="sparsity must be a number in"):
        S.magnitude_prune(small_net(), "0.5")
    with pytest.raises(TypeError, match="sparsity must be a number"):
        S.magnitude_prune(small_net(), True)
    with pytest.raises(ValueError, match=r"scope must be one of \['global', 'per_layer'\], got 'layer'"):
        S.magnitude_prune(small_net(), 0.5, scope="layer")
    with pytest.raises(TypeError, match="module_types must be a non-empty tuple"):
        S.magnitude_prune(small_net(), 0.5, module_types=())
    with pytest.raises(ValueError, match="no weights of the types Conv2d, Linear"):
        S.magnitude_prune(nn.Sequential(nn.GroupNorm(1, 2)), 0.5)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        S.surgery_variants(None, (0.5, 1.0))  # checked before any work
    with pytest.raises(ValueError, match="encoding must be one of"):
        S.size_bytes(small_net(), "fp16")


# ----------------------------------------------------------------------------------------------------------------------
# int8
# ----------------------------------------------------------------------------------------------------------------------


def test_int8_round_trip_error_is_at_most_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 3, 3, 3, generator=g) * torch.logspace(-3, 1, 16)[:, None, None, None]  # channel scales differ
    w[5] = 0  # an all-zero channel
    q, s = S.quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.shape == (16,)
    assert q.abs().amax((1, 2, 3)).tolist() == [0 if c == 5 else 127 for c in range(16)]  # max |w| ↦ ±127
    err = (S.dequantize_int8(q, s) - w).abs()  # (16, 3, 3, 3)
    assert (err <= s[:, None, None, None] / 2 * (1 + 1e-5)).all()
    assert err[5].max() == 0
    wo = S.int8_weight_only(small_net())
    assert S.compact_size(wo)[0] == "int8"  # its weights are on the int8 grid: stored exactly in int8


def test_dynamic_int8_is_close_to_fp32_and_silent(shipped):
    """Relative L2 error of the U-Net's prediction below 3 % (measured 0.8 % on this batch)."""
    pipe, _ = shipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torch.ao deprecation warnings are handled inside
        q = S.quantize_dynamic_int8(pipe.unet)
    assert not any(isinstance(m, nn.Linear) for m in q.modules()) and isinstance(q.conv_out, nn.Conv2d)
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(4, 4, 7, 7, generator=g), torch.tensor([999, 700, 300, 10])
    c, mask, pooled = pipe.encode_prompt(["a seven", "a thick one", "", "a small two"])
    with torch.no_grad():
        ref, out = (m(z, t, encoder_hidden_states=c, encoder_attention_mask=mask, pooled_text=pooled) for m in (pipe.unet, q))  # fmt: skip
    assert (out - ref).norm() / ref.norm() < 0.03


# ----------------------------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------------------------


def test_sizes_follow_the_encodings(shipped):
    unet = shipped[0].unet
    n = sum(w.numel() for _, w in S.prunable_weights(unet))
    dense = S.size_bytes(unet)
    assert S.compact_size(unet) == ("dense", dense)
    previous = dense
    for p in (0.25, 0.5, 0.9):
        pruned = S.magnitude_prune(unet, p)
        assert S.size_bytes(pruned, "dense") == dense  # zeros do not shrink a dense file
        encoding, size = S.compact_size(pruned)
        nnz = n - math.floor(p * n)
        assert encoding == "bitmask" and size < previous
        assert abs(size - (dense - 4 * n + n / 8 + 4 * nnz)) < 5_000  # the formula, up to the header's extra keys
        previous = size
        decoded = S.decode_state(S.encode_state(pruned, "bitmask"), pruned)
        assert all(torch.equal(decoded[k], v) for k, v in pruned.state_dict().items())  # lossless
    int8 = S.size_bytes(unet, "int8")
    assert int8 < 0.3 * dense and dense - int8 > 2.9 * n  # 1 byte instead of 4 per weight, + one scale per channel
    assert S.compact_size(S.quantize_dynamic_int8(unet))[1] < dense - 2.9 * 163_840  # its Linear weights are int8


# ----------------------------------------------------------------------------------------------------------------------
# Pipelines, evaluation, timing, plot
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_variant_scores_the_images_it_samples(shipped, monkeypatch):
    """Each number of the result recomputed here from the same images (same prompts, steps and seed), and the time
    per image read from a fake clock."""
    from diffusion_lab.mnist import classifier as metrics
    from diffusion_lab.mnist.captions import attribute_adherence
    from diffusion_lab.mnist.data import load_mnist
    from diffusion_lab.mnist.metrics import _stats, fid_mnist

    pipe, bins = shipped
    clf = metrics.load_classifier()
    x, y = load_mnist("test", limit=300)
    _, feats = metrics.classify(x, clf)
    reference = _stats(feats, y, "test")  # 300 test images instead of 10,000: seconds saved, FID off-scale
    variant = S.swap_denoiser(pipe, S.magnitude_prune(pipe.unet, 0.5))
    assert variant.vae is pipe.vae and variant.text_encoder is pipe.text_encoder
    assert variant.scheduler is not pipe.scheduler
    ticks = iter([100.0, 103.0])  # one batch of 10 images: the clock is read before and after it
    monkeypatch.setattr(S, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    r = S.evaluate_variant(variant, bins, n=10, steps=2, classifier=clf, reference=reference)
    prompts, labels = S.eval_prompts(10)
    assert prompts[:3] == ["a zero", "a thick one", "a two"] and labels.tolist() == list(range(10))
    images = variant(prompts, num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    logits, _ = metrics.classify(images.images, clf)
    assert r.digit_adherence == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert r.fid == pytest.approx(fid_mnist(images.images, clf, reference=reference), rel=1e-6)
    assert r.attribute_adherence == pytest.approx(attribute_adherence(images.images, prompts, bins)["adherence"],
                                                  nan_ok=True)  # fmt: skip
    assert r.seconds_per_image == pytest.approx(0.3)  # 3 s for 10 images
    assert r.size_encoding == "bitmask" and r.sparsity == pytest.approx(0.5, abs=1e-5) and r.n == 10
    assert S.eval_prompts(20)[1].tolist() == list(range(10)) * 2


def test_time_ratios_are_medians_of_per_round_ratios(monkeypatch):
    """With a fake clock that each pipeline call advances by its own cost: every pipeline is called once to warm up
    and then once per round with the same prompts, and the ratio is the median over rounds of cost / base cost."""
    now = [0.0]
    costs = {"base": [9.0, 2.0, 2.0, 4.0], "slow": [9.0, 3.0, 7.0, 5.0], "fast": [9.0, 1.0, 0.5, 1.0]}  # warm-up first
    calls = {name: [] for name in costs}

    class FakePipe:
        def __init__(self, name):
            self.name = name

        def __call__(self, prompts, num_inference_steps, guidance_scale, generator):
            calls[self.name].append((tuple(prompts), num_inference_steps, guidance_scale))
            now[0] += costs[self.name][len(calls[self.name]) - 1]

    monkeypatch.setattr(S, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    ratios = S.time_ratios({n: FakePipe(n) for n in costs}, "base", batch=3, steps=7, guidance_scale=2.0, repeats=3)
    # rounds: slow/base = 3/2, 7/2, 5/4 → median 1.5; fast/base = 1/2, 0.5/2, 1/4 → median 0.25
    assert ratios == {"base": 1.0, "slow": 1.5, "fast": 0.25}
    prompts = tuple(S.eval_prompts(3)[0])
    assert all(c == [(prompts, 7, 2.0)] * 4 for c in calls.values())
    with pytest.raises(ValueError, match="base must be one of"):
        S.time_ratios({"a": FakePipe("base")}, "b")


def test_time_ratios_on_real_pipelines_and_plot(random_tiny_pipe):
    import matplotlib

    matplotlib.use("Agg")
    pipes = {"base": random_tiny_pipe, "pruned": S.swap_denoiser(random_tiny_pipe, S.magnitude_prune(random_tiny_pipe.unet, 0.5))}  # fmt: skip
    ratios = S.time_ratios(pipes, "base", batch=2, steps=1, repeats=1)
    assert set(ratios) == {"base", "pruned"} and math.isfinite(ratios["pruned"])
    rows = [
        {"variant": "base", "sparsity": 0.0, "digit_adherence": 0.9, "fid": 80.0, "fid_floor": 20.0, "n": 300},
        {"variant": "prune 50%", "sparsity": 0.5, "digit_adherence": 0.8, "fid": 120.0, "fid_floor": 20.0, "n": 300},
    ]
    fig = S.plot_variants(rows, ("digit_adherence", "fid"), x="sparsity")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="no column"):
        S.plot_variants(rows, ("attribute_adherence",))


# ----------------------------------------------------------------------------------------------------------------------
# Raw weights from the recipe (keep_raw)
# ----------------------------------------------------------------------------------------------------------------------


def test_keep_raw_gives_the_last_iterate_and_changes_nothing_else():
    from diffusion_lab.mnist.data import load_mnist
    from diffusion_lab.training.recipes import LatentTextTrainConfig, train_latent_text2img

    images, labels = load_mnist("train", limit=600)
    # stopped by step counts only (budgets no machine reaches): the two runs compared bit for bit take the same steps
    cfg = LatentTextTrainConfig(budget_s=1e6, num_images=600, bins_images=600, ae_seconds=1e5, ae_steps=3, max_steps=4)  # fmt: skip

    def train(**kw):
        torch.manual_seed(123)  # nothing may depend on the global RNG state either
        return train_latent_text2img(progress=False, images=images, labels=labels, train_config=cfg, **kw)

    pipe, info = train()
    pipe_raw, info_raw = train(keep_raw=True)
    assert info["diffusion_steps"] == info_raw["diffusion_steps"] == 4 and info["ae_steps"] == 3
    assert "raw" not in info and set(info_raw) == set(info) | {"raw"}
    for name in ("vae", "text_encoder", "unet"):  # the default (EMA) output is the same with or without keep_raw
        assert state_equal(getattr(pipe, name), getattr(pipe_raw, name)), name
    raw = info_raw["raw"]
    assert raw.vae is pipe_raw.vae and raw.tokenizer is pipe_raw.tokenizer and raw.scheduler is not pipe_raw.scheduler
    assert not state_equal(raw.unet, pipe_raw.unet) and not state_equal(raw.text_encoder, pipe_raw.text_encoder)
    assert not any(m.training for m in (raw.unet, raw.text_encoder))
