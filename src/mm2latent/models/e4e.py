"""The e4e and pSp image encoders and their published checkpoints.

Architecture, as in omertov/encoder4editing (``models/encoders/helpers.py``,
``models/encoders/psp_encoders.py``; eladrich/pixel2style2pixel has the same
modules for pSp):

* ``input_layer``: 3x3 conv (no bias) -> BatchNorm -> PReLU, 64 channels, stride 1.
* ``body``: the 50-layer IR-SE backbone of ArcFace, 24 ``bottleneck_IR_SE``
  units in four stages of 3, 4, 14 and 3 units with widths 64, 128, 256, 512;
  the first unit of each stage has stride 2. A unit is
  ``res_layer`` = BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN -> SE(1/16)
  plus ``shortcut_layer`` = 1x1 max-pool (subsampling) when the width stays,
  else 1x1 conv (stride) -> BN.
* the outputs of units 6, 20 and 23 (c1: 128 ch at 1/4, c2: 256 ch at 1/8,
  c3: 512 ch at 1/16 of the input) feed a small FPN: ``p2 = up(c3) +
  latlayer1(c2)``, ``p1 = up(p2) + latlayer2(c1)`` (bilinear, align_corners).
* ``styles``: one ``GradualStyleBlock`` per W+ entry, ``n_styles = 2*log2(R)-2``
  for an R-pixel generator (18 at 1024). Blocks 0-2 read c3, 3-6 read p2,
  7+ read p1; each is log2(16|32|64) stride-2 3x3 convs with LeakyReLU(0.01)
  down to 1x1 at 256px input, then an equalised linear layer.
* **e4e** (``Encoder4Editing``, inference stage): ``w = styles[0](c3)`` is
  repeated over all entries and entry i gets ``+ styles[i](features)``.
  **pSp** (``GradualStyleEncoder``): entry i is ``styles[i](features)``.

Both add the checkpoint's ``latent_avg`` (the generator's mean w, one row per
entry) when trained with ``start_from_latent_avg`` (:meth:`E4EEncoder.encode`).
Input: RGB in [-1, 1] at 256x256 (their ``Resize(256) + Normalize(0.5, 0.5)``).

Checkpoint (``e4e_ffhq_encode.pt``, ``psp_ffhq_encode.pt``): a ``torch.save``
dict with ``state_dict`` (the pSp wrapper's: ``encoder.*`` and ``decoder.*``,
the decoder a rosinality StyleGAN2 generator), ``opts`` (a plain dict of the
training options; ``encoder_type`` tells e4e from pSp) and ``latent_avg``.
:func:`load_e4e` reads it with the weights-only unpickler and infers the
sizes from the tensor shapes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.checkpoint import load_state_strict
from ..common.errors import UserError
from .official import generator_from_rosinality, rosinality_to_ours
from .stylegan2 import EqualLinear, Generator
from .torch_files import read_torch_file, tensor_dict

KIND_E4E = "e4e"
KIND_PSP = "psp"
#: ``opts["encoder_type"]`` of the two projects -> our kind
ENCODER_TYPES = {"Encoder4Editing": KIND_E4E, "GradualStyleEncoder": KIND_PSP}
#: units per stage of the 50-layer IR backbone (the only depth whose FPN taps 6/20/23 are stage ends)
IR50_UNITS = (3, 4, 14, 3)
COARSE_END, MIDDLE_END = 3, 7
#: feature-map size (at 256px input) each style group is pooled from: log2 of it stride-2 convs
STYLE_SPATIAL = (16, 32, 64)
ARCH = "e4e/pSp IR-SE-50"


@dataclass(frozen=True)
class E4EConfig:
    """Encoder shape. The defaults are the published FFHQ 1024 models."""

    kind: str = KIND_E4E  # "e4e" (Encoder4Editing) or "psp" (GradualStyleEncoder)
    resolution: int = 1024  # the generator's; n_styles = 2*log2(resolution) - 2
    in_channels: int = 3
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    style_dim: int = 512
    se: bool = True  # bottleneck_IR_SE (True) or bottleneck_IR
    se_reduction: int = 16
    input_size: int = 256  # what encode() resizes to

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.kind not in (KIND_E4E, KIND_PSP):
            raise ValueError(f"kind must be {KIND_E4E!r} or {KIND_PSP!r}, not {self.kind!r}")
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, not {self.resolution}")
        if len(self.widths) != 4:
            raise ValueError("widths must list the four stage widths")
        if self.se and any(w % self.se_reduction for w in self.widths):
            raise ValueError(f"stage widths {self.widths} must be multiples of se_reduction {self.se_reduction}")

    @property
    def n_styles(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    @property
    def taps(self) -> tuple[int, int, int]:
        """Body indices of c1, c2, c3 (ends of stages 2, 3, 4): (6, 20, 23)."""
        ends = [sum(IR50_UNITS[: i + 1]) - 1 for i in range(4)]
        return ends[1], ends[2], ends[3]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


def style_spatial(i: int) -> int:
    return STYLE_SPATIAL[0] if i < COARSE_END else STYLE_SPATIAL[1] if i < MIDDLE_END else STYLE_SPATIAL[2]


# --------------------------------------------------------------------------- modules


class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(relu(fc1(mean(x))))), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class IRUnit(nn.Module):
    """One ``bottleneck_IR(_SE)`` unit (pre-activation residual block)."""

    def __init__(self, cin: int, cout: int, stride: int, se: bool, reduction: int):
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        layers: list[nn.Module] = [
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if se:
            layers.append(SqueezeExcite(cout, reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """Stride-2 convs + LeakyReLU(0.01) down to 1x1, then an equalised linear layer."""

    def __init__(self, cin: int, cout: int, spatial: int):
        super().__init__()
        n = int(math.log2(spatial))
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"style head ended at {tuple(x.shape[-2:])}, not 1x1: the input is too large "
                             "(e4e/pSp expect 256x256; use encode(), which resizes)")
        return self.linear(x.flatten(1))


class E4EEncoder(nn.Module):
    """IR-SE-50 + FPN + GradualStyle heads: image -> W+ offsets (B, n_styles, style_dim).

    ``forward`` is the raw encoder (``encoder(x)`` of e4e/pSp); :meth:`encode`
    adds ``latent_avg`` as their ``pSp.forward`` does.
    """

    def __init__(self, cfg: E4EConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else E4EConfig(**kwargs)
        self.cfg = cfg
        w = cfg.widths
        self.input_layer = nn.Sequential(nn.Conv2d(cfg.in_channels, w[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(w[0]), nn.PReLU(w[0]))
        units: list[nn.Module] = []
        cin = w[0]
        for width, n in zip(w, IR50_UNITS):
            for u in range(n):
                units.append(IRUnit(cin, width, 2 if u == 0 else 1, cfg.se, cfg.se_reduction))
                cin = width
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(GradualStyleBlock(w[3], cfg.style_dim, style_spatial(i))
                                    for i in range(cfg.n_styles))
        self.latlayer1 = nn.Conv2d(w[2], w[3], 1)
        self.latlayer2 = nn.Conv2d(w[1], w[3], 1)
        #: added by encode(); not part of the state dict (the checkpoint stores it beside it)
        self.register_buffer("latent_avg", torch.zeros(cfg.n_styles, cfg.style_dim), persistent=False)
        self.add_latent_avg = True

    @property
    def n_styles(self) -> int:
        return self.cfg.n_styles

    def backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c1, c2, c3): the outputs of body units 6, 20 and 23."""
        t1, t2, t3 = self.cfg.taps
        x = self.input_layer(x)
        feats = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (t1, t2, t3):
                feats[i] = x
        return feats[t1], feats[t2], feats[t3]

    @staticmethod
    def _upsample_add(x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.backbone(x)
        pyramid: dict[str, torch.Tensor] = {"c3": c3}

        def features(i: int) -> torch.Tensor:  # built lazily, in the order the published code does
            if i >= COARSE_END and "p2" not in pyramid:
                pyramid["p2"] = self._upsample_add(c3, self.latlayer1(c2))
            if i >= MIDDLE_END and "p1" not in pyramid:
                pyramid["p1"] = self._upsample_add(pyramid["p2"], self.latlayer2(c1))
            return pyramid["c3" if i < COARSE_END else "p2" if i < MIDDLE_END else "p1"]

        if self.cfg.kind == KIND_E4E:
            w0 = self.styles[0](c3)
            out = [w0] + [w0 + self.styles[i](features(i)) for i in range(1, self.n_styles)]
        else:
            out = [self.styles[i](features(i)) for i in range(self.n_styles)]
        return torch.stack(out, dim=1)

    def encode(self, images: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> W+ (B, n_styles, style_dim).

        With ``resize`` the images are first resized to ``cfg.input_size``
        (256, antialiased bilinear, like their PIL ``Resize``).
        """
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected images (B, {self.cfg.in_channels}, H, W), got {tuple(images.shape)}")
        s = self.cfg.input_size
        if resize and tuple(images.shape[-2:]) != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        codes = self(images)
        return codes + self.latent_avg if self.add_latent_avg else codes


# --------------------------------------------------------------------------- checkpoint


def _indices(sd: dict[str, torch.Tensor], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _shape(sd: dict[str, torch.Tensor], key: str, ndim: int, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise UserError(f"{what} does not match the {ARCH} architecture: missing tensor encoder.{key}")
    shape = tuple(sd[key].shape)
    if len(shape) != ndim:
        raise UserError(f"{what}: tensor encoder.{key} has shape {shape}, expected {ndim} dimensions")
    return shape


def encoder_config_from_state_dict(sd: dict[str, torch.Tensor], kind: str, what: str = "checkpoint") -> E4EConfig:
    """Infer the :class:`E4EConfig` from the encoder's tensor shapes (``encoder.`` prefix removed)."""
    w0, cin = _shape(sd, "input_layer.0.weight", 4, what)[:2]
    units = _indices(sd, "body.")
    if units != list(range(sum(IR50_UNITS))):
        raise UserError(f"{what}: the backbone has {len(units)} units; only the 50-layer IR-SE backbone of "
                        f"e4e/pSp ({sum(IR50_UNITS)} units) is supported")
    starts = [sum(IR50_UNITS[:i]) for i in range(4)]
    widths = tuple(_shape(sd, f"body.{s}.res_layer.1.weight", 4, what)[0] for s in starts)
    if widths[0] != w0:
        raise UserError(f"{what}: input layer has {w0} channels but the first stage {widths[0]}")
    se = "body.0.res_layer.5.fc1.weight" in sd
    reduction = 16
    if se:
        squeezed = _shape(sd, "body.0.res_layer.5.fc1.weight", 4, what)[0]
        if squeezed == 0 or widths[0] % squeezed:
            raise UserError(f"{what}: squeeze-excite width {squeezed} does not divide {widths[0]}")
        reduction = widths[0] // squeezed
    n_styles = len(_indices(sd, "styles."))
    if n_styles == 0:
        _shape(sd, "styles.0.linear.weight", 2, what)
    style_dim = _shape(sd, "styles.0.linear.weight", 2, what)[0]
    log2 = (n_styles + 2) / 2
    if log2 != int(log2) or log2 < 2:
        raise UserError(f"{what}: {n_styles} style heads is not 2*log2(R)-2 for any generator size R")
    try:
        return E4EConfig(kind=kind, resolution=2 ** int(log2), in_channels=cin, widths=widths,
                         style_dim=style_dim, se=se, se_reduction=reduction)
    except ValueError as e:
        raise UserError(f"{what}: {e}") from None


def _kind_from(opts: dict | None, kind: str | None, what: str) -> str:
    if kind is not None:
        if kind not in (KIND_E4E, KIND_PSP):
            raise UserError(f"unknown encoder kind {kind!r} (use {KIND_E4E!r} or {KIND_PSP!r})")
        return kind
    et = (opts or {}).get("encoder_type")
    if et is None:
        raise UserError(f"{what} does not say which encoder it holds (no opts['encoder_type']); "
                        f"give the kind ({KIND_E4E!r} or {KIND_PSP!r}) explicitly")
    if et not in ENCODER_TYPES:
        raise UserError(f"{what} holds a {et!r} encoder; supported: {', '.join(ENCODER_TYPES)}")
    return ENCODER_TYPES[et]


def _latent_avg(value: Any, n: int, d: int, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise UserError(f"{what}: latent_avg is not a float tensor")
    t = value.detach().float()
    if tuple(t.shape) in ((d,), (1, d)):
        t = t.reshape(1, d).expand(n, d)
    if tuple(t.shape) != (n, d):
        raise UserError(f"{what}: latent_avg has shape {tuple(value.shape)}, expected ({n}, {d}) or ({d},)")
    if not torch.isfinite(t).all():
        raise UserError(f"{what}: latent_avg holds non-finite values")
    return t.contiguous().clone()


def e4e_from_checkpoint(ckpt: Any, what: str = "checkpoint",
                        kind: str | None = None) -> tuple[E4EEncoder, Generator, torch.Tensor]:
    """Build (encoder, generator, latent_avg) from a loaded e4e/pSp checkpoint dict."""
    if not isinstance(ckpt, dict):
        raise UserError(f"{what} is not an e4e/pSp checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    if "state_dict" not in ckpt:
        hint = " (it looks like a StyleGAN2 generator; use `mm2latent convert`)" if "g_ema" in ckpt else ""
        raise UserError(f"{what} is not an e4e/pSp checkpoint: no 'state_dict' entry (top-level keys: "
                        f"{', '.join(map(str, list(ckpt)[:8]))}){hint}")
    sd = tensor_dict(ckpt["state_dict"], f"{what}: state_dict")
    opts = ckpt.get("opts")
    if opts is not None and not isinstance(opts, dict):
        raise UserError(f"{what}: opts is a {type(opts).__name__}, not a dict")
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    other = [k for k in sd if not k.startswith(("encoder.", "decoder."))]
    if not enc:
        raise UserError(f"{what} has no encoder.* tensors in its state_dict; is it an e4e/pSp checkpoint?")
    if not dec:
        raise UserError(f"{what} has no decoder.* tensors (the StyleGAN2 generator) in its state_dict")
    if other:
        raise UserError(f"{what}: state_dict has tensors outside encoder.*/decoder.* (e.g. {', '.join(other[:3])})")
    opts = opts or {}
    kind = _kind_from(opts, kind, what)
    if opts.get("learn_in_w"):
        raise UserError(f"{what} was trained with learn_in_w (a single w); only W+ encoders are supported")
    cfg = encoder_config_from_state_dict(enc, kind, what)

    # the decoder: a rosinality generator; its w_avg is the checkpoint's latent_avg (a repeated row)
    dec_cfg, _ = rosinality_to_ours(dec, f"{what} (decoder)")  # names and sizes only, nothing allocated
    if dec_cfg.resolution != cfg.resolution or dec_cfg.num_ws != cfg.n_styles:
        raise UserError(f"{what}: the encoder has {cfg.n_styles} style heads (a {cfg.resolution}px generator) but "
                        f"the decoder is {dec_cfg.resolution}px with {dec_cfg.num_ws} ws")
    if dec_cfg.w_dim != cfg.style_dim:
        raise UserError(f"{what}: the encoder outputs {cfg.style_dim}-d styles but the decoder's w has "
                        f"{dec_cfg.w_dim}")
    avg_raw = ckpt.get("latent_avg")
    latent_avg = _latent_avg(avg_raw, cfg.n_styles, cfg.style_dim, what) if avg_raw is not None else None
    g_ckpt: dict[str, Any] = {"g_ema": dec}
    if latent_avg is not None:
        g_ckpt["latent_avg"] = latent_avg.mean(dim=0)
    G = generator_from_rosinality(g_ckpt, f"{what} (decoder)", key="g_ema")
    for key in ("stylegan_size", "output_size"):
        if isinstance(opts.get(key), int) and opts[key] != cfg.resolution:
            raise UserError(f"{what}: opts[{key!r}] = {opts[key]} but the networks are {cfg.resolution}px")
    if isinstance(opts.get("input_nc"), int) and opts["input_nc"] != cfg.in_channels:
        raise UserError(f"{what}: opts['input_nc'] = {opts['input_nc']} but the input layer takes "
                        f"{cfg.in_channels} channels")

    # the encoder: allocate without initialising (true size is ~270M parameters), then copy strictly
    for k in [k for k in _meta_state_keys(cfg) if k.endswith("num_batches_tracked") and k not in enc]:
        enc[k] = torch.zeros((), dtype=torch.long)  # checkpoints from PyTorch < 0.4.1 lack these counters
    with torch.device("meta"):
        skeleton = E4EEncoder(cfg)
    encoder = skeleton.to_empty(device="cpu")
    load_state_strict(encoder, enc, f"{what} (encoder)", ARCH)
    add = opts.get("start_from_latent_avg")
    encoder.add_latent_avg = bool(add) if add is not None else latent_avg is not None
    if latent_avg is None:
        latent_avg = G.w_avg.detach().reshape(1, -1).repeat(cfg.n_styles, 1)  # what e4e computes (mean_latent)
    encoder.latent_avg = latent_avg.clone()
    return encoder.eval().requires_grad_(False), G, latent_avg


def _meta_state_keys(cfg: E4EConfig) -> list[str]:
    with torch.device("meta"):
        return list(E4EEncoder(cfg).state_dict())


def load_e4e(path: str | os.PathLike, kind: str | None = None,
             device: torch.device | str = "cpu") -> tuple[E4EEncoder, Generator, torch.Tensor]:
    """Load an e4e (or pSp) checkpoint: ``(encoder, generator, latent_avg)``, all in eval mode.

    ``encoder.encode(images)`` maps images in [-1, 1] to W+ (``encoder(x) +
    latent_avg``) for ``generator.synthesis``. ``kind`` ("e4e"/"psp")
    overrides ``opts['encoder_type']``. Only tensors and plain containers are
    unpickled; a wrong or damaged file raises a one-line UserError.
    """
    what = f"checkpoint {path}"
    ckpt = read_torch_file(path, "checkpoint")
    encoder, G, latent_avg = e4e_from_checkpoint(ckpt, what, kind)
    return encoder.to(device), G.to(device), latent_avg.to(device)


# --------------------------------------------------------------------------- our format

KIND_STORED = "e4e_encoder"


@dataclass(frozen=True)
class E4EImageEncoderConfig:
    """What ``e4e_encoder.json`` stores: the encoder's shape (:class:`E4EConfig` as a dict) and
    whether :meth:`E4EImageEncoder.encode` adds ``latent_avg`` (their ``start_from_latent_avg``)."""

    encoder: dict
    add_latent_avg: bool = True

    def __post_init__(self):
        object.__setattr__(self, "encoder", E4EConfig(**dict(self.encoder)).to_dict())  # validated, normalised

    @property
    def e4e(self) -> E4EConfig:
        return E4EConfig(**self.encoder)

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": dict(self.encoder), "add_latent_avg": bool(self.add_latent_avg)}

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "E4EImageEncoderConfig":
        from .config import config_from_dict

        return config_from_dict(cls, d, legacy)


class E4EImageEncoder(nn.Module):
    """An e4e/pSp encoder in our safetensors + JSON format (kind ``e4e_encoder``, registry
    :func:`~mm2latent.models.registry.model_classes`): the :class:`E4EEncoder` plus its
    ``latent_avg`` as a stored tensor. ``encode(images in [-1, 1])`` -> W+ (B, n_styles, style_dim),
    as :meth:`E4EEncoder.encode` of the checkpoint it came from."""

    kind = KIND_STORED

    def __init__(self, cfg: E4EImageEncoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = E4EEncoder(cfg.e4e)
        self.encoder.add_latent_avg = False  # added here, from the stored buffer
        self.register_buffer("latent_avg", torch.zeros(cfg.e4e.n_styles, cfg.e4e.style_dim))

    @classmethod
    def from_encoder(cls, encoder: E4EEncoder) -> "E4EImageEncoder":
        """Wrap a loaded encoder (:func:`load_e4e`); its weights are shared, not copied."""
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.config = E4EImageEncoderConfig(encoder.cfg.to_dict(), bool(encoder.add_latent_avg))
        out.encoder = encoder
        out.register_buffer("latent_avg", encoder.latent_avg.detach().clone().float())
        return out

    @property
    def n_styles(self) -> int:
        return self.config.e4e.n_styles

    @property
    def style_dim(self) -> int:
        return self.config.e4e.style_dim

    def encode(self, images: torch.Tensor, resize: bool = True) -> torch.Tensor:
        add = self.encoder.add_latent_avg
        self.encoder.add_latent_avg = False
        try:
            codes = self.encoder.encode(images, resize=resize)
        finally:
            self.encoder.add_latent_avg = add
        return codes + self.latent_avg if self.config.add_latent_avg else codes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)
