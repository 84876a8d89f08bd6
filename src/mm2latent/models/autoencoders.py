"""The spatial autoencoders that feed MappingNet, and their input augmentations.

Three autoencoders, one per spatial control, each with ``encode(x) -> (B, D)``
and ``decode(z)``:

* :class:`MaskAE`: 19-class one-hot mask ``(B, 19, S, S)`` (or an index map
  ``(B, S, S)`` long) -> ``D = 512`` -> mask logits ``(B, 19, S, S)``.
* :class:`SketchAE`: edge map ``(B, 1, S, S)`` (1 = line) -> ``D = 512`` ->
  edge logits ``(B, 1, S, S)``.

  By default their 512-d code is *spatial*, flattened channel-major to
  ``(B, 512)``: for masks a 2-channel 16x16 map (each cell summarising an
  8x8-pixel patch at S = 128), for sketches an 8-channel 8x8 map.
  Convolutional codes learn several times faster on CPU than a dense linear
  bottleneck (measured, mask-AE mIoU after the same 2,400 masks: dense 4x4
  0.33, spatial 4x4x32 0.40, 8x8x8 0.47, 16x16x2 0.54) and need far fewer
  weights; ``latent="dense"`` gives the classic flatten + linear code.
* :class:`CoeffAE`: normalised coefficients ``(B, 13)`` in [-1, 1] ->
  ``D = 512`` -> ``(B, 13)``. (512 so that every spatial embedding has the same
  width; the information is 13-d, so the code is redundant by design.)

The mask and sketch nets share one conv architecture (:class:`SpatialAE`):
a lossless 2x2 stride-2 stem, stride-2 conv stages down to ``bottom`` x
``bottom``, a 1x1 conv (or a linear layer) to the D-d code, and the mirror
image back up, whose output sums 1x1 heads of the three finest levels, the
finest predicting 2x2 pixel blocks (pixel shuffle). ``full_res=True`` puts
3x3 convs at full resolution instead (slower; what files without the key were
built with).

Augmentations (used in training, see :mod:`mm2latent.train.perception`) make
hand-drawn input encode sensibly: random shift/rotate/scale applied to input
and target alike, and, on the input only, blobby class boundaries (smoothing,
low-frequency boundary noise, per-class max-/min-pool dilation/erosion) for
masks and thickness changes, dropped stretches, jitter and speckles for
sketches. The target stays the clean (geometrically transformed) control, so
the AE learns to map rough input to a clean, world-like control.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.palette import NUM_CLASSES
from ..world.params import COEFF_NAMES
from .config import config_from_dict
from .blocks import conv_bn_relu

MASK_KIND = "mask_ae"
SKETCH_KIND = "sketch_ae"
COEFF_KIND = "coeff_ae"


# --------------------------------------------------------------------------- spatial AEs


@dataclass
class SpatialAEConfig:
    """Width of level i (resolution ``size / 2**i``) is ``min(base * 2**i, max_width)``."""

    in_channels: int = NUM_CLASSES
    out_channels: int = NUM_CLASSES
    size: int = 128
    base: int = 8
    max_width: int = 96
    latent_dim: int = 512
    bottom: int = 8  # spatial size of the last conv level
    heads: int = 3  # decoder levels that feed the output
    latent: str = "spatial"  # "spatial": the code is a (D / bottom^2, bottom, bottom) map, flattened; "dense": a linear layer
    full_res: bool = False  # convs at full resolution; False: 2x2 space-to-depth stem and pixel-shuffle output
    #: decoder widths, when they differ from the encoder's (0: same as ``base`` / ``max_width``): a
    #: wider decoder can be trained behind a frozen encoder, so that the code, and everything
    #: trained on it (MappingNet), stays valid while reconstructions sharpen
    dec_base: int = 0
    dec_max_width: int = 0
    #: width of a full-resolution refinement stage after the output heads (0: none): two 3x3 convs
    #: over [finest decoder features upsampled to full size ; the logits] that add a correction to
    #: the logits. Without it the finest head predicts 2x2 pixel blocks from half-resolution
    #: features, and thin parts (brows, lips, necklaces: 1-3 px at 128 px) stay at the quality of
    #: a half-resolution round trip. Its last conv starts at zero, so adding it to a trained
    #: decoder changes nothing before training
    refine: int = 0
    #: width of a second residual refinement stage (0: none), ``refine2_layers`` 3x3 conv layers
    #: deep, over [finest decoder features at full size ; the first stage's logits]. Reconstruction
    #: errors of a trained mask AE sit almost all (98%) within one pixel of a class boundary, so a
    #: deeper full-resolution stage is where the remaining boundary precision comes from; its last
    #: conv starts at zero too, so it can be added to a trained AE without changing its output
    refine2: int = 0
    refine2_layers: int = 2

    #: files written before these options existed were built this way
    LEGACY_DEFAULTS = {"full_res": True, "latent": "dense"}

    def levels(self) -> int:
        n = int(round(math.log2(self.size / self.bottom)))
        if self.bottom * 2**n != self.size or n < 1:
            raise ValueError(f"size {self.size} must be bottom ({self.bottom}) times a power of two")
        return n

    def widths(self) -> list[int]:
        return [min(self.base * 2**i, self.max_width) for i in range(self.levels() + 1)]

    def dec_widths(self) -> list[int]:
        base, top = self.dec_base or self.base, self.dec_max_width or self.max_width
        return [min(base * 2**i, top) for i in range(self.levels() + 1)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False):
        return config_from_dict(cls, d, legacy)


@dataclass
class MaskAEConfig(SpatialAEConfig):
    in_channels: int = NUM_CLASSES
    out_channels: int = NUM_CLASSES
    bottom: int = 16  # code = 2 channels x 16 x 16: the fastest learner measured (mIoU 0.56 vs 0.52 at 8x8x8, 2,400 masks)


@dataclass
class SketchAEConfig(SpatialAEConfig):
    in_channels: int = 1
    out_channels: int = 1


class SpatialAE(nn.Module):
    kind = "spatial_ae"

    def __init__(self, config: SpatialAEConfig):
        super().__init__()
        self.config = cfg = config
        w, dw = cfg.widths(), cfg.dec_widths()
        n = cfg.levels()
        # first level: full-resolution convs, or a lossless 2x2 stride-2 conv
        # straight to level 1 (cheaper, and no thin full-resolution layer
        # squeezing 19 classes into a few channels)
        self.first = 0 if cfg.full_res else 1
        if cfg.full_res:
            enc = [conv_bn_relu(cfg.in_channels, w[0])]
        else:
            enc = [nn.Conv2d(cfg.in_channels, w[1], 2, 2, bias=False), nn.BatchNorm2d(w[1]), nn.ReLU(inplace=True),
                   conv_bn_relu(w[1], w[1])]
        for i in range(self.first, n):
            enc += [conv_bn_relu(w[i], w[i + 1], stride=2), conv_bn_relu(w[i + 1], w[i + 1])]
        self.enc = nn.Sequential(*enc)
        if cfg.latent == "dense":
            flat = w[n] * cfg.bottom * cfg.bottom
            self.to_code = nn.Linear(flat, cfg.latent_dim)
            self.from_code = nn.Sequential(nn.Linear(cfg.latent_dim, dw[n] * cfg.bottom * cfg.bottom), nn.ReLU(inplace=True))
        elif cfg.latent == "spatial":
            if cfg.latent_dim % (cfg.bottom * cfg.bottom):
                raise ValueError(f"latent_dim {cfg.latent_dim} must be a multiple of bottom^2 = {cfg.bottom ** 2}")
            c_lat = cfg.latent_dim // (cfg.bottom * cfg.bottom)
            self.to_code = nn.Conv2d(w[n], c_lat, 1)
            self.from_code = nn.Sequential(nn.Conv2d(c_lat, dw[n], 3, 1, 1), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"latent must be 'dense' or 'spatial', got {cfg.latent!r}")
        self.dec = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_relu(dw[i + 1], dw[i]), conv_bn_relu(dw[i], dw[i]))
            for i in reversed(range(self.first, n))
        )
        # output = sum of 1x1 heads on the finest ``heads`` levels (coarser
        # ones upsampled): wide coarse levels carry which class, the finest
        # level where exactly the boundary is; without full-resolution convs
        # the finest head predicts each 2x2 block (pixel shuffle)
        nh = max(1, min(cfg.heads, n + 1 - self.first))
        self.heads = nn.ModuleList(
            nn.Conv2d(dw[self.first + j], cfg.out_channels * (4 if (j == 0 and self.first) else 1), 1) for j in range(nh)
        )

        if cfg.refine:
            cf = dw[self.first]
            last = nn.Conv2d(cfg.refine, cfg.out_channels, 3, 1, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.refine = nn.Sequential(conv_bn_relu(cf + cfg.out_channels, cfg.refine), last)
        if cfg.refine2:
            cf = dw[self.first]
            layers = [conv_bn_relu(cf + cfg.out_channels, cfg.refine2)]
            layers += [conv_bn_relu(cfg.refine2, cfg.refine2) for _ in range(max(0, cfg.refine2_layers - 1))]
            last = nn.Conv2d(cfg.refine2, cfg.out_channels, 3, 1, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.refine2 = nn.Sequential(*layers, last)

    def encoder_modules(self) -> list[nn.Module]:
        """The modules ``encode`` runs through (frozen by ``--freeze-encoder``)."""
        return [self.enc, self.to_code]

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[-1] != c.size or x.shape[-2] != c.size:
            raise ValueError(f"expected (B, {c.in_channels}, {c.size}, {c.size}) input, got {tuple(x.shape)}")
        return x.float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(self._check(x))
        if self.config.latent == "spatial":
            return self.to_code(h).flatten(1)
        return self.to_code(h.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.latent == "spatial":
            h = self.from_code(z.view(z.shape[0], -1, c.bottom, c.bottom))
        else:
            h = self.from_code(z).view(z.shape[0], -1, c.bottom, c.bottom)
        n = len(self.dec)
        levels = {n: h}
        for j, stage in enumerate(self.dec):
            h = stage(h)
            levels[n - 1 - j] = h
        if not self.first:
            return self._refined(sum_heads(self.heads, levels), levels[0])
        fine = F.pixel_shuffle(self.heads[0](levels[0]), 2)
        if len(self.heads) > 1:
            coarse = sum_heads(self.heads[1:], {i - 1: levels[i] for i in range(1, len(self.heads))})
            fine = fine + F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self._refined(fine, levels[0])

    def _refined(self, logits: torch.Tensor, finest: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not (c.refine or c.refine2):
            return logits
        feat = F.interpolate(finest, size=logits.shape[-2:], mode="nearest") if finest.shape[-1] != logits.shape[-1] else finest
        if c.refine:
            logits = logits + self.refine(torch.cat([feat, logits], 1))
        if c.refine2:
            logits = logits + self.refine2(torch.cat([feat, logits], 1))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def shift_output_logits(self, bias: torch.Tensor | list[float]) -> None:
        """Add a constant per output channel to every decoded logit, folded into the bias of the
        layer that writes the output last (so nothing downstream of it sees the change); the
        encoder is untouched. Used by the per-class calibration in :mod:`mm2latent.train.calibration`."""
        b = torch.as_tensor(bias, dtype=torch.float32).flatten()
        c = self.config.out_channels
        if b.numel() != c:
            raise ValueError(f"expected {c} offsets, got {b.numel()}")
        if self.config.refine2:
            last = self.refine2[-1]
        elif self.config.refine:
            last = self.refine[-1]
        else:
            last = self.heads[-1]
        if last.bias is None:
            raise ValueError("the output layer has no bias to shift")
        if last.out_channels == c:
            last.bias.add_(b.to(last.bias))
        else:  # the pixel-shuffle head: 4 sub-pixel channels per class
            last.bias.view(c, -1).add_(b.to(last.bias)[:, None])


class MaskAE(SpatialAE):
    """Mask autoencoder; ``encode`` takes one-hot (B, 19, S, S) or an index map (B, S, S)."""

    kind = MASK_KIND

    def __init__(self, config: MaskAEConfig | None = None):
        super().__init__(config or MaskAEConfig())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and not x.is_floating_point():
            x = F.one_hot(x.long(), self.config.in_channels).permute(0, 3, 1, 2).float()
        return super().encode(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Index map (B, S, S) of the reconstruction, in eval mode."""
        was = self.training
        self.eval()
        try:
            return self(x if x.dim() == 4 else F.one_hot(x.long(), self.config.in_channels).permute(0, 3, 1, 2).float()).argmax(1)
        finally:
            self.train(was)


