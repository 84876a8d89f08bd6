"""The FID Inception-v3 network (the TensorFlow graph of 2015-12-05 that FID is defined with).

The published PyTorch port of those weights (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``)
is a bare ``state_dict`` of torchvision's ``Inception3`` layout (1008 classes, no auxiliary
classifier); this module has the same parameter names and shapes, so that file loads into it
as is (:func:`load_fid_inception`). The network is written here, not imported from torchvision.

What differs from torchvision's Inception-v3 (the TF graph's pooling, which FID numbers depend on):

* the 3x3 average pool of the pool branch in every ``Mixed_5*`` (A), ``Mixed_6b..e`` (C) block
  and in ``Mixed_7b`` (first E block) leaves the zero padding out of the average
  (``count_include_pad=False``);
* ``Mixed_7c`` (second E block) pools its pool branch with a 3x3 *max* pool, not an average.

Input: RGB in [0, 1], any size; it is resized to 299 x 299 (bilinear, no antialias) and scaled to
[-1, 1] before the first convolution, as pytorch-fid does. :meth:`InceptionV3.features` gives the
2048-d global-average-pooled activations FID uses; ``blocks`` also returns the intermediate maps
(64 ch after the first max pool, 192 after the second, 768 after ``Mixed_6e``).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.checkpoint import load_state_strict
from ..common.errors import UserError
from .torch_files import read_torch_file, tensor_dict

FID_INPUT_SIZE = 299
FID_NUM_CLASSES = 1008
FID_FEATURE_DIM = 2048
#: the published file's name (its SHA-256 starts with 6726825d)
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
ARCH = "FID Inception-v3 (pt_inception-2015-12-05)"


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool whose border averages leave out the padding (TensorFlow's)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (``Mixed_6a``)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Factorised 7x7 block (``Mixed_6b..e``)."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (``Mixed_7a``)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank (``Mixed_7b``: TF average pool; ``Mixed_7c``: max pool, ``pool="max"``)."""

    def __init__(self, cin: int, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError("pool must be 'avg' or 'max'")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        p = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _tf_avg_pool(x)
        return torch.cat([a, b, c, self.branch_pool(p)], 1)


class InceptionV3(nn.Module):
    """The FID Inception-v3 (see the module docstring); parameter names as in the published file."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_NUM_CLASSES)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> the network's input: 299 x 299 bilinear, in [-1, 1]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise UserError(f"the Inception network expects (B, 3, H, W) RGB tensors, got {tuple(x.shape)}")
        x = x.float()
        if x.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def blocks(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """Activations at pytorch-fid's four block ends, up to ``last``: 0: (B, 64, 73, 73) after the
        first max pool, 1: (B, 192, 35, 35) after the second, 2: (B, 768, 17, 17) after ``Mixed_6e``,
        3: (B, 2048) global average pool. ``x``: RGB in [0, 1]."""
        x = self.prepare(x)
        out = []
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, stride=2)
        out.append(x)
        if last >= 1:
            x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
            out.append(x)
        if last >= 2:
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                         "Mixed_6e"):
                x = getattr(self, name)(x)
            out.append(x)
        if last >= 3:
            x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
            out.append(x.mean((2, 3)))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048-d pool features FID is computed on; ``x``: RGB (B, 3, H, W) in [0, 1]."""
        return self.blocks(x, 3)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 1008) of the original graph (dropout is off in eval); ``x`` in [0, 1]."""
        return self.fc(self.features(x))


def load_fid_inception(path: str | os.PathLike) -> InceptionV3:
    """The FID Inception-v3 from a ``pt_inception-2015-12-05``-format file (a bare state dict), in
    eval mode and frozen. Wrong, damaged and code-carrying files are refused with one
    :class:`UserError` line; nothing from a file runs. BatchNorm ``num_batches_tracked`` counters
    (unused in eval) may be absent from the file."""
    obj = read_torch_file(path, "Inception weights")
    sd = tensor_dict(obj, f"Inception weights {path}")
    model = InceptionV3()
    own = model.state_dict()
    counters = [k for k in own if k.endswith(".num_batches_tracked")]
    if not any(k in sd for k in counters):
        sd = {**sd, **{k: own[k] for k in counters}}
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"Inception weights {path}: tensor {bad[0]} holds NaN or infinite values (damaged file)")
    load_state_strict(model, sd, f"Inception weights {path}", ARCH)
    return model.eval().requires_grad_(False)
