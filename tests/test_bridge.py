"""diffusion_lab.bridge.hub: tiny SDXL/SD3 pipelines offline, the hand-written loops equal to ``pipe(...)``, our
schedulers inside the real pipelines, the environment check and the faults (issue 7)."""

from __future__ import annotations

import threading
import types
import warnings

import diffusers
import numpy as np
import pytest
import torch

import diffusion_lab
from diffusion_lab import bridge
from diffusion_lab.bridge import hub

ATOL = 1e-5
SIZE = 64
PROMPT = "a watercolour fox in the snow"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def sdxl():
    return bridge.tiny_sdxl()


@pytest.fixture(scope="module")
def sd3():
    return bridge.tiny_sd3()


def _pipe_image(pipe, **kw):
    kw = dict(num_inference_steps=5, height=SIZE, width=SIZE, output_type="np") | kw
    return pipe(PROMPT, generator=_gen(), **kw).images


def _not_trivial(image) -> None:
    assert np.isfinite(image).all() and image.std() > 1e-3


# --- manual loops = pipe(...) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"guidance_scale": 7.5, "negative_prompt": "blurry"},
        {"original_size": (32, 32), "crops_coords_top_left": (8, 4), "target_size": (64, 64)},
    ],
    ids=["default", "negative", "micro-conditioning"],
)
def test_sdxl_manual_loop_equals_pipe(sdxl, kw):
    expected = _pipe_image(sdxl, **kw)
    got = bridge.sdxl_generate(
        sdxl, PROMPT, num_inference_steps=5, height=SIZE, width=SIZE, generator=_gen(), output_type="np", **kw
    )
    _not_trivial(expected)
    assert _diff(got, expected) <= ATOL


def test_sdxl_micro_conditioning_changes_the_image(sdxl):
    plain = bridge.sdxl_generate(
        sdxl, PROMPT, num_inference_steps=3, height=SIZE, width=SIZE, generator=_gen(), output_type="np"
    )
    cropped = bridge.sdxl_generate(
        sdxl,
        PROMPT,
        num_inference_steps=3,
        height=SIZE,
        width=SIZE,
        generator=_gen(),
        output_type="np",
        crops_coords_top_left=(16, 16),
    )
    assert _diff(plain, cropped) > 1e-4  # the time ids really reach the UNet


@pytest.mark.parametrize("with_t5", [True, False], ids=["three-encoders", "t5-dropped"])
@pytest.mark.parametrize("guidance_scale", [1.0, 7.0])
def test_sd3_manual_loop_equals_pipe(with_t5, guidance_scale):
    pipe = bridge.tiny_sd3(with_t5=with_t5)
    expected = _pipe_image(pipe, guidance_scale=guidance_scale)
    got = bridge.sd3_generate(
        pipe,
        PROMPT,
        num_inference_steps=5,
        height=SIZE,
        width=SIZE,
        generator=_gen(),
        guidance_scale=guidance_scale,
        output_type="np",
    )
    _not_trivial(expected)
    assert _diff(got, expected) <= ATOL


def test_sd3_dropping_t5_changes_the_image_and_parameters():
    full, dropped = bridge.tiny_sd3(), bridge.tiny_sd3(with_t5=False)
    assert bridge.count_parameters(dropped.text_encoder_3) == 0 < bridge.count_parameters(full.text_encoder_3)
    assert _diff(_pipe_image(full), _pipe_image(dropped)) > 1e-4


# --- our schedulers inside the real pipelines -------------------------------------------------------------------


def test_our_ddim_in_the_real_sdxl_pipeline(sdxl):
    """pipe.scheduler = our DDIM (built from SDXL's scheduler config) gives diffusers' DDIM image; the manual loop
    with our scheduler gives it too."""
    config = dict(sdxl.scheduler.config)
    theirs = diffusers.DDIMScheduler.from_config(config)
    ours = diffusion_lab.DDIMScheduler.from_config(config)
    original = sdxl.scheduler
    try:
        sdxl.scheduler = theirs
        expected = _pipe_image(sdxl)
        sdxl.scheduler = ours
        got = _pipe_image(sdxl)
        manual = bridge.sdxl_generate(
            sdxl, PROMPT, num_inference_steps=5, height=SIZE, width=SIZE, generator=_gen(), output_type="np"
        )
    finally:
        sdxl.scheduler = original
    _not_trivial(expected)
    assert _diff(got, expected) <= ATOL
    assert _diff(manual, expected) <= ATOL


