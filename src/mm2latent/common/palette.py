"""The CelebAMask-HQ 19-class label scheme and mask conversions.

Masks travel in three forms: an index map (H, W) of uint8 values 0..18, a
colour image in the CelebAMask-HQ palette, and a one-hot float tensor
(19, H, W). Index/colour PNG files are read by :func:`load_mask`, which
detects which of the two a file is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .imageio import load_raw_image, save_image

CLASS_NAMES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
    "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r",
    "neck_l", "neck", "cloth",
)
NUM_CLASSES = len(CLASS_NAMES)
CLASS_INDEX = {n: i for i, n in enumerate(CLASS_NAMES)}

PALETTE = np.array([
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255),
    (204, 0, 204), (0, 255, 255), (255, 204, 204), (102, 51, 0), (255, 0, 0),
    (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204), (255, 51, 153),
    (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0),
], dtype=np.uint8)


def index_to_color(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 index map -> (H, W, 3) uint8 colour image."""
    mask = np.asarray(mask)
    if mask.size and int(mask.max()) >= NUM_CLASSES:
        raise UserError(f"mask index {int(mask.max())} out of range 0..{NUM_CLASSES - 1}")
    return PALETTE[mask]


#: Colour masks saved with resampling or antialiasing have a thin rim of
#: in-between colours at class borders; up to this fraction of pixels may be
#: off-palette and is snapped to the nearest palette colour.
MAX_OFF_PALETTE_FRACTION = 0.02


def color_to_index(color: np.ndarray, tolerance: int = 0, max_off_fraction: float = MAX_OFF_PALETTE_FRACTION) -> np.ndarray:
    """(H, W, 3) colour image -> (H, W) index map.

    Pixels within ``tolerance`` (per channel) of a palette colour take it; a
    small fraction of other pixels (border artefacts) snap to the nearest
    colour; more than that means the image is not a mask and is an error.
    """
    c = np.asarray(color, dtype=np.int32)[..., :3]
    d = ((c[:, :, None, :] - PALETTE[None, None].astype(np.int32)) ** 2).sum(-1)  # H W K
    best = d.argmin(-1)
    cheb = np.abs(c - PALETTE[best].astype(np.int32)).max(-1)
    off = cheb > tolerance
    if off.mean() > max_off_fraction:
        bad = c[off][0]
        raise UserError(
            f"mask has {int(off.sum())} pixels ({off.mean():.1%}) with colours outside the CelebAMask-HQ palette "
            f"(e.g. RGB {tuple(int(v) for v in bad)})"
        )
    return best.astype(np.uint8)


def index_to_onehot(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W) or (B, H, W) index map -> float one-hot (19, H, W) / (B, 19, H, W)."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).long()
    if m.numel() and (int(m.max()) >= NUM_CLASSES or int(m.min()) < 0):
        raise UserError(f"mask index out of range 0..{NUM_CLASSES - 1}")
    oh = torch.nn.functional.one_hot(m, NUM_CLASSES).float()
    return oh.movedim(-1, -3)


def onehot_to_index(onehot: torch.Tensor) -> np.ndarray:
    """One-hot or logits (19, H, W) / (B, 19, H, W) -> uint8 index map."""
    return onehot.argmax(dim=-3).to(torch.uint8).cpu().numpy()


def load_mask(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Read an index PNG (values 0..18) or a colour PNG in the palette.

    Resizing uses nearest neighbour so labels stay labels.
    """
    im = load_raw_image(path)
    if im.mode in ("L", "P", "I", "I;16"):
        if im.mode == "P":
            # A palette image whose palette *is* the CelebAMask-HQ one is a colour mask.
            rgb = np.asarray(im.convert("RGB"))
            idx = np.asarray(im)
            if idx.max() < NUM_CLASSES and not _looks_like_palette_colours(rgb):
                arr = idx.astype(np.int64)
            else:
                arr = color_to_index(rgb).astype(np.int64)
        else:
            arr = np.asarray(im).astype(np.int64)
        if arr.max() >= NUM_CLASSES or arr.min() < 0:
            raise UserError(f"mask {path} has index {int(arr.max())}, outside 0..{NUM_CLASSES - 1}")
        mask = arr.astype(np.uint8)
    else:
        rgb = np.asarray(im.convert("RGB"))
        tol = 0 if Path(path).suffix.lower() == ".png" else 40
        if _is_gray(rgb):
            g = rgb[..., 0].astype(np.int64)
            if g.max() < NUM_CLASSES:
                mask = g.astype(np.uint8)
            else:
                mask = color_to_index(rgb, tolerance=tol)
        else:
            mask = color_to_index(rgb, tolerance=tol)
    if size is not None and mask.shape != (size, size):
        mask = resize_mask(mask, size)
    return mask


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _looks_like_palette_colours(rgb: np.ndarray) -> bool:
    cols = np.unique(rgb.reshape(-1, 3), axis=0)
    known = {tuple(c) for c in PALETTE.tolist()}
    return all(tuple(c) in known for c in cols.tolist()) and len(cols) > 1 and not _is_gray(rgb)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to square and resize an index map with nearest neighbour."""
    h, w = mask.shape
    s = min(h, w)
    m = mask[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST), dtype=np.uint8)


def save_mask(path: str | os.PathLike, mask: np.ndarray, color: bool = False) -> Path:
    """Write an index PNG (default) or a colour PNG."""
    mask = np.asarray(mask, dtype=np.uint8)
    if mask.size and mask.max() >= NUM_CLASSES:
        raise UserError(f"mask index {int(mask.max())} out of range 0..{NUM_CLASSES - 1}")
    return save_image(path, index_to_color(mask) if color else Image.fromarray(mask, "L"))
