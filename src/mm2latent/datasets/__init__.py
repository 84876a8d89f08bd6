"""Real face datasets in their published folder layouts (CelebAMask-HQ, MM-CelebA-HQ captions,
any image folder such as FFHQ); :func:`open_photos` picks the adapter from the layout."""

from .layouts import CelebAMaskHQ, ImageFolder, RealSample, open_photos, read_captions

__all__ = ["CelebAMaskHQ", "ImageFolder", "RealSample", "open_photos", "read_captions"]
