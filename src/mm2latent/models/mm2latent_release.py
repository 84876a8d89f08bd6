"""The MM2Latent authors' released networks (Open-Debin/MM2Latent), read from their Lightning files.

Their repository (commit ``1d381a2c``) publishes two autoencoder checkpoints and the code of
three network families, all PyTorch Lightning modules saved by ``Trainer`` as ``.ckpt``:

- ``models/greyseg_encoder/used_epoch495_train0p00124_val0p00114.ckpt``: the **mask**
  autoencoder (their ``Autoencoder`` in ``models/greyseg_encoder/model_arch.py``). Its input
  is a one-channel *grey-level* mask: a PNG whose pixel is ``10 * label`` in the
  facer ``farl/celebm/448`` class order (``face_parsing/face_rgb2greyseg.py``), read with
  ``ToTensor`` (so ``10 * label / 255``) at 256 x 256 (nearest resize). Encoder: five blocks
  of [3x3 conv, LeakyReLU, 2x2 stride-2 conv, LeakyReLU] with channels 1-16-32-32-16-8, so a
  256-px mask gives an 8 x 8 x 8 map, flattened to the 512-d embedding
  (``modalities_encoding/greyseg2embed.py``). Decoder: five stride-2 transposed convs back to
  one channel, then a sigmoid.
- ``models/sketch_encoder/used_epoch458_train0p11285_val0p1277.ckpt``: the **sketch**
  autoencoder (``SketchAutoencoderFrameWork`` in ``models/sketch_encoder/sketch_autoencoder.py``).
  Its input is the first channel of a Canny edge PNG (edges 255 on 0, 256 x 256), read with
  ``ToTensor`` then ``Normalize(0, 250/255)``, i.e. ``pixel / 250``. Encoder: a bias-free 3x3
  conv to 16 + BatchNorm + activation, then five blocks of [3x3 conv, BN, act, 2x2 stride-2
  conv, BN, act] with channels 16-16-32-32-16-8 (512-d for 256 px, flattened). Decoder: five
  blocks of [stride-2 3x3 transposed conv, BN, act, 3x3 conv, BN, act], then a 1x1 conv to
  two logits (edge / no edge).
- **MappingNet** (``BiPathModel`` in ``models/text_seg2latent/models_arch.py`` and the identical
  ``models/text_sketch2latent/models_arch.py``): one network per pair of modalities, fed
  ``concat(FaRL text embedding (L2-normalised), mask or sketch embedding)``; BatchNorm1d on
  the 1024 inputs, dropout (p = 0.5), then 12 learning-rate-equalised linear layers of 512
  (weight ``N(0,1)`` scaled by ``1/sqrt(fan_in)`` at run time, stored as a sub-module
  ``weight.weight``), each followed by LeakyReLU(0.2). The output is one 512-d w, used by the
  e4e FFHQ generator as W (broadcast to every layer). Their MappingNet checkpoints
  (``epoch=267-...ckpt``, ``epoch=472-...ckpt``, named in ``demo/``) are *not* in the
  repository; the layout here follows the module code.

The state dict of each ``.ckpt`` is keyed by the LightningModule's attribute names
(``encoder.``/``decoder.`` for the autoencoders, ``map_fn.net.`` for MappingNet). Files are read
with the weights-only unpickler (:func:`.torch_files.read_torch_file`); the only extra names it
accepts are Lightning's hyper-parameter containers (``AttributeDict``, read as a plain dict, and
``argparse.Namespace``, turned into one), which construct nothing but dicts. Anything else that
would need a Python global is refused in one line, before anything from the file runs.

This is our own code written from the released architectures; no code of theirs is used.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.checkpoint import load_state_strict
from ..common.errors import UserError
from ..common.palette import CLASS_INDEX, NUM_CLASSES
from .torch_files import read_torch_file

# --------------------------------------------------------------------------- grey-level masks

#: Class names of facer's ``farl/celebm/448`` parser, in the order their grey levels encode
#: (grey = 10 * position). FaRL's CelebAMask-HQ loader pairs these with the dataset's part files.
RELEASE_GREY_CLASSES: tuple[str, ...] = (
    "background", "neck", "face", "cloth", "rr", "lr", "rb", "lb", "re", "le", "nose",
    "imouth", "llip", "ulip", "hair", "eyeg", "hat", "earr", "neckl",
)

#: Each of their names -> our CelebAMask-HQ class (``common/palette.py: CLASS_NAMES``). FaRL pairs
#: the dataset's ``l_ear, r_ear, l_brow, r_brow, l_eye, r_eye`` files with ``rr, lr, rb, lb, re, le``.
RELEASE_TO_OURS_NAMES: dict[str, str] = {
    "background": "background", "neck": "neck", "face": "skin", "cloth": "cloth",
    "rr": "l_ear", "lr": "r_ear", "rb": "l_brow", "lb": "r_brow", "re": "l_eye", "le": "r_eye",
    "nose": "nose", "imouth": "mouth", "llip": "l_lip", "ulip": "u_lip", "hair": "hair",
    "eyeg": "eye_g", "hat": "hat", "earr": "ear_r", "neckl": "neck_l",
}

#: Grey level step of their PNGs.
GREY_STEP = 10

_RELEASE_TO_OURS = np.array([CLASS_INDEX[RELEASE_TO_OURS_NAMES[n]] for n in RELEASE_GREY_CLASSES], dtype=np.uint8)
_OURS_TO_RELEASE = np.argsort(_RELEASE_TO_OURS).astype(np.uint8)


def grey_to_labels(grey: np.ndarray) -> np.ndarray:
    """Their grey-level mask (uint8, ``10 * facer label``) -> our (H, W) uint8 class-index map.

    A value that is not a multiple of 10 up to 180 (a resized or compressed PNG) is a UserError.
    """
    g = np.asarray(grey)
    if g.ndim == 3 and g.shape[-1] in (3, 4) and (g[..., :3] == g[..., :1]).all():
        g = g[..., 0]
    if g.ndim != 2:
        raise UserError(f"a grey-level mask must be a single-channel (H, W) image, got shape {g.shape}")
    if not np.issubdtype(g.dtype, np.integer):
        raise UserError(f"a grey-level mask must hold integers (0, 10, ..., 180), got {g.dtype}")
    bad = (g % GREY_STEP != 0) | (g < 0) | (g > GREY_STEP * (NUM_CLASSES - 1))
    if bad.any():
        v = int(g[bad].flat[0])
        raise UserError(f"grey-level mask value {v} is not one of 0, 10, ..., {GREY_STEP * (NUM_CLASSES - 1)} "
                        f"({int(bad.sum())} such pixels; was it resized or saved lossily?)")
    return _RELEASE_TO_OURS[(g // GREY_STEP).astype(np.intp)]


def labels_to_grey(labels: np.ndarray) -> np.ndarray:
    """Our (H, W) class-index map -> their grey-level mask (uint8, ``10 * facer label``)."""
    m = np.asarray(labels)
    if m.ndim != 2 or not np.issubdtype(m.dtype, np.integer):
        raise UserError(f"a label map must be an (H, W) integer array, got shape {m.shape} of {m.dtype}")
    if m.size and (int(m.min()) < 0 or int(m.max()) >= NUM_CLASSES):
        raise UserError(f"label map value out of range 0..{NUM_CLASSES - 1}")
    return (_OURS_TO_RELEASE[m.astype(np.intp)].astype(np.uint8) * GREY_STEP).astype(np.uint8)


def _as_batch(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise UserError(f"expected an (H, W) or (N, H, W) image, got shape {tuple(t.shape)}")
    return t


def _resize_nearest(t: torch.Tensor, size: int) -> torch.Tensor:
    # 'nearest-exact' samples pixel centres as PIL's NEAREST does (their torchvision Resize on PIL).
    if t.shape[-2:] == (size, size):
        return t
    return F.interpolate(t, size=(size, size), mode="nearest-exact")


def mask_input(labels: np.ndarray | torch.Tensor, size: int = 256) -> torch.Tensor:
    """Our class-index map(s) -> their mask-AE input: (N, 1, size, size), ``10 * facer label / 255``."""
    t = _as_batch(labels)
    grey = np.stack([labels_to_grey(m) for m in t.cpu().numpy()])
    x = torch.from_numpy(grey).float()[:, None] / 255.0
    return _resize_nearest(x, size)


def sketch_input(sketch: np.ndarray | torch.Tensor, size: int = 256) -> torch.Tensor:
    """An edge map (uint8 0..255 with edges bright, or bool) -> their sketch-AE input (N, 1, size, size).

    Their loader reads the PNG with ``ToTensor`` and ``Normalize(0, 250/255)``: ``pixel / 250``.
    """
    t = _as_batch(sketch)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8) * 255
    if t.dtype != torch.uint8:
        raise UserError(f"a sketch must be a uint8 (0..255, edges bright) or bool image, got {t.dtype}")
    x = t.float()[:, None] / 250.0
    return _resize_nearest(x, size)


# --------------------------------------------------------------------------- mask autoencoder


@dataclass
class ReleaseMaskAEConfig:
    """Their grey-level mask autoencoder (``models/greyseg_encoder/model_arch.py: Autoencoder``)."""

    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 32, 16, 8)
    negative_slope: float = 0.01  # nn.LeakyReLU's default
    image_size: int = 256


class ReleaseMaskAE(nn.Module):
    """``encoder``: 5 x [Conv3x3, LReLU, Conv2x2/2, LReLU]; ``decoder``: 5 x ConvT3x3/2 with LReLU, sigmoid."""

    def __init__(self, cfg: ReleaseMaskAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ReleaseMaskAEConfig()
        s = cfg.negative_slope
        blocks, c = [], cfg.in_channels
        for out in cfg.channels:
            blocks.append(nn.Sequential(
                nn.Conv2d(c, out, 3, 1, 1), nn.LeakyReLU(s),
                nn.Conv2d(out, out, 2, 2, 0), nn.LeakyReLU(s),
            ))
            c = out
        self.encoder = nn.Sequential(*blocks)
        ups = list(reversed(cfg.channels[:-1])) + [cfg.in_channels]
        layers: list[nn.Module] = []
        for i, out in enumerate(ups):
            layers.append(nn.ConvTranspose2d(c, out, 3, 2, 1, output_padding=1))
            layers.append(nn.LeakyReLU(s) if i < len(ups) - 1 else nn.Sigmoid())
            c = out
        self.decoder = nn.Sequential(*layers)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise UserError(f"the release mask autoencoder takes (N, {self.cfg.in_channels}, H, W) grey-level "
                            f"masks, got shape {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) grey-level input (see :func:`mask_input`) -> (N, D) flattened code (512 at 256 px)."""
        self._check(x)
        return self.encoder(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.decoder(self.encoder(x))


# --------------------------------------------------------------------------- sketch autoencoder


@dataclass
class ReleaseSketchAEConfig:
    """Their sketch autoencoder (``models/sketch_encoder/sketch_autoencoder.py``)."""

    stem: int = 16
    channels: tuple[int, ...] = (16, 32, 32, 16, 8)
    decoder_channels: tuple[int, ...] = (16, 32, 32, 16, 16)
    out_classes: int = 2
    act: str = "lrelu"  # their act_type: "lrelu" (LeakyReLU 0.01) or "silu"
    image_size: int = 256


def _act(kind: str) -> nn.Module:
    if kind == "lrelu":
        return nn.LeakyReLU()
    if kind == "silu":
        return nn.SiLU()
    raise UserError(f"release sketch autoencoder: act_type must be 'lrelu' or 'silu', not {kind!r}")


class _SketchBlock(nn.Module):
    """conv1 -> bn1 -> act -> conv2 -> bn2 -> act (encoder: 3x3 then 2x2/2; decoder: ConvT3x3/2 then 3x3)."""

    def __init__(self, cin: int, cout: int, mode: str, act: str):
        super().__init__()
        if mode == "encoder":
            self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 2, 2, 0, bias=False)
        else:
            self.conv1 = nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class _SketchEncoder(nn.Module):
    def __init__(self, cfg: ReleaseSketchAEConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(1, cfg.stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem)
        self.act = _act(cfg.act)
        c = cfg.stem
        for i, out in enumerate(cfg.channels, 1):
            setattr(self, f"naivenet{i}", _SketchBlock(c, out, "encoder", cfg.act))
            c = out
        self.n = len(cfg.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        for i in range(1, self.n + 1):
            x = getattr(self, f"naivenet{i}")(x)
        return x


class _SketchDecoder(nn.Module):
    def __init__(self, cfg: ReleaseSketchAEConfig):
        super().__init__()
        c = cfg.channels[-1]
        for i, out in enumerate(cfg.decoder_channels, 1):
            setattr(self, f"naivenet{i}", _SketchBlock(c, out, "decoder", cfg.act))
            c = out
        self.n = len(cfg.decoder_channels)
        self.final_conv1 = nn.Conv2d(c, cfg.out_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n + 1):
            x = getattr(self, f"naivenet{i}")(x)
        return self.final_conv1(x)


class ReleaseSketchAE(nn.Module):
    """Their ``SketchAutoencoderFrameWork``: ``encoder`` / ``decoder`` (decoder gives 2-class logits)."""

    def __init__(self, cfg: ReleaseSketchAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ReleaseSketchAEConfig()
        self.encoder = _SketchEncoder(cfg)
        self.decoder = _SketchDecoder(cfg)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 1:
            raise UserError(f"the release sketch autoencoder takes (N, 1, H, W) edge maps, got shape {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) input (see :func:`sketch_input`) -> (N, D) flattened code (512 at 256 px)."""
        self._check(x)
        return self.encoder(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.decoder(self.encoder(x))


# --------------------------------------------------------------------------- MappingNet


@dataclass
class ReleaseMappingNetConfig:
    """Their ``BiPathMappingNet``: [text ; mask-or-sketch] -> BN -> dropout -> 12 x (EqLinear, LReLU 0.2)."""

    text_dim: int = 512
    other_dim: int = 512
    features: int = 512
    n_layers: int = 12  # their 1 input layer + n_layers=11 hidden ones
    dropout: float = 0.5  # nn.Dropout's default
    negative_slope: float = 0.2


class ReleaseEqualLinear(nn.Module):
    """Linear layer with the weight stored N(0,1)-scale and multiplied by 1/sqrt(fan_in) at run time."""

    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin))
        self.bias = nn.Parameter(torch.zeros(fout))
        self.scale = 1.0 / math.sqrt(fin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class ReleaseMappingNet(nn.Module):
    """``net``: Sequential(BatchNorm1d, Dropout, EqLinear, LReLU, EqLinear, LReLU, ...); output one w."""

    def __init__(self, cfg: ReleaseMappingNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ReleaseMappingNetConfig()
        d = cfg.text_dim + cfg.other_dim
        layers: list[nn.Module] = [nn.BatchNorm1d(d), nn.Dropout(cfg.dropout)]
        for i in range(cfg.n_layers):
            layers += [ReleaseEqualLinear(d if i == 0 else cfg.features, cfg.features), nn.LeakyReLU(cfg.negative_slope)]
        self.net = nn.Sequential(*layers)

    def forward(self, text: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """FaRL text embedding (L2-normalised, N x text_dim) and mask/sketch code (N x other_dim) -> w (N x 512)."""
        if text.ndim != 2 or other.ndim != 2 or text.shape[1] != self.cfg.text_dim or other.shape[1] != self.cfg.other_dim:
            raise UserError(f"the release MappingNet takes (N, {self.cfg.text_dim}) text and (N, {self.cfg.other_dim}) "
                            f"mask/sketch embeddings, got {tuple(text.shape)} and {tuple(other.shape)}")
        return self.net(torch.cat([text, other], dim=1))


# --------------------------------------------------------------------------- reading Lightning files


class _Namespace:
    """Stand-in that receives a pickled ``argparse.Namespace``'s attributes (made a dict after loading)."""


#: The only globals allowed beyond torch's weights-only set: Lightning's hyper-parameter containers.
#: ``AttributeDict`` (a dict subclass) is built as a plain ``dict``; a Namespace as :class:`_Namespace`.
_LIGHTNING_CONTAINERS = [
    (dict, "lightning_fabric.utilities.data.AttributeDict"),
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (_Namespace, "argparse.Namespace"),
]


def _plain(obj: Any) -> Any:
    if isinstance(obj, _Namespace):
        return {k: _plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, argparse.Namespace):  # pragma: no cover - never produced by the reader
        return {k: _plain(v) for k, v in vars(obj).items()}
    if type(obj) is dict:
        return {k: _plain(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_plain(v) for v in obj]
    if type(obj) is tuple:
        return tuple(_plain(v) for v in obj)
    return obj


def read_lightning_checkpoint(path: str | os.PathLike, what: str = "Lightning checkpoint") -> dict[str, Any]:
    """A PyTorch Lightning ``.ckpt`` as plain containers: at least ``state_dict`` ({name: tensor}).

    Weights-only unpickling plus Lightning's hyper-parameter containers; a UserError (one line)
    for anything else, a damaged file, or a file that is not a Lightning checkpoint.
    """
    with torch.serialization.safe_globals(_LIGHTNING_CONTAINERS):
        obj = read_torch_file(path, what)
    obj = _plain(obj)
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        found = f"keys {', '.join(map(str, list(obj)[:5]))}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise UserError(f"{what} {path} is not a PyTorch Lightning checkpoint (no 'state_dict'; found {found})")
    sd = obj["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise UserError(f"{what} {path}: 'state_dict' is not a mapping of names to tensors")
    out = dict(obj)
    out["state_dict"] = dict(sd)
    hp = out.get("hyper_parameters")
    if hp is not None and not isinstance(hp, Mapping):
        raise UserError(f"{what} {path}: 'hyper_parameters' is a {type(hp).__name__}, not a mapping")
    return out


def _prefixed(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.startswith(prefixes)}


def load_release_autoencoder(path: str | os.PathLike, kind: str = "mask") -> ReleaseMaskAE | ReleaseSketchAE:
    """Their mask (``kind="mask"``, greyseg) or sketch autoencoder ``.ckpt``, in eval mode, frozen.

    ``.encode(x)`` gives their 512-d embedding for a 256-px input made by :func:`mask_input` /
    :func:`sketch_input`.
    """
    if kind not in ("mask", "sketch"):
        raise UserError(f"release autoencoder kind must be 'mask' or 'sketch', not {kind!r}")
    what = f"MM2Latent release {kind} autoencoder"
    ck = read_lightning_checkpoint(path, what)
    sd = _prefixed(ck["state_dict"], ("encoder.", "decoder."))
    hp = ck.get("hyper_parameters") or {}
    if kind == "mask":
        model: nn.Module = ReleaseMaskAE()
        arch = "release grey-level mask autoencoder (greyseg_encoder Autoencoder)"
    else:
        model = ReleaseSketchAE(ReleaseSketchAEConfig(act=str(hp.get("act_type", "lrelu"))))
        arch = "release sketch autoencoder (SketchAutoencoderFrameWork)"
    extra = sorted(set(ck["state_dict"]) - set(sd))
    if extra:
        raise UserError(f"{what} {path} does not match the {arch} architecture: unexpected tensor(s) "
                        f"(e.g. {', '.join(extra[:3])})")
    load_state_strict(model, sd, f"{what} {path}", arch)
    return model.eval().requires_grad_(False)


def load_release_mapping_net(path: str | os.PathLike, text_dim: int = 512) -> ReleaseMappingNet:
    """Their MappingNet ``.ckpt`` (``BiPathModel``: text + mask, or text + sketch), eval mode, frozen.

    The input width comes from the file (its BatchNorm); ``text_dim`` says how much of it is the
    FaRL text embedding (512 in their code).
    """
    what = "MM2Latent release MappingNet"
    ck = read_lightning_checkpoint(path, what)
    raw = ck["state_dict"]
    sd: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if not k.startswith("map_fn.net."):
            raise UserError(f"{what} {path} does not match the release BiPathMappingNet: unexpected tensor {k!r}")
        k = k[len("map_fn."):]
        if k.endswith(".weight.weight"):  # their EqualizedWeight sub-module
            k = k[: -len(".weight")]
        sd[k] = v
    bn = sd.get("net.0.running_mean")
    if bn is None or bn.ndim != 1:
        raise UserError(f"{what} {path} does not match the release BiPathMappingNet: no input BatchNorm "
                        "(map_fn.net.0.running_mean)")
    width = int(bn.shape[0])
    if not 0 < text_dim < width:
        raise UserError(f"{what} {path}: text_dim {text_dim} does not fit its {width} inputs")
    lin = sorted(int(k.split(".")[1]) for k in sd if k.endswith(".bias") and k != "net.0.bias")
    first = sd.get("net.2.weight")
    if first is None or first.ndim != 2:
        raise UserError(f"{what} {path} does not match the release BiPathMappingNet: no first linear layer "
                        "(map_fn.net.2.weight.weight)")
    cfg = ReleaseMappingNetConfig(text_dim=text_dim, other_dim=width - text_dim, features=int(first.shape[0]),
                                  n_layers=len(lin))
    model = ReleaseMappingNet(cfg)
    load_state_strict(model, sd, f"{what} {path}", "release BiPathMappingNet")
    return model.eval().requires_grad_(False)
