"""Face parser: image -> 19-class CelebAMask-HQ logits (a small U-Net).

Input ``(B, 3, H, W)`` in [-1, 1] (the generator's range), output logits
``(B, 19, H, W)`` at the input resolution. Everything is plain convolutions,
BatchNorm and bilinear upsampling, so the parser is differentiable and can
serve as a loss on generated images (keep it in ``eval()`` mode for that).

Sized for CPU training at 128x128: the full-resolution level is thin (few
channels) and widths double per level up to ``max_width``. H and W must be
divisible by ``2 ** depth``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.palette import NUM_CLASSES

KIND = "parser"


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


def config_from_dict(cls, d: dict):
    """Build a config dataclass from a dict, refusing unknown keys (clear error)."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise UserError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**kw)


@dataclass
class ParserConfig:
    """U-Net shape. Width of level i is ``min(base * 2**i, max_width)``; ``depth`` downsamplings."""

    base: int = 8
    depth: int = 5
    max_width: int = 128
    num_classes: int = NUM_CLASSES
    in_channels: int = 3
    dec_convs: int = 1
    heads: int = 3
    size: int = 128  # training resolution (informational; any multiple of 2**depth works)

    def widths(self) -> list[int]:
        return [min(self.base * 2**i, self.max_width) for i in range(self.depth + 1)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ParserConfig":
        return config_from_dict(cls, d)


class FaceParser(nn.Module):
    """Small U-Net face parser (see module docstring)."""

    kind = KIND

    def __init__(self, config: ParserConfig | None = None):
        super().__init__()
        self.config = cfg = config or ParserConfig()
        if cfg.depth < 1 or cfg.base < 1:
            raise ValueError("parser depth and base must be >= 1")
        w = cfg.widths()
        self.inc = DoubleConv(cfg.in_channels, w[0])
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn_relu(w[i], w[i + 1], stride=2), conv_bn_relu(w[i + 1], w[i + 1]))
            for i in range(cfg.depth)
        )
        # light decoder: project the coarser features to the skip's width
        # (1x1, at the coarse resolution), upsample, add the skip, then
        # ``dec_convs`` 3x3 convs -- several times cheaper than concatenation
        self.lat = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 1, bias=False) for i in reversed(range(cfg.depth)))
        self.up = nn.ModuleList(
            nn.Sequential(*[conv_bn_relu(w[i], w[i]) for _ in range(cfg.dec_convs)]) for i in reversed(range(cfg.depth))
        )
        # logits are the sum of 1x1 heads on the finest ``heads`` decoder
        # levels (coarser ones upsampled): the wider coarse levels carry the
        # class evidence, the thin full-resolution level the exact boundaries
        self.heads = nn.ModuleList(nn.Conv2d(w[i], cfg.num_classes, 1) for i in range(min(cfg.heads, cfg.depth + 1)))

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
        out = None  # coarsest head first; partial sums upsampled level by level
        for i in reversed(range(len(self.heads))):
            y = self.heads[i](levels[i])
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
