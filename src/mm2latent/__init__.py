"""mm2latent: multimodal face generation and editing (MM2Latent) on StyleGAN2.

The procedural Face World (:mod:`mm2latent.world`) supplies training data with
exact ground truth; models live in :mod:`mm2latent.models`.
"""

from .common.version import __version__


def __getattr__(name):  # lazy: ``from mm2latent import Pipeline`` without importing torch at package import
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'mm2latent' has no attribute {name!r}")
