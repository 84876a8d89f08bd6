"""Layout calibration: compare world masks with real CelebAMask-HQ masks.

Statistics per mask: the fraction of the frame each class covers, and the
face box (2nd-98th percentile extent of skin) plus eye/mouth heights, all
as fractions of the frame. ``mm2latent world calibrate`` prints the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.palette import CLASS_INDEX, CLASS_NAMES, load_mask

CALIBRATED_CLASSES = ("background", "skin", "hair", "neck", "cloth")
BOX_KEYS = ("skin_top", "skin_bottom", "skin_left", "skin_right", "eye_y", "mouth_y")


def mask_stats(mask: np.ndarray) -> dict[str, float]:
    h, w = mask.shape
    st = {f"frac_{n}": float((mask == i).mean()) for i, n in enumerate(CLASS_NAMES)}
    ys, xs = np.nonzero(mask == CLASS_INDEX["skin"])
    if len(ys):
        st["skin_top"] = float(np.percentile(ys, 2) / h)
        st["skin_bottom"] = float(np.percentile(ys, 98) / h)
        st["skin_left"] = float(np.percentile(xs, 2) / w)
        st["skin_right"] = float(np.percentile(xs, 98) / w)
    eyes = np.nonzero(np.isin(mask, (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"])))[0]
    mouth = np.nonzero(np.isin(mask, (CLASS_INDEX["mouth"], CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"])))[0]
    if len(eyes):
        st["eye_y"] = float(eyes.mean() / h)
    if len(mouth):
        st["mouth_y"] = float(mouth.mean() / h)
    return st


def mean_stats(masks) -> dict[str, float]:
    rows = [mask_stats(m) for m in masks]
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def real_masks(root: str | Path) -> list[np.ndarray]:
    """All label maps under a CelebAMask-HQ sample folder (index and colour PNGs)."""
    root = Path(root)
    files = sorted((root / "masks-index").glob("*.png")) + sorted((root / "masks-color").glob("*.png"))
    return [load_mask(f) for f in files]


def world_masks(num: int, seed: int = 1234, size: int = 128) -> list[np.ndarray]:
    from .params import sample_params
    from .render import render

    return [render(sample_params(seed, i), size).mask for i in range(num)]


def calibration_table(real: dict[str, float], world: dict[str, float]) -> str:
    lines = ["| statistic | world | real CelebAMask-HQ | ratio world/real |", "|---|---|---|---|"]
    for n in CALIBRATED_CLASSES:
        k = f"frac_{n}"
        lines.append(f"| fraction {n} | {world[k]:.3f} | {real[k]:.3f} | {world[k] / max(real[k], 1e-9):.2f} |")
    for k in BOX_KEYS:
        lines.append(f"| {k} | {world[k]:.3f} | {real[k]:.3f} | {world[k] / max(real[k], 1e-9):.2f} |")
    return "\n".join(lines)
