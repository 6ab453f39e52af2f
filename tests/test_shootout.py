"""The sampler shoot-out (diffusion_lab.pipelines.shootout, course.plots.plot_shootout): NFE bookkeeping equal to the
denoiser calls of a real loop through the shipped tiny pipelines, records equal to the metrics computed directly on
the same images, common random numbers, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lab.mnist.captions import DIGIT_NAMES, attribute_adherence
from diffusion_lab.mnist.classifier import classify, load_classifier
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.mnist.metrics import ReferenceStats, feature_stats, fid_floor, fid_mnist, prompt_adherence
from diffusion_lab.pipelines.shootout import (
    EVAL_WORDS,
    FLOW_LABELS,
    VP_LABELS,
    Sampler,
    _fid_from_features,
    _sqrtm_psd,
    bootstrap_fid,
    eval_prompts,
    flow_samplers,
    heun_cost,
    one_per_step,
    paired_difference,
    run_shootout,
    steps_for_nfe,
    vp_samplers,
)
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.training.tiny_sd_io import load_tiny_sd, pretrained_tiny_sd_path

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sd():
    return load_tiny_sd(pretrained_tiny_sd_path("tiny_sd"))


@pytest.fixture(scope="module")
def sd3():
    return load_tiny_sd(pretrained_tiny_sd_path("tiny_sd3"))


@pytest.fixture(scope="module")
def judge():
    """The classifier and real-image statistics of 1,000 test digits (reference_stats' 10,000 take ~4 s; the
    records only need to be scored against the same reference as the direct computation)."""
    classifier = load_classifier()
    x, y = load_mnist("test")
    mu, sigma = feature_stats(x[:1000], classifier)
    return classifier, ReferenceStats(mu, sigma, mean_distance=1.0, class_mean_distance=np.ones(10), n=1000)


@pytest.fixture(scope="module")
def all_samplers(sd, sd3):
    return [(sd[0], s) for s in vp_samplers(sd[0].scheduler.config)] + [
        (sd3[0], s) for s in flow_samplers(sd3[0].scheduler.config)
    ]


def test_the_lineups():
    assert VP_LABELS == ("DDIM", "Euler", "Euler Karras", "Heun", "Heun Karras", "DPM++ 2M", "DPM++ 2M Karras",
                         "Euler a")  # fmt: skip
    assert FLOW_LABELS == ("flow Euler shift 1", "flow Euler shift 3", "flow Heun shift 1")


def test_schedulers_are_ours_from_the_shipped_config(sd):
    import diffusion_lab as dl

    config = sd[0].scheduler.config
    made = {s.label: s.make(config) for s in vp_samplers(config)}
    expected = {"DDIM": dl.DDIMScheduler, "Euler": dl.EulerDiscreteScheduler, "Heun": dl.HeunDiscreteScheduler,
                "DPM++ 2M": dl.DPMSolverMultistepScheduler, "Euler a": dl.EulerAncestralDiscreteScheduler}  # fmt: skip
    for label, cls in expected.items():
        assert type(made[label]) is cls, label
    for label, s in made.items():
        assert s.config.prediction_type == "v_prediction", label
        assert s.config.timestep_spacing == "trailing", label
        assert bool(s.config.get("use_karras_sigmas", False)) == ("Karras" in label), label
    for label in ("DPM++ 2M", "DPM++ 2M Karras"):
        assert made[label].config.algorithm_type == "dpmsolver++" and made[label].config.solver_order == 2


def test_flow_samplers_shift_and_heun(sd3):
    config = sd3[0].scheduler.config
    made = {s.label: s.make(config) for s in flow_samplers(config)}
    assert made["flow Euler shift 1"].config.shift == 1.0 and made["flow Euler shift 3"].config.shift == 3.0
    assert type(made["flow Heun shift 1"]).__name__ == "FlowMatchHeunDiscreteScheduler"
    assert made["flow Heun shift 1"].config.shift == 1.0


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 6, 7, 8, 15, 25, 50])
def test_steps_for_nfe_matches_the_timesteps(all_samplers, nfe):
    """The NFE of N steps is len(scheduler.timesteps) after set_timesteps(N), the most that does not exceed nfe."""
    for pipe, sampler in all_samplers:
        steps, actual = steps_for_nfe(sampler, nfe)
        scheduler = sampler.make(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        assert actual == len(scheduler.timesteps) <= nfe, sampler.label
        scheduler.set_timesteps(steps + 1)
        assert len(scheduler.timesteps) > nfe, sampler.label  # one step more would exceed it
        heun = "Heun" in sampler.label
        assert sampler.cost is (heun_cost if heun else one_per_step)
        assert (steps, actual) == (((nfe + 1) // 2, 2 * ((nfe + 1) // 2) - 1) if heun else (nfe, nfe))


def test_nfe_is_the_number_of_denoiser_calls(all_samplers):
    """A real loop through the tiny pipeline, with guidance (a batch [∅; c] is one call): calls = NFE."""
    for pipe, sampler in all_samplers:
        for nfe in (1, 4, 5):
            steps, actual = steps_for_nfe(sampler, nfe)
            calls = []
            hook = pipe.denoiser.register_forward_hook(lambda m, args, out, calls=calls: calls.append(len(args[0])))
            base = pipe.scheduler
            try:
                pipe.scheduler = sampler.make(base.config)
                pipe(["a seven", "a thin two"], num_inference_steps=steps, guidance_scale=2.0,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
            finally:
                hook.remove()
                pipe.scheduler = base
            assert len(calls) == actual, (sampler.label, nfe)
            assert set(calls) == {4}, "each call evaluates the guided batch [∅; c] of 2 × 2 prompts"


def test_eval_prompts_balance_digits_and_attribute_words():
    """The shoot-out's prompts (also the latent recipe's evaluation prompts in benchmarks/cpu_train.py): digits cycle
    0..9, every attribute word is asked equally often, 40 % of the prompts name only the digit."""
    prompts, labels = eval_prompts(500)
    assert prompts[:3] == ["a zero", "a thick one", "a two"] and prompts[11] == "a one"
    assert torch.equal(labels, torch.arange(500) % 10)
    assert all(DIGIT_NAMES[d] == p.split()[-1] for p, d in zip(prompts, labels.tolist(), strict=True))
    words = [p.split()[1] for p in prompts if p.count(" ") == 2]
    assert len(words) == 300 and {w: words.count(w) for w in set(words)} == {w: 50 for w in EVAL_WORDS if w}


@pytest.fixture(scope="module")
def records(sd, judge):
    pipe, bins = sd
    classifier, ref = judge
    samplers = vp_samplers(pipe.scheduler.config, ["DDIM", "Heun", "Euler a"])
    recs = run_shootout(pipe, bins, samplers, [1, 4], n=8, guidance_scale=2.0, seed=3, batch_size=5,
                        classifier=classifier, reference=ref, fid_draws=10, model="tiny_sd", progress=False)  # fmt: skip
    return recs


def _regenerate(pipe, sampler, steps, n=8, seed=3):
    """The images run_shootout scored: its noise (one draw from seed) and prompts, Euler-a's generator seed + 1."""
    prompts, labels = eval_prompts(n)
    noise = torch.randn(n, 4, 7, 7, generator=torch.Generator().manual_seed(seed))
    base = pipe.scheduler
    pipe.scheduler = sampler.make(base.config)
    g = torch.Generator().manual_seed(seed + 1)
    try:
        images = torch.cat([pipe(prompts[i : i + 5], num_inference_steps=steps, guidance_scale=2.0,
                                 latents=noise[i : i + 5], generator=g).images for i in (0, 5)])  # fmt: skip
    finally:
        pipe.scheduler = base
    return images.clamp(-1, 1), prompts, labels


