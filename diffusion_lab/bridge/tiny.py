"""Tiny random-weight stand-ins of the real pipelines (SD 1.5, SDXL, SDXL-Turbo and refiner, SD3, TAESD, the x4
upscaler, ControlNet, Stable unCLIP, SVD), built offline from each model's own config shape.

Each ``tiny_*`` builds the *real* diffusers/transformers classes (the pipeline class, its UNet or transformer, VAE,
text encoders and tokenizers, scheduler) with the same structure and configuration keys as the hub model — latent
channels, cross-attention widths, added-condition dims, two text encoders for SDXL, three for SD3 — but a few
thousand to a few million parameters, seeded, so the notebooks run every code path on a CPU without a download. The
pictures are noise (random weights); shapes, the call signatures and the step-by-step maths are the real ones. The
VAE factor f is 2 (4 for the upscaler's stand-in), where every real SD/SDXL/SD3 VAE has f = 8: decide sizes from the
pipeline you got (``bridge.is_tiny``). :mod:`diffusion_lab.bridge.hub` saves each once and loads it with
``from_pretrained``, exactly as a hub model.
"""

from __future__ import annotations

from collections.abc import Callable

import diffusers
import torch
import transformers
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

from diffusion_lab.utils.errors import check_int

__all__ = [
    "tiny_sd_upscaler",
    "tiny_sd15_controlnet",
    "tiny_unclip",
    "tiny_svd",
    "tiny_clip_tokenizer",
    "tiny_t5_tokenizer",
    "tiny_sdxl",
    "tiny_sdxl_refiner",
    "tiny_sd3",
    "tiny_sd15",
    "tiny_taesd",
    "tiny_sdxl_turbo",
    "tiny_sd_turbo",
]


def _byte_level_symbols() -> list[str]:
    """The 256 printable stand-ins that CLIP's byte-level BPE uses for the byte values (``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def tiny_clip_tokenizer(model_max_length: int = 77) -> transformers.CLIPTokenizer:
    """A character-level CLIP tokenizer built in memory (no hub): the byte symbols, their end-of-word forms, then
    ``<|startoftext|>`` and ``<|endoftext|>`` — end-of-text has the highest id, as in real CLIP (its pooling picks
    the position of the largest id)."""
    symbols = _byte_level_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 256) -> transformers.T5Tokenizer:
    """A character-level T5 (SentencePiece unigram) tokenizer built in memory: pad, eos, unk, then one piece per
    printable ASCII character and its word-initial ``▁`` form."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -1.0) for c in chars] + [(c, -1.5) for c in chars]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _clip_text_config(tokenizer, hidden: int, layers: int, projection: int) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection,
        hidden_act="gelu",
    )


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build().eval()  # built from a config = train mode (dropout); from_pretrained gives eval mode


def _tiny_vae(latent_channels: int, **extra) -> diffusers.AutoencoderKL:
    """Two levels: f = 2 pixels per latent (the real SDXL/SD3 VAEs have four levels, f = 8)."""
    return diffusers.AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=latent_channels,
        sample_size=64,
        **extra,
    )


SDXL_SCHEDULER_CONFIG = {  # scheduler_config.json of stable-diffusion-xl-base-1.0 (the DDIM-only keys included)
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def _sdxl_scheduler() -> diffusers.EulerDiscreteScheduler:
    """SDXL base's scheduler; ``from_config`` keeps the DDIM-only keys, so a DDIM built from it matches SDXL's."""
    return diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)


def tiny_sdxl_turbo(seed: int = 0) -> diffusers.StableDiffusionXLPipeline:
    """:func:`tiny_sdxl` with SDXL-Turbo's scheduler: Euler *ancestral* with ``trailing`` spacing, so that one step
    starts from pure noise at t = 999."""
    pipe = tiny_sdxl(seed)
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(
        SDXL_SCHEDULER_CONFIG, timestep_spacing="trailing"
    )
    return pipe


def tiny_sd_turbo(seed: int = 0) -> diffusers.StableDiffusionPipeline:
    """:func:`tiny_sd15` with SD-Turbo's scheduler: (non-ancestral) Euler with ``trailing`` spacing, as
    ``stabilityai/sd-turbo`` ships it, so that one step starts from pure noise at t = 999."""
    pipe = tiny_sd15(seed)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe


# SD's cross-attention UNet at toy width (two levels, one resnet each): the base of every stand-in UNet below
_TOY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=32,
)


