"""The BiSeNet face parser of zllrunning/face-parsing.PyTorch and its checkpoint.

Architecture (``model.py``, ``resnet.py`` of that repository), module names
as in its state dict:

* ``cp.resnet``: ResNet-18 (7x7/2 conv, BN, ReLU, 3x3/2 max-pool, four stages
  of two BasicBlocks, 64-128-256-512), returning the 1/8, 1/16 and 1/32 maps.
* ``cp`` (context path): global average of the 1/32 map through ``conv_avg``
  (1x1 ConvBNReLU 512->128) is added to ``arm32`` (attention refinement:
  ConvBNReLU 3x3 -> channel gate sigmoid(BN(1x1 conv(mean)))) of the 1/32 map,
  nearest-upsampled to 1/16 and ``conv_head32``; added to ``arm16`` of the
  1/16 map, nearest-upsampled to 1/8 and ``conv_head16``.
* ``ffm`` (feature fusion): concat(1/8 ResNet map, context 1/8) -> 1x1
  ConvBNReLU 256 -> ``x + x * sigmoid(conv2(relu(conv1(mean(x)))))``.
* heads ``conv_out`` (256->256->19), ``conv_out16``/``conv_out32``
  (128->64->19, training aids): ConvBNReLU 3x3 then a 1x1 conv, upsampled
  bilinearly (align_corners) to the input size. Inference uses ``conv_out``.

Checkpoint ``79999_iter.pth``: ``torch.save(net.state_dict())``, a bare state
dict (no wrapper), 19 classes in the order of its ``prepropess_data.py``:
background, then skin, l_brow, r_brow, l_eye, r_eye, eye_g, l_ear, r_ear,
ear_r, nose, mouth, u_lip, l_lip, neck, neck_l, cloth, hair, hat (later parts
painted over earlier ones). :class:`BiSeNetParser` reorders the logits to our
CelebAMask-HQ order (:data:`~mm2latent.common.palette.CLASS_NAMES`) and does
the input preparation of its ``test.py`` (512x512 bilinear resize, ImageNet
mean/std normalisation).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.checkpoint import load_state_strict
from ..common.errors import UserError
from ..common.palette import CLASS_INDEX, NUM_CLASSES
from .torch_files import read_torch_file, tensor_dict

#: the checkpoint's class order (index = its label), in our class names
BISENET_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
#: BISENET_TO_OURS[their label] = our label
BISENET_TO_OURS: tuple[int, ...] = tuple(CLASS_INDEX[n] for n in BISENET_CLASSES)
#: OURS_FROM_BISENET[our label] = their label (a permutation: logits[:, OURS_FROM_BISENET] is in our order)
OURS_FROM_BISENET: tuple[int, ...] = tuple(BISENET_CLASSES.index(n) for n in sorted(CLASS_INDEX, key=CLASS_INDEX.get))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 512
ARCH = "BiSeNet (face-parsing.PyTorch)"


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(r + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 64, 128, 256, 512)
        for i in range(1, 5):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(widths[i - 1], widths[i], stride),
                                                      BasicBlock(widths[i], widths[i])))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8, f16, f32 = self.resnet(x)
        avg = self.conv_avg(f32.mean(dim=(2, 3), keepdim=True))
        s32 = self.arm32(f32) + avg  # nearest upsampling of a 1x1 map is a broadcast
        up32 = self.conv_head32(F.interpolate(s32, size=f16.shape[-2:], mode="nearest"))
        s16 = self.arm16(f16) + up32
        up16 = self.conv_head16(F.interpolate(s16, size=f8.shape[-2:], mode="nearest"))
        return f8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat + feat * atten


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The network; ``forward`` returns the main logits in the checkpoint's class order."""

    def __init__(self, n_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor, aux: bool = False):
        f8, c8, c16 = self.cp(x)
        size = x.shape[-2:]
        out = F.interpolate(self.conv_out(self.ffm(f8, c8)), size=size, mode="bilinear", align_corners=True)
        if not aux:
            return out
        up = [F.interpolate(h(f), size=size, mode="bilinear", align_corners=True)
              for h, f in ((self.conv_out16, c8), (self.conv_out32, c16))]
        return out, up[0], up[1]


