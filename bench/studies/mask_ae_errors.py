"""Where does a mask autoencoder go wrong? Error structure of its reconstructions of held-out
world masks: the share of wrong pixels within 1 / 2 px of a true class boundary, and per class
the misses (false negatives), the false positives and their ratio, with the IoU.

A ratio far above 1 for the small classes means a systematic over-draw (what class-weighted
cross-entropy produces), which a per-class output offset removes (`mm2latent calibrate-mask-ae`).
Prints one JSON object; several --weights files are compared on the same masks.

    .venv/bin/python bench/studies/mask_ae_errors.py --data runs/cache_val500 --num 256 \
        --weights old/mask_ae.safetensors new/mask_ae.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from mm2latent.common.palette import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from mm2latent.common.fileio import write_text_atomic  # noqa: E402
from mm2latent.models.metrics import confusion_matrix, iou_per_class, mean_iou  # noqa: E402
from mm2latent.models.registry import load_module_file  # noqa: E402
from mm2latent.train.perception import open_data, read_masks  # noqa: E402


def near_boundary(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, S, S) bool: a pixel whose (2r+1)^2 neighbourhood holds more than one class."""
    onehot = F.one_hot(mask, NUM_CLASSES).permute(0, 3, 1, 2).float()
    return F.max_pool2d(onehot, 2 * radius + 1, 1, radius).sum(1) > 1


@torch.no_grad()
def error_structure(model, masks: torch.Tensor, batch: int = 32) -> dict:
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    wrong = near1 = near2 = 0
    for i in range(0, len(masks), batch):
        mk = masks[i:i + batch]
        rec = model(F.one_hot(mk, NUM_CLASSES).permute(0, 3, 1, 2).float()).argmax(1)
        cm += confusion_matrix(rec, mk)
        err = rec != mk
        wrong += int(err.sum())
        near1 += int((err & near_boundary(mk, 1)).sum())
        near2 += int((err & near_boundary(mk, 2)).sum())
    iou = iou_per_class(cm)
    c = cm.numpy()
    fn = c.sum(1) - np.diag(c)
    fp = c.sum(0) - np.diag(c)
    return {
        "miou": round(mean_iou(cm), 4),
        "wrong_pixel_share": round(wrong / masks.numel(), 5),
        "errors_within_1px_of_boundary": round(near1 / max(1, wrong), 4),
        "errors_within_2px_of_boundary": round(near2 / max(1, wrong), 4),
        "per_class": {CLASS_NAMES[k]: {"iou": round(float(iou[k]), 4), "false_neg": int(fn[k]), "false_pos": int(fp[k]),
                                       "fp_per_fn": round(float(fp[k] / max(1, fn[k])), 2)}
                      for k in range(NUM_CLASSES)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/cache_val500", help="world cache with held-out masks")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--weights", nargs="+", required=True, help="mask AE weight files (.safetensors)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = open_data(a.data, limit=a.num)
    n = min(a.num, len(data))
    masks = torch.from_numpy(read_masks(data, n))
    report = {"data": a.data, "num": n,
              "results": {w: error_structure(load_module_file(w, "mask_ae").eval(), masks) for w in a.weights}}
    print(json.dumps(report, indent=1))
    if a.out:
        write_text_atomic(a.out, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
