"""Exercise checkers, one module per notebook. Every ``check_*`` prints one line starting with ✅ or ❌ and returns
True or False, so a cell can also ``assert`` it; an error raised by the student's code becomes a ❌, never a crash."""

from diffusion_lab.course.exercises.nb01_forward_diffusion import (
    check_jump_between,
    check_leading_within_1db,
    check_q_sample,
    check_snr_crossing,
    check_trailing_timesteps,
    check_zero_terminal_snr,
)
from diffusion_lab.course.exercises.nb02_ddpm import (
    check_ddpm_loss,
    check_ddpm_step,
    check_min_snr_weight,
    check_skip_extra_params,
    check_variance_ratio,
)
from diffusion_lab.course.exercises.nb03_samplers import (
    check_ddim_step,
    check_flow_sigma,
    check_flow_time,
    check_inversion_order,
    check_skip_reason,
    check_timesteps_answer,
)
from diffusion_lab.course.exercises.nb04_autoencoder import (
    check_beta_zero,
    check_decode_prior,
    check_fitted_prior,
    check_gaussian_kl,
    check_matching_timestep,
    check_prior_prediction,
    check_reparameterize,
    check_scaling_factor,
)
from diffusion_lab.course.exercises.nb05_text_conditioning import (
    check_cross_attention,
    check_cross_attention_macs,
    check_cross_attention_params,
    check_padding_prediction,
    check_pooled_output,
    check_tokenize,
)
from diffusion_lab.course.exercises.nb06_guidance import (
    check_best_guidance,
    check_cfg_combine,
    check_fid_ties,
    check_latent_std_prediction,
    check_negative_exponents,
    check_rescale_noise_cfg,
    check_rescaled_std,
)
from diffusion_lab.course.exercises.nb07_tiny_sd import (
    check_img2img_timesteps,
    check_latent_mask_rows,
    check_seam_prediction,
    check_stale_noise_level,
    check_x0_eps_from_v,
)
from diffusion_lab.course.exercises.nb08_flow import (
    check_flow_euler_step,
    check_flow_path,
    check_matched_alpha_bar,
    check_shift_prediction,
    check_time_shift,
    check_velocity_from_eps,
)
from diffusion_lab.course.exercises.nb09_fast_sampling import (
    check_dpmpp_2m_step,
    check_midpoint_step,
    check_sampler_prediction,
)
from diffusion_lab.course.exercises.nb10_sdxl import (
    check_crop_prediction,
    check_refiner_frac,
    check_refiner_split,
    check_sdxl_time_ids,
)
from diffusion_lab.course.exercises.nb11_sd3 import check_resolution_shift, check_sd3_embeds_shape, check_sd3_joint_text
from diffusion_lab.course.exercises.nb12_fine_tuning import (
    check_concatenated_prior_loss,
    check_lora_break_even,
    check_lora_target_prediction,
)
from diffusion_lab.course.exercises.nb13_surgery import (
    check_bitmask_size_ratio,
    check_int8_error_bound,
    check_magnitude_prune,
)
from diffusion_lab.course.exercises.nb14_super_resolution import check_averaging_gain, check_low_res_snr_crossing
from diffusion_lab.course.exercises.nb15_controlnet import (
    check_control_keep,
    check_controlled_steps,
    check_hint_init_prediction,
    check_zero_conv_grads,
)
from diffusion_lab.course.exercises.nb16_variations import (
    check_dial_prediction,
    check_half_cosine_level,
    check_noise_image_embedding,
)

__all__ = [
    "check_q_sample",
    "check_snr_crossing",
    "check_trailing_timesteps",
    "check_leading_within_1db",
    "check_jump_between",
    "check_zero_terminal_snr",
    "check_ddpm_loss",
    "check_min_snr_weight",
    "check_ddpm_step",
    "check_variance_ratio",
    "check_skip_extra_params",
    "check_ddim_step",
    "check_timesteps_answer",
    "check_flow_sigma",
    "check_inversion_order",
    "check_flow_time",
    "check_skip_reason",
    "check_reparameterize",
    "check_gaussian_kl",
    "check_scaling_factor",
    "check_decode_prior",
    "check_fitted_prior",
    "check_prior_prediction",
    "check_beta_zero",
    "check_matching_timestep",
    "check_tokenize",
    "check_cross_attention",
    "check_pooled_output",
    "check_cross_attention_params",
    "check_cross_attention_macs",
    "check_padding_prediction",
    "check_cfg_combine",
    "check_rescale_noise_cfg",
    "check_best_guidance",
    "check_rescaled_std",
    "check_negative_exponents",
    "check_fid_ties",
    "check_latent_std_prediction",
    "check_img2img_timesteps",
    "check_latent_mask_rows",
    "check_seam_prediction",
    "check_stale_noise_level",
    "check_x0_eps_from_v",
    "check_flow_path",
    "check_time_shift",
    "check_flow_euler_step",
    "check_velocity_from_eps",
    "check_matched_alpha_bar",
    "check_shift_prediction",
    "check_midpoint_step",
    "check_dpmpp_2m_step",
    "check_sampler_prediction",
    "check_sdxl_time_ids",
    "check_refiner_split",
    "check_crop_prediction",
    "check_refiner_frac",
    "check_sd3_joint_text",
    "check_resolution_shift",
    "check_sd3_embeds_shape",
    "check_lora_break_even",
    "check_lora_target_prediction",
    "check_concatenated_prior_loss",
    "check_magnitude_prune",
    "check_bitmask_size_ratio",
    "check_int8_error_bound",
    "check_averaging_gain",
    "check_control_keep",
    "check_controlled_steps",
    "check_hint_init_prediction",
    "check_noise_image_embedding",
    "check_low_res_snr_crossing",
    "check_zero_conv_grads",
    "check_half_cosine_level",
    "check_dial_prediction",
]