def test_run_shootout_records(records, sd, judge):
    pipe, bins = sd
    classifier, ref = judge
    assert [(r.sampler, r.steps, r.nfe) for r in records] == [
        ("DDIM", 1, 1), ("DDIM", 4, 4), ("Heun", 1, 1), ("Heun", 2, 3), ("Euler a", 1, 1), ("Euler a", 4, 4),
    ]  # Heun: NFE 4 is 2 steps (3 evaluations)  # fmt: skip
    assert isinstance(pipe.scheduler, DDIMScheduler), "the pipeline's scheduler is put back"
    floor = fid_floor(8, classifier, reference=ref)
    samplers = {s.label: s for s in vp_samplers(pipe.scheduler.config)}
    for r in records:
        images, prompts, labels = _regenerate(pipe, samplers[r.sampler], r.steps)
        assert r.digit_adherence == prompt_adherence(images, labels, classifier)
        attr = attribute_adherence(images, prompts, bins)
        assert r.attribute_adherence == attr["adherence"] and r.attribute_requests == attr["requests"] == 5
        if r is records[-1]:  # fid_mnist's scipy sqrtm takes ~2 s for 8 images (singular Σ): once
            assert r.fid == pytest.approx(fid_mnist(images, classifier, reference=ref), rel=1e-6)
        _, f = classify(images, classifier)
        sigma = torch.as_tensor(ref.sigma)
        assert r.fid == _fid_from_features(f.double(), torch.as_tensor(ref.mu), sigma, _sqrtm_psd(sigma))
        assert r.fid_floor == floor
        p, m = r.attribute_adherence, r.attribute_requests
        assert r.digit_adherence_se == pytest.approx((r.digit_adherence * (1 - r.digit_adherence) / 8) ** 0.5)
        assert r.attribute_adherence_se == pytest.approx((p * (1 - p) / m) ** 0.5)
        assert r.fid_se > 0 and r.seconds > 0 and r.threads == torch.get_num_threads()
        assert r.n == 8 and r.guidance_scale == 2.0 and r.model == "tiny_sd"
        # the per-image fields behind the paired differences
        assert torch.equal(r.digit_hits, classify(images, classifier)[0].argmax(1) == labels)
        asked = ~r.attribute_hits.isnan()
        assert asked.sum() == 5 and r.attribute_hits[asked].mean().item() == pytest.approx(p)
        d = r.to_dict()
        assert "features" not in d and d["sampler"] == r.sampler and d["nfe"] == r.nfe


