"""Held-out evaluation of the perception stack against renderer truth.

Metrics (plain torch, tested on hand-computed cases):

* parser: confusion matrix accumulated over the whole split, IoU per class
  = TP / (TP + FP + FN); a class absent from both prediction and truth gets
  ``nan`` and is left out of the mean (mIoU). Also pixel accuracy.
* attributes: balanced accuracy = (TPR + TNR) / 2 per attribute, with the
  decision ``probability > 0.5``; where the split holds only one truth value
  for an attribute, the recall of that value alone (as scikit-learn does);
  mean over attributes.
* coefficients: mean absolute error per coefficient in raw units (degrees
  for yaw/pitch/roll, [0, 1] units for the rest), via ``denormalise_coeffs``.
* mask AE: reconstruction mIoU on clean masks and on perturbed ones
  (``affine``: shifted/rotated/scaled, target transformed alike; ``blobby``:
  painted-looking boundaries, target the clean mask; ``affine+blobby``).
* sketch AE: edge F-score with a 1-pixel tolerance (a predicted edge pixel
  is correct if a true one lies in its 3x3 neighbourhood, and vice versa for
  recall), counts summed over the split; on clean and rough sketches.
* coeff AE: reconstruction MAE per coefficient, raw units.
* real photos: parser mIoU on the four CelebAMask-HQ photos (expected low:
  it says how far the world is from real faces).

The metrics and the per-model evaluations live in :mod:`mm2latent.models.metrics` (the
trainers validate with them too); this module is the protocol over the test split.

In JSON reports ``nan`` is written as ``null``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import UserError
from ..common.palette import CLASS_NAMES, NUM_CLASSES
from ..models.metrics import (by_name, confusion_matrix, eval_analyzer, eval_coeff_ae, eval_mask_ae, eval_parser,
                              eval_sketch_ae, iou_per_class, mean_iou)

#: the four CelebAMask-HQ photos with masks, next to the repository
#: (``../shared/eval/celebamask-hq``); ``MM2LATENT_CELEBAMASK_DIR`` overrides
REAL_PHOTOS_DIR = Path(os.environ.get("MM2LATENT_CELEBAMASK_DIR")
                       or Path(__file__).resolve().parents[3].parent / "shared" / "eval" / "celebamask-hq")


@torch.no_grad()
def eval_parser_real_photos(parser, root: str | os.PathLike = REAL_PHOTOS_DIR, size: int | None = None) -> dict[str, Any]:
    """Parser mIoU on CelebAMask-HQ photos ``photos/{i}.jpg`` vs ``masks-index/{i}.png``."""
    from ..common.imageio import image_to_tensor, load_image, resize_image
    from ..common.palette import load_mask

    root = Path(root)
    photos = sorted((root / "photos").glob("*.jpg"), key=lambda p: p.stem)
    if not photos:
        raise UserError(f"no photos found in {root / 'photos'}")
    size = size or getattr(parser.config, "size", 128)
    parser.eval()
    total = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    per_photo = {}
    for ph in photos:
        mp = root / "masks-index" / f"{ph.stem}.png"
        if not mp.exists():
            continue
        img = image_to_tensor(resize_image(load_image(ph), size))[None]
        truth = torch.from_numpy(load_mask(mp, size=size).astype(np.int64))
        cm = confusion_matrix(parser(img).argmax(1)[0], truth)
        total += cm
        per_photo[ph.name] = mean_iou(cm)
    return {"miou": mean_iou(total), "per_photo_miou": per_photo, "per_class_iou": by_name(iou_per_class(total), CLASS_NAMES),
            "note": "real CelebAMask-HQ photos; the parser is trained on the Face World only (expected low)"}


# --------------------------------------------------------------------------- whole stack


def evaluate_perception(modules: dict[str, torch.nn.Module], data, limit: int | None = None, batch: int = 32,
                        real_photos: str | os.PathLike | None = REAL_PHOTOS_DIR) -> dict[str, Any]:
    """Evaluate whichever of parser/analyzer/mask_ae/sketch_ae/coeff_ae are given."""
    report: dict[str, Any] = {"num_samples": min(len(data), limit or len(data))}
    if modules.get("parser") is not None:
        report["parser"] = eval_parser(modules["parser"], data, batch, limit)
        if real_photos is not None and Path(real_photos, "photos").is_dir():
            report["parser"]["real_photos"] = eval_parser_real_photos(modules["parser"], real_photos)
    if modules.get("analyzer") is not None:
        report["analyzer"] = eval_analyzer(modules["analyzer"], data, batch, limit)
    if modules.get("mask_ae") is not None:
        report["mask_ae"] = eval_mask_ae(modules["mask_ae"], data, batch, limit)
    if modules.get("sketch_ae") is not None:
        report["sketch_ae"] = eval_sketch_ae(modules["sketch_ae"], data, batch, limit)
    if modules.get("coeff_ae") is not None:
        report["coeff_ae"] = eval_coeff_ae(modules["coeff_ae"], data, 256, limit)
    return report


def jsonable(x: Any) -> Any:
    """nan/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
