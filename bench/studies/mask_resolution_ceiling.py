"""How exact must a mask autoencoder be? mIoU of held-out world masks against
copies of themselves that went through a lower resolution and back.

Each mask is one-hot encoded, area-averaged down by a factor f, bilinearly
upsampled and arg-maxed. Thin classes (brows, lips, earrings, necklace) are
1-3 px wide at 128 px, so even f = 2 loses much of them: this is the scale
against which the mask AE's reconstruction mIoU (issue floor 0.90 at 128 px,
from a 512-d code) should be read. Prints one JSON object.

    .venv/bin/python bench/studies/mask_resolution_ceiling.py --data runs/cache_val128 --num 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from mm2latent.common.palette import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from mm2latent.models.metrics import confusion_matrix, iou_per_class, mean_iou  # noqa: E402
from mm2latent.train.perception import open_data  # noqa: E402


def round_trip(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, S, S) labels -> the labels after an area-average down / bilinear up round trip."""
    onehot = F.one_hot(mask, NUM_CLASSES).permute(0, 3, 1, 2).float()
    low = F.avg_pool2d(onehot, factor)
    return F.interpolate(low, scale_factor=factor, mode="bilinear", align_corners=False).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/cache_val128", help="world cache with held-out masks")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8])
    a = ap.parse_args()
    data = open_data(a.data)
    n = min(a.num, len(data))
    out = {"data": a.data, "num": n, "size": int(data.batch([0])["mask"].shape[-1]), "round_trip": {}}
    cms = {f: torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64) for f in a.factors}
    for i in range(0, n, 64):
        mask = data.batch(list(range(i, min(n, i + 64))))["mask"]
        for f in a.factors:
            cms[f] += confusion_matrix(round_trip(mask, f), mask)
    for f in a.factors:
        per = iou_per_class(cms[f])
        out["round_trip"][f"1/{f}"] = {"miou": round(float(mean_iou(cms[f])), 4),
                                      "per_class_iou": {c: round(float(v), 3) for c, v in zip(CLASS_NAMES, per)}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
