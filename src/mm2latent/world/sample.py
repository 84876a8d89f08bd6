"""One complete Face World sample: image, exact mask, sketch, attributes,
coefficients and captions, for ``(seed, index)``.

Captions come from a separate generator stream so that asking for more or
fewer captions never changes the face.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.fileio import write_text_atomic
from ..common.imageio import save_image
from ..common.palette import save_mask
from ..common.seeding import numpy_rng
from .params import COEFF_NAMES, FaceParams, sample_params
from .render import render
from .sketch import sketch_from_uint8


@dataclass
class WorldSample:
    image: np.ndarray          # (H, W, 3) uint8
    mask: np.ndarray           # (H, W) uint8, CelebAMask-HQ indices 0..18
    sketch: np.ndarray         # (H, W) uint8, black lines on white
    params: FaceParams
    captions: list = field(default_factory=list)           # training grammar
    captions_heldout: list = field(default_factory=list)   # held-out shapes/synonyms

    @property
    def attributes(self) -> dict[str, bool]:
        return self.params.attrs

    @property
    def coeffs(self) -> dict[str, float]:
        return self.params.coeffs

    def metadata(self, seed: int, index: int) -> dict:
        return {
            "seed": seed,
            "index": index,
            "size": int(self.image.shape[0]),
            "attributes": {k: bool(v) for k, v in self.params.attrs.items()},
            "coefficients": {k: round(float(self.params.coeffs[k]), 6) for k in COEFF_NAMES},
            "captions": [c.text for c in self.captions],
            "caption_facts": [c.facts for c in self.captions],
            "captions_heldout": [c.text for c in self.captions_heldout],
            "caption_heldout_facts": [c.facts for c in self.captions_heldout],
        }


def make_sample(seed: int, index: int, size: int = 128, n_captions: int = 4, n_heldout: int = 2,
                params: FaceParams | None = None) -> WorldSample:
    """Render sample ``index`` of world ``seed`` (or explicit ``params``) with all its ground truth."""
    p = params if params is not None else sample_params(seed, index)
    r = render(p, size)
    caps, held = sample_captions(seed, index, p, n_captions, n_heldout)
    return WorldSample(image=r.image, mask=r.mask, sketch=sketch_from_uint8(r.image), params=p,
                       captions=caps, captions_heldout=held)


def sample_captions(seed: int, index: int, params: FaceParams | None = None, n_captions: int = 4,
                    n_heldout: int = 2) -> tuple[list, list]:
    """The captions of sample ``(seed, index)`` without rendering it (same as :func:`make_sample`'s)."""
    from .captions import make_captions

    p = params if params is not None else sample_params(seed, index)
    crng = numpy_rng(seed, index, 99)
    caps = make_captions(p.attrs, crng, n=n_captions, split="train") if n_captions else []
    held = make_captions(p.attrs, crng, n=n_heldout, split="heldout") if n_heldout else []
    return caps, held


def write_sample(out_dir: Path, seed: int, index: int, s: WorldSample) -> None:
    """Write ``NNNNNN.png``, ``_mask.png``, ``_sketch.png`` and ``.json`` (each atomically)."""
    stem = out_dir / f"{index:06d}"
    save_image(f"{stem}.png", s.image)
    save_mask(f"{stem}_mask.png", s.mask)
    save_image(f"{stem}_sketch.png", s.sketch)
    write_text_atomic(f"{stem}.json", json.dumps(s.metadata(seed, index), indent=1, sort_keys=True) + "\n")
