"""Face analyzer: attribute classifier and pose/expression/shape regressor.

One small CNN backbone shared by two heads (documented design choice: the
attributes and the coefficients are read from the same face features, and one
network is cheaper to train and ship than two):

* ``attributes``: 37 logits in the order of
  :data:`mm2latent.world.attributes.ATTRIBUTES` (CelebA names); sigmoid gives
  probabilities.
* ``coeffs``: 13 values in normalised [-1, 1] units, the order of
  :data:`mm2latent.world.params.COEFF_NAMES`; use
  :func:`mm2latent.world.dataset.denormalise_coeffs` for raw units (degrees
  for yaw/pitch/roll).

Training adds a dense auxiliary task: a 1x1 head on the first two stages
predicts a quarter-resolution label map, supervised by the world mask. Dense
supervision makes the shared features learn parts (glasses, earrings, mouth)
sooner than 37 bits per image would; the head is not needed at inference.
Experimental, off by default (no gain measured in a short run, 1.5x slower):
``aux_res=2`` (a half-resolution head that also sees the stem) and
``part_stats`` (each class's soft area, centroid and spread from that head
fed to the attribute/coefficient heads).

Input ``(B, 3, H, W)`` in [-1, 1]. Plain convolutions, BatchNorm, pooling and
linear layers: differentiable, usable as a loss in ``eval()`` mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.palette import NUM_CLASSES
from ..world.attributes import NUM_ATTRIBUTES
from ..world.params import COEFF_NAMES
from .config import config_from_dict
from .blocks import conv_bn_relu

KIND = "analyzer"


@dataclass
class AnalyzerConfig:
    """Stem (stride 2) then one stride-2 residual stage per entry of ``widths``."""

    stem: int = 24
    widths: tuple[int, ...] = (32, 64, 128, 192)
    hidden: int = 256
    head: str = "flatten"  # "flatten": the final 4x4 map in order (faces are aligned); "pool": avg+max pooling
    pool_levels: int = 2  # also avg+max pool the outputs of this many stages before the last (small details)
    aux_seg: bool = True  # coarse parsing head supervised by the world mask (dense supervision speeds up learning)
    aux_res: int = 4  # the parsing head's resolution divisor: 4 (two stages) or 2 (64x64 at 128 px, stem + two stages)
    part_stats: bool = False  # experimental: feed per-class area, centroid and spread of the parsing head to the heads
    num_attributes: int = NUM_ATTRIBUTES
    num_coeffs: int = len(COEFF_NAMES)
    size: int = 128

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "AnalyzerConfig":
        return config_from_dict(cls, d, legacy)


def part_statistics(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) parsing logits -> (B, 5K): per class log-area, centroid
    x and y in [-1, 1], and log standard deviation in x and y (soft, differentiable)."""
    p = logits.softmax(1)
    b, k, h, w = p.shape
    ys = torch.linspace(-1, 1, h, device=p.device, dtype=p.dtype).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w, device=p.device, dtype=p.dtype).view(1, 1, 1, w)
    mass = p.sum((2, 3)) + 1e-6
    area = mass / (h * w)
    cx = (p * xs).sum((2, 3)) / mass
    cy = (p * ys).sum((2, 3)) / mass
    sx = ((p * xs * xs).sum((2, 3)) / mass - cx * cx).clamp_min(0)
    sy = ((p * ys * ys).sum((2, 3)) / mass - cy * cy).clamp_min(0)
    return torch.cat([torch.log(area + 1e-4), cx, cy, 0.5 * torch.log(sx + 1e-4), 0.5 * torch.log(sy + 1e-4)], 1)


