"""The error convention (diffusion_lab/utils/errors.py) at every public entry point of models, mnist, checkpoints,
guidance, bridge and course: a wrong type is a TypeError, a wrong value a ValueError, a missing or damaged file a
FileError (an OSError) — each with a message that names the argument. One row per (entry point, mistake)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_lab.maths.guidance import cfg_combine, drop_condition, rescale_noise_cfg
from diffusion_lab.mnist import captions, classifier, data, metrics
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL, DiagonalGaussianDistribution
from diffusion_lab.models.controlnet import ControlNet, ControlNetConfig
from diffusion_lab.models.image_embedding import EmbeddingNormalizer, NormalizerConfig, noise_embedding
from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.utils import checkpoint
from diffusion_lab.utils.errors import FileError, check_choice, check_int, check_number, check_tensor

_UNET = UNetConfig(channels=(8, 16), attention_levels=(False, False), groups=4, num_classes=10, time_embed_dim=16)
_TEXT = TextEncoderConfig(vocab_size=20, hidden_size=16, num_layers=1, num_heads=2, max_position=8)
_MMDIT = MMDiTConfig(in_channels=4, out_channels=4, sample_size=4, patch_size=2, depth=1, hidden_size=32, num_heads=2)
_AE = AutoencoderConfig(channels=(8,), groups=4)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "unet": UNet(_UNET),
        "text": TextEncoder(_TEXT),
        "mmdit": MMDiT(_MMDIT),
        "ae": AutoencoderKL(_AE),
        "controlnet": ControlNet(ControlNetConfig(unet=_UNET, conditioning_embedding_out_channels=(4,))),
        "clf": classifier.MnistClassifier(classifier.ClassifierConfig(channels=(4,), feature_dim=8)),
        "norm": EmbeddingNormalizer(NormalizerConfig(embedding_dim=8)),
        "tok": WordTokenizer.from_texts(["a thick seven"]),
    }


@pytest.fixture(scope="module")
def bins():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 28, 28, generator=g) * 2 - 1
    return captions.fit_bins(x)


_X = torch.zeros(2, 1, 8, 8)
_DIGITS = torch.zeros(2, 1, 28, 28)

# (id, call(models, bins), exception, phrase of the message)
CASES = [
    # --- the checks themselves
    ("check_int-float", lambda m, b: check_int("steps", 2.0), TypeError, "steps must be an integer"),
    ("check_int-bool", lambda m, b: check_int("steps", True), TypeError, "steps must be an integer"),
    ("check_int-zero", lambda m, b: check_int("steps", 0), ValueError, "steps must be >= 1"),
    ("check_number-str", lambda m, b: check_number("eta", "0.5"), TypeError, "eta must be a number"),
    ("check_number-nan", lambda m, b: check_number("eta", float("nan")), ValueError, "eta must be finite"),
    ("check_choice", lambda m, b: check_choice("split", "valid", ("train", "test")), ValueError, "split must be one"),
    ("check_tensor", lambda m, b: check_tensor("x", [1.0], "(B,)"), TypeError, r"x must be a torch.Tensor \(B,\)"),
    # --- models: configs
    ("UNetConfig-float-channels", lambda m, b: UNetConfig(channels=(8.0, 16)), TypeError, r"channels\[0\]"),
    ("UNetConfig-zero-heads", lambda m, b: UNetConfig(heads=0), ValueError, "heads must be >= 1"),
    ("UNetConfig-str-classes", lambda m, b: UNetConfig(num_classes="10"), TypeError, "num_classes must be an integer"),
    ("MMDiTConfig-float-depth", lambda m, b: MMDiTConfig(depth=2.0), TypeError, "depth must be an integer"),
    ("MMDiTConfig-zero-depth", lambda m, b: MMDiTConfig(depth=0), ValueError, "depth must be a positive integer"),
    ("AutoencoderConfig-str-channels", lambda m, b: AutoencoderConfig(channels="16"), TypeError, "channels"),
    (
        "AutoencoderConfig-zero-latents",
        lambda m, b: AutoencoderConfig(latent_channels=0),
        ValueError,
        "latent_channels",
    ),
    ("TextEncoderConfig-float", lambda m, b: TextEncoderConfig(vocab_size=20.0), TypeError, "vocab_size must be an"),
    ("TextEncoderConfig-zero", lambda m, b: TextEncoderConfig(vocab_size=0), ValueError, "vocab_size must be >= 1"),
    ("ControlNetConfig-unet", lambda m, b: ControlNetConfig(unet=3), TypeError, "unet must be a UNetConfig"),
    ("ControlNetConfig-zero", lambda m, b: ControlNetConfig(conditioning_channels=0), ValueError, "conditioning_ch"),
    ("ClassifierConfig-float", lambda m, b: classifier.ClassifierConfig(feature_dim=8.0), TypeError, "feature_dim"),
    ("ClassifierConfig-empty", lambda m, b: classifier.ClassifierConfig(channels=()), ValueError, "1 to 3 positive"),
    ("NormalizerConfig-zero", lambda m, b: NormalizerConfig(embedding_dim=0), ValueError, "embedding_dim must be"),
    # --- models: forward
    ("UNet-list", lambda m, b: m["unet"]([[0.0]], 1), TypeError, "x must be a torch.Tensor"),
    ("UNet-rank", lambda m, b: m["unet"](torch.zeros(1, 8, 8), 1), ValueError, r"expected x of shape \(B, 1, H, W\)"),
    ("UNet-labels-list", lambda m, b: m["unet"](_X, 1, class_labels=[1, 2]), TypeError, "class_labels must be a"),
    ("UNet-labels-range", lambda m, b: m["unet"](_X, 1, torch.tensor([1, 12])), ValueError, "class_labels must be in"),
    ("MMDiT-numpy", lambda m, b: m["mmdit"](np.zeros((1, 4, 4, 4)), 0.5), TypeError, "x must be a torch.Tensor"),
    ("MMDiT-rank", lambda m, b: m["mmdit"](torch.zeros(4, 4, 4), 0.5), ValueError, r"expected latents \(B, 4, H, W\)"),
    ("MMDiT-t-str", lambda m, b: m["mmdit"](torch.zeros(1, 4, 4, 4), "0.5"), TypeError, "timestep must be a number"),
    ("MMDiT-t-range", lambda m, b: m["mmdit"](torch.zeros(1, 4, 4, 4), 2.0), ValueError, r"flow time t in \[0, 1\]"),
    ("AE-encode-list", lambda m, b: m["ae"].encode([0.0]), TypeError, "x must be a torch.Tensor"),
    ("AE-encode-rank", lambda m, b: m["ae"].encode(torch.zeros(1, 8, 8)), ValueError, "expected images x of shape"),
    ("AE-decode-list", lambda m, b: m["ae"].decode(None), TypeError, "z must be a torch.Tensor"),
    ("AE-decode-channels", lambda m, b: m["ae"].decode(torch.zeros(1, 1, 4, 4)), ValueError, "latent_channels=4"),
    ("Gaussian-list", lambda m, b: DiagonalGaussianDistribution([0.0]), TypeError, "parameters must be a"),
    ("Gaussian-odd", lambda m, b: DiagonalGaussianDistribution(torch.zeros(1, 3)), ValueError, r"\(B, 2L, \.\.\.\)"),
    ("TextEncoder-list", lambda m, b: m["text"]([[2, 3]]), TypeError, "input_ids must be a torch.Tensor"),
    ("TextEncoder-float", lambda m, b: m["text"](torch.zeros(1, 2)), ValueError, "integer tensor"),
    ("TextEncoder-mask-list", lambda m, b: m["text"](torch.tensor([[2, 3]]), [[1, 1]]), TypeError, "attention_mask"),
    ("TextEncoder-config", lambda m, b: TextEncoder(None), TypeError, "TextEncoder needs a TextEncoderConfig"),
    ("resize-float", lambda m, b: m["text"].resize_token_embeddings(30.0), TypeError, "new_num_tokens must be an"),
    ("resize-shrink", lambda m, b: m["text"].resize_token_embeddings(5), ValueError, "rows are only"),
    (
        "ControlNet-list",
        lambda m, b: m["controlnet"]([0.0], 1, controlnet_cond=_X),
        TypeError,
        "x must be a torch.Tensor",
    ),
    (
        "ControlNet-rank",
        lambda m, b: m["controlnet"](torch.zeros(1, 8, 8), 1, controlnet_cond=_X),
        ValueError,
        "expected x of shape",
    ),
    ("ControlNet-cond-list", lambda m, b: m["controlnet"](_X, 1, controlnet_cond=[0.0]), TypeError, "controlnet_cond"),
    ("ControlNet-scale-str", lambda m, b: m["controlnet"](_X, 1, None, None, _X, "1"), TypeError, "conditioning_scale"),
    (
        "ControlNet-scale-neg",
        lambda m, b: m["controlnet"](_X, 1, None, None, _X, -1.0),
        ValueError,
        "conditioning_scale",
    ),
    ("ControlNet-from_unet", lambda m, b: ControlNet.from_unet("unet"), TypeError, "from_unet needs"),
    ("Normalizer-list", lambda m, b: m["norm"].scale([[0.0] * 8]), TypeError, "embeddings must be a torch.Tensor"),
    ("Normalizer-width", lambda m, b: m["norm"].scale(torch.zeros(2, 3)), ValueError, r"shape \(B, 8\)"),
    ("Normalizer-fit-list", lambda m, b: EmbeddingNormalizer.fit([[0.0]]), TypeError, "image_embeds must be a"),
    ("Normalizer-fit-one", lambda m, b: EmbeddingNormalizer.fit(torch.zeros(1, 8)), ValueError, "N >= 2"),
    (
        "noise_embedding-level-float",
        lambda m, b: noise_embedding(torch.zeros(2, 8), 1.5, m["norm"], torch.ones(10)),
        TypeError,
        "noise_level must be an integer",
    ),
    (
        "noise_embedding-level-range",
        lambda m, b: noise_embedding(torch.zeros(2, 8), 10, m["norm"], torch.ones(10)),
        ValueError,
        "between 0 and 9",
    ),
    # --- tokenizer
    ("tokenizer-vocab-str", lambda m, b: WordTokenizer("abc"), TypeError, "vocab must be a list of words"),
    ("tokenizer-vocab-specials", lambda m, b: WordTokenizer(["a", "b"]), ValueError, "special tokens"),
    ("tokenizer-length-float", lambda m, b: WordTokenizer.from_texts([], model_max_length=8.0), TypeError, "model_ma"),
    ("tokenizer-length-one", lambda m, b: WordTokenizer.from_texts([], model_max_length=1), ValueError, ">= 2"),
    ("tokenizer-texts-int", lambda m, b: m["tok"](3), TypeError, "a string or a list of strings"),
    ("tokenizer-empty", lambda m, b: m["tok"]([]), ValueError, "empty list"),
    ("tokenizer-max_length-float", lambda m, b: m["tok"]("a", max_length=4.0), TypeError, "max_length must be"),
    ("tokenizer-max_length-one", lambda m, b: m["tok"]("a", max_length=1), ValueError, "max_length must be"),
    # --- mnist: data, classifier, metrics
    ("load_mnist-split", lambda m, b: data.load_mnist("valid"), ValueError, "split must be one of"),
    ("load_mnist-limit-float", lambda m, b: data.load_mnist("test", limit=2.0), TypeError, "limit must be an integer"),
    ("load_mnist-limit-zero", lambda m, b: data.load_mnist("test", limit=0), ValueError, "limit must be >= 1"),
    ("load_mnist-path-int", lambda m, b: data.load_mnist("test", path=3), TypeError, "path must be a str"),
    ("moons-float", lambda m, b: data.moons(10.0), TypeError, "n must be an integer"),
    ("moons-zero", lambda m, b: data.moons(0), ValueError, "n must be >= 1"),
    ("swiss_roll-noise", lambda m, b: data.swiss_roll(10, noise=-1.0), ValueError, "noise must be >= 0"),
    ("classify-list", lambda m, b: classifier.classify([0.0], m["clf"]), TypeError, "images must be a tensor"),
    ("classify-rank", lambda m, b: classifier.classify(torch.zeros(2, 28, 28), m["clf"]), ValueError, r"\(B, 1, 28"),
    ("classify-batch-float", lambda m, b: classifier.classify(_DIGITS, m["clf"], batch_size=2.0), TypeError, "batch"),
    ("classify-batch-zero", lambda m, b: classifier.classify(_DIGITS, m["clf"], batch_size=0), ValueError, "batch_s"),
    ("classify-model", lambda m, b: classifier.classify(_DIGITS, "clf"), TypeError, "classifier must be an"),
    ("adherence-labels", lambda m, b: metrics.prompt_adherence(_DIGITS, object(), m["clf"]), TypeError, "labels"),
    ("adherence-range", lambda m, b: metrics.prompt_adherence(_DIGITS, [0, 11], m["clf"]), ValueError, "digits 0..9"),
    ("fid_floor-float", lambda m, b: metrics.fid_floor(10.0, m["clf"]), TypeError, "n must be an integer between"),
    ("fid_floor-one", lambda m, b: metrics.fid_floor(1, m["clf"]), ValueError, "n must be an integer between"),
    ("fid-reference-int", lambda m, b: metrics.fid_mnist(_DIGITS, m["clf"], reference=3), TypeError, "reference"),
    ("fid-reference-str", lambda m, b: metrics.fid_mnist(_DIGITS, m["clf"], reference="x"), ValueError, "reference"),
    # --- mnist: captions
    ("attributes-list", lambda m, b: captions.attributes([0.0]), TypeError, "images must be a torch.Tensor"),
    ("attributes-rank", lambda m, b: captions.attributes(torch.zeros(2, 28, 28)), ValueError, r"\(B, 1, H, W\)"),
    ("parse_prompt-int", lambda m, b: captions.parse_prompt(7), TypeError, "prompt must be a string"),
    ("parse_prompt-two-digits", lambda m, b: captions.parse_prompt("a seven or an eight"), ValueError, "two digits"),
    ("caption-label-float", lambda m, b: captions.caption(3.5, {}, b), TypeError, "label must be a digit"),
    ("caption-label-range", lambda m, b: captions.caption(10, {}, b), ValueError, "label must be a digit"),
    ("caption-attrs", lambda m, b: captions.caption(3, [1.0], b), TypeError, "attrs must be a dict"),
    ("captions_for-bins", lambda m, b: captions.captions_for([1], _DIGITS[:1], None), TypeError, "bins must be an"),
    ("captions_for-drop", lambda m, b: captions.captions_for([1], _DIGITS[:1], b, drop_prob=2), ValueError, "drop_p"),
    ("captions_for-digits", lambda m, b: captions.captions_for("12", _DIGITS, b), TypeError, "digits must be"),
    ("captions_for-digit-range", lambda m, b: captions.captions_for([1, 12], _DIGITS, b), ValueError, "digits must"),
    ("fit_bins-q", lambda m, b: captions.fit_bins(_DIGITS, low_q=0.6), ValueError, "low_q < 0.5 < high_q"),
    ("fit_bins-q-str", lambda m, b: captions.fit_bins(_DIGITS, low_q="0.3"), TypeError, "low_q must be a number"),
    ("adherence-prompts", lambda m, b: captions.attribute_adherence(_DIGITS, 3, b), TypeError, "prompts must be one"),
    ("adherence-count", lambda m, b: captions.attribute_adherence(_DIGITS, ["a", "b", "c"], b), ValueError, "one per"),
    # --- maths/guidance
    ("cfg_combine-list", lambda m, b: cfg_combine([1.0], torch.zeros(1), 2.0), TypeError, "cond must be a torch"),
    ("cfg_combine-scale-str", lambda m, b: cfg_combine(_X, _X, "2"), TypeError, "guidance_scale must be a number"),
    ("cfg_combine-shape", lambda m, b: cfg_combine(_X, _X[:1], 2.0), ValueError, "same shape"),
    ("rescale-phi-str", lambda m, b: rescale_noise_cfg(_X, _X, "0.7"), TypeError, "guidance_rescale must be a"),
    ("rescale-phi-range", lambda m, b: rescale_noise_cfg(_X, _X, 1.5), ValueError, r"guidance_rescale must be in"),
    ("drop_condition-list", lambda m, b: drop_condition([1], torch.zeros(1), 0.1), TypeError, "cond must be a"),
    ("drop_condition-prob", lambda m, b: drop_condition(_X, _X[0], 1.5), ValueError, r"drop_prob must be in"),
]


@pytest.mark.parametrize("call,error,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wrong_type_or_value(models, bins, call, error, phrase):
    with pytest.raises(error, match=phrase) as info:
        call(models, bins)
    assert info.type is error, f"expected exactly {error.__name__}, got {info.type.__name__}"  # not a subclass


def test_every_message_names_what_to_do_for_counts():
    with pytest.raises(ValueError, match=r"steps must be >= 1, got 0"):
        check_int("steps", 0)
    with pytest.raises(TypeError, match=r"got 2.0 \(float\)"):
        check_int("steps", 2.0)


# ---------------------------------------------------------------------------------------------------------------------
# Files: missing, corrupt (truncated or not the format), or written for another model → FileError with what to do
# ---------------------------------------------------------------------------------------------------------------------


def _truncate(path, keep=40):
    path.write_bytes(path.read_bytes()[:keep])


def _saved(models, tmp_path, name="unet"):
    folder = tmp_path / name
    models[name].save_pretrained(folder)
    return folder


def _file_cases():
    """(id, set up the bad file(s) under tmp_path and return a call, phrase)."""

    def mnist_missing(m, tmp):
        return lambda: data.load_mnist("test", path=tmp / "mnist.npz"), "MNIST file not found.*data/build_mnist.py"

    def mnist_corrupt(m, tmp):
        (tmp / "mnist.npz").write_bytes(b"not a zip file")
        return lambda: data.load_mnist("test", path=tmp / "mnist.npz"), "corrupt.*git checkout"

    def mnist_unverified_corrupt(m, tmp):
        (tmp / "mnist.npz").write_bytes(b"not a zip file")
        return lambda: data.load_mnist("test", path=tmp / "mnist.npz", verify=False), "could not read"

    def classifier_missing(m, tmp):
        return lambda: classifier.load_classifier(tmp / "c.safetensors"), "not found.*train_classifier.py"

    def classifier_corrupt(m, tmp):
        (tmp / "c.safetensors").write_bytes(b"\x00" * 16)
        (tmp / "c.json").write_text(json.dumps({"config": {"channels": [4], "feature_dim": 8}}))
        return lambda: classifier.load_classifier(tmp / "c.safetensors"), "could not read .* as safetensors"

    def classifier_bad_json(m, tmp):
        (tmp / "c.safetensors").write_bytes(b"\x00" * 16)
        (tmp / "c.json").write_text("{")
        return lambda: classifier.load_classifier(tmp / "c.safetensors"), "could not read the classifier config"

    def tokenizer_missing(m, tmp):
        return lambda: WordTokenizer.from_pretrained(tmp), "tokenizer.json is missing"

    def tokenizer_truncated(m, tmp):
        m["tok"].save_pretrained(tmp)
        _truncate(tmp / "tokenizer.json")
        return lambda: WordTokenizer.from_pretrained(tmp), "not valid JSON"

    def tokenizer_other_format(m, tmp):
        (tmp / "tokenizer.json").write_text(json.dumps({"model": "bpe"}))
        return lambda: WordTokenizer.from_pretrained(tmp), "not a diffusion_lab word tokenizer.*save_pretrained"

    def tokenizer_damaged(m, tmp):
        m["tok"].save_pretrained(tmp)
        obj = json.loads((tmp / "tokenizer.json").read_text())
        del obj["vocab"]
        (tmp / "tokenizer.json").write_text(json.dumps(obj))
        return lambda: WordTokenizer.from_pretrained(tmp), "damaged.*save_pretrained"

    def model_missing(m, tmp):
        return lambda: UNet.from_pretrained(tmp / "nothing"), "no checkpoint at .*config.json is missing"

    def model_truncated_weights(m, tmp):
        folder = _saved(m, tmp)
        _truncate(folder / "model.safetensors")
        return lambda: UNet.from_pretrained(folder), "truncated or not safetensors.*save the checkpoint again"

    def model_truncated_config(m, tmp):
        folder = _saved(m, tmp)
        _truncate(folder / "config.json", 10)
        return lambda: UNet.from_pretrained(folder), "not valid JSON"

    def model_wrong_class(m, tmp):
        folder = _saved(m, tmp)
        return lambda: TextEncoder.from_pretrained(folder), "holds a UNet, not a TextEncoder.*UNet.from_pretrained"

    def model_bad_config(m, tmp):
        folder = _saved(m, tmp)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_config"]["heads"] = 0
        (folder / "config.json").write_text(json.dumps(cfg))
        return lambda: UNet.from_pretrained(folder), "no valid model_config for UNet"

    def model_other_shape(m, tmp):
        folder = _saved(m, tmp)
        other = UNet(UNetConfig(channels=(8, 8), attention_levels=(False, False), groups=4))
        return lambda: checkpoint.load_weights(other, folder / "model.safetensors"), "does not fit this UNet"

    def text_encoder_truncated(m, tmp):
        folder = _saved(m, tmp, "text")
        _truncate(folder / "model.safetensors")
        return lambda: TextEncoder.from_pretrained(folder), "truncated or not safetensors"

    def normalizer_missing_weights(m, tmp):
        folder = _saved(m, tmp, "norm")
        (folder / "model.safetensors").unlink()
        return lambda: EmbeddingNormalizer.from_pretrained(folder), "model.safetensors is missing"

    def normalizer_truncated(m, tmp):
        folder = _saved(m, tmp, "norm")
        _truncate(folder / "model.safetensors")
        return lambda: EmbeddingNormalizer.from_pretrained(folder), "truncated or not safetensors"

    def normalizer_not_a_checkpoint(m, tmp):
        (tmp / "config.json").write_text(json.dumps({"mean": 0}))
        return lambda: EmbeddingNormalizer.from_pretrained(tmp), "not a diffusion_lab checkpoint"

    def training_state_missing(m, tmp):
        folder = _saved(m, tmp)
        return lambda: checkpoint.load_training_state(folder, m["unet"]), "state.safetensors is missing"

    return [(f.__name__, f) for f in locals().values() if callable(f)]


FILE_CASES = _file_cases()


@pytest.mark.parametrize("make", [c[1] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_missing_or_damaged_file_is_a_file_error(models, tmp_path, make):
    call, phrase = make(models, tmp_path)
    with pytest.raises(FileError, match=phrase) as info:
        call()
    assert isinstance(info.value, OSError)  # `except OSError` around file handling catches it too


@pytest.mark.parametrize(
    "call",
    [
        lambda: UNet.from_pretrained(3),
        lambda: checkpoint.load_weights("model", "weights.safetensors"),
        lambda: checkpoint.load_model("folder", "UNet"),
    ],
    ids=["from_pretrained-int", "load_weights-model-str", "load_model-class-str"],
)
def test_loaders_refuse_a_wrong_type(call):
    with pytest.raises(TypeError, match="must be a"):
        call()


# ---------------------------------------------------------------------------------------------------------------------
# bridge and course: the real-model checks, the widgets' constructors and the exercise checkers' own arguments
# ---------------------------------------------------------------------------------------------------------------------


def _bridge_and_course_cases():
    from diffusion_lab import bridge  # lazy: imports diffusers, only for these cases
    from diffusion_lab.course import widgets
    from diffusion_lab.course.exercises import check_q_sample, check_snr_crossing, check_timesteps_answer

    env = bridge.Environment("cpu", "cpu", 0.0, False, "test", False, ())
    x0 = torch.zeros(2, 1, 8, 8)
    return [
        ("load_pipeline-int", lambda: bridge.load_pipeline(3, env), TypeError, "key must be a model name"),
        ("load_pipeline-unknown", lambda: bridge.load_pipeline("sdxl", env), ValueError, "unknown model 'sdxl'"),
        ("check_size-float", lambda: bridge.check_size(64.0, 64, 8), TypeError, "height must be a positive integer"),
        ("check_size-value", lambda: bridge.check_size(60, 64, 8), ValueError, "height=60 must be a positive"),
        ("upscale-pair-str", lambda: bridge.check_upscale_sizes("16x16", (64, 64), 4), TypeError, "low_res_hw"),
        ("upscale-pair-float", lambda: bridge.check_upscale_sizes((16.0, 16), (64, 64), 4), TypeError, "low_res_hw"),
        ("upscale-pair-len", lambda: bridge.check_upscale_sizes((16, 16, 3), (64, 64), 4), ValueError, "pair"),
        ("upscale-factor-float", lambda: bridge.check_upscale_sizes((16, 16), (64, 64), 4.0), TypeError, "factor"),
        ("upscale-target", lambda: bridge.check_upscale_sizes((16, 16), (62, 64), 4), ValueError, "not a multiple"),
        ("control-type", lambda: bridge.check_control_image("edges.png", 32, 32), TypeError, "PIL image"),
        ("control-height", lambda: bridge.check_control_image(torch.zeros(3, 32, 32), 32.0, 32), TypeError, "height"),
        ("control-size", lambda: bridge.check_control_image(torch.zeros(3, 32, 32), 64, 32), ValueError, "32x32"),
        ("frames-float", lambda: bridge.check_num_frames(2.5, _Frames()), TypeError, "num_frames must be an integer"),
        ("frames-one", lambda: bridge.check_num_frames(1, _Frames()), ValueError, "at least 2 frames"),
        ("chunk-float", lambda: bridge.check_num_frames(3, _Frames(), 1.5), TypeError, "decode_chunk_size=1.5"),
        ("chunk-range", lambda: bridge.check_num_frames(3, _Frames(), 5), ValueError, "decode_chunk_size=5"),
        ("frames_to_tensor-int", lambda: bridge.frames_to_tensor(3), TypeError, "one video"),
        (
            "frames_to_tensor-batch",
            lambda: bridge.frames_to_tensor(torch.zeros(1, 2, 3, 8, 8)),
            ValueError,
            "one video",
        ),
        ("canny-low-str", lambda: bridge.canny_edges(torch.zeros(3, 8, 8), "100"), TypeError, "low must be a number"),
        ("canny-low-high", lambda: bridge.canny_edges(torch.zeros(3, 8, 8), 200, 100), ValueError, "low <= high"),
        ("sdxl-steps-float", lambda: bridge.sdxl_generate(None, "a", num_inference_steps=2.0), TypeError, "num_inf"),
        ("sd3-steps-zero", lambda: bridge.sd3_generate(None, "a", num_inference_steps=0), ValueError, "num_inference"),
        ("explorer-x0", lambda: widgets.ForwardProcessExplorer([0.0]), TypeError, "x0 must be a torch.Tensor"),
        ("explorer-rank", lambda: widgets.ForwardProcessExplorer(x0[0]), ValueError, "x0 must be a batch"),
        ("explorer-t-float", lambda: widgets.ForwardProcessExplorer(x0, t=2.5), TypeError, "t must be an integer"),
        (
            "explorer-t-range",
            lambda: widgets.ForwardProcessExplorer(x0, t=1000),
            ValueError,
            r"t must be in \[0, 999\]",
        ),
        ("explorer-schedule", lambda: widgets.ForwardProcessExplorer(x0, schedule="cosine"), ValueError, "schedule"),
        ("sampler-steps", lambda: widgets.SamplerExplorer(None, None, steps=3), ValueError, "slider's values"),
        ("sampler-eta", lambda: widgets.SamplerExplorer(None, None, eta="0"), TypeError, "eta must be a number"),
        ("guidance-n-float", lambda: widgets.GuidanceExplorer(None, n=2.0), TypeError, "n must be an integer"),
        ("guidance-n-zero", lambda: widgets.GuidanceExplorer(None, n=0), ValueError, "n must be between 1 and 16"),
        ("guidance-prompt", lambda: widgets.GuidanceExplorer(None, prompt=7), TypeError, "prompt must be a string"),
        ("img2img-list", lambda: widgets.Img2ImgExplorer(None, [0.0]), TypeError, "image must be a torch.Tensor"),
        ("img2img-batch", lambda: widgets.Img2ImgExplorer(None, x0), ValueError, r"one image \(1, C, H, W\)"),
        ("img2img-strength", lambda: widgets.Img2ImgExplorer(None, x0[:1], strength=2.0), ValueError, "strength"),
        ("checker-not-callable", lambda: check_q_sample(None), TypeError, "pass your function itself"),
        ("checker-schedule", lambda: check_snr_crossing(10, schedule="cosine"), ValueError, "schedule must be one"),
        ("checker-n-float", lambda: check_timesteps_answer([1], 2.0, "trailing"), TypeError, "n must be an integer"),
        ("checker-spacing", lambda: check_timesteps_answer([1], 2, "even"), ValueError, "spacing must be one of"),
    ]


class _Frames:
    num_frames = 4  # a stand-in for an SVD UNet's config


@pytest.fixture(scope="module")
def bridge_and_course_cases():
    return {name: (call, error, phrase) for name, call, error, phrase in _bridge_and_course_cases()}


_BRIDGE_IDS = [
    "load_pipeline-int", "load_pipeline-unknown", "check_size-float", "check_size-value", "upscale-pair-str",
    "upscale-pair-float", "upscale-pair-len", "upscale-factor-float", "upscale-target", "control-type",
    "control-height", "control-size", "frames-float", "frames-one", "chunk-float", "chunk-range",
    "frames_to_tensor-int", "frames_to_tensor-batch", "canny-low-str", "canny-low-high", "sdxl-steps-float",
    "sd3-steps-zero", "explorer-x0", "explorer-rank", "explorer-t-float", "explorer-t-range", "explorer-schedule",
    "sampler-steps", "sampler-eta", "guidance-n-float", "guidance-n-zero", "guidance-prompt", "img2img-list",
    "img2img-batch", "img2img-strength", "checker-not-callable", "checker-schedule", "checker-n-float",
    "checker-spacing",
]  # fmt: skip


@pytest.mark.parametrize("name", _BRIDGE_IDS)
def test_bridge_and_course_wrong_type_or_value(bridge_and_course_cases, name):
    call, error, phrase = bridge_and_course_cases[name]
    with pytest.raises(error, match=phrase) as info:
        call()
    assert info.type is error, f"expected exactly {error.__name__}, got {info.type.__name__}"


def test_bridge_and_course_cases_are_all_run(bridge_and_course_cases):
    assert sorted(bridge_and_course_cases) == sorted(_BRIDGE_IDS)
