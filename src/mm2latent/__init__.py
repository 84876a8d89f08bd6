"""mm2latent: multimodal face generation and editing (MM2Latent) on StyleGAN2.

The procedural Face World (:mod:`mm2latent.world`) supplies training data with
exact ground truth; models live in :mod:`mm2latent.models`.
"""

__version__ = "0.1.0"
