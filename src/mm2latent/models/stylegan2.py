"""StyleGAN2 (Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN", CVPR 2020) in plain PyTorch, CPU friendly.

What is here, following the paper (config F):

* mapping network: pixel norm of z, ``mapping_layers`` equalised-learning-rate
  fully connected layers with leaky ReLU and a learning-rate multiplier
  (``lr_mlp``), and a tracked average ``w_avg`` for the truncation trick;
* synthesis network: a learned 4x4 constant, two modulated 3x3 convolutions
  with weight demodulation per resolution (the first one upsamples with a
  transposed convolution followed by a [1,3,3,1] FIR low-pass), per-layer
  noise inputs with learned strength, and skip-architecture toRGB layers
  whose running RGB image is upsampled with the same FIR filter;
* residual discriminator with FIR-filtered downsampling and minibatch
  standard deviation.

Parameters are stored the way the official code stores them (raw weights;
the equalised-LR gains are applied at run time) so that official checkpoints
map onto this module parameter for parameter (see ``official.py``).

Everything runs on CPU in float32 with stock PyTorch ops; the modulated
convolution uses the "non-fused" formulation (scale activations, shared
convolution, scale outputs), which is mathematically identical to the
per-sample weight formulation and much faster on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..common.checkpoint import load_state_strict
from ..common.errors import UserError

GENERATOR_KIND = "stylegan2-generator"
DISCRIMINATOR_KIND = "stylegan2-discriminator"
NOISE_MODES = ("random", "const", "none")
SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- config


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n >= 4 and (n & (n - 1)) == 0


@dataclass
class StyleGAN2Config:
    """Everything needed to rebuild the networks; stored as JSON next to weights.

    Widths follow the official rule ``min(channel_base // res, channel_max)``
    unless ``channels`` gives them explicitly per resolution (``{4: 512, ...}``);
    the discriminator uses the same widths (``d_channels`` overrides).
    """

    resolution: int = 128
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_width: int | None = None  # hidden width of the mapping MLP; None = w_dim
    lr_mlp: float = 0.01
    channel_base: int = 16384
    channel_max: int = 512
    channels: dict[int, int] | None = None
    d_channels: dict[int, int] | None = None
    img_channels: int = 3
    use_noise: bool = True
    conv_clamp: float | None = None  # official FP16 runs clamp activations at +-256
    w_avg_beta: float = 0.995
    mbstd_group: int = 4
    mbstd_channels: int = 1

    def __post_init__(self):
        if not _is_pow2(self.resolution):
            raise UserError(f"StyleGAN2 resolution must be a power of two >= 4, got {self.resolution}")
        for name in ("z_dim", "w_dim", "mapping_layers", "img_channels", "channel_base", "channel_max"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"StyleGAN2 config: {name} must be a positive integer, got {v!r}")
        self.channels = self._int_keys(self.channels, "channels")
        self.d_channels = self._int_keys(self.d_channels, "d_channels")
        narrow = [r for r in self.resolutions if min(self.g_width(r), self.d_width(r)) < 1]
        if narrow:
            raise UserError(f"StyleGAN2 config: channel_base {self.channel_base} gives zero width at {narrow[0]}px")

    def _int_keys(self, d: dict | None, name: str) -> dict[int, int] | None:
        if d is None:
            return None
        out = {int(k): int(v) for k, v in d.items()}
        missing = [r for r in self.resolutions if r not in out]
        if missing:
            raise UserError(f"StyleGAN2 config: {name} lacks widths for resolutions {missing}")
        if any(v < 1 for v in out.values()):
            raise UserError(f"StyleGAN2 config: {name} must be positive")
        return {r: out[r] for r in self.resolutions}

    @property
    def log2_res(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def resolutions(self) -> list[int]:
        """Block resolutions 4, 8, ..., resolution."""
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """Number of w vectors consumed by the synthesis network (18 at 1024px)."""
        return 2 * self.log2_res - 2

    def g_width(self, res: int) -> int:
        if self.channels is not None:
            return self.channels[res]
        return min(self.channel_base // res, self.channel_max)

    def d_width(self, res: int) -> int:
        if self.d_channels is not None:
            return self.d_channels[res]
        return self.g_width(res)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("channels", "d_channels"):
            if d[k] is not None:
                d[k] = {str(r): c for r, c in d[k].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StyleGAN2Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"StyleGAN2 config has unknown fields {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------- FIR resampling


def fir_kernel(taps: Sequence[float] = (1, 3, 3, 1), device=None, dtype=torch.float32) -> torch.Tensor:
    """Separable 2-D low-pass kernel (outer product), normalised to sum 1."""
    k = torch.tensor(list(taps), dtype=torch.float64)
    k = torch.outer(k, k)
    return (k / k.sum()).to(device=device, dtype=dtype)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter, downsample; pure torch.

    ``pad`` is (left, right, top, bottom) in the upsampled grid; negative
    values crop. The filter is applied as a true convolution (flipped), as
    in the official implementation; ``gain`` scales the filter (use up**2
    when upsampling to keep the signal level).
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    k = (f * gain).flip([0, 1]).to(dtype=x.dtype)
    x = F.conv2d(x, k[None, None].expand(c, 1, *k.shape), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling that preserves constants (output 2H x 2W)."""
    fw = f.shape[-1]
    p0, p1 = (fw + 1) // 2, (fw - 2) // 2
    return upfirdn2d(x, f, up=2, pad=(p0, p1, p0, p1), gain=4.0)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR downsampling (output H/2 x W/2)."""
    fw = f.shape[-1]
    p0, p1 = (fw - 1) // 2, (fw - 2) // 2
    return upfirdn2d(x, f, down=2, pad=(p0, p1, p0, p1))


# --------------------------------------------------------------------------- layers


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float = 1.0,
             clamp: float | None = None) -> torch.Tensor:
    """Bias, activation, gain and optional clamp, in that order (as bias_act)."""
    if b is not None:
        x = x + (b.reshape(1, -1, *([1] * (x.ndim - 2))) if x.ndim > 2 else b)
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        gain = gain * SQRT2
    elif act != "linear":
        raise ValueError(f"unknown activation {act}")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate.

    The weight is stored as N(0, 1) / lr_mul and scaled by lr_mul/sqrt(in) at
    run time, so Adam sees the same step size for every layer.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str = "linear"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, self.activation)


class Conv2dLayer(nn.Module):
    """Equalised-LR convolution with optional FIR-filtered 2x downsampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "lrelu", down: bool = False, conv_clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.kernel_size = kernel_size
        self.register_buffer("fir", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        k = self.kernel_size
        if self.down:
            # filter then strided conv; padding as in the official conv2d_resample
            fw = self.fir.shape[-1]
            p0, p1 = (fw - 1) // 2 + k // 2, (fw - 2) // 2 + k // 2
            x = upfirdn2d(x, self.fir, pad=(p0, p1, p0, p1))
            x = F.conv2d(x, w, stride=2)
        else:
            x = F.conv2d(x, w, padding=k // 2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain, clamp)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, fir: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated convolution (StyleGAN2 eq. 1-3) without per-sample weights.

    conv(x * s, w) * d  equals  conv(x, w * s * d) because s scales input
    channels and d output channels; d = 1/sqrt(sum (w*s)^2 + 1e-8) is
    computed from s^2 @ sum_k w^2 without materialising the (B,O,I,k,k)
    tensor. ``up`` performs the official 2x upsampling convolution: a
    stride-2 transposed convolution followed by the FIR filter.
    """
    out_c, in_c, kh, kw = weight.shape
    x = x * styles.reshape(x.shape[0], in_c, 1, 1)
    if up:
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        fw = fir.shape[-1]
        p0 = (fw + 1) // 2 + kw // 2 - (kw - 1)
        p1 = (fw - 2) // 2 + kw // 2 - (kw - 2)
        x = upfirdn2d(x, fir, pad=(p0, p1, p0, p1), gain=4.0)
    else:
        x = F.conv2d(x, weight, padding=kw // 2)
    if demodulate:
        d = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()
        x = x * d.reshape(x.shape[0], out_c, 1, 1)
    return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + leaky ReLU (one style vector)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 use_noise: bool = True, conv_clamp: float | None = None, kernel_size: int = 3):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("fir", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up, fir=self.fir)
        if self.use_noise and noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return bias_act(x, self.bias, "lrelu", 1.0, self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB, no demodulation, no activation."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, "linear", 1.0, self.conv_clamp)


# --------------------------------------------------------------------------- generator


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, then ``mapping_layers`` equalised FC layers (lr x lr_mlp)."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        hidden = cfg.mapping_width or cfg.w_dim
        dims = [cfg.z_dim] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        self.fcs = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mul=cfg.lr_mlp, activation="lrelu") for i in range(cfg.mapping_layers)
        )
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        self.z_dim = cfg.z_dim

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """Return w of shape (B, w_dim); psi < 1 pulls it towards ``w_avg``."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        x = z.float()
        x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for fc in self.fcs:
            x = fc(x)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: (const | upsampling conv0), conv1, toRGB."""

    def __init__(self, in_channels: int, out_channels: int, res: int, cfg: StyleGAN2Config):
        super().__init__()
        self.res = res
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, res, res))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, cfg.w_dim, res, up=True,
                                        use_noise=cfg.use_noise, conv_clamp=cfg.conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, cfg.w_dim, res,
                                    use_noise=cfg.use_noise, conv_clamp=cfg.conv_clamp)
        self.torgb = ToRGBLayer(out_channels, cfg.img_channels, cfg.w_dim, conv_clamp=cfg.conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.register_buffer("fir", fir_kernel(), persistent=False)

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str):
        """``ws`` holds num_conv + 1 vectors; the toRGB one is shared with the next block."""
        if self.conv0 is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else upsample2d(img, self.fir) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """w or w+ -> image, skip architecture."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        blocks = []
        for res in cfg.resolutions:
            cin = 0 if res == 4 else cfg.g_width(res // 2)
            blocks.append(SynthesisBlock(cin, cfg.g_width(res), res, cfg))
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = cfg.num_ws
        self.w_dim = cfg.w_dim

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """Accepts w (B, w_dim), broadcast to every layer, or w+ (B, num_ws, w_dim)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim == 2 and ws.shape[1] == self.w_dim:
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be (B, {self.w_dim}) or (B, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        ws = ws.float()
        x = img = None
        idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, idx: idx + block.num_conv + 1], noise_mode)
            idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: ``G(z)`` -> images in [-1, 1] of shape (B, 3, R, R)."""

    def __init__(self, cfg: StyleGAN2Config | None = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else StyleGAN2Config(**kwargs)
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = cfg.num_ws
        self.z_dim = cfg.z_dim
        self.w_dim = cfg.w_dim
        self.resolution = cfg.resolution

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w (B, w_dim) -> w+ (B, num_ws, w_dim); w+ passes through."""
        return w.unsqueeze(1).repeat(1, self.num_ws, 1) if w.ndim == 2 else w

    def truncate(self, ws: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
        """Truncation trick: w_avg + psi * (w - w_avg) on the first ``cutoff`` layers (all if None)."""
        if psi == 1:
            return ws
        ws = self.broadcast(ws).clone()
        n = self.num_ws if cutoff is None else cutoff
        ws[:, :n] = self.w_avg.lerp(ws[:, :n], psi)
        return ws

    @staticmethod
    def mix(ws_a: torch.Tensor, ws_b: torch.Tensor, cutoff: int) -> torch.Tensor:
        """Style mixing: layers < cutoff from ``ws_a`` (coarse), the rest from ``ws_b``."""
        return torch.cat([ws_a[:, :cutoff], ws_b[:, cutoff:]], dim=1)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", mix_z: torch.Tensor | None = None, mix_cutoff: int | None = None,
                return_ws: bool = False):
        ws = self.broadcast(self.mapping(z))
        if mix_z is not None:
            cutoff = self.num_ws // 2 if mix_cutoff is None else mix_cutoff
            ws = self.mix(ws, self.broadcast(self.mapping(mix_z)), cutoff)
        ws = self.truncate(ws, truncation_psi, truncation_cutoff)
        img = self.synthesis(ws, noise_mode=noise_mode)
        return (img, ws) if return_ws else img

    @torch.no_grad()
    def estimate_w_avg(self, n: int = 10000, seed: int = 0, batch: int = 1000) -> torch.Tensor:
        """Mean of w over ``n`` random z (for checkpoints that lack w_avg)."""
        g = torch.Generator().manual_seed(seed)
        dev = self.w_avg.device
        acc = torch.zeros(self.w_dim, dtype=torch.float64, device=dev)
        done = 0
        while done < n:
            k = min(batch, n - done)
            z = torch.randn(k, self.z_dim, generator=g).to(dev)
            acc += self.mapping(z).double().sum(0)
            done += k
        return (acc / n).float()


@torch.no_grad()
def widen_generator(G: Generator, widths: dict[int, int], seed: int = 0) -> Generator:
    """A copy of ``G`` whose synthesis blocks at the resolutions in ``widths`` have that many channels,
    drawing exactly the same images (network surgery to add capacity where the old widths run out,
    e.g. the 16-channel last block that draws 128 px earrings at half size).

    The added channels start silent: every weight from an added channel into an existing one (next
    conv, toRGB) is zero, so demodulation and outputs are unchanged, while weights into added
    channels keep their random init so training can grow them. toRGB's weight gain is
    1/sqrt(channels), so its existing weights are rescaled to keep the product."""
    cfg = G.cfg
    old = {r: cfg.g_width(r) for r in cfg.resolutions}
    unknown = sorted(set(widths) - set(old))
    if unknown:
        raise UserError(f"widen: no synthesis block at {unknown} px (blocks: {cfg.resolutions})")
    narrower = [r for r, c in widths.items() if c < old[r]]
    if narrower:
        raise UserError(f"widen: {narrower[0]} px has {old[narrower[0]]} channels; widening cannot remove channels")
    new_cfg = StyleGAN2Config.from_dict({**cfg.to_dict(), "channels": {str(r): widths.get(r, old[r]) for r in old},
                                         "d_channels": {str(r): cfg.d_width(r) for r in old}})
    torch.manual_seed(seed)
    wide = Generator(new_cfg).to(G.w_avg.device)
    src = G.state_dict()
    dst = wide.state_dict()
    for name, t in dst.items():
        o = src[name]
        if o.shape == t.shape:
            t.copy_(o)
            continue
        lead = tuple(slice(0, n) for n in o.shape)
        if name.endswith(".weight") and t.ndim == 4:  # conv / toRGB weight (out, in, k, k)
            t[: o.shape[0], o.shape[1]:] = 0  # added inputs feed nothing that existed
            t[lead] = o
        else:  # biases, affine rows: existing entries copied, added ones keep their init
            t[lead] = o
    for i, res in enumerate(cfg.resolutions):
        if res in widths and widths[res] != old[res]:
            name = f"synthesis.blocks.{i}.torgb.weight"
            dst[name][:, : old[res]] *= math.sqrt(widths[res] / old[res])
    wide.load_state_dict(dst)
    return wide


# --------------------------------------------------------------------------- discriminator


class MinibatchStd(nn.Module):
    """Append the mean over features of the per-group standard deviation."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:  # official code requires divisibility; fall back to a divisor
            g -= 1
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()
        y = y.mean(dim=(2, 3, 4)).reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: conv0, downsampling conv1, and a 1x1 downsampling skip."""

    def __init__(self, tmp_channels: int, out_channels: int, conv_clamp: float | None):
        super().__init__()
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, down=True, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, activation="linear", down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = math.sqrt(0.5)
        return self.skip(x, gain=g) + self.conv1(self.conv0(x), gain=g)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: ``D(img)`` -> logits (B, 1)."""

    def __init__(self, cfg: StyleGAN2Config | None = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else StyleGAN2Config(**kwargs)
        self.cfg = cfg
        top = cfg.resolution
        self.fromrgb = Conv2dLayer(cfg.img_channels, cfg.d_width(top), 1, conv_clamp=cfg.conv_clamp)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(cfg.d_width(r), cfg.d_width(r // 2), cfg.conv_clamp)
            for r in reversed(cfg.resolutions) if r > 4
        )
        c4 = cfg.d_width(4)
        self.mbstd = MinibatchStd(cfg.mbstd_group, cfg.mbstd_channels)
        self.conv = Conv2dLayer(c4 + cfg.mbstd_channels, c4, 3, conv_clamp=cfg.conv_clamp)
        self.fc = EqualLinear(c4 * 16, c4, activation="lrelu")
        self.out = EqualLinear(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        r = self.cfg.resolution
        if img.ndim != 4 or img.shape[1:] != (self.cfg.img_channels, r, r):
            raise ValueError(f"D expects images (B, {self.cfg.img_channels}, {r}, {r}), got {tuple(img.shape)}")
        x = self.fromrgb(img)
        for block in self.blocks:
            x = block(x)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))


# --------------------------------------------------------------------------- save / load


def save_generator(path: str | os.PathLike, G: Generator, dtype: torch.dtype | None = None,
                   extra: dict[str, Any] | None = None):
    """Write ``G`` as safetensors + JSON (kind ``stylegan2-generator``).

    ``dtype=torch.float16`` halves the file (weights are cast back to float32
    on load); ``extra`` adds JSON fields (e.g. training provenance).
    """
    from ..common.checkpoint import save_checkpoint

    sd = G.state_dict()
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    config = {"kind": GENERATOR_KIND, "format_version": 1, "config": G.cfg.to_dict()}
    if extra:
        config.update(extra)
    return save_checkpoint(path, sd, config)


def load_state_checked(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with one readable UserError for missing/extra/mis-shaped tensors."""
    load_state_strict(module, sd, what, "StyleGAN2")


def read_generator(path: str | os.PathLike) -> tuple[Generator, dict]:
    """A generator written by :func:`save_generator` and its whole JSON (config, training record, ...)."""
    from ..common.checkpoint import load_checkpoint

    tensors, config = load_checkpoint(path, expect_kind=GENERATOR_KIND)
    if "config" not in config or not isinstance(config["config"], dict):
        raise UserError(f"checkpoint {path} has no 'config' section")
    G = Generator(StyleGAN2Config.from_dict(config["config"]))
    load_state_checked(G, tensors, f"checkpoint {path}")
    return G, config


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """Read a generator written by :func:`save_generator` (eval mode)."""
    return read_generator(path)[0].to(device).eval().requires_grad_(False)
