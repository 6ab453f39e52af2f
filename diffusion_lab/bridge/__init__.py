"""The real-model bridge: the only layer that imports diffusers, transformers and peft at module level.

Hub loading with offline stand-ins (:mod:`.hub`), the tiny random-weight stand-ins (:mod:`.tiny`, :mod:`.family`),
driving SDXL and SD3 step by step (:mod:`.generate`), LoRA through peft (:mod:`.lora`). The names used in the notebooks
(``bridge.load_pipeline``, ``bridge.sdxl_generate``, …) are re-exported here.
"""

from diffusion_lab.bridge.family import *  # noqa: F403
from diffusion_lab.bridge.family import __all__ as _family
from diffusion_lab.bridge.full_size import *  # noqa: F403
from diffusion_lab.bridge.generate import *  # noqa: F403
from diffusion_lab.bridge.generate import __all__ as _generate
from diffusion_lab.bridge.hub import *  # noqa: F403
from diffusion_lab.bridge.hub import __all__ as _hub
from diffusion_lab.bridge.tiny import *  # noqa: F403
from diffusion_lab.bridge.tiny import __all__ as _tiny

__all__ = [*_hub, *_tiny, *_generate, *_family]