def test_common_random_numbers(records, judge):
    """One step from the same noise: DDIM, Heun and Euler a are the same x̂_0 (to float error), so every paired
    difference is 0; the records of different samplers differ once they take different paths."""
    _, ref = judge
    ddim, heun, euler_a = (r for r in records if r.steps == 1)
    torch.testing.assert_close(heun.features, euler_a.features, rtol=0, atol=1e-4)  # the same σ-step to σ = 0
    torch.testing.assert_close(ddim.features, heun.features, rtol=0, atol=2e-2)  # ᾱ-form vs σ-form: float error
    for r in (heun, euler_a):
        for metric in ("digit_adherence", "attribute_adherence"):
            assert paired_difference(r, ddim, metric) == (0.0, 0.0)
    diff, se = paired_difference(records[1], records[0], "fid", reference=ref, draws=50)
    assert diff == pytest.approx(records[1].fid - records[0].fid) and se > 0


def test_paired_difference_is_the_mean_per_image_difference(records):
    a, b = records[1], records[3]
    d = a.digit_hits.double() - b.digit_hits.double()
    assert paired_difference(a, b, "digit_adherence") == pytest.approx((d.mean().item(), (d.std() / 8**0.5).item()))


def test_bootstrap_fid_full_sample_formula_is_fid_mnist(judge):
    classifier, ref = judge
    x = load_mnist("test")[0][:300]
    _, f = classify(x, classifier)
    sigma = torch.as_tensor(ref.sigma)
    full = _fid_from_features(f.double(), torch.as_tensor(ref.mu), sigma, _sqrtm_psd(sigma))
    assert full == pytest.approx(fid_mnist(x, classifier, reference=ref), rel=1e-8)
    boot = bootstrap_fid([f, f], ref, draws=5, seed=1)  # (draws, 2), the same indices for both sets
    assert boot.shape == (5, 2) and torch.equal(boot[:, 0], boot[:, 1])