def _tiny_sdxl_unet(n_time_ids: int, cross_attention_dim: int) -> diffusers.UNet2DConditionModel:
    """SDXL's UNet at toy width: ``text_time`` conditioning of n time ids (embedded to 8 each) plus a 32-wide pooled
    text vector, as the pipeline checks (``projection_class_embeddings_input_dim`` = n·8 + 32)."""
    return diffusers.UNet2DConditionModel(
        **_TOY_UNET
        | dict(
            sample_size=32,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=n_time_ids * 8 + 32,
            cross_attention_dim=cross_attention_dim,
        )
    )


def tiny_sdxl(seed: int = 0) -> diffusers.StableDiffusionXLPipeline:
    """A random-weight ``StableDiffusionXLPipeline`` with SDXL's structure at toy width (about 0.9 M parameters):
    two CLIP text encoders (the second with a projection, whose pooled output and the 6 micro-conditioning numbers
    enter the UNet's ``text_time`` embedding), a 2-level cross-attention UNet, a 2-level VAE, SDXL's Euler
    scheduler. The UNet's ``projection_class_embeddings_input_dim`` = 6·8 + 32, as the pipeline checks."""
    tok = tiny_clip_tokenizer()
    te1 = _seeded(seed, lambda: transformers.CLIPTextModel(_clip_text_config(tok, 32, 2, 32)))
    te2 = _seeded(seed + 1, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 32, 2, 32)))
    unet = _seeded(
        seed + 2,
        lambda: _tiny_sdxl_unet(6, 32 + 32),
    )
    vae = _seeded(seed + 3, lambda: _tiny_vae(4, scaling_factor=0.13025, force_upcast=True))
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=_sdxl_scheduler(),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def refiner_pipeline(
    base: diffusers.StableDiffusionXLPipeline, unet: diffusers.UNet2DConditionModel
) -> diffusers.StableDiffusionXLImg2ImgPipeline:
    """An SDXL refiner around ``unet`` (5 micro-conditioning numbers: an aesthetic score instead of the target size),
    sharing ``base``'s VAE and second text encoder as the real refiner does, with SDXL's scheduler."""
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_refiner(base: diffusers.StableDiffusionXLPipeline, seed: int = 10):
    """A random-weight SDXL *refiner* (``StableDiffusionXLImg2ImgPipeline``) sharing ``base``'s VAE and second text
    encoder, as the real refiner does: one text encoder (cross-attention width 32) and an aesthetic score instead
    of the target size in its 5 micro-conditioning numbers (UNet input 5·8 + 32)."""
    return refiner_pipeline(base, _seeded(seed, lambda: _tiny_sdxl_unet(5, 32)))


