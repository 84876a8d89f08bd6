"""Trainers for the perception stack: parser, analyzer, mask/sketch/coeff AEs.

One trainer for all five tasks (:class:`PerceptionTrainer`, run by the shared
:func:`mm2latent.train.state.run_loop` from :func:`train_perception`); a :class:`Task`
supplies the model, the loss (with its augmentation) and a quick validation.

* Data: a world cache directory (:class:`~mm2latent.world.cache.CachedWorldDataset`,
  fast) or ``"world"`` (the on-the-fly :class:`~mm2latent.world.dataset.FaceWorldDataset`).
* Optimiser: Adam; learning rate with linear warm-up then cosine (default)
  or step decay. The schedule runs on ``step / steps`` when ``--steps`` is
  given, otherwise on ``elapsed / minutes`` (the time budget).
* Budget: ``minutes`` is the run's total wall-clock budget, counted across
  resumed sessions; ``steps`` the total number of steps. Whichever ends first.
* Checkpoints: ``RUN_DIR/checkpoints/ckpt-NNNNNNNNN.{safetensors,json}``
  (:mod:`mm2latent.train.state`), written atomically every ``ckpt_minutes`` and at
  the end (also on SIGTERM / Ctrl-C, after the current step); the last two are
  kept. They hold the model, the Adam state flattened into tensors, the data
  order position and the counters; augmentation randomness is keyed by
  ``(seed, step)``, so a resumed run continues exactly as an uninterrupted one.
* Export: at the end the model is written in float16 to ``export`` (default
  ``RUN_DIR/<task>.safetensors``) in the format :mod:`mm2latent.models.registry` loads.
* Logs: ``RUN_DIR/log.jsonl`` (loss, lr, img/s, validation metrics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..common.checkpoint import load_checkpoint
from ..common.errors import UserError
from ..common.fileio import check_output_file, check_writable_dir
from ..common.palette import NUM_CLASSES
from ..models.autoencoders import augment_mask_pair, augment_sketch_pair, random_affine, warp, warp_labels
from ..models.registry import build_model, save_module
from . import state as st

TASKS: tuple[str, ...] = ("parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae")
#: tasks whose encoder can be frozen, and the config fields that only shape their decoder
FREEZABLE_TASKS: tuple[str, ...] = ("mask_ae", "sketch_ae")
DECODER_FIELDS: tuple[str, ...] = ("dec_base", "dec_max_width", "heads", "refine", "refine2", "refine2_layers")
TRAIN_KIND_PREFIX = "train_"

#: per-task defaults (batch, learning rate)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "parser": {"batch": 16, "lr": 3e-3},
    "analyzer": {"batch": 32, "lr": 2e-3},
    "mask_ae": {"batch": 16, "lr": 2e-3},
    "sketch_ae": {"batch": 16, "lr": 2e-3},
    "coeff_ae": {"batch": 256, "lr": 1e-3},
}


# --------------------------------------------------------------------------- options


@dataclass
class PerceptionTrainOptions:
    """A perception model's training run (configs/<task>.toml)."""

    task: str  # parser | analyzer | mask_ae | sketch_ae | coeff_ae (the command sets it)
    data: str  # world cache (mm2latent world cache ...) or 'world' to render on the fly (slow)
    out: str  # run directory
    steps: int | None = None  # total number of steps
    minutes: float | None = None  # wall-clock budget, counted across resumes
    batch: int | None = None  # none: the task's default
    lr: float | None = None  # peak learning rate; none: the task's default
    schedule: str = "cosine"  # cosine | step | constant
    warmup: int = 50  # linear warm-up steps
    weight_decay: float = 0.0
    augment: bool = True  # training augmentation
    #: mask/sketch AE: probability of each input augmentation (affine; blobby or rough strokes) per
    #: sample. Every augmented pair asks the AE to map rough input to a clean target, which costs
    #: clean-reconstruction accuracy; lower values trade robustness for clean fidelity
    augment_p: float = 0.5
    seed: int = 0
    limit: int | None = None  # use only the first N training samples
    val: str | None = None  # validation cache, evaluated at each checkpoint
    val_limit: int = 256  # validation samples
    ckpt_minutes: float = 5.0  # checkpoint interval
    log_every: int = 20  # steps between log lines
    model: dict = field(default_factory=dict)  # model config overrides, e.g. {"base": 16, "depth": 4}
    export: str | None = None  # where to write the float16 weights (default RUN_DIR/<task>.safetensors)
    threads: int | None = None  # torch CPU threads
    init: str | None = None  # start from these exported weights (fine-tuning); the architecture comes from the file
    #: mask/sketch AE with --init: train the decoder only, the encoder (and so every embedding
    #: MappingNet was trained on) stays bit-identical; ``model`` may then widen the decoder
    freeze_encoder: bool = False
    #: parser / mask AE: cross-entropy class weights are ``freq ** -power``. 0.5 lets 1-3 px parts
    #: learn early but biases boundaries towards small classes (over-draw); 0 is plain cross-entropy,
    #: for fine-tuning a trained model towards unbiased boundaries
    class_weight_power: float = 0.5
    #: mask AE: weight of a Lovász-softmax term (a surrogate of per-class IoU) added to the loss
    lovasz_weight: float = 0.0
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda: where the network runs
    amp: str = "none"  # none | bf16 | fp16: autocast of the network's forward pass

    def validate(self, require_budget: bool = True) -> None:
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if require_budget and self.steps is None and self.minutes is None:
            raise UserError("give a budget: --steps N and/or --minutes M")
        if self.steps is not None and self.steps <= 0:
            raise UserError("--steps must be positive")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise UserError("--minutes must be a positive number")
        if self.batch is not None and self.batch <= 0:
            raise UserError("--batch must be positive")
        if self.lr is not None and not (self.lr > 0):
            raise UserError("--lr must be positive")
        if self.schedule not in ("cosine", "step", "constant"):
            raise UserError(f"unknown schedule {self.schedule!r}; use cosine, step or constant")
        if self.limit is not None and self.limit <= 0:
            raise UserError("--limit must be positive")
        if self.ckpt_minutes <= 0:
            raise UserError("--ckpt-minutes must be positive")
        if not (0.0 <= self.augment_p <= 1.0):
            raise UserError("--augment-p must be in [0, 1]")
        if not (0.0 <= self.class_weight_power <= 1.0):
            raise UserError("--class-weight-power must be in [0, 1]")
        if not (self.lovasz_weight >= 0.0 and math.isfinite(self.lovasz_weight)):
            raise UserError("--lovasz-weight must be a non-negative number")
        if self.freeze_encoder:
            if self.task not in FREEZABLE_TASKS:
                raise UserError(f"--freeze-encoder applies to {' and '.join(FREEZABLE_TASKS)}, not {self.task}")
            if self.init is None:
                raise UserError("--freeze-encoder needs --init WEIGHTS (the encoder to keep)")
            other = sorted(set(self.model) - set(DECODER_FIELDS))
            if other:
                raise UserError(f"with --freeze-encoder only the decoder may change ({', '.join(DECODER_FIELDS)}); "
                                f"drop {', '.join(other)} from --model")
        elif self.init is not None and self.model:
            other = sorted(set(self.model) - set(DECODER_FIELDS)) if self.task in FREEZABLE_TASKS else sorted(self.model)
            if other:
                raise UserError("--init takes the architecture from the weights file; --model may only change "
                                f"the decoder of a mask/sketch AE ({', '.join(DECODER_FIELDS)}); drop {', '.join(other)}")

    def resolved(self) -> "PerceptionTrainOptions":
        d = TASK_DEFAULTS[self.task]
        return dataclasses.replace(self, batch=self.batch or d["batch"], lr=self.lr or d["lr"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PerceptionTrainOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- data


class _OnTheFly:
    """``.batch(indices)`` over the on-the-fly renderer (slow: ~65 ms per face)."""

    def __init__(self, size: int, length: int = 100_000, split: str = "train"):
        from ..world.dataset import FaceWorldDataset

        self.ds = FaceWorldDataset(size=size, length=length, split=split, with_captions=False)
        self.size = size
        self._attrs = None

    @property
    def attributes(self) -> np.ndarray:
        """Attribute labels of the first few thousand samples, from their
        parameters alone (no rendering): enough for class-balance weights."""
        if self._attrs is None:
            from ..world.params import sample_params

            n = min(len(self.ds), 4000)
            self._attrs = np.stack([sample_params(self.ds.seed, i).attr_vector() for i in range(n)])
        return self._attrs

    def __len__(self) -> int:
        return len(self.ds)

    def batch(self, idx) -> dict:
        items = [self.ds[int(i)] for i in np.sort(np.asarray(idx))]
        return {k: torch.stack([it[k] for it in items]) for k in ("image", "mask", "sketch", "attributes", "coeffs")}


def open_data(spec: str, size: int = 128, limit: int | None = None):
    """A cache directory, or ``world`` / ``world:SPLIT`` for on-the-fly rendering."""
    if spec == "world" or spec.startswith("world:"):
        split = spec.split(":", 1)[1] if ":" in spec else "train"
        return _OnTheFly(size, limit or 100_000, split)
    from ..world.cache import CachedWorldDataset

    p = Path(spec)
    if not p.exists():
        raise UserError(f"data directory {p} does not exist (build one with `mm2latent world cache`)")
    return CachedWorldDataset(p, length=limit)


# --------------------------------------------------------------------------- augmentation


def color_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Brightness, contrast, saturation, per-channel gain and mild noise for
    images in [-1, 1]; ``strength`` scales every range."""
    b = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    y = (x + 1) / 2
    y = y + (r(b, 1, 1, 1) - 0.5) * 0.3 * strength
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * (1 + (r(b, 1, 1, 1) - 0.5) * 0.4 * strength) + mean
    grey = y.mean(1, keepdim=True)
    y = (y - grey) * (1 + (r(b, 1, 1, 1) - 0.5) * 0.6 * strength) + grey
    y = y * (1 + (r(b, 3, 1, 1) - 0.5) * 0.16 * strength)
    y = y + torch.randn(y.shape, generator=gen) * (0.02 * strength * r(b, 1, 1, 1))
    return (y.clamp(0, 1) * 2 - 1)


def random_blur(x: torch.Tensor, gen: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """3x3 binomial blur on a random subset of the batch."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(x.shape[1], 1, 3, 3).contiguous(), groups=x.shape[1])
    use = (torch.rand(x.shape[0], 1, 1, 1, generator=gen) < p).float()
    return use * blurred + (1 - use) * x


def augment_image_mask(image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, p_affine: float = 0.5
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Parser augmentation: the same small affine on image (bilinear) and mask
    (nearest), both with border padding so they stay consistent; colour jitter
    and occasional blur on the image."""
    theta = random_affine(image.shape[0], gen, shift=0.06, rotate=10.0, scale=(0.9, 1.1), p=p_affine)
    image = warp(image, theta, mode="bilinear", padding="border")
    mask = warp_labels(mask, theta, padding="border")
    image = random_blur(color_jitter(image, gen), gen)
    return image, mask


def integer_shift(x: torch.Tensor, gen: torch.Generator, max_px: int = 4, mask: torch.Tensor | None = None):
    """Shift each image by whole pixels (no resampling blur), border
    replicated; with ``mask`` (B, H, W) also shift it alike and return both."""
    b, _, h, w = x.shape
    s = torch.randint(-max_px, max_px + 1, (b, 2), generator=gen)
    p = max_px

    def crop(t):
        return torch.stack([t[i, ..., p + int(s[i, 0]):p + int(s[i, 0]) + h, p + int(s[i, 1]):p + int(s[i, 1]) + w]
                            for i in range(b)])

    out = crop(F.pad(x, (p, p, p, p), mode="replicate"))
    if mask is None:
        return out
    mp = F.pad(mask[:, None].float(), (p, p, p, p), mode="replicate")[:, 0].long()
    return out, crop(mp)


# --------------------------------------------------------------------------- tasks


def lovasz_softmax_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Lovász-softmax (Berman et al., CVPR 2018): a convex surrogate of 1 - IoU per class, over all
    pixels of the batch, averaged over the classes present. IoU is what the mask AE is judged on;
    cross-entropy only approximates it, most poorly for small classes whose boundary pixels are
    a large share of their area."""
    prob = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, num_classes)
    tgt = target.reshape(-1)
    losses = []
    for c in range(num_classes):
        fg = (tgt == c).float()
        if fg.sum() == 0:
            continue
        err = (fg - prob[:, c]).abs()
        err_sorted, order = torch.sort(err, descending=True)
        fg_sorted = fg[order]
        # gradient of the Lovász extension of the Jaccard loss at the sorted errors
        inter = fg_sorted.sum() - fg_sorted.cumsum(0)
        union = fg_sorted.sum() + (1 - fg_sorted).cumsum(0)
        jac = 1 - inter / union
        grad = torch.cat([jac[:1], jac[1:] - jac[:-1]])
        losses.append(torch.dot(err_sorted, grad))
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch (prediction or truth)."""
    prob = logits.softmax(1)
    oh = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    inter = (prob * oh).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + oh.sum((0, 2, 3))
    present = oh.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1) / (denom + 1)
    return 1 - dice[present].mean()


class Task:
    name = ""

    def __init__(self, opts: PerceptionTrainOptions, data):
        self.opts = opts
        self.size = int(getattr(data, "size", 128))
        self.compute = st.Compute("cpu")  # the trainer's, once it has one

    def forward(self, fn, *inputs):
        """``fn(*inputs)`` (the model's forward) on the compute device under autocast, its outputs
        back as float32 on the CPU: data, augmentation (seeded CPU generators) and losses stay on
        the CPU, so a run gives the same batches on any device; the networks use the GPU."""
        with self.compute.autocast():
            out = fn(*(self.compute.to(x) for x in inputs))
        back = lambda t: t.float().cpu() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return tuple(back(t) for t in out) if isinstance(out, tuple) else back(out)

    def model_config(self) -> dict:
        cfg = dict(self.opts.model)
        if self.name in ("parser", "analyzer", "mask_ae", "sketch_ae"):
            cfg.setdefault("size", self.size)
        return cfg

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, d: dict) -> None:
        pass

    def loss(self, model, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def validate(self, model, val) -> dict[str, float]:
        raise NotImplementedError


def read_masks(data, n: int) -> np.ndarray:
    """The first ``n`` index masks (n, S, S) int64 of a dataset from :func:`open_data`: straight
    from a cache's mask array (no images decoded), else batch by batch."""
    if hasattr(data, "masks"):
        return np.asarray(data.masks[:n], dtype=np.int64)
    return np.concatenate([data.batch(np.arange(a, min(n, a + 64)))["mask"].numpy() for a in range(0, n, 64)])


def mask_class_shares(data, n: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes,) share of each class over the pixels of the first ``n`` masks of ``data``."""
    counts = np.bincount(read_masks(data, n).ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    return counts / max(1, counts.sum())


def class_weights(data, num_classes: int = NUM_CLASSES, max_samples: int = 512, power: float = 0.5) -> np.ndarray:
    """Per-class weights freq ** -power (inverse square root by default),
    normalised so that the average pixel weighs 1, capped at 50: small parts such
    as eyes and earrings get gradient from the first steps instead of after thousands."""
    freq = mask_class_shares(data, min(len(data), max_samples if hasattr(data, "masks") else 64), num_classes)
    w = (freq + 1e-4) ** -power
    w = w / (w * freq).sum()
    return np.minimum(w, 50.0)


class ParserTask(Task):
    name = "parser"
    dice_weight = 1.0

    def __init__(self, opts, data):
        super().__init__(opts, data)
        self.weights = class_weights(data, power=opts.class_weight_power)

    def extra_state(self):
        return {"class_weights": [float(v) for v in self.weights]}

    def load_extra_state(self, d):
        if "class_weights" in d:
            self.weights = np.asarray(d["class_weights"], np.float64)

    def loss(self, model, batch, gen):
        img, mask = batch["image"], batch["mask"]
        if self.opts.augment:
            img, mask = augment_image_mask(img, mask, gen)
        logits = self.forward(model, img)
        ce = F.cross_entropy(logits, mask, weight=torch.from_numpy(self.weights).float())
        dice = soft_dice_loss(logits, mask, NUM_CLASSES)
        return ce + self.dice_weight * dice, {"ce": ce.item(), "dice": dice.item()}

    def validate(self, model, val):
        from ..models.metrics import eval_parser

        r = eval_parser(model, val, limit=self.opts.val_limit)
        return {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"]}


class AnalyzerTask(Task):
    name = "analyzer"
    coeff_weight = 2.0
    seg_weight = 0.5

    def __init__(self, opts, data):
        super().__init__(opts, data)
        attrs = getattr(data, "attributes", None)
        if attrs is not None:
            p = np.asarray(attrs[: len(data)], np.float64).mean(0)
        else:
            p = np.full(37, 0.5)
        self.pos_rate = np.clip(p, 0.01, 0.99)

    def extra_state(self):
        return {"pos_rate": [float(v) for v in self.pos_rate]}

    def load_extra_state(self, d):
        if "pos_rate" in d:
            self.pos_rate = np.asarray(d["pos_rate"], np.float64)

    def loss(self, model, batch, gen):
        img = batch["image"]
        batch["aux_mask"] = batch["mask"]
        if self.opts.augment:
            img, batch["aux_mask"] = integer_shift(img, gen, 4, batch["mask"])
            img = color_jitter(img, gen, strength=0.15)
        logits, coeffs, seg = self.forward(model.forward_train, img)
        y = batch["attributes"]
        # class-balanced BCE: positives and negatives of each attribute weigh
        # the same in total, which is what balanced accuracy measures
        p = torch.from_numpy(self.pos_rate).float()
        w = torch.where(y > 0.5, 0.5 / p, 0.5 / (1 - p)).clamp(max=10.0)
        bce = F.binary_cross_entropy_with_logits(logits, y, weight=w)
        l1 = F.smooth_l1_loss(coeffs, batch["coeffs"], beta=0.05)
        loss = bce + self.coeff_weight * l1
        logs = {"bce": bce.item(), "coeff_l1": l1.item()}
        if seg is not None:
            # auxiliary coarse parsing (training only), on the shifted mask
            f = img.shape[-1] // seg.shape[-1]
            aux = F.cross_entropy(seg, batch["aux_mask"][:, f // 2::f, f // 2::f])
            loss = loss + self.seg_weight * aux
            logs["aux_seg"] = aux.item()
        return loss, logs

    def validate(self, model, val):
        from ..models.metrics import eval_analyzer

        r = eval_analyzer(model, val, limit=self.opts.val_limit)
        mae = r["coeffs"]["mae"]
        return {"mean_bal_acc": r["attributes"]["mean_balanced_accuracy"],
                "min_bal_acc": min(r["attributes"]["balanced_accuracy"].values()),
                "yaw_mae_deg": mae["yaw"], "smile_mae": mae["smile"]}


class MaskAETask(ParserTask):
    name = "mask_ae"

    def loss(self, model, batch, gen):
        mask = batch["mask"]
        if self.opts.augment:
            inp, tgt = augment_mask_pair(mask, gen, p_affine=self.opts.augment_p, p_blobby=self.opts.augment_p)
        else:
            inp, tgt = mask, mask
        logits = self.forward(model, F.one_hot(inp, NUM_CLASSES).permute(0, 3, 1, 2).float())
        ce = F.cross_entropy(logits, tgt, weight=torch.from_numpy(self.weights).float())
        dice = soft_dice_loss(logits, tgt, NUM_CLASSES)
        loss, logs = ce + self.dice_weight * dice, {"ce": ce.item(), "dice": dice.item()}
        if self.opts.lovasz_weight:
            lov = lovasz_softmax_loss(logits, tgt, NUM_CLASSES)
            loss, logs = loss + self.opts.lovasz_weight * lov, {**logs, "lovasz": lov.item()}
        return loss, logs

    def validate(self, model, val):
        from ..models.metrics import eval_mask_ae

        r = eval_mask_ae(model, val, limit=self.opts.val_limit)
        return {"miou": r["miou"], **{f"miou_{k}": v for k, v in r["perturbed_miou"].items()}}


class SketchAETask(Task):
    name = "sketch_ae"

    def loss(self, model, batch, gen):
        sk = batch["sketch"]
        if self.opts.augment:
            inp, tgt = augment_sketch_pair(sk, gen, p_affine=self.opts.augment_p, p_rough=self.opts.augment_p)
        else:
            inp, tgt = sk, sk
        logits = self.forward(model, inp)
        bce = F.binary_cross_entropy_with_logits(logits, tgt, pos_weight=torch.tensor(2.0))
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * tgt).sum() + 1) / (prob.sum() + tgt.sum() + 1)
        return bce + dice, {"bce": bce.item(), "dice": dice.item()}

    def validate(self, model, val):
        from ..models.metrics import eval_sketch_ae

        r = eval_sketch_ae(model, val, limit=self.opts.val_limit)
        return {"fscore": r["fscore"], "fscore_rough": r["rough"]["fscore"]}


class CoeffAETask(Task):
    name = "coeff_ae"

    def loss(self, model, batch, gen):
        c = batch["coeffs"]
        inp = c
        if self.opts.augment:
            inp = c + torch.randn(c.shape, generator=gen) * 0.02
        rec = self.forward(model, inp)
        l1 = F.smooth_l1_loss(rec, c, beta=0.02)
        return l1, {"l1": l1.item()}

    def validate(self, model, val):
        from ..models.metrics import eval_coeff_ae

        r = eval_coeff_ae(model, val, limit=self.opts.val_limit)
        return {"yaw_mae_deg": r["mae"]["yaw"], "mean_mae_shape": float(np.mean([r["mae"][k] for k in list(r["mae"])[3:]]))}


TASK_CLASSES = {t.name: t for t in (ParserTask, AnalyzerTask, MaskAETask, SketchAETask, CoeffAETask)}


# --------------------------------------------------------------------------- the trainer


def lr_factor(progress_frac: float, step: int, warmup: int, schedule: str) -> float:
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    t = min(max(progress_frac, 0.0), 1.0)
    if schedule == "cosine":
        s = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
    elif schedule == "step":
        s = 1.0 if t < 0.6 else (0.1 if t < 0.85 else 0.01)
    else:
        s = 1.0
    return w * s


class PerceptionTrainer:
    """Model, optimiser, sampler and counters for one task; ``train_step()`` trains one batch
    (the loop is :func:`mm2latent.train.state.run_loop`)."""

    def __init__(self, opts: PerceptionTrainOptions, data=None, model_config: dict | None = None):
        """``model_config``: a full stored config (resuming); else defaults + ``opts.model``."""
        opts.validate()
        self.opts = opts = opts.resolved()
        self.data = data if data is not None else open_data(opts.data, limit=opts.limit)
        if len(self.data) == 0:
            raise UserError("training data is empty")
        self.task: Task = TASK_CLASSES[opts.task](opts, self.data)
        torch.manual_seed(opts.seed)
        #: what the starting weights had already been trained on (``--init``), for the export's provenance
        self.init_trained: dict | None = None
        if model_config is not None:
            self.model = build_model(opts.task, model_config, stored=True)
        elif opts.init:
            self.model, self.init_trained = load_init_weights(opts.init, opts.task)
            if opts.model:
                self.model = with_new_decoder(self.model, opts.task, opts.model)
        else:
            self.model = build_model(opts.task, self.task.model_config())
        if opts.freeze_encoder:
            for m in self.model.encoder_modules():
                m.requires_grad_(False)
        self.compute = self.task.compute = st.Compute(opts.device, opts.amp)
        self.model.to(self.compute.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
        self.sampler = st.DataOrder(len(self.data), opts.seed, stream=0xDA7A)
        self.step = 0
        self.images_seen = 0
        self.elapsed = 0.0  # training wall-clock seconds, all sessions
        self.images_per_step = opts.batch
        self.loss_ema: float | None = None  # for the progress bar and the log
        self.last_val: dict[str, float] = {}

    # -- state
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        ot, ometa = st.flatten_optimizer(self.opt, "opt")
        tensors.update(ot)
        meta = {
            "options": self.opts.to_dict(),
            "model_config": self.model.config.to_dict(),
            "optim": ometa,
            "step": self.step,
            "images_seen": self.images_seen,
            "elapsed": self.elapsed,
            "sampler": {"epoch": self.sampler.epoch, "cursor": self.sampler.cursor, "n": self.sampler.n},
            "task_state": self.task.extra_state(),
            "last_val": self.last_val,
            "init_trained": self.init_trained,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        msd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(msd)
        except RuntimeError as e:
            raise UserError(f"checkpoint does not fit the model: {str(e).splitlines()[0]}") from None
        st.unflatten_optimizer(self.opt, "opt", tensors, meta["optim"])
        self.step = int(meta["step"])
        self.images_seen = int(meta["images_seen"])
        self.elapsed = float(meta["elapsed"])
        s = meta["sampler"]
        if int(s["n"]) != self.sampler.n:
            raise UserError(f"the checkpoint was trained on {s['n']} samples but the data has {self.sampler.n}")
        self.sampler.epoch, self.sampler.cursor = int(s["epoch"]), int(s["cursor"])
        self.task.load_extra_state(meta.get("task_state", {}))
        self.last_val = meta.get("last_val", {})
        self.init_trained = meta.get("init_trained")

    # -- training
    def progress_fraction(self) -> float:
        o = self.opts
        fr = []
        if o.steps:
            fr.append(self.step / o.steps)
        if o.minutes:
            fr.append(self.elapsed / (o.minutes * 60))
        return max(fr) if fr else 0.0

    def train_step(self) -> dict[str, float]:
        o = self.opts
        # with a step budget the schedule depends on the step alone (exact resume)
        frac = self.step / o.steps if o.steps else self.progress_fraction()
        lr = o.lr * lr_factor(frac, self.step, o.warmup, o.schedule)
        for g in self.opt.param_groups:
            g["lr"] = lr
        idx = np.asarray(self.sampler.take(o.batch))
        batch = self.data.batch(idx)
        gen = torch.Generator().manual_seed((o.seed * 1_000_003 + self.step) % (2**63))
        self.model.train()
        if o.freeze_encoder:
            for m in self.model.encoder_modules():
                m.eval()  # batch-norm statistics stay those of the shipped encoder
        loss, logs = self.task.loss(self.model, batch, gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        self.compute.step(loss, self.opt)
        self.step += 1
        self.images_seen += len(idx)
        self.loss_ema = loss.item() if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss.item()
        return {"loss": loss.item(), "lr": lr, **logs}

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{self.loss_ema:.4f}"}

    def log_extra(self) -> dict[str, float]:
        return {"loss_ema": self.loss_ema}

    def validate(self, val) -> dict[str, float]:
        self.model.cpu()  # the metrics feed CPU batches (parameters move in place; no step comes between)
        try:
            self.last_val = {k: float(v) for k, v in self.task.validate(self.model, val).items()}
        finally:
            self.model.to(self.compute.device)
        return self.last_val

    def export(self, path: str | os.PathLike) -> Path:
        trained = {"task": self.opts.task, "data": str(self.opts.data), "steps": self.step,
                   "images_seen": self.images_seen, "minutes": round(self.elapsed / 60, 2)}
        if self.init_trained is not None:
            prev = self.init_trained
            trained["init"] = {"weights": str(self.opts.init), "trained": prev}
            trained["total_images_seen"] = int(prev.get("total_images_seen", prev.get("images_seen", 0))) + self.images_seen
            trained["total_minutes"] = round(float(prev.get("total_minutes", prev.get("minutes", 0.0))) + self.elapsed / 60, 2)
        if self.opts.freeze_encoder:
            trained["encoder_frozen"] = True  # the encoder is the --init file's, bit for bit
        extra = {"trained": trained, "val": self.last_val}
        return save_module(self.model, path, half=True, extra=extra)


def load_init_weights(path: str | os.PathLike, task: str) -> tuple[torch.nn.Module, dict]:
    """(model in train mode, its ``trained`` record) from exported weights of ``task``:
    fine-tuning a shipped model costs a fraction of training a new one."""
    from ..models.registry import load_module_file

    model = load_module_file(path, task).train().requires_grad_(True)
    _, cfg = load_checkpoint(path, expect_kind=task)
    return model, dict(cfg.get("trained") or {})


def with_new_decoder(model: torch.nn.Module, task: str, changes: dict) -> torch.nn.Module:
    """``model`` rebuilt with decoder ``changes`` to its config: the encoder's
    tensors are carried over, and every decoder tensor whose shape still fits
    (the rest start fresh)."""
    new = build_model(task, {**model.config.to_dict(), **changes})
    old = model.state_dict()
    state = new.state_dict()
    for k, v in old.items():
        if k in state and state[k].shape == v.shape:
            state[k] = v
    new.load_state_dict(state)
    return new.train()


#: options that a resumed run may change (when given); the rest come from the checkpoint
RESUMABLE_OVERRIDES = ("data", "steps", "minutes", "export", "threads", "val")
RESUMABLE_SETTINGS = ("ckpt_minutes", "val_limit", "log_every", "device", "amp")


def train_perception(opts: PerceptionTrainOptions, resume: bool = False, data=None, quiet: bool = False) -> PerceptionTrainer:
    """Train (or resume) one perception model; returns the trainer at the end.

    With ``resume`` the run's stored options are used, except ``data`` (same
    samples, perhaps moved; checked by count), ``steps``,
    ``minutes``, ``export``, ``threads`` and ``val`` where given, and the
    checkpoint/log intervals; without a checkpoint it starts fresh.
    """
    opts.validate(require_budget=not resume)
    run_dir = check_writable_dir(opts.out)
    found = st.latest_good_checkpoint(run_dir, TRAIN_KIND_PREFIX + opts.task, clean=True)
    if found and not resume:
        raise UserError(f"{run_dir} already holds a {opts.task} run; pass --resume to continue it or choose another --out")
    if found:
        path, tensors, meta = found
        stored = PerceptionTrainOptions.from_dict(meta["options"])
        new = {k: getattr(opts, k) for k in RESUMABLE_OVERRIDES if getattr(opts, k) is not None}
        new.update({k: getattr(opts, k) for k in RESUMABLE_SETTINGS})
        opts = dataclasses.replace(stored, **new)
    opts.validate()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.export:
        check_output_file(opts.export)
        if Path(opts.export).suffix not in ("", ".safetensors"):
            raise UserError(f"--export must be a .safetensors path, got {opts.export}")
    # a resumed run rebuilds exactly the architecture it was started with,
    # even if the code's defaults have changed since
    tr = PerceptionTrainer(opts, data, model_config=meta.get("model_config") if found else None)
    if found:
        tr.load_state(tensors, meta)
        if not quiet:
            print(f"resumed {opts.task} from {path.name} (step {tr.step}, {tr.elapsed / 60:.1f} min)", flush=True)
    else:
        (run_dir / "options.json").write_text(json.dumps(tr.opts.to_dict(), indent=2) + "\n")
    val = open_data(opts.val) if opts.val else None

    def validate(trainer: PerceptionTrainer, why: str) -> None:  # before each checkpoint but an interrupted run's
        if val is None or why == "stop":
            return
        v = trainer.validate(val)
        with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": trainer.step, "val": v}) + "\n")
        if why == "end" and not quiet:
            print("validation: " + ", ".join(f"{k} {x:.4f}" for k, x in v.items()), flush=True)

    finished = st.run_loop(tr, tr.opts, run_dir, TRAIN_KIND_PREFIX + opts.task, desc=f"train {opts.task}",
                           on_checkpoint=validate, count_checkpoint_time=True, quiet=quiet)
    if not finished:
        if not quiet:
            print(f"interrupted at step {tr.step}; checkpoint written, continue with --resume", flush=True)
        raise KeyboardInterrupt
    export = Path(tr.opts.export) if tr.opts.export else run_dir / f"{opts.task}.safetensors"
    tr.export(export)
    if not quiet:
        print(f"{opts.task}: {tr.step} steps, {tr.images_seen} images, {tr.elapsed / 60:.1f} min; "
              f"weights -> {export}", flush=True)
    return tr
