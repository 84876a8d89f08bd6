"""Pre-rendered Face World caches for fast training.

Rendering costs ~65 ms a sample on one core; training loops need hundreds of
samples a second. ``build_cache`` renders a split once (in parallel) into a
directory of ``.npy`` arrays that :class:`CachedWorldDataset` memory-maps:

    images.npy   (N, H, W, 3) uint8
    masks.npy    (N, H, W)    uint8, CelebAMask-HQ indices
    sketches.npy (N, H, W)    uint8, 1 = line
    attributes.npy (N, A)     uint8, order of ``ATTRIBUTES``
    coeffs.npy   (N, K)       float32, raw units (degrees / [0, 1])
    captions.json             list of caption lists (training grammar)
    meta.json                 seed, size, count, attribute and coefficient names

The directory is written under a temporary name and renamed when complete, so
an interrupted build never looks like a finished cache.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..common.errors import UserError
from ..common.progress import progress
from .attributes import ATTRIBUTES
from .dataset import SPLIT_SEEDS, normalise_coeffs
from .params import COEFF_NAMES
from .sample import make_sample


def _render_range(args):
    seed, start, stop, size, tmp = args
    torch.set_num_threads(1)  # one worker per core; avoid oversubscription
    imgs = np.load(tmp / "images.npy", mmap_mode="r+")
    masks = np.load(tmp / "masks.npy", mmap_mode="r+")
    sks = np.load(tmp / "sketches.npy", mmap_mode="r+")
    caps = []
    attrs = np.zeros((stop - start, len(ATTRIBUTES)), np.uint8)
    coeffs = np.zeros((stop - start, len(COEFF_NAMES)), np.float32)
    for k, i in enumerate(range(start, stop)):
        s = make_sample(seed, i, size, n_captions=4, n_heldout=0)
        imgs[i], masks[i], sks[i] = s.image, s.mask, (s.sketch < 128)
        attrs[k] = s.params.attr_vector()
        coeffs[k] = s.params.coeff_vector()
        caps.append([c.text for c in s.captions])
    imgs.flush(), masks.flush(), sks.flush()
    return start, attrs, coeffs, caps


def build_cache(out: str | os.PathLike, split: str = "train", num: int = 1000, size: int = 128,
                workers: int | None = None, seed: int | None = None, chunk: int = 64) -> Path:
    if split not in SPLIT_SEEDS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_SEEDS)}")
    out = Path(out)
    if out.exists():
        raise UserError(f"cache {out} already exists; remove it first")
    seed = SPLIT_SEEDS[split] if seed is None else seed
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, shape in (("images", (num, size, size, 3)), ("masks", (num, size, size)), ("sketches", (num, size, size))):
        np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
    jobs = [(seed, a, min(num, a + chunk), size, tmp) for a in range(0, num, chunk)]
    attrs = np.zeros((num, len(ATTRIBUTES)), np.uint8)
    coeffs = np.zeros((num, len(COEFF_NAMES)), np.float32)
    caps: list = [None] * num
    workers = workers or max(1, (os.cpu_count() or 1))
    bar = progress(total=num, desc=f"caching {split}", unit="face")
    with mp.get_context("spawn").Pool(workers) as pool:
        for start, a, c, cp in pool.imap_unordered(_render_range, jobs):
            attrs[start:start + len(a)] = a
            coeffs[start:start + len(c)] = c
            caps[start:start + len(cp)] = cp
            bar.update(len(a))
    bar.close()
    np.save(tmp / "attributes.npy", attrs)
    np.save(tmp / "coeffs.npy", coeffs)
    (tmp / "captions.json").write_text(json.dumps(caps))
    (tmp / "meta.json").write_text(json.dumps({"split": split, "seed": seed, "size": size, "num": num,
                                               "attributes": list(ATTRIBUTES), "coeffs": list(COEFF_NAMES)}, indent=1))
    os.replace(tmp, out)
    return out


class CachedWorldDataset(Dataset):
    """Same items as :class:`~mm2latent.world.dataset.FaceWorldDataset`, read from a cache."""

    def __init__(self, root: str | os.PathLike, length: int | None = None):
        root = Path(root)
        if not (root / "meta.json").exists():
            raise UserError(f"{root} is not a world cache (no meta.json)")
        self.meta = json.loads((root / "meta.json").read_text())
        self.images = np.load(root / "images.npy", mmap_mode="r")
        self.masks = np.load(root / "masks.npy", mmap_mode="r")
        self.sketches = np.load(root / "sketches.npy", mmap_mode="r")
        self.attributes = np.load(root / "attributes.npy")
        self.coeffs = np.load(root / "coeffs.npy")
        self._captions = None
        self.root = root
        self.length = min(length or len(self.images), len(self.images))
        self.size = int(self.meta["size"])

    @property
    def captions(self) -> list[list[str]]:
        if self._captions is None:
            self._captions = json.loads((self.root / "captions.json").read_text())
        return self._captions

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        img = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1).float().div(127.5).sub(1)
        return {
            "image": img,
            "mask": torch.from_numpy(np.array(self.masks[i], dtype=np.int64)),
            "sketch": torch.from_numpy(np.array(self.sketches[i], dtype=np.float32))[None],
            "attributes": torch.from_numpy(self.attributes[i].astype(np.float32)),
            "coeffs": torch.from_numpy(normalise_coeffs(self.coeffs[i]).astype(np.float32)),
            "index": int(i),
        }

    def batch(self, idx) -> dict:
        """Fast batched access for training loops (no per-item Python)."""
        idx = np.sort(np.asarray(idx))
        img = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        return {
            "image": img,
            "mask": torch.from_numpy(np.ascontiguousarray(self.masks[idx]).astype(np.int64)),
            "sketch": torch.from_numpy(np.ascontiguousarray(self.sketches[idx]).astype(np.float32))[:, None],
            "attributes": torch.from_numpy(self.attributes[idx].astype(np.float32)),
            "coeffs": torch.from_numpy(normalise_coeffs(self.coeffs[idx]).astype(np.float32)),
            "index": torch.from_numpy(idx),
        }