def tiny_sd3(seed: int = 0, with_t5: bool = True) -> diffusers.StableDiffusion3Pipeline:
    """A random-weight ``StableDiffusion3Pipeline`` with SD3's structure at toy width: CLIP-L and bigG stand-ins
    (both with projections; pooled 32 + 32), a T5 encoder stand-in (d_model 96 = the MMDiT's
    ``joint_attention_dim``, wider than the 64 CLIP features so the zero padding is visible, as in SD3; ``with_t5=False`` drops it as SD3 allows), a 2-block MMDiT (``SD3Transformer2DModel``,
    patch 2, 16 latent channels), a 2-level VAE with SD3's scaling and shift factors, and the flow-match Euler
    scheduler with shift 3."""
    tok = tiny_clip_tokenizer()
    te1 = _seeded(seed, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 32, 2, 32)))
    te2 = _seeded(seed + 1, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 32, 2, 32)))
    t5 = None
    tok3 = None
    if with_t5:
        tok3 = tiny_t5_tokenizer()
        t5_config = transformers.T5Config(
            vocab_size=len(tok3),
            d_model=96,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=tok3.pad_token_id,
            eos_token_id=tok3.eos_token_id,
            decoder_start_token_id=tok3.pad_token_id,
        )
        t5 = _seeded(seed + 2, lambda: transformers.T5EncoderModel(t5_config))
    transformer = _seeded(
        seed + 3,
        lambda: diffusers.SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=96,
            caption_projection_dim=64,
            pooled_projection_dim=64,
            pos_embed_max_size=32,
        ),
    )
    vae = _seeded(
        seed + 4,
        lambda: _tiny_vae(
            16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609
        ),
    )
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=te1,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=tok3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd15_pipeline(pipeline_class: type, **components) -> diffusers.DiffusionPipeline:
    """An SD 1.5-family pipeline from stand-in components: SD 1.5's Euler scheduler, no safety checker."""
    pipe = pipeline_class(
        **components,
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd15(seed: int = 0) -> diffusers.StableDiffusionPipeline:
    """A random-weight SD 1.5/2.1/SD-Turbo-shaped ``StableDiffusionPipeline`` (one CLIP encoder, no safety checker)."""
    tok = tiny_clip_tokenizer()
    te = _seeded(seed, lambda: transformers.CLIPTextModel(_clip_text_config(tok, 32, 2, 32)))
    unet = _sd_unet(seed + 1, sample_size=32)
    vae = _seeded(seed + 2, lambda: _tiny_vae(4, scaling_factor=0.18215))
    return _sd15_pipeline(diffusers.StableDiffusionPipeline, vae=vae, text_encoder=te, tokenizer=tok, unet=unet)


def tiny_taesd(latent_channels: int = 4, seed: int = 0, factor: int = 2) -> diffusers.AutoencoderTiny:
    """A random-weight TAESD-shaped ``AutoencoderTiny`` with downsampling factor ``factor`` (2 matches the tiny
    random pipelines, 4 the trained MNIST stand-ins; the real TAESD/TAESDXL have 4 latent channels, TAESD3 16, and
    f = 8). Each block after the first halves the side, so ``factor`` must be a power of two ≥ 2."""
    check_int("factor", factor, minimum=2)
    if factor & (factor - 1):
        raise ValueError(f"factor must be a power of two (2, 4, 8, ...); got {factor}")
    blocks = factor.bit_length()  # factor = 2^(blocks − 1)
    return _seeded(
        seed,
        lambda: diffusers.AutoencoderTiny(
            encoder_block_out_channels=(32,) * blocks,
            decoder_block_out_channels=(32,) * blocks,
            num_encoder_blocks=(1,) * blocks,
            num_decoder_blocks=(1,) * blocks,
            latent_channels=latent_channels,
        ),
    )


def _clip_vision(seed: int) -> transformers.CLIPVisionModelWithProjection:
    """A 2-layer CLIP image tower with projection, at the real input size (224², patches of 32: 49 tokens + class)."""
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
    )
    return _seeded(seed, lambda: transformers.CLIPVisionModelWithProjection(config))


def _clip_image_processor() -> transformers.CLIPImageProcessor:
    """CLIP's preprocessing (resize, centre-crop to 224², normalise), built in memory."""
    return transformers.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})


def _sd_unet(seed: int, **config) -> diffusers.UNet2DConditionModel:
    """SD's cross-attention UNet at toy width (``_TOY_UNET``); ``config`` adds the conditioning."""
    return _seeded(seed, lambda: diffusers.UNet2DConditionModel(**(_TOY_UNET | config)))


