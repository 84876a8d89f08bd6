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

In JSON reports ``nan`` is written as ``null``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.palette import CLASS_NAMES, NUM_CLASSES
from ..common.progress import progress
from ..world.attributes import ATTRIBUTES
from ..world.dataset import denormalise_coeffs
from ..world.params import COEFF_NAMES

# --------------------------------------------------------------------------- metrics


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(K, K) int64 counts; rows = truth, columns = prediction."""
    p = pred.reshape(-1).long()
    t = target.reshape(-1).long()
    if p.shape != t.shape:
        raise ValueError(f"prediction and truth differ in size: {tuple(pred.shape)} vs {tuple(target.shape)}")
    k = num_classes
    return torch.bincount(t * k + p, minlength=k * k).view(k, k)


def iou_per_class(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU per class from a confusion matrix; ``nan`` where the class is in neither."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(cm: torch.Tensor | np.ndarray) -> float:
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def balanced_accuracy(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-column balanced accuracy of boolean predictions (N, A) against truth (N, A)."""
    p = np.asarray(pred).astype(bool)
    t = np.asarray(target).astype(bool)
    if p.ndim == 1:
        p, t = p[:, None], t[:, None]
    pos, neg = t.sum(0), (~t).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(pos > 0, (p & t).sum(0) / np.maximum(pos, 1), np.nan)
        tnr = np.where(neg > 0, (~p & ~t).sum(0) / np.maximum(neg, 1), np.nan)
    out = np.nanmean(np.stack([tpr, tnr]), axis=0) if p.shape[0] else np.full(p.shape[1], np.nan)
    return out


def edge_match_counts(pred: torch.Tensor, target: torch.Tensor, tol: int = 1) -> np.ndarray:
    """[matched predicted, predicted, matched true, true] edge-pixel counts with a
    ``tol``-pixel (Chebyshev) tolerance, for (B, 1, H, W) binary maps."""
    p = (pred > 0.5).float()
    t = (target > 0.5).float()
    k = 2 * tol + 1
    t_near = F.max_pool2d(t, k, 1, tol) if tol > 0 else t
    p_near = F.max_pool2d(p, k, 1, tol) if tol > 0 else p
    return np.array([(p * t_near).sum().item(), p.sum().item(), (t * p_near).sum().item(), t.sum().item()], np.float64)


def fscore_from_counts(c: np.ndarray) -> dict[str, float]:
    precision = c[0] / c[1] if c[1] > 0 else 1.0
    recall = c[2] / c[3] if c[3] > 0 else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"fscore": float(f), "precision": float(precision), "recall": float(recall)}


def edge_fscore(pred: torch.Tensor, target: torch.Tensor, tol: int = 1) -> float:
    return fscore_from_counts(edge_match_counts(pred, target, tol))["fscore"]