class SketchAE(SpatialAE):
    """Sketch autoencoder on edge maps (1 = line, 0 = paper); decodes edge logits."""

    kind = SKETCH_KIND

    def __init__(self, config: SketchAEConfig | None = None):
        super().__init__(config or SketchAEConfig())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return (self(x) > 0).float()
        finally:
            self.train(was)


def sum_heads(heads: nn.ModuleList, levels: dict[int, torch.Tensor]) -> torch.Tensor:
    """Sum of ``heads[i](levels[i])``, coarsest first, each partial sum
    upsampled (bilinear) to the next finer level: one full-size upsample."""
    out = None
    for i in reversed(range(len(heads))):
        y = heads[i](levels[i])
        if out is not None:
            y = y + F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        out = y
    return out


# --------------------------------------------------------------------------- coefficient AE


@dataclass
class CoeffAEConfig:
    num_coeffs: int = len(COEFF_NAMES)
    hidden: int = 256
    latent_dim: int = 512

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "CoeffAEConfig":
        return config_from_dict(cls, d, legacy)


class CoeffAE(nn.Module):
    """MLP autoencoder on normalised coefficients (B, 13) in [-1, 1]."""

    kind = COEFF_KIND

    def __init__(self, config: CoeffAEConfig | None = None):
        super().__init__()
        self.config = c = config or CoeffAEConfig()
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.enc = nn.Sequential(nn.Linear(c.num_coeffs, c.hidden), act(), nn.Linear(c.hidden, c.hidden), act(),
                                 nn.Linear(c.hidden, c.latent_dim))
        self.dec = nn.Sequential(nn.Linear(c.latent_dim, c.hidden), act(), nn.Linear(c.hidden, c.hidden), act(),
                                 nn.Linear(c.hidden, c.num_coeffs))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.num_coeffs:
            raise ValueError(f"expected (B, {self.config.num_coeffs}) coefficients, got {tuple(x.shape)}")
        return self.enc(x.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------- augmentations


def _rand(shape, gen: torch.Generator | None, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


def random_affine(n: int, gen: torch.Generator | None, shift: float = 0.08, rotate: float = 10.0,
                  scale: tuple[float, float] = (0.9, 1.1), p: float = 1.0) -> torch.Tensor:
    """(n, 2, 3) affine matrices for ``F.affine_grid``: rotation (degrees),
    isotropic scale and shift (fraction of the image side); identity with
    probability ``1 - p``."""
    ang = _rand(n, gen, -rotate, rotate) * math.pi / 180
    s = _rand(n, gen, *scale)
    t = _rand((n, 2), gen, -2 * shift, 2 * shift)  # grid units span 2
    use = (_rand(n, gen) < p).float()
    ang, s, t = ang * use, 1 + (s - 1) * use, t * use[:, None]
    # the grid maps output coordinates to input ones: the inverse transform
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """Apply affine ``theta`` (from :func:`random_affine`) to a float batch (B, C, H, W)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


def warp_labels(mask: torch.Tensor, theta: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """Nearest-neighbour warp of an index map (B, H, W) long (labels stay labels)."""
    return warp(mask[:, None].float(), theta, mode="nearest", padding=padding)[:, 0].round().long()


def low_freq_noise(shape: tuple[int, int, int, int], gen: torch.Generator | None, cells: int = 8,
                   mode: str = "bicubic") -> torch.Tensor:
    """Smooth noise in [-1, 1] of ``shape`` (B, C, H, W) from a coarse random grid."""
    b, c, h, w = shape
    coarse = _rand((b, c, cells, cells), gen, -1.0, 1.0)
    return F.interpolate(coarse, size=(h, w), mode=mode, align_corners=False).clamp(-1, 1)


def dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(x, k, 1, k // 2) if k > 1 else x


def erode(x: torch.Tensor, k: int) -> torch.Tensor:
    return -F.max_pool2d(-x, k, 1, k // 2) if k > 1 else x


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Separable k x k box average (borders averaged over the pixels inside)."""
    if k <= 1:
        return x
    r = k // 2
    x = F.avg_pool2d(x, (k, 1), 1, (r, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, k), 1, (0, r), count_include_pad=False)


def blobby_mask(mask: torch.Tensor, gen: torch.Generator | None, p: float = 1.0, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Hand-painted look for an index map (B, H, W): per-class dilation or
    erosion of the one-hot (a k x k box: max-/min-pool for binary maps), box
    smoothing and low-frequency boundary noise, then argmax. Applied to each
    sample with probability ``p`` (the others are returned unchanged)."""
    b, h, w = mask.shape
    use = _rand(b, gen) < p
    op = torch.randint(0, 3, (b, num_classes, 1, 1), generator=gen)  # 0 erode, 1 keep, 2 dilate
    amp = 0.35 * _rand((b, 1, 1, 1), gen)
    noise = low_freq_noise((b, num_classes, h, w), gen, cells=max(4, h // 12), mode="bilinear")
    out = mask.long().clone()
    sel = use.nonzero().flatten()
    if len(sel) == 0:
        return out
    oh = F.one_hot(mask[sel].long(), num_classes).permute(0, 3, 1, 2).float()
    # erosion by 3x3 (small parts such as eyes shrink but survive), dilation
    # by 5x5 at 128 px and more (3x3 below)
    m3 = box_mean(oh, 3)
    m_d = box_mean(oh, 5) if h > 64 else m3
    o = op[sel]
    morph = torch.where(o == 0, (m3 > 1 - 1e-4).float(), torch.where(o == 2, (m_d > 1e-4).float(), oh))
    score = box_mean(morph, 3) + amp[sel] * noise[sel]
    # a pixel whose class was eroded away everywhere keeps a trace of it, so
    # that every pixel has a winner
    score = score + 1e-3 * oh
    out[sel] = score.argmax(1)
    return out


def augment_mask_pair(mask: torch.Tensor, gen: torch.Generator | None, p_affine: float = 0.5, p_blobby: float = 0.5,
                      shift: float = 0.08, rotate: float = 12.0, scale: tuple[float, float] = (0.85, 1.15)
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) index maps for mask-AE training: both geometrically
    transformed, the input also made blobby."""
    theta = random_affine(mask.shape[0], gen, shift, rotate, scale, p=p_affine)
    target = warp_labels(mask, theta)
    return blobby_mask(target, gen, p=p_blobby), target


def rough_sketch(sk: torch.Tensor, gen: torch.Generator | None, p: float = 1.0) -> torch.Tensor:
    """Hand-drawn look for edge maps (B, 1, H, W) in {0, 1}: thicker or
    thinner-looking strokes, dropped stretches, small smooth jitter and a few
    speckles. Applied per sample with probability ``p``."""
    b, _, h, w = sk.shape
    x = sk.float()
    thick = (_rand((b, 1, 1, 1), gen) < 0.3).float()
    x = thick * dilate(x, 3) + (1 - thick) * x
    # smooth displacement of up to ~1.5 px
    amp = 1.5 * 2 / h
    disp = low_freq_noise((b, 2, h, w), gen, cells=6) * amp * _rand((b, 1, 1, 1), gen)
    base = F.affine_grid(torch.eye(2, 3).expand(b, 2, 3), [b, 1, h, w], align_corners=False)
    x = F.grid_sample(x, base + disp.permute(0, 2, 3, 1), mode="nearest", padding_mode="zeros", align_corners=False)
    # drop stretches where smooth noise is below a random level (0..35% of lines)
    keep = low_freq_noise((b, 1, h, w), gen, cells=max(6, h // 8)) > (_rand((b, 1, 1, 1), gen, -1.0, -0.3))
    x = x * keep.float()
    speck = (_rand((b, 1, h, w), gen) < 0.002 * _rand((b, 1, 1, 1), gen)).float()
    x = torch.maximum(x, speck)
    use = (_rand((b, 1, 1, 1), gen) < p).float()
    return use * x + (1 - use) * sk.float()


def augment_sketch_pair(sk: torch.Tensor, gen: torch.Generator | None, p_affine: float = 0.5, p_rough: float = 0.5,
                        shift: float = 0.08, rotate: float = 12.0, scale: tuple[float, float] = (0.85, 1.15)
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) edge maps for sketch-AE training."""
    theta = random_affine(sk.shape[0], gen, shift, rotate, scale, p=p_affine)
    target = (warp(sk.float(), theta, mode="nearest", padding="zeros") > 0.5).float()
    return rough_sketch(target, gen, p=p_rough), target
