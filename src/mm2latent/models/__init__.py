"""Neural network models (StyleGAN2 and friends).

Submodules are imported on demand (``from mm2latent.models.stylegan2 import
Generator``) so that importing the package stays cheap.
"""