def tiny_sd_upscaler(seed: int = 0) -> diffusers.StableDiffusionUpscalePipeline:
    """A random-weight ``StableDiffusionUpscalePipeline`` shaped like stabilityai/stable-diffusion-x4-upscaler: a
    UNet with 7 input channels (4 latent + 3 low-res RGB) and ``num_class_embeds`` = 1000 for the noise level, a
    3-level VAE (f = 4, so the output is 4× the input, scaling factor 0.08333 as the pipeline expects), a CLIP text
    encoder, the DDPM ``low_res_scheduler`` that noises the low-res image, and ``max_noise_level`` 350. Schedules as
    in the real repository: LDM's "linear" 1e-4 → 2e-2 (diffusers' ``scaled_linear``), v-prediction DDIM."""
    tok = tiny_clip_tokenizer()
    text_encoder = _seeded(seed, lambda: transformers.CLIPTextModel(_clip_text_config(tok, 32, 2, 32)))
    unet = _sd_unet(seed + 1, in_channels=7, num_class_embeds=1000, attention_head_dim=8, use_linear_projection=True)
    vae = _seeded(
        seed + 2,
        lambda: diffusers.AutoencoderKL(
            block_out_channels=[32, 32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            latent_channels=4,
            scaling_factor=0.08333,
        ),
    )
    schedule = dict(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000)
    pipe = diffusers.StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        low_res_scheduler=diffusers.DDPMScheduler(**schedule, clip_sample=False),
        scheduler=diffusers.DDIMScheduler(
            **schedule, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        max_noise_level=350,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd15_controlnet(seed: int = 0) -> diffusers.StableDiffusionControlNetPipeline:
    """A random-weight ``StableDiffusionControlNetPipeline``: the SD 1.5-shaped stand-in (as ``tiny_sd15``)
    plus a ControlNet made the way the paper makes one, ``ControlNetModel.from_unet`` — a copy of the UNet's encoder
    and middle block. Its conditioning embedding has one stride-2 step (f = 2, the stand-in VAE's factor; the real
    one has three, f = 8). A trained ControlNet starts with zero convolutions (so it changes nothing at first);
    random-weight zero convolutions would make the control map invisible here, so they get random weights too."""
    tok = tiny_clip_tokenizer()
    text_encoder = _seeded(seed, lambda: transformers.CLIPTextModel(_clip_text_config(tok, 32, 2, 32)))
    unet = _sd_unet(seed + 1, sample_size=32)
    controlnet = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).eval()
    torch.manual_seed(seed + 2)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        conv.reset_parameters()  # the zero convolutions, given PyTorch's default random initialisation
    controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
    vae = _seeded(seed + 3, lambda: _tiny_vae(4, scaling_factor=0.18215))
    return _sd15_pipeline(
        diffusers.StableDiffusionControlNetPipeline,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        controlnet=controlnet,
    )


def tiny_unclip(seed: int = 0) -> diffusers.StableUnCLIPImg2ImgPipeline:
    """A random-weight ``StableUnCLIPImg2ImgPipeline`` shaped like stabilityai/stable-diffusion-2-1-unclip: a CLIP
    image encoder with projection (D = 32; the real ViT-H has 1024) and its image processor, the
    ``StableUnCLIPImageNormalizer`` and the cosine DDPM ``image_noising_scheduler`` that noise the embedding, a
    UNet with ``class_embed_type="projection"`` reading 2·D numbers, a CLIP text encoder, a v-prediction DDIM."""
    tok = tiny_clip_tokenizer()
    image_encoder = _clip_vision(seed)
    dim = image_encoder.config.projection_dim
    text_encoder = _seeded(seed + 1, lambda: transformers.CLIPTextModel(_clip_text_config(tok, 32, 2, 32)))
    unet = _sd_unet(
        seed + 2,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * dim,  # noised embedding ⊕ embedding of its noise level
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    pipe = diffusers.StableUnCLIPImg2ImgPipeline(
        feature_extractor=_clip_image_processor(),
        image_encoder=image_encoder,
        image_normalizer=_seeded(seed + 3, lambda: StableUnCLIPImageNormalizer(embedding_dim=dim)),
        image_noising_scheduler=diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tok,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=diffusers.DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        vae=_seeded(seed + 4, lambda: _tiny_vae(4, scaling_factor=0.18215)),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


SVD_SCHEDULER_CONFIG = {  # scheduler_config.json of stable-video-diffusion-img2vid(-xt): EDM-style Karras sigmas
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
}


def tiny_svd(seed: int = 0, num_frames: int = 4) -> diffusers.StableVideoDiffusionPipeline:
    """A random-weight ``StableVideoDiffusionPipeline``: a 2-level ``UNetSpatioTemporalConditionModel`` (8 input
    channels = 4 noisy + 4 conditioning-frame latent; 3 added time ids × 32 = 96; trained clip length
    ``num_frames``, 4 here, 25 for SVD-XT), a 3-level ``AutoencoderKLTemporalDecoder`` (f = 4; the real one f = 8), a
    CLIP image encoder whose embedding (32 = ``cross_attention_dim``) replaces the text, and SVD's Euler scheduler."""
    unet = _seeded(
        seed,
        lambda: diffusers.UNetSpatioTemporalConditionModel(
            sample_size=8,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64),
            addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=3 * 32,
            layers_per_block=1,
            cross_attention_dim=32,
            num_attention_heads=(2, 4),
            num_frames=num_frames,
        ),
    )
    vae = _seeded(
        seed + 1,
        lambda: diffusers.AutoencoderKLTemporalDecoder(
            block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3, latent_channels=4
        ),
    )
    pipe = diffusers.StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=_clip_vision(seed + 2),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG),
        feature_extractor=_clip_image_processor(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
