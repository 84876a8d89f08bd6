"""Face parser: image -> 19-class CelebAMask-HQ logits (a small U-Net).

Input ``(B, 3, H, W)`` in [-1, 1] (the generator's range), output logits
``(B, 19, H, W)`` at the input resolution. Everything is plain convolutions,
BatchNorm and bilinear upsampling, so the parser is differentiable and can
serve as a loss on generated images (keep it in ``eval()`` mode for that).

Sized for CPU training at 128x128 (measured choices, see the perception
report): a lossless 2x2 stride-2 stem instead of full-resolution convs, widths
doubling per level up to ``max_width``, a light additive decoder, and logits
summed from 1x1 heads on the three finest decoder levels, the finest one
predicting 2x2 blocks by pixel shuffle. Summing heads matters: with a single
head on a thin full-resolution layer the small classes (eyes, lips, brows)
stayed at IoU 0 for the first ~9,000 training images; with the summed heads
they start within the first thousand. H and W must be divisible by ``2 ** depth``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.palette import NUM_CLASSES
from .blocks import conv_bn_relu
from .config import config_from_dict

KIND = "parser"


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


@dataclass
class ParserConfig:
    """U-Net shape. Width of level i is ``min(base * 2**i, max_width)``; ``depth`` downsamplings."""

    base: int = 12
    depth: int = 5
    max_width: int = 128
    num_classes: int = NUM_CLASSES
    in_channels: int = 3
    dec_convs: int = 1
    heads: int = 3
    full_res: bool = False  # True: 3x3 convs at full resolution; False: 2x2 space-to-depth stem, pixel-shuffle output
    size: int = 128  # training resolution (informational; any multiple of 2**depth works)

    #: checkpoints written before ``full_res`` existed are full-resolution nets
    LEGACY_DEFAULTS = {"full_res": True}

    def widths(self) -> list[int]:
        return [min(self.base * 2**i, self.max_width) for i in range(self.depth + 1)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "ParserConfig":
        return config_from_dict(cls, d, legacy)


class FaceParser(nn.Module):
    """Small U-Net face parser (see module docstring)."""

    kind = KIND

    def __init__(self, config: ParserConfig | None = None):
        super().__init__()
        self.config = cfg = config or ParserConfig()
        if cfg.depth < 1 or cfg.base < 1:
            raise ValueError("parser depth and base must be >= 1")
        w = cfg.widths()
        self.first = f = 0 if cfg.full_res else 1
        if cfg.full_res:
            self.inc = DoubleConv(cfg.in_channels, w[0])
        else:  # lossless 2x2 stride-2 stem straight to level 1
            self.inc = nn.Sequential(nn.Conv2d(cfg.in_channels, w[1], 2, 2, bias=False), nn.BatchNorm2d(w[1]),
                                     nn.ReLU(inplace=True), conv_bn_relu(w[1], w[1]))
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn_relu(w[i], w[i + 1], stride=2), conv_bn_relu(w[i + 1], w[i + 1]))
            for i in range(f, cfg.depth)
        )
        # light decoder: project the coarser features to the skip's width
        # (1x1, at the coarse resolution), upsample, add the skip, then
        # ``dec_convs`` 3x3 convs -- several times cheaper than concatenation
        self.lat = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 1, bias=False) for i in reversed(range(f, cfg.depth)))
        self.up = nn.ModuleList(
            nn.Sequential(*[conv_bn_relu(w[i], w[i]) for _ in range(cfg.dec_convs)]) for i in reversed(range(f, cfg.depth))
        )
        # logits are the sum of 1x1 heads on the finest ``heads`` decoder
        # levels (coarser ones upsampled): the wider coarse levels carry the
        # class evidence, the finest level the exact boundaries; without
        # full-resolution convs the finest head predicts 2x2 blocks (pixel shuffle)
        nh = max(1, min(cfg.heads, cfg.depth + 1 - f))
        self.heads = nn.ModuleList(
            nn.Conv2d(w[f + j], cfg.num_classes * (4 if (j == 0 and f) else 1), 1) for j in range(nh)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.config.depth
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (B, {self.config.in_channels}, H, W) images, got {tuple(x.shape)}")
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {m}")
        skips = [self.inc(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        h = skips.pop()
        levels = {self.config.depth: h}
        for i, (lat, u) in enumerate(zip(self.lat, self.up)):
            s = skips.pop()
            h = F.interpolate(lat(h), size=s.shape[-2:], mode="bilinear", align_corners=False)
            h = u(h + s)
            levels[self.config.depth - 1 - i] = h
        if self.config.full_res:
            # each coarser head upsampled straight to full size (as the
            # full-resolution parsers were trained)
            out = self.heads[0](levels[0])
            for j in range(1, len(self.heads)):
                out = out + F.interpolate(self.heads[j](levels[j]), size=out.shape[-2:], mode="bilinear", align_corners=False)
            return out
        out = None  # coarsest head first; partial sums upsampled level by level
        for j in reversed(range(len(self.heads))):
            y = self.heads[j](levels[self.first + j])
            if j == 0:
                y = F.pixel_shuffle(y, 2)
            out = y if out is None else y + F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Label map (B, H, W) long, in eval mode."""
        was = self.training
        self.eval()
        try:
            return self(x).argmax(1)
        finally:
            self.train(was)