def test_our_flow_scheduler_in_the_real_sd3_pipeline(sd3):
    expected = _pipe_image(sd3)  # diffusers' FlowMatchEulerDiscreteScheduler(shift=3)
    original = sd3.scheduler
    try:
        sd3.scheduler = diffusion_lab.FlowMatchEulerDiscreteScheduler.from_config(original.config)
        assert sd3.scheduler.shift == 3.0
        got = _pipe_image(sd3)
        manual = bridge.sd3_generate(
            sd3, PROMPT, num_inference_steps=5, height=SIZE, width=SIZE, generator=_gen(), output_type="np"
        )
    finally:
        sd3.scheduler = original
    assert _diff(got, expected) <= ATOL
    assert _diff(manual, expected) <= ATOL


# --- the other tiny pipelines ------------------------------------------------------------------------------------


def test_base_refiner_hand_off_and_autopipelines(sdxl):
    refiner = bridge.tiny_sdxl_refiner(sdxl)
    assert refiner.vae is sdxl.vae and refiner.text_encoder_2 is sdxl.text_encoder_2
    latents = sdxl(
        PROMPT,
        num_inference_steps=10,
        denoising_end=0.8,
        height=SIZE,
        width=SIZE,
        generator=_gen(),
        output_type="latent",
    ).images
    assert latents.shape == (1, 4, SIZE // 2, SIZE // 2)
    image = refiner(
        PROMPT, image=latents, num_inference_steps=10, denoising_start=0.8, generator=_gen(), output_type="np"
    ).images
    _not_trivial(image)
    init = _pipe_image(sdxl)
    i2i = diffusers.AutoPipelineForImage2Image.from_pipe(sdxl)
    out = i2i(PROMPT, image=init, strength=0.5, num_inference_steps=4, generator=_gen(), output_type="np").images
    assert out.shape == init.shape and _diff(out, init) > 1e-3
    inpaint = diffusers.AutoPipelineForInpainting.from_pipe(sdxl)
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[16:48, 16:48] = 1.0
    out = inpaint(
        PROMPT,
        image=init,
        mask_image=mask,
        strength=0.9,
        num_inference_steps=4,
        height=SIZE,
        width=SIZE,
        generator=_gen(),
        output_type="np",
    ).images
    assert out.shape == init.shape


def test_tiny_sd15_and_taesd(sdxl):
    image = bridge.tiny_sd15()(PROMPT, num_inference_steps=2, height=SIZE, width=SIZE, output_type="np").images
    assert image.shape == (1, SIZE, SIZE, 3)
    taesd = bridge.tiny_taesd()
    latents = torch.randn(1, 4, SIZE // 2, SIZE // 2)
    assert taesd.decode(latents).sample.shape == (1, 3, SIZE, SIZE)  # same factor as the tiny VAE


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_tiny_taesd_factor_is_the_side_ratio(factor):
    taesd = bridge.tiny_taesd(latent_channels=16, factor=factor)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    latents = taesd.encode(x).latents
    assert latents.shape == (1, 16, 32 // factor, 32 // factor)
    assert taesd.decode(latents).sample.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("factor, error", [(3, ValueError), (1, ValueError), (2.0, TypeError)])
def test_tiny_taesd_rejects_a_factor_that_is_not_a_power_of_two(factor, error):
    with pytest.raises(error, match="factor"):
        bridge.tiny_taesd(factor=factor)


# --- loading through from_pretrained ----------------------------------------------------------------------------


def _tiny_env() -> bridge.Environment:
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


def test_load_pipeline_tiny_path_is_the_real_from_pretrained(tmp_path, sdxl, capsys):
    pipe = bridge.load_pipeline("sdxl-base", _tiny_env(), cache_dir=tmp_path)
    assert isinstance(pipe, diffusers.StableDiffusionXLPipeline)
    assert (bridge.tiny_pipeline_path("sdxl-base", tmp_path) / "model_index.json").exists()
    assert "TINY" in capsys.readouterr().out
    assert not pipe.unet.training and not pipe.text_encoder.training
    assert _diff(_pipe_image(pipe), _pipe_image(sdxl)) == 0.0  # saved and reloaded: the very same pipeline
    assert not list((tmp_path / "tiny").glob(".sdxl-base-*"))  # no temporary folder left behind
    again = bridge.load_pipeline("sdxl-base", _tiny_env(), cache_dir=tmp_path)  # from the cache
    assert _diff(_pipe_image(again), _pipe_image(sdxl)) == 0.0


def test_load_pipeline_sd3_tiny(tmp_path):
    pipe = bridge.load_pipeline("sd3-medium", _tiny_env(), cache_dir=tmp_path)
    assert isinstance(pipe, diffusers.StableDiffusion3Pipeline) and pipe.text_encoder_3 is not None
    dropped = bridge.load_pipeline("sd3-medium", _tiny_env(), cache_dir=tmp_path, text_encoder_3=None, tokenizer_3=None)
    assert dropped.text_encoder_3 is None
    _not_trivial(_pipe_image(dropped))


def test_model_ids_in_one_place():
    assert bridge.MODELS["sd3-medium"].gated
    assert "runwayml" not in bridge.MODELS["sd15"].repo_id  # deleted in 2024
    for key, card in bridge.MODELS.items():
        assert "/" in card.repo_id, key
    with pytest.raises(ValueError, match="unknown model 'sdxl'.*sdxl-base"):
        bridge.load_pipeline("sdxl", _tiny_env())


def _hub_error(kind: str):
    from huggingface_hub import errors

    response = types.SimpleNamespace(headers={}, request=None)
    return getattr(errors, kind)(f"{kind} (simulated)", response=response)


class _FakePipeline:
    calls: list[str] = []
    errors: dict[str, Exception] = {}

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        cls.calls.append(str(source))
        if str(source) in cls.errors:
            raise cls.errors[str(source)]
        return ("loaded", str(source), kwargs.get("token"))


def _real_env() -> bridge.Environment:
    return bridge.Environment("cpu", None, None, True, "environment variable HF_TOKEN", True, ("test",))


def test_gated_model_says_accept_the_licence_and_log_in(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    repo = bridge.MODELS["sd3-medium"].repo_id
    _FakePipeline.calls, _FakePipeline.errors = [], {repo: _hub_error("GatedRepoError")}
    with pytest.raises(PermissionError, match="accept the licence.*hf auth login.*HF_TOKEN") as info:
        bridge.load_pipeline("sd3-medium", _real_env(), pipeline_class=_FakePipeline, strict=True)
    assert "hf_secret_value" not in str(info.value)
    # not strict (the notebooks): the same message, then the tiny stand-in, so every cell still runs
    out = bridge.load_pipeline("sd3-medium", _real_env(), pipeline_class=_FakePipeline, cache_dir=tmp_path)
    assert out[1] == str(bridge.tiny_pipeline_path("sd3-medium", tmp_path))
    text = capsys.readouterr().out
    assert "accept the licence" in text and "TINY" in text and "hf_secret_value" not in text


def test_missing_repository_moves_to_the_alternative(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    card = bridge.MODELS["sd15"]
    _FakePipeline.calls, _FakePipeline.errors = [], {card.repo_id: _hub_error("RepositoryNotFoundError")}
    out = bridge.load_pipeline("sd15", _real_env(), pipeline_class=_FakePipeline)
    assert out == ("loaded", card.alternatives[0], "hf_secret_value")
    assert "was not found" in capsys.readouterr().out


def test_network_failure_falls_back_to_tiny(monkeypatch, tmp_path, capsys):
    card = bridge.MODELS["sdxl-base"]
    _FakePipeline.calls = []
    _FakePipeline.errors = {card.repo_id: OSError("Connection timed out")}
    out = bridge.load_pipeline("sdxl-base", _real_env(), pipeline_class=_FakePipeline, cache_dir=tmp_path)
    assert out[1] == str(bridge.tiny_pipeline_path("sdxl-base", tmp_path))
    text = capsys.readouterr().out
    assert "could not load" in text and "TINY" in text


# --- environment check -----------------------------------------------------------------------------------------------


def test_environment_quick_mode_never_probes(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "1")
    monkeypatch.setattr(hub, "_hub_reachable", lambda *a: pytest.fail("the network was touched"))
    env = bridge.check_environment(allow_cpu=True)
    assert not env.use_real and not env.hub
    assert "quick mode" in str(env) and "STAND-IN (not the real weights" in str(env)


def test_environment_unreachable_hub_is_bounded(monkeypatch):
    """A hub that never answers (DNS included) costs at most the timeout, then the tiny path: the probe runs in a
    thread that is waited for with the timeout, and check_environment returns while the probe still hangs."""
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "0")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_ENDPOINT"):  # all are honoured
        monkeypatch.delenv(var, raising=False)
    release, connects, threads = threading.Event(), [], []

    def never_answers(address, timeout=None):  # hangs until the test lets it go, whatever the socket timeout
        connects.append((address, timeout))
        release.wait(30)  # (bounded, so that a check_environment that waits for the probe fails instead of hanging)
        raise OSError("released by the test")

    class RecordedThread(threading.Thread):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.join_timeouts = []
            threads.append(self)

        def join(self, timeout=None):
            self.join_timeouts.append(timeout)
            super().join(timeout)

    monkeypatch.setattr(hub.socket, "create_connection", never_answers)
    monkeypatch.setattr(hub, "threading", types.SimpleNamespace(Thread=RecordedThread))
    try:
        env = bridge.check_environment(hub_timeout=0.5, allow_cpu=True)
        (probe,) = threads
        assert probe.daemon and probe.join_timeouts == [0.5]  # waited for at most the timeout
        assert probe.is_alive()  # and given up on: the probe is still blocked in the connection
        assert connects == [(hub.HUB_HOST, 0.5)]
        assert not env.hub and not env.use_real and "did not answer within 0.5 s" in str(env)
    finally:
        release.set()
    probe.join()


def test_environment_refused_connection(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "0")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_ENDPOINT"):  # all are honoured
        monkeypatch.delenv(var, raising=False)
    env = bridge.check_environment(hub_timeout=2.0, allow_cpu=True, probe_host=("127.0.0.1", 9))
    assert not env.hub and not env.use_real and "unreachable" in str(env)


def test_environment_token_source_only(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    env = bridge.check_environment()
    assert env.token_source == "environment variable HF_TOKEN"
    assert "hf_secret_value" not in str(env) and "hf_secret_value" not in repr(env)
    if torch.cuda.is_available():
        bf16 = torch.cuda.get_device_capability()[0] >= 8  # Ampere and later
        assert env.device == "cuda" and env.dtype == (torch.bfloat16 if bf16 else torch.float16)
    else:
        assert env.dtype == torch.float32 and "no CUDA GPU" in str(env)


# --- faults ------------------------------------------------------------------------------------------------------------


def test_size_not_a_multiple_of_the_factor(sdxl, sd3):
    with pytest.raises(ValueError, match="height=60 must be a positive multiple of 8 .*try height=64"):
        bridge.check_size(60, 64, 8)  # the real SDXL/SD3 VAE factor
    with pytest.raises(ValueError, match="width=63 must be a positive multiple of 2"):
        bridge.sdxl_generate(sdxl, PROMPT, height=64, width=63, num_inference_steps=1)
    with pytest.raises(ValueError, match="height=66 must be a positive multiple of 4.*try height=64"):
        bridge.sd3_generate(sd3, PROMPT, height=66, width=64, num_inference_steps=1)  # VAE 2 × patch 2
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        bridge.sdxl_generate(sdxl, PROMPT, num_inference_steps=0)


def test_fp16_vae_nan_is_detected_and_upcast(sdxl):
    vae = bridge.tiny_sdxl().vae
    latents = torch.randn(1, 4, 8, 8)
    reference = bridge.decode_latents(vae, latents)
    real_decode = vae.decode

    def overflowing_decode(z, return_dict=True):
        if z.dtype == torch.float16:  # what SDXL's VAE does in fp16: overflow → NaN (black images)
            return (torch.full((z.shape[0], 3, 2 * z.shape[2], 2 * z.shape[3]), float("nan"), dtype=z.dtype),)
        return real_decode(z, return_dict=False)

    vae.decode = overflowing_decode
    vae.to(torch.float16)
    with pytest.warns(UserWarning, match="NaN/inf in torch.float16.*sdxl-vae-fp16-fix"):
        image = bridge.decode_latents(vae, latents)
    assert torch.isfinite(image).all() and vae.dtype == torch.float16  # decoded in fp32, put back
    assert _diff(image.float(), reference) < 1e-2


def test_out_of_memory_names_the_next_knob(sdxl):
    with pytest.raises(torch.OutOfMemoryError, match="Next knob to try: fp16/bf16.*enable_model_cpu_offload"):
        with bridge.suggest_on_oom(sdxl):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    half = types.SimpleNamespace(components={"unet": torch.nn.Linear(2, 2).half()})
    with pytest.raises(torch.OutOfMemoryError, match="Next knob to try: pipe.enable_model_cpu_offload"):
        with bridge.suggest_on_oom(half):
            raise torch.OutOfMemoryError("CUDA out of memory")


def test_place_and_is_tiny(sdxl):
    assert bridge.is_tiny(sdxl)
    env = _tiny_env()
    assert bridge.place(sdxl, env) is sdxl and not env.small_gpu and env.dtype == torch.float32


def test_measure_reads_the_clock_around_the_call(monkeypatch):
    """measure() returns fn's result and the clock's advance during the call (a fake clock that only fn moves)."""
    import time

    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    cuda = torch.cuda.is_available()

    def work():
        now[0] += 2.5  # the call "takes" 2.5 s
        if cuda:  # and holds 256 MiB of GPU memory at its peak
            torch.empty(2**26, device="cuda").fill_(1.0)
        return "done"

    result, m = bridge.measure(work)
    assert result == "done" and m.seconds == 2.5
    if cuda:
        assert m.peak_gib >= 0.25 and str(m).startswith("2.50 s, peak GPU memory")
    else:
        assert m.peak_gib is None and str(m) == "2.50 s"


def test_tiny_turbo_one_step_starts_at_pure_noise():
    turbo = bridge.tiny_sdxl_turbo()
    turbo.scheduler.set_timesteps(1)
    assert turbo.scheduler.timesteps.tolist() == [999]
    assert isinstance(turbo.scheduler, diffusers.EulerAncestralDiscreteScheduler)


def test_tiny_sd_turbo_is_trailing_euler_as_shipped():
    """stabilityai/sd-turbo ships EulerDiscreteScheduler with trailing spacing: one step starts at t = 999 (SD 1.5's
    leading spacing would start the single step at t = 1, σ ≈ 0.03: a picture decoded from almost raw noise)."""
    turbo = bridge.tiny_sd_turbo()
    assert type(turbo.scheduler) is diffusers.EulerDiscreteScheduler
    turbo.scheduler.set_timesteps(1)
    assert turbo.scheduler.timesteps.tolist() == [999] and turbo.scheduler.sigmas[0] > 14
    turbo.scheduler.set_timesteps(4)
    assert turbo.scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert bridge.MODELS["sd-turbo"].tiny is bridge.tiny_sd_turbo


def test_hand_written_encoders_warn_about_truncated_prompts(sdxl, sd3):
    """The hand-written text encoding (sdxl_text_embeddings, sd3_text_embeddings) says what a long prompt loses, as
    diffusers' encode_prompt does; a prompt that fits is silent."""
    from diffusion_lab.models.text_encoder import PromptTruncatedWarning

    long = "a watercolour fox " + "in the deep snow " * 30 + "at midnight"
    with pytest.warns(PromptTruncatedWarning, match=r"reads at most 77 tokens; prompt 0: dropped '.*midnight'"):
        bridge.sdxl_text_embeddings(sdxl, [long])
    with pytest.warns(PromptTruncatedWarning, match=r"T5 \(max_sequence_length\) reads at most 16 tokens"):
        bridge.sd3_text_embeddings(sd3, [PROMPT + " at midnight"], max_sequence_length=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        bridge.sdxl_text_embeddings(sdxl, [PROMPT])


def test_measure_on_a_gpu_says_what_was_resident_before_the_call(monkeypatch):
    """A fake CUDA allocator: 6 GiB resident (another pipeline), the call peaks at 9 GiB. The peak includes what was
    resident, and the measurement says so (notebook 10's Turbo cell and notebook 11's low-memory recipe run while
    another pipeline may still sit on a large GPU)."""
    state = {"allocated": 6 * 2**30, "peak": 12 * 2**30}

    def reset():
        state["peak"] = state["allocated"]

    def work():
        state["peak"] = max(state["peak"], 9 * 2**30)
        return "done"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: state["peak"])
    result, m = bridge.measure(work)
    assert result == "done" and m.peak_gib == 9.0 and m.resident_gib == 6.0
    assert str(m).endswith("peak GPU memory 9.0 GiB (6.0 GiB of it resident before the call)")
    state["allocated"] = 0
    assert str(bridge.measure(work)[1]).endswith("peak GPU memory 9.0 GiB")
