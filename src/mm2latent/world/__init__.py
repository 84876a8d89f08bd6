"""The Face World: a procedural face renderer with exact ground truth.

>>> from mm2latent.world import make_sample
>>> s = make_sample(seed=0, index=3)      # image, mask, sketch, attributes, coeffs, captions
"""

from .attributes import ATTRIBUTES
from .params import COEFF_NAMES, FaceParams, sample_params, set_attribute, set_coeffs
from .render import SUPPORTED_SIZES, render
from .sample import WorldSample, make_sample, write_sample
from .sketch import extract_sketch, sketch_from_uint8

__all__ = [
    "ATTRIBUTES", "COEFF_NAMES", "FaceParams", "sample_params", "set_attribute", "set_coeffs",
    "SUPPORTED_SIZES", "render", "WorldSample", "make_sample", "write_sample", "extract_sketch",
    "sketch_from_uint8",
]