class BiSeNetParser(nn.Module):
    """BiSeNet with its input preparation, answering in our 19-class order.

    ``forward(images)`` -> logits (B, 19, H, W) in our class order at the
    input size; ``parse(images)`` -> labels (B, H, W), int64, our order.
    Images are (B, 3, H, W) RGB in [-1, 1]. ``config`` (a :class:`BiSeNetConfig`) and ``kind``
    make it a registry model (saved as kind ``bisenet_parser``, see :class:`StoredBiSeNetParser`).
    """

    kind = "bisenet_parser"

    def __init__(self, net: BiSeNet | None = None, input_size: int | None = INPUT_SIZE):
        super().__init__()
        self.net = net if net is not None else BiSeNet()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("order", torch.tensor(OURS_FROM_BISENET), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        x = (images.float() + 1) / 2
        s = self.input_size
        if s is not None and (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        logits = self.net((x - self.mean) / self.std)
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits[:, self.order]

    @torch.no_grad()
    def parse(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).argmax(dim=1)

    @property
    def config(self) -> "BiSeNetConfig":
        return BiSeNetConfig(self.input_size)


def bisenet_from_state_dict(obj: Any, what: str = "checkpoint") -> BiSeNet:
    """Build the network from a loaded ``79999_iter.pth`` state dict."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # tolerated: a re-saved {"state_dict": ...}
    sd = tensor_dict(obj, what)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # saved from DataParallel
    if "conv_out.conv_out.weight" not in sd or "cp.resnet.conv1.weight" not in sd:
        keys = sorted(sd)
        raise UserError(f"{what} is not a face-parsing.PyTorch BiSeNet state dict (no cp.resnet.conv1.weight / "
                        f"conv_out.conv_out.weight among {len(keys)} keys, first: {', '.join(keys[:4])})")
    n_classes = sd["conv_out.conv_out.weight"].shape[0]
    if n_classes != NUM_CLASSES:
        raise UserError(f"{what} predicts {n_classes} classes; the CelebAMask-HQ BiSeNet has {NUM_CLASSES}")
    net = BiSeNet(n_classes)
    for k in net.state_dict():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)  # absent in PyTorch < 0.4.1 files; unused in eval
    load_state_strict(net, sd, what, ARCH)
    return net


def load_bisenet(path: str | os.PathLike, device: torch.device | str = "cpu",
                 input_size: int | None = INPUT_SIZE) -> BiSeNetParser:
    """Load ``79999_iter.pth`` as a :class:`BiSeNetParser` (eval mode, our label order).

    Only tensors and plain containers are unpickled; a wrong or damaged file
    raises a one-line UserError. ``input_size`` is the size images are resized
    to before the network (512, as the model was trained; None: as given).
    """
    net = bisenet_from_state_dict(read_torch_file(path, "checkpoint"), f"checkpoint {path}")
    return BiSeNetParser(net, input_size).to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- our format

KIND_STORED = "bisenet_parser"


@dataclass(frozen=True)
class BiSeNetConfig:
    """What ``parser.json`` stores for a BiSeNet parser (kind ``bisenet_parser``)."""

    input_size: int | None = INPUT_SIZE  # images are resized to this before the network (None: as given)

    def __post_init__(self):
        if self.input_size is not None and (not isinstance(self.input_size, int) or self.input_size < 32):
            raise ValueError(f"input_size must be an integer >= 32 or None, not {self.input_size!r}")

    @property
    def size(self) -> int:
        """The side images are given at (what ``ControlEncoders`` and ``parse_image`` resize to)."""
        return self.input_size or INPUT_SIZE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "BiSeNetConfig":
        from .config import config_from_dict

        return config_from_dict(cls, d, legacy)


class StoredBiSeNetParser(BiSeNetParser):
    """:class:`BiSeNetParser` built from its config, as the registry builds models (kind
    ``bisenet_parser``); ``config.size`` is what callers resize images to, as for our own parser."""

    def __init__(self, cfg: BiSeNetConfig | None = None, net: BiSeNet | None = None):
        cfg = cfg if cfg is not None else BiSeNetConfig()
        super().__init__(net, cfg.input_size)

    @classmethod
    def from_parser(cls, parser: BiSeNetParser) -> "StoredBiSeNetParser":
        return cls(BiSeNetConfig(parser.input_size), parser.net).eval()
