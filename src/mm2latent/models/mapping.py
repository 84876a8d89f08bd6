"""MappingNet: [text ; mask ; sketch ; coefficient embeddings] -> StyleGAN w.

The MM2Latent mapper (docs/design.md section 1): the modality embeddings are
concatenated, normalised (BatchNorm) and dropped out at the input, then an MLP
of equalised-learning-rate linear layers with LeakyReLU 0.2 outputs w (one
vector, W space) or ``num_ws`` vectors (W+).

Any subset of modalities works at inference: a modality that is not given is
replaced by its own learned "absent" embedding, the same one that replaced it
during training (random modality dropout). The output is expressed around the
generator's w statistics (``w_mean`` + ``w_std`` * net output), measured on the
training data, so the MLP starts in the right region of W.

The modalities a config may name, and their order in the input, are the
registered controls (:data:`mm2latent.models.controls.CONTROLS`), so a
plug-in control works with a MappingNet whose config includes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import UserError
from .controls import control_names, one_of
from .stylegan2 import EqualLinear

KIND = "mapping_net"
#: the controls registered when the package loads (the built-in ones, which MappingNet's training data holds)
MODALITIES = control_names()


@dataclass
class MappingNetConfig:
    dims: dict[str, int] = field(default_factory=lambda: {"text": 512, "mask": 512, "sketch": 512, "coeffs": 512})
    w_dim: int = 256
    num_ws: int = 1  # 1: W space; generator.num_ws: W+
    hidden: int = 512
    layers: int = 8
    dropout: float = 0.1
    lr_mul: float = 1.0

    def __post_init__(self):
        names = control_names()
        unknown = set(self.dims) - set(names)
        if unknown or not self.dims:
            raise UserError(f"MappingNet modalities must be a non-empty subset of {names}, got {sorted(self.dims)}")
        self.dims = {m: int(self.dims[m]) for m in names if m in self.dims}
        if self.layers < 1 or self.hidden < 1 or self.w_dim < 1 or self.num_ws < 1:
            raise UserError("MappingNet: layers, hidden, w_dim and num_ws must be positive")
        if not 0 <= self.dropout < 1:
            raise UserError("MappingNet: dropout must lie in [0, 1)")

    @property
    def in_dim(self) -> int:
        return sum(self.dims.values())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> "MappingNetConfig":
        names = {"dims", "w_dim", "num_ws", "hidden", "layers", "dropout", "lr_mul"}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"MappingNet config: unknown keys {sorted(unknown)}")
        return cls(**d)


class MappingNet(nn.Module):
    kind = KIND

    def __init__(self, config: MappingNetConfig | None = None):
        super().__init__()
        c = self.config = config or MappingNetConfig()
        self.absent = nn.ParameterDict({m: nn.Parameter(torch.randn(d) * 0.02) for m, d in c.dims.items()})
        self.norm = nn.BatchNorm1d(c.in_dim)
        self.drop = nn.Dropout(c.dropout)
        out = c.w_dim * c.num_ws
        dims = [c.in_dim] + [c.hidden] * (c.layers - 1)
        self.body = nn.Sequential(*[EqualLinear(a, b, lr_mul=c.lr_mul, activation="lrelu") for a, b in zip(dims[:-1], dims[1:])])
        self.head = EqualLinear(dims[-1], out, lr_mul=c.lr_mul)
        self.register_buffer("w_mean", torch.zeros(c.w_dim))
        self.register_buffer("w_std", torch.ones(c.w_dim))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.config.dims)

    def assemble(self, embeddings: dict[str, torch.Tensor | None], present: dict[str, torch.Tensor] | None = None,
                 batch: int | None = None) -> torch.Tensor:
        """Concatenate the inputs, putting the learned absent embedding where a
        modality is missing (None) or flagged absent (``present[m]`` False per row)."""
        unknown = [m for m in embeddings if m not in self.config.dims]
        if unknown:
            raise UserError(f"this MappingNet takes {', '.join(self.modalities)}; got unknown modality {unknown[0]!r}")
        given = [e for e in embeddings.values() if e is not None]
        b = batch if batch is not None else (given[0].shape[0] if given else None)
        if b is None:
            raise UserError(f"give at least one modality ({one_of(self.modalities)})")
        parts = []
        for m, d in self.config.dims.items():
            e = embeddings.get(m)
            absent = self.absent[m].unsqueeze(0).expand(b, d)
            if e is None:
                parts.append(absent)
                continue
            if e.shape != (b, d):
                raise ValueError(f"{m} embedding must have shape ({b}, {d}), got {tuple(e.shape)}")
            if present is not None and m in present:
                e = torch.where(present[m].view(b, 1).bool(), e, absent)
            parts.append(e)
        return torch.cat(parts, 1)

    def forward(self, embeddings: dict[str, torch.Tensor | None], present: dict[str, torch.Tensor] | None = None,
                batch: int | None = None) -> torch.Tensor:
        """w (B, w_dim), or w+ (B, num_ws, w_dim) when configured for W+."""
        x = self.drop(self.norm(self.assemble(embeddings, present, batch)))
        y = self.head(self.body(x))
        c = self.config
        if c.num_ws == 1:
            return self.w_mean + self.w_std * y
        return self.w_mean + self.w_std * y.view(-1, c.num_ws, c.w_dim)


def w_loss(pred: torch.Tensor, target: torch.Tensor, center: torch.Tensor | None = None,
           cos_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + (1 - cosine similarity) on w (the authors' objective); works on W and W+.

    The cosine is taken around ``center`` (the mean w) when given: raw w
    vectors all share the mean's direction, which would make it uninformative.
    """
    if target.dim() == 2 and pred.dim() == 3:
        target = target.unsqueeze(1).expand_as(pred)
    l1 = (pred - target).abs().mean()
    c = 0 if center is None else center
    cos = 1 - F.cosine_similarity(pred - c, target - c, dim=-1).mean()
    return l1 + cos_weight * cos, {"l1": l1.item(), "cos": cos.item()}
