"""Image -> latent encoder for the world generator (inversion and VAE posterior).

The world generator is trained as an autoencoding StyleGAN2 (see
:mod:`mm2latent.train.generator_ae`): this encoder maps an image to the mean
and log-variance of a Gaussian over the generator's z, and the mapping network
turns z into w. The same network then serves as the inverter for editing:
``w = G.mapping(mu)`` is the encoder-only inversion, which optimisation can
refine in W or W+ (:func:`refine_latent`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import UserError

KIND = "image_encoder"


@dataclass
class ImageEncoderConfig:
    size: int = 128
    z_dim: int = 256
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256])  # at size/2, size/4, ..., 4 px

    def __post_init__(self):
        end = self.size // 2 ** len(self.widths)
        if self.size % 2 ** len(self.widths) or end != 4:
            raise UserError(f"image encoder: {len(self.widths)} widths take {self.size}px to {end}px, "
                            "need 4px; give log2(size) - 2 widths")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "ImageEncoderConfig":
        unknown = set(d) - {"size", "z_dim", "widths"}
        if unknown:
            raise UserError(f"image encoder config: unknown keys {sorted(unknown)}")
        return cls(**d)


class ResDown(nn.Module):
    """Residual block that halves the resolution (avg-pool shortcut)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 2, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.leaky_relu(self.conv1(x), 0.2))
        return F.leaky_relu(h + self.skip(F.avg_pool2d(x, 2)), 0.2) * (1 / 1.4142)


class ImageEncoder(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (mu, logvar), each (B, z_dim)."""

    kind = KIND

    def __init__(self, config: ImageEncoderConfig | None = None):
        super().__init__()
        c = self.config = config or ImageEncoderConfig()
        w = c.widths
        self.stem = nn.Conv2d(3, w[0], 4, 2, 1)  # lossless-ish 2x2 -> 1 stem: full-res convs cost too much on CPU
        self.blocks = nn.Sequential(*[ResDown(a, b) for a, b in zip(w[:-1], w[1:])])
        self.head = nn.Linear(w[-1] * 16, 2 * c.z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.config.size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"image encoder expects (B, 3, {s}, {s}), got {tuple(x.shape)}")
        h = self.blocks(F.leaky_relu(self.stem(x), 0.2))
        mu, logvar = self.head(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 4)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over dimensions, per sample."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
