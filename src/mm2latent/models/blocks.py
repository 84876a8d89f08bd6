"""Layers shared by the perception networks (parser, analyzer, autoencoders)."""

from __future__ import annotations

import torch.nn as nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU: the unit every perception CNN is built from."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
