"""Scores of the perception models against renderer truth: the metrics, and one held-out
evaluation per model (parser, analyzer, mask/sketch/coefficient autoencoders).

The trainers report these on their validation split (:mod:`mm2latent.train.perception`,
:mod:`mm2latent.train.calibration`); ``mm2latent eval perception``
(:func:`mm2latent.eval.perception.evaluate_perception`) runs them on the test split. What each
metric is: see :mod:`mm2latent.eval.perception`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

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


def by_name(values, names) -> dict[str, float]:
    """{name: float(value)} for parallel sequences (class or attribute names and their scores)."""
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
            "per_class_iou": by_name(iou, CLASS_NAMES)}


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
        "attributes": {"mean_balanced_accuracy": float(np.nanmean(ba)), "balanced_accuracy": by_name(ba, ATTRIBUTES)},
        "coeffs": {"mae": by_name(mae, COEFF_NAMES), "units": "degrees for yaw/pitch/roll, [0, 1] range for the rest"},
    }


def perturb_masks(mask: torch.Tensor, kind: str, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (input, target) perturbations of index maps for evaluation."""
    from .autoencoders import blobby_mask, random_affine, warp_labels

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
        "per_class_iou": by_name(iou_per_class(cms["clean"]), CLASS_NAMES),
        "perturbed_miou": {k: mean_iou(cms[k]) for k in MASK_PERTURBATIONS},
    }


@torch.no_grad()
def eval_sketch_ae(sketch_ae, data, batch: int = 32, limit: int | None = None, tol: int = 1) -> dict[str, Any]:
    from .autoencoders import augment_sketch_pair

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
    return {"mae": by_name(mae, COEFF_NAMES), "units": "degrees for yaw/pitch/roll, [0, 1] range for the rest"}