def coeff_mae_raw(pred_norm: torch.Tensor | np.ndarray, target_norm: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-coefficient MAE in raw units from normalised predictions/targets (N, 13)."""
    p = denormalise_coeffs(np.asarray(pred_norm, dtype=np.float32))
    t = denormalise_coeffs(np.asarray(target_norm, dtype=np.float32))
    return np.abs(p - t).mean(0)


def _named(values, names) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values)}


# --------------------------------------------------------------------------- data


def iterate_batches(data, batch: int = 32, limit: int | None = None, desc: str = "") -> Iterator[dict]:
    """Batches in index order from a cached dataset (``.batch``) or any map-style dataset."""
    n = len(data) if limit is None else min(limit, len(data))
    bar = progress(total=n, desc=desc, unit="img", leave=False)
    for a in range(0, n, batch):
        idx = np.arange(a, min(n, a + batch))
        if hasattr(data, "batch"):
            b = data.batch(idx)
        else:
            items = [data[int(i)] for i in idx]
            b = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("image", "mask", "sketch", "attributes", "coeffs")}
        bar.update(len(idx))
        yield b
    bar.close()


def _eval_mode(m: torch.nn.Module):
    m.eval()
    return m


# --------------------------------------------------------------------------- per model


@torch.no_grad()
def eval_parser(parser, data, batch: int = 32, limit: int | None = None) -> dict[str, Any]:
    _eval_mode(parser)
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for b in iterate_batches(data, batch, limit, "eval parser"):
        cm += confusion_matrix(parser(b["image"]).argmax(1), b["mask"])
    iou = iou_per_class(cm)
    return {"miou": mean_iou(cm), "pixel_accuracy": float(cm.diag().sum() / max(1, cm.sum())),
            "per_class_iou": _named(iou, CLASS_NAMES)}


@torch.no_grad()
def eval_analyzer(analyzer, data, batch: int = 32, limit: int | None = None) -> dict[str, Any]:
    _eval_mode(analyzer)
    preds, truths, cp, ct = [], [], [], []
    for b in iterate_batches(data, batch, limit, "eval analyzer"):
        a, c = analyzer(b["image"])
        preds.append(torch.sigmoid(a) > 0.5)
        truths.append(b["attributes"] > 0.5)
        cp.append(c.clamp(-1, 1))
        ct.append(b["coeffs"])
    ba = balanced_accuracy(torch.cat(preds).numpy(), torch.cat(truths).numpy())
    mae = coeff_mae_raw(torch.cat(cp).numpy(), torch.cat(ct).numpy())
    return {
        "attributes": {"mean_balanced_accuracy": float(np.nanmean(ba)), "balanced_accuracy": _named(ba, ATTRIBUTES)},
        "coeffs": {"mae": _named(mae, COEFF_NAMES), "units": "degrees for yaw/pitch/roll, [0, 1] range for the rest"},
    }


def perturb_masks(mask: torch.Tensor, kind: str, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (input, target) perturbations of index maps for evaluation."""
    from ..models.autoencoders import blobby_mask, random_affine, warp_labels

    g = torch.Generator().manual_seed(seed)
    target = mask
    if "affine" in kind:
        theta = random_affine(mask.shape[0], g, shift=0.08, rotate=12.0, scale=(0.85, 1.15), p=1.0)
        target = warp_labels(mask, theta)
    inp = blobby_mask(target, g, p=1.0) if "blobby" in kind else target
    return inp, target


MASK_PERTURBATIONS = ("affine", "blobby", "affine+blobby")


@torch.no_grad()
def eval_mask_ae(mask_ae, data, batch: int = 32, limit: int | None = None) -> dict[str, Any]:
    _eval_mode(mask_ae)
    kinds = ("clean",) + MASK_PERTURBATIONS
    cms = {k: torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64) for k in kinds}
    for bi, b in enumerate(iterate_batches(data, batch, limit, "eval mask AE")):
        for k in kinds:
            inp, tgt = (b["mask"], b["mask"]) if k == "clean" else perturb_masks(b["mask"], k, seed=1234 + bi)
            rec = mask_ae(F.one_hot(inp, NUM_CLASSES).permute(0, 3, 1, 2).float()).argmax(1)
            cms[k] += confusion_matrix(rec, tgt)
    return {
        "miou": mean_iou(cms["clean"]),
        "per_class_iou": _named(iou_per_class(cms["clean"]), CLASS_NAMES),
        "perturbed_miou": {k: mean_iou(cms[k]) for k in MASK_PERTURBATIONS},
    }


@torch.no_grad()
def eval_sketch_ae(sketch_ae, data, batch: int = 32, limit: int | None = None, tol: int = 1) -> dict[str, Any]:
    from ..models.autoencoders import augment_sketch_pair

    _eval_mode(sketch_ae)
    clean = np.zeros(4)
    rough = np.zeros(4)
    for bi, b in enumerate(iterate_batches(data, batch, limit, "eval sketch AE")):
        sk = b["sketch"]
        clean += edge_match_counts((sketch_ae(sk) > 0).float(), sk, tol)
        inp, tgt = augment_sketch_pair(sk, torch.Generator().manual_seed(4321 + bi), p_affine=1.0, p_rough=1.0)
        rough += edge_match_counts((sketch_ae(inp) > 0).float(), tgt, tol)
    return {**fscore_from_counts(clean), "tolerance_px": tol, "rough": fscore_from_counts(rough)}


@torch.no_grad()
def eval_coeff_ae(coeff_ae, data, batch: int = 256, limit: int | None = None) -> dict[str, Any]:
    _eval_mode(coeff_ae)
    p, t = [], []
    for b in iterate_batches(data, batch, limit, "eval coeff AE"):
        p.append(coeff_ae(b["coeffs"]).clamp(-1, 1))
        t.append(b["coeffs"])
    mae = coeff_mae_raw(torch.cat(p).numpy(), torch.cat(t).numpy())
    return {"mae": _named(mae, COEFF_NAMES), "units": "degrees for yaw/pitch/roll, [0, 1] range for the rest"}


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
    _eval_mode(parser)
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
    return {"miou": mean_iou(total), "per_photo_miou": per_photo, "per_class_iou": _named(iou_per_class(total), CLASS_NAMES),
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