class ResStage(nn.Module):
    """Stride-2 conv, then a residual pair of 3x3 convs."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = conv_bn_relu(cin, cout, stride=2)
        self.body = nn.Sequential(conv_bn_relu(cout, cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return self.act(x + self.body(x))


class FaceAnalyzer(nn.Module):
    """Shared backbone + attribute head + coefficient head."""

    kind = KIND

    def __init__(self, config: AnalyzerConfig | None = None):
        super().__init__()
        self.config = cfg = config or AnalyzerConfig()
        self.stem = conv_bn_relu(3, cfg.stem, stride=2)
        stages, c = [], cfg.stem
        for w in cfg.widths:
            stages.append(ResStage(c, w))
            c = w
        self.stages = nn.Sequential(*stages)
        if cfg.head not in ("flatten", "pool"):
            raise ValueError(f"analyzer head must be 'flatten' or 'pool', got {cfg.head!r}")
        n = len(cfg.widths) + 1
        side = cfg.size // 2**n
        if cfg.head == "flatten" and (side < 1 or side * 2**n != cfg.size):
            raise ValueError(f"size {cfg.size} must be divisible by {2**n}")
        # "flatten" keeps where each feature is (eyes, mouth, neck...), which
        # suits aligned faces; "pool" concatenates average pooling (global
        # properties: skin, hair colour) and max pooling (small local ones)
        feat = c * side * side if cfg.head == "flatten" else 2 * c
        k = max(0, min(cfg.pool_levels, len(cfg.widths) - 1))
        self._pooled = list(range(len(cfg.widths) - 1 - k, len(cfg.widths) - 1))
        feat += sum(2 * cfg.widths[i] for i in self._pooled)
        if cfg.aux_res not in (2, 4):
            raise ValueError(f"aux_res must be 2 or 4, got {cfg.aux_res}")
        if cfg.part_stats and not cfg.aux_seg:
            raise ValueError("part_stats needs aux_seg")
        if cfg.part_stats:
            # log-area, centroid (x, y) and log-spread (x, y) of each class in
            # the parsing head's soft map: part sizes (lips, nose, eyes) and
            # positions become direct inputs instead of something the deep
            # features must learn to count
            self.part_norm = nn.LayerNorm(5 * NUM_CLASSES)
            feat += 5 * NUM_CLASSES
        # LayerNorm first: the concatenated features differ in scale by orders
        # of magnitude, and without it Adam's first steps can push every
        # hidden unit negative (dead ReLUs -> constant predictions)
        self.neck = nn.Sequential(nn.LayerNorm(feat), nn.Linear(feat, cfg.hidden), nn.LeakyReLU(0.1, inplace=True))
        if cfg.aux_seg:
            if len(cfg.widths) < 2:
                raise ValueError("aux_seg needs at least two stages")
            cin = cfg.widths[0] + cfg.widths[1] + (cfg.stem if cfg.aux_res == 2 else 0)
            self.aux = nn.Conv2d(cin, NUM_CLASSES, 1)
        self.attr_head = nn.Linear(cfg.hidden, cfg.num_attributes)
        self.coeff_head = nn.Linear(cfg.hidden, cfg.num_coeffs)

    def _backbone(self, x: torch.Tensor, want_seg: bool = False):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(x.shape)}")
        cfg = self.config
        want_seg = want_seg or cfg.part_stats
        h = self.stem(x)
        extra, early = [], [h] if cfg.aux_res == 2 else []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i in self._pooled:
                extra += [h.mean((2, 3)), h.amax((2, 3))]
            if want_seg and i < 2:
                early.append(h)
        seg = None
        if want_seg:
            size = early[0].shape[-2:]
            ups = [early[0]] + [F.interpolate(e, size=size, mode="bilinear", align_corners=False) for e in early[1:]]
            seg = self.aux(torch.cat(ups, 1))
            if cfg.part_stats:
                extra.append(self.part_norm(part_statistics(seg)))
        if self.config.head == "flatten":
            if h.shape[-1] * 2 ** (len(self.config.widths) + 1) != self.config.size:
                raise ValueError(f"the flatten head needs {self.config.size}x{self.config.size} input, got {tuple(x.shape[-2:])}")
            h = h.flatten(1)
        else:
            h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.neck(torch.cat([h] + extra, 1)), seg

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbone(x)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (attribute logits (B, 37), coefficients (B, 13) normalised)."""
        f = self.features(x)
        return self.attr_head(f), self.coeff_head(f)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(attribute logits, coefficients, coarse parsing logits at 1/``aux_res`` resolution or None)."""
        f, seg = self._backbone(x, want_seg=self.config.aux_seg)
        return self.attr_head(f), self.coeff_head(f), seg

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attribute probabilities, coefficients clamped to [-1, 1]) in eval mode."""
        was = self.training
        self.eval()
        try:
            a, c = self(x)
            return torch.sigmoid(a), c.clamp(-1, 1)
        finally:
            self.train(was)
