"""Image -> latent encoders for the world generator: the VAE encoder and the e4e-style W+ inverter.

The world generator is trained as an autoencoding StyleGAN2 (see
:mod:`mm2latent.train.generator_ae`): :class:`ImageEncoder` maps an image to
the mean and log-variance of a Gaussian over the generator's z, and the mapping
network turns z into w, so ``w = G.mapping(mu)`` is a one-pass inversion with
one w for every layer. :class:`WPlusInverter` starts from exactly that and adds
per-layer offsets (trained by :mod:`mm2latent.train.inverter`), which is what
the pipeline inverts photos with when the weights have it; optimisation
refinement and pivotal tuning live in :mod:`mm2latent.pipeline.editing`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import UserError

KIND = "image_encoder"
WPLUS_KIND = "wplus_inverter"


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

    @property
    def feature_resolutions(self) -> list[int]:
        """Side (px) of each map :meth:`ImageEncoder.features` returns: size/2, size/4, ..., 4."""
        return [self.size // 2 ** (i + 1) for i in range(len(self.widths))]

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

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature pyramid, finest first: after the stem (size/2), then after each block (down to 4 px)."""
        s = self.config.size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"image encoder expects (B, 3, {s}, {s}), got {tuple(x.shape)}")
        feats = [F.leaky_relu(self.stem(x), 0.2)]
        for block in self.blocks:
            feats.append(block(feats[-1]))
        return feats

    def head_from(self, h4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(h4.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_from(self.features(x)[-1])


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pixel loss of inversion: L1 at full resolution + L2 at 1/4 resolution (colour and layout)."""
    return (y - x).abs().mean() + F.mse_loss(F.avg_pool2d(y, 4), F.avg_pool2d(x, 4))


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over dimensions, per sample."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)


# =========================================================================== e4e-style W+ inverter


@dataclass
class WPlusInverterConfig:
    """An :class:`ImageEncoder` + a copy of the generator's mapping (the base code w) + offset heads.

    ``groups`` splits the generator's ``num_ws`` layers into coarse / medium / fine
    runs (counts, summing to num_ws); group k reads the encoder feature map
    ``feature_res[k]`` px (deep features for coarse layers, finer ones for fine
    layers, as in pSp/e4e's feature pyramid).
    """

    encoder: dict = field(default_factory=lambda: ImageEncoderConfig().to_dict())
    w_dim: int = 256
    mapping_layers: int = 4
    mapping_width: int | None = None
    lr_mlp: float = 0.01
    num_ws: int = 12
    groups: list[int] = field(default_factory=lambda: [4, 4, 4])
    feature_res: list[int] = field(default_factory=lambda: [4, 8, 16])
    head_width: int = 128

    def __post_init__(self):
        enc = ImageEncoderConfig.from_dict(self.encoder)
        self.encoder = enc.to_dict()
        if sum(self.groups) != self.num_ws or any(g < 1 for g in self.groups):
            raise UserError(f"W+ inverter: layer groups {self.groups} must be positive and sum to num_ws={self.num_ws}")
        if len(self.feature_res) != len(self.groups):
            raise UserError("W+ inverter: give one feature resolution per layer group")
        have = enc.feature_resolutions
        bad = [r for r in self.feature_res if r not in have]
        if bad:
            raise UserError(f"W+ inverter: the encoder has no {bad[0]}px features (it has {have})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "WPlusInverterConfig":
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise UserError(f"W+ inverter config: unknown keys {sorted(unknown)}")
        return cls(**d)

    def mapping_config(self):
        from .stylegan2 import StyleGAN2Config

        enc = ImageEncoderConfig.from_dict(self.encoder)
        return StyleGAN2Config(resolution=enc.size, z_dim=enc.z_dim, w_dim=self.w_dim,
                               mapping_layers=self.mapping_layers, mapping_width=self.mapping_width,
                               lr_mlp=self.lr_mlp)


class OffsetHead(nn.Module):
    """Feature map (C, r, r) -> ``count`` offsets of w: stride-2 convs down to 4 px, then a linear layer
    initialised to zero, so that a fresh head leaves the base code unchanged."""

    def __init__(self, cin: int, res: int, width: int, count: int, w_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, width, 1), nn.LeakyReLU(0.2)]
        while res > 4:
            layers += [nn.Conv2d(width, width, 3, 2, 1), nn.LeakyReLU(0.2)]
            res //= 2
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(width * 16, count * w_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.count, self.w_dim = count, w_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(h).flatten(1)).view(h.shape[0], self.count, self.w_dim)


class WPlusInverter(nn.Module):
    """Image -> w+ = w(x) + offsets(x) (encoder4editing, Tov et al. 2021, in our words).

    The base code ``w(x) = mapping(mu(x))`` lies in W (the generator's own
    mapping of the VAE posterior mean); the per-layer offsets, read from a
    feature pyramid, add what one w cannot hold. Training keeps the offsets
    small (the "w-centred" regulariser) so the code stays near W, where
    MappingNet's edits were learnt. Forward returns ``(ws, offsets)``.
    """

    kind = WPLUS_KIND

    def __init__(self, config: WPlusInverterConfig | None = None):
        super().__init__()
        from .stylegan2 import MappingNetwork

        c = self.config = config or WPlusInverterConfig()
        enc = ImageEncoderConfig.from_dict(c.encoder)
        self.encoder = ImageEncoder(enc)
        self.mapping = MappingNetwork(c.mapping_config())
        self._res_index = {r: i for i, r in enumerate(enc.feature_resolutions)}
        self.heads = nn.ModuleList(OffsetHead(enc.widths[self._res_index[r]], r, c.head_width, n, c.w_dim)
                                   for r, n in zip(c.feature_res, c.groups))
        self.register_buffer("active", torch.ones(c.num_ws))  # progressive training switches layers on

    @classmethod
    def from_parts(cls, image_encoder: ImageEncoder, generator, config: dict | None = None) -> "WPlusInverter":
        """A fresh inverter whose base code equals ``generator.mapping(image_encoder(x)[0])``."""
        g, n = generator.cfg, generator.num_ws
        extra = dict(config or {})
        extra.setdefault("groups", [n // 3, n // 3, n - 2 * (n // 3)])
        cfg = WPlusInverterConfig(encoder=image_encoder.config.to_dict(), w_dim=g.w_dim,
                                  mapping_layers=g.mapping_layers, mapping_width=g.mapping_width, lr_mlp=g.lr_mlp,
                                  num_ws=n, **extra)
        inv = cls(cfg)
        inv.encoder.load_state_dict(image_encoder.state_dict())
        inv.mapping.load_state_dict(generator.mapping.state_dict())
        return inv

    def base(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapping(self.encoder(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder.features(x)
        w = self.mapping(self.encoder.head_from(feats[-1])[0])
        offsets = torch.cat([head(feats[self._res_index[r]]) for head, r in zip(self.heads, self.config.feature_res)],
                            dim=1) * self.active[None, :, None]
        return w[:, None, :] + offsets, offsets