def test_plot_shootout(records):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_lab.course.plots import plot_shootout

    fig, ax = plt.subplots()
    assert plot_shootout(records, "fid", ax=ax) is ax
    assert ax.get_xscale() == "log" and "NFE" in ax.get_xlabel() and "FID" in ax.get_ylabel()
    assert "tiny_sd" in ax.get_title() and "n = 8" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DDIM", "Heun", "Euler a"]
    assert len(ax.containers) == 3  # one error-bar line per sampler
    heun = ax.containers[1].lines[0]
    assert list(heun.get_xdata()) == [1, 3]
    assert list(heun.get_ydata()) == pytest.approx([records[2].fid, records[3].fid], abs=1e-4)
    plot_shootout([r.to_dict() for r in records], "digit_adherence")  # the JSON's dicts work too
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_shootout(records, "accuracy")
    with pytest.raises(ValueError, match="records must be a non-empty list"):
        plot_shootout([], "fid")
    plt.close("all")


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_nfe(sd):
    heun = vp_samplers(sd[0].scheduler.config, ["Heun"])[0]
    with pytest.raises(ValueError, match="nfe must be an integer >= 1"):
        steps_for_nfe(heun, 0)
    with pytest.raises(TypeError, match="nfe must be an integer"):
        steps_for_nfe(heun, 2.5)
    with pytest.raises(TypeError, match="nfe must be an integer"):
        steps_for_nfe(heun, True)
    with pytest.raises(TypeError, match="sampler must be a Sampler"):
        steps_for_nfe("Heun", 4)
    costly = Sampler("two per step", heun.make, lambda n: 2 * n)
    with pytest.raises(ValueError, match="needs 2 network evaluations for one step"):
        steps_for_nfe(costly, 1)


def test_unknown_sampler(sd, sd3):
    with pytest.raises(ValueError, match="unknown sampler 'DPM\\+\\+ 3M'.*choose from"):
        vp_samplers(sd[0].scheduler.config, ["DPM++ 3M"])
    with pytest.raises(ValueError, match="unknown sampler 'flow Euler shift 2'"):
        flow_samplers(sd3[0].scheduler.config, ["flow Euler shift 2"])
    with pytest.raises(TypeError, match="labels must be a list"):
        vp_samplers(sd[0].scheduler.config, "DDIM")
    with pytest.raises(ValueError, match="use flow_samplers"):
        vp_samplers(sd[0].scheduler.config, ["flow Euler shift 1"])


def test_karras_and_vp_samplers_refused_for_the_flow_model(sd, sd3):
    flow_config = sd3[0].scheduler.config
    with pytest.raises(ValueError, match="use_karras_sigmas=True with a flow-matching model"):
        vp_samplers(flow_config, ["DPM++ 2M Karras"])  # the scheduler's own refusal
    with pytest.raises(ValueError, match="flow-matching model .*FlowMatchEulerDiscreteScheduler"):
        vp_samplers(flow_config)
    with pytest.raises(ValueError, match="'Euler Karras': a flow-matching model .*Karras σ"):
        flow_samplers(flow_config, ["Euler Karras"])
    with pytest.raises(ValueError, match="flow_samplers needs a flow-matching scheduler config"):
        flow_samplers(sd[0].scheduler.config)


def test_run_shootout_bad_input(sd, judge):
    pipe, bins = sd
    classifier, ref = judge
    ddim = vp_samplers(pipe.scheduler.config, ["DDIM"])
    kw = {"n": 4, "classifier": classifier, "reference": ref, "progress": False}
    with pytest.raises(TypeError, match="nfes must be a non-empty list"):
        run_shootout(pipe, bins, ddim, 4, **kw)
    with pytest.raises(TypeError, match="nfes must be a non-empty list"):
        run_shootout(pipe, bins, ddim, [], **kw)
    with pytest.raises(ValueError, match="nfe must be an integer >= 1"):
        run_shootout(pipe, bins, ddim, [4, 0], **kw)
    with pytest.raises(TypeError, match="samplers must be a non-empty list of Sampler"):
        run_shootout(pipe, bins, ["DDIM"], [4], **kw)
    with pytest.raises(ValueError, match="n must be >= 2"):
        run_shootout(pipe, bins, ddim, [4], **{**kw, "n": 1})
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        run_shootout(pipe, bins, ddim, [4], guidance_scale=-1, **kw)
    wrong = [Sampler("DDIM with a wrong cost", ddim[0].make, heun_cost)]
    with pytest.raises(RuntimeError, match="called the denoiser 2 times per batch, but its cost says 3"):
        run_shootout(pipe, bins, wrong, [3], **kw)
    assert isinstance(pipe.scheduler, DDIMScheduler), "the scheduler is put back after an error too"


def test_paired_difference_bad_input(records):
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_difference(records[0], records[1], "accuracy")
    with pytest.raises(TypeError, match="needs reference=reference_stats"):
        paired_difference(records[0], records[1], "fid")
