"""CLI for the text/image encoder: ``eval encoder`` (``train clip`` lives in :mod:`mm2latent.cli.train`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.errors import UserError


def add_eval_encoder(eval_sub) -> None:
    p = eval_sub.add_parser("encoder", help="retrieval, zero-shot probes and cosine gap on held-out world pairs")
    p.add_argument("--weights", default=None, help="CLIP checkpoint (default: the shipped world encoder)")
    p.add_argument("--num", type=int, default=1000, help="held-out pairs (test split)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", default=None, help="write the JSON report here (also printed)")
    p.set_defaults(func=_eval_encoder)


def _eval_encoder(a) -> int:
    import numpy as np
    import torch

    from ..common.fileio import write_text_atomic
    from ..common.imageio import image_to_tensor
    from ..common.progress import progress
    from ..eval.encoder import evaluate_encoder
    from ..models.clip import load_clip
    from ..world.dataset import SPLIT_SEEDS
    from ..world.sample import make_sample

    if a.num < 5:
        raise UserError("--num must be at least 5")
    weights = a.weights or str(default_encoder_path())
    model = load_clip(weights)
    seed = SPLIT_SEEDS["test"]
    imgs, attrs, caps, held = [], [], [], []
    for i in progress(range(a.num), desc="rendering test split", unit="face"):
        s = make_sample(seed, i, a.size, n_captions=1, n_heldout=1)
        imgs.append(image_to_tensor(s.image))
        attrs.append(s.params.attr_vector() > 0.5)
        caps.append(s.captions[0].text)
        held.append(s.captions_heldout[0].text)
    report = evaluate_encoder(model, torch.stack(imgs), np.stack(attrs), caps, held)
    report["weights"] = str(weights)
    text = json.dumps(report, indent=1, sort_keys=True)
    if a.out:
        write_text_atomic(a.out, text + "\n")
    print(text)
    return 0


def default_encoder_path() -> Path:
    from ..models.registry import COMPONENT_FILES, default_weights_dir

    p = default_weights_dir() / COMPONENT_FILES["encoder"]
    if not p.exists():
        raise UserError(f"no shipped encoder weights at {p}; train one with 'mm2latent train clip' or pass --weights")
    return p
