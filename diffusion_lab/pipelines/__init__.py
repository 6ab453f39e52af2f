"""Layer 4: the sampling loop and the tiny pipelines (text-to-image, SD3, ControlNet, ×4 upscaler, variations), one base
class (:class:`~diffusion_lab.pipelines.pipeline_utils.TinyPipeline`) shaped like diffusers' ``DiffusionPipeline``."""
