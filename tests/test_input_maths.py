"""Input checks of the pure maths and the three schedulers (issue 21): a wrong type is a TypeError, a wrong value a
ValueError, each naming the parameter; NumPy / torch scalars give the same result as Python numbers; nothing returns
NaN silently. One row per (function, mistake)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_lab import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusion_lab.maths import checks, diffusion, flow, guidance, images, schedules
from diffusion_lab.maths.checks import check_timesteps

X = torch.zeros(2, 1, 8, 8)
AB = schedules.alphas_cumprod_from_betas(schedules.linear_betas(1000))  # (1000,)


def _ddim(n: int = 10) -> DDIMScheduler:
    s = DDIMScheduler()
    s.set_timesteps(n)
    return s


def _ddpm(n: int = 10) -> DDPMScheduler:
    s = DDPMScheduler()
    s.set_timesteps(n)
    return s


def _flow(n: int = 4) -> FlowMatchEulerDiscreteScheduler:
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(n)
    return s


def _step(s, **change):
    kw = {"model_output": X, "timestep": s.timesteps[0], "sample": X, **change}
    return s.step(**kw)


# (id, call, exception, phrase of the message: the parameter's name)
CASES = [
    # --- finding 1: DDIM steps only with its own timesteps (the loop index of enumerate is the usual mistake)
    ("ddim-loop-index", lambda: _step(_ddim(), timestep=5), ValueError, "timestep 5 is not one of"),
    ("ddim-loop-index-hint", lambda: _step(_ddim(), timestep=1), ValueError, "not the loop index"),
    ("ddim-loop-index-tensor", lambda: _step(_ddim(), timestep=torch.tensor(3)), ValueError, "timestep 3"),
    ("ddpm-loop-index-hint", lambda: _step(_ddpm(), timestep=5), ValueError, "not the loop index"),
    # --- finding 2: eta in [0, 1]
    ("ddim-eta-2", lambda: _step(_ddim(), eta=2.0), ValueError, r"eta must be >= 0 and <= 1.*more noise"),
    ("ddim-eta-1.01", lambda: _step(_ddim(), eta=1.01), ValueError, "eta must be"),
    ("ddim-eta-nan", lambda: _step(_ddim(), eta=float("nan")), ValueError, "eta must be finite"),
    ("ddim-eta-str", lambda: _step(_ddim(), eta="0.5"), TypeError, "eta must be a number"),
    ("ddim-eta-bool", lambda: _step(_ddim(), eta=True), TypeError, "eta"),
    ("ddim_sigma-eta-2", lambda: diffusion.ddim_sigma(0.5, 0.6, 2.0), ValueError, "eta must be"),
    ("ddim_step-sigma-too-big", lambda: diffusion.ddim_step(X, X, 0.5, 0.9), ValueError, "sigma must be in"),
    ("ddim_step-sigma-negative", lambda: diffusion.ddim_step(X, X, 0.5, -0.1), ValueError, "sigma must be in"),
    ("ddim_step-sigma-nan", lambda: diffusion.ddim_step(X, X, 0.5, float("nan")), ValueError, "sigma must be in"),
    ("ddim_step-sigma-str", lambda: diffusion.ddim_step(X, X, 0.5, "0.1"), TypeError, "sigma must be"),
    # --- finding 3: integer timesteps t in 0..T-1
    ("q_sample-t-minus-1", lambda: diffusion.q_sample(X, -1, X, AB), ValueError, r"t must be integers in \[0, 999\]"),
    ("q_sample-t-T", lambda: diffusion.q_sample(X, 1000, X, AB), ValueError, r"t must be .*T = num_train_timesteps"),
    ("q_sample-t-float", lambda: diffusion.q_sample(X, 0.5, X, AB), TypeError, "t must be integers"),
    (
        "q_sample-t-float-tensor",
        lambda: diffusion.q_sample(X, torch.tensor([0.5, 0.2]), X, AB),
        TypeError,
        "for a flow time in .* use flow_interpolate",
    ),
    ("q_sample-t-bool", lambda: diffusion.q_sample(X, True, X, AB), TypeError, "t must be integers"),
    ("q_sample-t-str", lambda: diffusion.q_sample(X, "5", X, AB), TypeError, "t must be integers"),
    ("q_sample-t-count", lambda: diffusion.q_sample(X, torch.tensor([1, 2, 3]), X, AB), ValueError, "one per sample"),
    ("q_sample-t-empty", lambda: diffusion.q_sample(X, torch.tensor([], dtype=torch.long), X, AB), ValueError, "t "),
    ("q_sample-x0-list", lambda: diffusion.q_sample([0.0], 1, X, AB), TypeError, "x0 must be a torch.Tensor"),
    ("q_sample-x0-int", lambda: diffusion.q_sample(X.long(), 1, X.long(), AB), ValueError, "x0 must be a float"),
    ("q_sample-shapes", lambda: diffusion.q_sample(X, 1, X[:1], AB), ValueError, "x0 and noise must have the same"),
    ("q_sample-table-2d", lambda: diffusion.q_sample(X, 1, X, AB[None]), ValueError, "alphas_cumprod must be 1-D"),
    ("q_sample-table-range", lambda: diffusion.q_sample(X, 1, X, AB + 1), ValueError, r"alphas_cumprod .*\[0, 1\]"),
    ("extract-t-T", lambda: diffusion.extract(AB, 1000, 4), ValueError, "t must be integers"),
    ("extract-t-float", lambda: diffusion.extract(AB, 2.0, 4), TypeError, "t must be integers"),
    ("extract-ndim-float", lambda: diffusion.extract(AB, 2, 4.0), TypeError, "ndim must be an integer"),
    ("extract-table-list", lambda: diffusion.extract([0.5], 0, 4), TypeError, "table must be a torch.Tensor"),
    ("add_noise-t-float", lambda: _ddim().add_noise(X, X, torch.tensor([0.5, 0.5])), TypeError, "timesteps must be"),
    ("add_noise-t-T", lambda: _ddpm().add_noise(X, X, torch.tensor([1, 1000])), ValueError, r"timesteps must be .*999"),
    ("get_velocity-x-list", lambda: _ddpm().get_velocity([0.0], X, 1), TypeError, "sample must be a torch.Tensor"),
    # --- flow time in [0, 1]
    ("flow_interpolate-500", lambda: flow.flow_interpolate(X, X, 500), ValueError, r"sigma .*\[0, 1\].*timestep"),
    ("flow_interpolate-nan", lambda: flow.flow_interpolate(X, X, float("nan")), ValueError, r"sigma .*\[0, 1\]"),
    ("flow_interpolate-bool", lambda: flow.flow_interpolate(X, X, True), TypeError, "sigma"),
    ("flow_interpolate-str", lambda: flow.flow_interpolate(X, X, "a"), TypeError, "sigma"),
    ("flow_interpolate-count", lambda: flow.flow_interpolate(X, X, torch.rand(3)), ValueError, "sigma must be one"),
    ("flow_velocity-shapes", lambda: flow.flow_velocity(X, X[:1]), ValueError, "x0 and noise"),
    ("flow_predict_x0-v-list", lambda: flow.flow_predict_x0(X, [0.0], 0.5), TypeError, "v must be a torch.Tensor"),
    ("flow_euler_step-next", lambda: flow.flow_euler_step(X, X, 0.5, -0.1), ValueError, "sigma_next"),
    ("shift_sigmas-shift-str", lambda: flow.shift_sigmas(0.5, "3"), TypeError, "shift must be a number"),
    ("shift_sigmas-shift-0", lambda: flow.shift_sigmas(0.5, 0), ValueError, "shift must be a positive number"),
    ("shift_sigmas-inf", lambda: flow.shift_sigmas(0.5, float("inf")), ValueError, "shift must be a positive"),
    ("shift_sigmas-sigmas", lambda: flow.shift_sigmas(torch.tensor([2.0]), 3.0), ValueError, "sigmas"),
    ("logit_normal-n-float", lambda: flow.logit_normal_timesteps(3.0), TypeError, "n must be an integer"),
    ("logit_normal-std-nan", lambda: flow.logit_normal_timesteps(3, std=float("nan")), ValueError, "std"),
    ("logit_normal-seed", lambda: flow.logit_normal_timesteps(3, generator=1), TypeError, "manual_seed"),
    # --- ᾱ values and their shapes
    ("x0_from_eps-ab-1.5", lambda: diffusion.x0_from_eps(X, X, 1.5), ValueError, r"ab_t .*\[0, 1\]"),
    ("eps_from_x0-ab-nan", lambda: diffusion.eps_from_x0(X, X, float("nan")), ValueError, "ab_t"),
    ("x0_from_v-ab-str", lambda: diffusion.x0_from_v(X, X, "0.5"), TypeError, "ab_t"),
    ("eps_from_v-ab-shape", lambda: diffusion.eps_from_v(X, X, torch.rand(3)), ValueError, "ab_t has shape"),
    ("velocity-shapes", lambda: diffusion.velocity(X, X[:1], 0.5), ValueError, "x0 and noise"),
    ("q_step-beta-2", lambda: diffusion.q_step(X, 2.0, X), ValueError, "beta_t"),
    ("predict-x_t-list", lambda: diffusion.predict_x0_and_eps(X, [0.0], 0.5), TypeError, "x_t must be a torch"),
    ("predict-shapes", lambda: diffusion.predict_x0_and_eps(X, X[:1], 0.5), ValueError, "model_output and x_t"),
    ("predict-type-array", lambda: diffusion.predict_x0_and_eps(X, X, 0.5, np.array(["a"])), TypeError, "prediction"),
    ("ddpm_posterior-order", lambda: diffusion.ddpm_posterior(X, X, 0.6, 0.5), ValueError, "ab_prev must be >= ab_t"),
    ("ddpm_step-order", lambda: diffusion.ddpm_step(X, X, 0.6, 0.5, X, "fixed_large"), ValueError, "ab_prev must"),
    ("ddpm_step-noise-shape", lambda: diffusion.ddpm_step(X, X, 0.5, 0.6, X[:1]), ValueError, "noise and x_t"),
    ("ddim_sigma-order", lambda: diffusion.ddim_sigma(0.6, 0.5, 1.0), ValueError, "ab_prev must be >= ab_t"),
    ("dynamic_threshold-ratio", lambda: diffusion.dynamic_threshold(X, "0.9"), TypeError, "dynamic_thresholding"),
    ("dynamic_threshold-0d", lambda: diffusion.dynamic_threshold(torch.tensor(1.0)), ValueError, "x0 must be"),
    # --- schedules
    ("linear_betas-T-float", lambda: schedules.linear_betas(10.0), TypeError, "T must be an integer"),
    ("linear_betas-end-2", lambda: schedules.linear_betas(10, 1e-4, 2.0), ValueError, "beta_end must be <= 1"),
    ("scaled_linear-start-neg", lambda: schedules.scaled_linear_betas(10, -0.1), ValueError, "beta_start"),
    ("cosine_betas-max", lambda: schedules.cosine_betas(10, max_beta=1.5), ValueError, "max_beta"),
    ("make_betas-T-str", lambda: schedules.make_betas("linear", "10"), TypeError, r"T \(num_train_timesteps\)"),
    ("make_betas-T-1", lambda: schedules.make_betas("linear", 1), ValueError, r"T \(num_train_timesteps\)"),
    ("make_betas-schedule-array", lambda: schedules.make_betas(np.array(["linear"])), TypeError, "beta_schedule"),
    ("alphas_cumprod-betas-list", lambda: schedules.alphas_cumprod_from_betas([0.1]), TypeError, "betas"),
    ("alphas_cumprod-betas-2", lambda: schedules.alphas_cumprod_from_betas(torch.tensor([2.0])), ValueError, "betas"),
    ("rescale-betas-one", lambda: schedules.rescale_zero_terminal_snr(torch.tensor([0.1])), ValueError, "betas"),
    ("snr-range", lambda: schedules.snr(torch.tensor([1.5])), ValueError, "alphas_cumprod"),
    ("snr_db-str", lambda: schedules.snr_db("a"), TypeError, "alphas_cumprod"),
    ("inference-T-float", lambda: schedules.inference_timesteps(10, 1000.0), TypeError, "num_train_timesteps"),
    ("inference-offset-neg", lambda: schedules.inference_timesteps(10, 1000, "leading", -1), ValueError, "steps_off"),
    ("custom-timesteps-0d", lambda: schedules.custom_timesteps(torch.tensor(5)), TypeError, "timesteps must be a list"),
    ("custom-timesteps-T", lambda: schedules.custom_timesteps([5, 3], 4.0), TypeError, "num_train_timesteps"),
    ("schedule_table-T", lambda: schedules.schedule_table(1), ValueError, "T must be >= 2"),
    # --- guidance
    ("cfg_combine-nan", lambda: guidance.cfg_combine(X, X, float("nan")), ValueError, "guidance_scale must be finite"),
    ("cfg_combine-bool", lambda: guidance.cfg_combine(X, X, True), TypeError, "guidance_scale"),
    ("cfg_combine-shape", lambda: guidance.cfg_combine(X, X, torch.ones(3)), ValueError, "guidance_scale has shape"),
    ("rescale-shapes", lambda: guidance.rescale_noise_cfg(X, X[:1], 0.5), ValueError, "noise_cfg and noise_pred"),
    ("drop-null-shape", lambda: guidance.drop_condition(X, torch.zeros(3, 3), 0.1), ValueError, "null"),
    ("drop-seed", lambda: guidance.drop_condition(X, X[0], 0.1, generator=4), TypeError, "manual_seed"),
    ("drop-cond-0d", lambda: guidance.drop_condition(torch.tensor(1.0), X[0], 0.1), ValueError, "cond must be"),
    # --- images
    ("edge_map-threshold-str", lambda: images.edge_map(X, "0.2"), TypeError, "threshold must be a number"),
    ("coarse_mask-cell-float", lambda: images.coarse_mask(X, 4.0), TypeError, "cell must be an integer"),
    ("edge_f1-tolerance-float", lambda: images.edge_f1(X, X, 1.0), TypeError, "tolerance must be an integer"),
    ("downsample-factor-bool", lambda: images.downsample(X, True), TypeError, "factor"),
    ("bicubic-factor-huge", lambda: images.bicubic_upscale(X, 10**6), ValueError, "factor must be a positive"),
    ("psnr-list", lambda: images.psnr([0.0], X), TypeError, "a must be a torch.Tensor"),
    ("psnr-range-str", lambda: images.psnr(X, X, "2"), TypeError, "data_range must be a number"),
    # --- finding 4: schedulers' counts, tensors, generators
    ("ddim-steps-float", lambda: DDIMScheduler().set_timesteps(10.0), TypeError, "num_inference_steps.*use 10"),
    ("ddim-steps-bool", lambda: DDIMScheduler().set_timesteps(True), TypeError, "num_inference_steps"),
    ("ddim-steps-0", lambda: DDIMScheduler().set_timesteps(0), ValueError, "num_inference_steps"),
    ("ddpm-steps-np-bool", lambda: DDPMScheduler().set_timesteps(np.bool_(True)), TypeError, "num_inference_steps"),
    ("flow-steps-float", lambda: FlowMatchEulerDiscreteScheduler().set_timesteps(4.0), TypeError, "num_inference"),
    ("flow-steps-0", lambda: FlowMatchEulerDiscreteScheduler().set_timesteps(0), ValueError, "num_inference_steps"),
    ("ddim-T-float", lambda: DDIMScheduler(num_train_timesteps=1000.0), TypeError, "num_train_timesteps"),
    ("ddpm-beta-str", lambda: DDPMScheduler(beta_start="0.1"), TypeError, "beta_start must be a number"),
    ("ddpm-trained-betas-str", lambda: DDPMScheduler(trained_betas="abc"), TypeError, "trained_betas"),
    ("ddpm-spacing-array", lambda: DDPMScheduler(timestep_spacing=np.array(["a"])), TypeError, "timestep_spacing"),
    ("flow-T-float", lambda: FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000.0), TypeError, "num_train"),
    ("flow-shift-bool", lambda: FlowMatchEulerDiscreteScheduler(shift=True), TypeError, "shift"),
    ("ddim-step-output-str", lambda: _step(_ddim(), model_output="x"), TypeError, "model_output must be a torch"),
    ("ddpm-step-sample-numpy", lambda: _step(_ddpm(), sample=np.zeros((2, 1, 8, 8))), TypeError, "sample must be"),
    ("ddim-step-shapes", lambda: _step(_ddim(), sample=X[:1]), ValueError, "model_output and sample"),
    ("ddim-step-seed", lambda: _step(_ddim(), generator=42), TypeError, r"manual_seed\(42\)"),
    ("ddpm-step-seed", lambda: _step(_ddpm(), generator=42), TypeError, r"manual_seed\(42\)"),
    ("ddpm-step-generators", lambda: _step(_ddpm(), generator=[torch.Generator()]), ValueError, "generator"),
    ("ddim-variance-noise-list", lambda: _step(_ddim(), eta=1.0, variance_noise=[0.0]), TypeError, "variance_noise"),
    ("flow-step-output-str", lambda: _step(_flow(), model_output="x"), TypeError, "model_output must be a torch"),
    ("flow-step-seed", lambda: _step(_flow(), generator=42), TypeError, "manual_seed"),
    ("flow-step-timestep-np-int", lambda: _step(_flow(), timestep=np.int64(3)), ValueError, "not an integer step"),
    ("flow-step-timestep-many", lambda: _step(_flow(), timestep=torch.rand(2)), ValueError, "timestep must be one"),
    ("flow-begin-index-neg", lambda: _flow().set_begin_index(-1), ValueError, "begin_index must be >= 0"),
    ("flow-sigmas-str", lambda: _flow().set_timesteps(sigmas=["a"]), TypeError, "sigmas"),
    ("flow-scale-noise-none", lambda: _flow().scale_noise(X, _flow().timesteps[0], None), TypeError, "noise must be"),
    ("flow-scale-noise-t-str", lambda: _flow().scale_noise(X, "a", X), TypeError, "timestep must be a number"),
    ("ddim-device-typo", lambda: DDIMScheduler().set_timesteps(10, device="gpu"), ValueError, "device must name"),
    ("ddpm-device-float", lambda: DDPMScheduler().set_timesteps(10, device=1.5), TypeError, "device must be"),
    ("flow-device-typo", lambda: _flow().set_timesteps(4, device="gpu"), ValueError, "device must name"),
    ("flow-index-empty", lambda: _flow().index_for_timestep(torch.zeros(0)), ValueError, "timestep must be one"),
]


@pytest.mark.parametrize("call,error,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wrong_type_or_value(call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


def test_check_timesteps_accepts_ints_of_every_kind():
    """Python, NumPy and torch integers, integer arrays and lists: the same LongTensor."""
    for t in (7, np.int64(7), np.int32(7), torch.tensor(7), torch.tensor([7], dtype=torch.int32), [7], np.array([7])):
        got = check_timesteps("t", t, 10, batch=1)
        assert got.dtype == torch.long and got.reshape(-1).tolist() == [7]


def test_q_sample_same_result_for_every_kind_of_int():
    x0, noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), torch.ones(2, 3)
    want = diffusion.q_sample(x0, 500, noise, AB)
    for t in (np.int64(500), torch.tensor(500), torch.tensor([500, 500]), [500, 500]):
        assert torch.equal(diffusion.q_sample(x0, t, noise, AB), want)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler])
@pytest.mark.parametrize("n", [np.int64(10), np.int32(10), torch.tensor(10)])
def test_set_timesteps_takes_numpy_and_torch_counts(cls, n):
    a, b = cls(), cls()
    a.set_timesteps(n)
    b.set_timesteps(10)
    assert torch.equal(a.timesteps, b.timesteps) and a.num_inference_steps == 10
    assert type(a.num_inference_steps) is int


def test_numpy_and_torch_config_values_are_stored_as_plain_numbers():
    """np.int64(1000), np.float64(1e-4), torch.tensor(3.0): the same schedule, and the config saves as JSON."""
    ours = DDIMScheduler(num_train_timesteps=np.int64(1000), beta_start=np.float64(1e-4), steps_offset=torch.tensor(1))
    plain = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, steps_offset=1)
    assert json.loads(ours.to_json_string()) == json.loads(plain.to_json_string())
    assert torch.equal(ours.alphas_cumprod, plain.alphas_cumprod)
    flow_s = FlowMatchEulerDiscreteScheduler(shift=torch.tensor(3.0), num_train_timesteps=np.int64(1000))
    assert flow_s.config.shift == 3.0 and type(flow_s.config.shift) is float
    assert torch.equal(flow_s.sigmas, FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas)
    json.loads(flow_s.to_json_string())


def test_ddim_eta_bounds_and_scalar_types_give_the_same_step():
    """eta = 0 and 1 (the ends) work; np.float64 / torch eta equal the Python float; eta = 1 never gives NaN."""
    s = _ddim()
    g = torch.Generator().manual_seed(0)
    x, out, z = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4)
    for t in s.timesteps:
        want = s.step(out, t, x, eta=1.0, variance_noise=z).prev_sample
        assert not want.isnan().any()
        for eta in (np.float64(1.0), torch.tensor(1.0), 1):
            assert torch.equal(s.step(out, t, x, eta=eta, variance_noise=z).prev_sample, want)
    assert not s.step(out, s.timesteps[0], x, eta=0.0).prev_sample.isnan().any()


def test_ddim_steps_with_custom_timesteps_and_its_own_schedule():
    """The check lets every valid step through: the whole schedule, and hand-picked timesteps."""
    s = DDIMScheduler()
    s.set_timesteps(timesteps=[999, 500, 3])
    x = torch.zeros(1, 2)
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(ValueError, match="timestep 4 is not one"):
        s.step(torch.zeros_like(x), 4, x)


def test_numpy_scalars_in_the_pure_functions_give_the_same_numbers():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    assert torch.equal(guidance.cfg_combine(cond, uncond, np.float32(7.5)), guidance.cfg_combine(cond, uncond, 7.5))
    assert torch.equal(guidance.cfg_combine(cond, uncond, torch.tensor(7.5)), guidance.cfg_combine(cond, uncond, 7.5))
    assert flow.shift_sigmas(0.5, np.float64(3.0)) == flow.shift_sigmas(0.5, 3.0) == 0.75
    np.testing.assert_array_equal(flow.shift_sigmas([0.0, 0.5, 1.0], 3), np.array([0.0, 0.75, 1.0]))
    assert torch.equal(schedules.linear_betas(np.int64(10), np.float64(1e-4)), schedules.linear_betas(10, 1e-4))
    assert np.array_equal(
        schedules.inference_timesteps(np.int64(10), np.int64(1000)), schedules.inference_timesteps(10)
    )
    assert torch.equal(diffusion.ddim_sigma(0.5, 0.6, np.float64(0.5)), diffusion.ddim_sigma(0.5, 0.6, 0.5))  # same σ


def test_generator_lists_draw_one_sample_each():
    """A list of generators (one per sample) draws row i from generator i, as diffusers' randn_tensor does."""
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    t = flow.logit_normal_timesteps(3, generator=gens)
    for i in range(3):
        assert t[i] == flow.logit_normal_timesteps(1, generator=torch.Generator().manual_seed(i))[0]
    cond, null = torch.arange(3.0).reshape(3, 1), torch.tensor([-1.0])
    dropped = guidance.drop_condition(cond, null, 0.5, [torch.Generator().manual_seed(i) for i in range(3)])
    for i in range(3):
        one = guidance.drop_condition(cond[i : i + 1], null, 0.5, torch.Generator().manual_seed(i))
        assert torch.equal(dropped[i : i + 1], one)


def test_valid_edges_pass():
    """ᾱ = 1 and 0, flow times 0 and 1, t = 0 and T − 1 are valid and finite where the maths is."""
    assert torch.isfinite(diffusion.q_sample(X, torch.tensor([0, 999]), X, AB)).all()
    assert (
        torch.isfinite(diffusion.x0_from_v(X, X, 0.0)).all() and torch.isfinite(diffusion.x0_from_eps(X, X, 1.0)).all()
    )
    assert torch.equal(flow.flow_interpolate(X, X + 1, torch.tensor([0.0, 1.0]))[1], X[1] + 1)
    assert checks.check_flow_time("sigma", np.float32(1.0)).item() == 1.0
    zero_snr = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    zero_snr.set_timesteps(5)
    x = torch.randn(1, 2)
    for t in zero_snr.timesteps:  # ᾱ_{T-1} = 0 exactly
        x = zero_snr.step(torch.randn(1, 2), t, x, eta=1.0).prev_sample
    assert torch.isfinite(x).all()
