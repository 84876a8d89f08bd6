"""Generation pipeline: controls -> MappingNet -> w -> StyleGAN2 face.

``core`` generates (:class:`~.core.GenerationPipeline`); ``editing`` builds the
user-facing :class:`~.editing.Pipeline` on it (inversion and editing); ``sampling``
draws unconditional samples. Model loading is :mod:`mm2latent.models.registry`.
"""

from ..models.controls import CONTROLS, ControlEncoders, prepare_coeffs, prepare_mask, prepare_sketch, register_control
from ..models.registry import default_weights_dir, load_components
from .core import GenerationPipeline
from .editing import Pipeline

__all__ = ["CONTROLS", "ControlEncoders", "GenerationPipeline", "Pipeline", "default_weights_dir", "load_components",
           "prepare_coeffs", "prepare_mask", "prepare_sketch", "register_control"]
