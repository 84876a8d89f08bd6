"""Deterministic seeding. Same seed, same output, on any machine."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def numpy_rng(*keys: int) -> np.random.Generator:
    """A PCG64 generator keyed by integers (e.g. ``(seed, index)``).

    SeedSequence hashing makes nearby keys independent and the stream is
    platform independent.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])))


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
