"""Torch datasets over the Face World, rendered on the fly (no files needed).

``FaceWorldDataset(size, seed, length, split)`` maps an index to a dict of
tensors. Splits use disjoint seeds, so the test split never overlaps training.
Rendering is deterministic per index, so any number of DataLoader workers or
DDP ranks see the same sample for the same index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..common.errors import UserError
from ..common.imageio import image_to_tensor
from .params import COEFF_NAMES, COEFF_RANGES
from .sample import make_sample

#: world seeds of the standard splits (train never sees val/test faces)
SPLIT_SEEDS = {"train": 0, "val": 1_000_001, "test": 2_000_003}


def normalise_coeffs(c: np.ndarray | torch.Tensor):
    """Map coefficients to [-1, 1] per their ranges (network-friendly)."""
    lo = np.array([COEFF_RANGES[k][0] for k in COEFF_NAMES], np.float32)
    hi = np.array([COEFF_RANGES[k][1] for k in COEFF_NAMES], np.float32)
    if isinstance(c, torch.Tensor):
        return (c - torch.from_numpy(lo)) / torch.from_numpy(hi - lo) * 2 - 1
    return (c - lo) / (hi - lo) * 2 - 1


def denormalise_coeffs(c):
    lo = np.array([COEFF_RANGES[k][0] for k in COEFF_NAMES], np.float32)
    hi = np.array([COEFF_RANGES[k][1] for k in COEFF_NAMES], np.float32)
    if isinstance(c, torch.Tensor):
        return (c + 1) / 2 * torch.from_numpy(hi - lo) + torch.from_numpy(lo)
    return (c + 1) / 2 * (hi - lo) + lo


class FaceWorldDataset(Dataset):
    """Items: ``image`` (3,H,W) in [-1,1]; ``mask`` (H,W) long; ``sketch`` (1,H,W) {0,1};
    ``attributes`` (A,) {0,1}; ``coeffs`` (K,) in [-1,1]; ``caption`` str; ``index`` int."""

    def __init__(self, size: int = 128, seed: int | None = None, length: int = 100_000, split: str = "train",
                 with_captions: bool = True):
        if split not in SPLIT_SEEDS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_SEEDS)}")
        if length <= 0:
            raise UserError("dataset length must be positive")
        self.size, self.length, self.split = size, length, split
        self.seed = SPLIT_SEEDS[split] if seed is None else seed
        self.with_captions = with_captions

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        s = make_sample(self.seed, int(i), self.size, n_captions=1 if self.with_captions else 0, n_heldout=0)
        return {
            "image": image_to_tensor(s.image),
            "mask": torch.from_numpy(s.mask.astype(np.int64)),
            "sketch": torch.from_numpy((s.sketch < 128).astype(np.float32))[None],
            "attributes": torch.from_numpy(s.params.attr_vector()),
            "coeffs": torch.from_numpy(normalise_coeffs(s.params.coeff_vector()).astype(np.float32)),
            "caption": s.captions[0].text if s.captions else "",
            "index": int(i),
        }


