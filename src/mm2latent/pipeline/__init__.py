"""Generation pipeline: controls -> MappingNet -> w -> StyleGAN2 face."""

from .controls import ControlEncoders
from .core import Pipeline, default_weights_dir, load_components, prepare_coeffs, prepare_mask, prepare_sketch

__all__ = ["ControlEncoders", "Pipeline", "default_weights_dir", "load_components", "prepare_coeffs",
           "prepare_mask", "prepare_sketch"]
