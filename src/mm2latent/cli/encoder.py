"""CLI for the text/image encoder: ``train clip``, ``eval encoder``, ``embed``."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.errors import UserError
from .argtypes import seed_int


def add_train_clip(train_sub) -> None:
    p = train_sub.add_parser("clip", help="contrastive training of the world CLIP/FaRL encoder")
    p.add_argument("--data", required=True, help="world cache directory (mm2latent world cache)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time (checkpoint kept)")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--config", default="world_small",
                   help="CLIP preset (world_small, farl_vit_b16) or a JSON object of fields overriding world_small, "
                        "e.g. '{\"vision_patch_size\": 8}'")
    p.add_argument("--hard-negatives", action="store_true",
                   help="add one caption of the same face with one stated attribute flipped as an extra negative")
    p.add_argument("--attr-weight", type=float, default=0.0,
                   help="weight of a linear attribute head shared by both towers (image: the renderer's attributes; "
                        "caption: the facts it states), so thin attributes reach the embeddings")
    p.add_argument("--init", default=None, metavar="CLIP",
                   help="start from this exported CLIP (weights and config; --config is then ignored)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="write the final model (fp16 safetensors+json) here")
    p.set_defaults(func=_train_clip)


def _train_clip(a) -> int:
    from ..train.clip import CLIPTrainOptions, train_clip

    if a.steps <= 0 or a.batch < 2:
        raise UserError("--steps must be positive and --batch at least 2")
    if a.attr_weight < 0:
        raise UserError("--attr-weight must be >= 0")
    config = a.config
    if config.lstrip().startswith("{"):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as e:
            raise UserError(f"--config is not valid JSON: {e}") from None
    opts = CLIPTrainOptions(data=a.data, out=a.out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed,
                            minutes=a.minutes, ckpt_every=a.ckpt_every, config=config,
                            hard_negatives=a.hard_negatives, attr_weight=a.attr_weight, init=a.init)
    train_clip(opts, resume=a.resume, export=a.export)
    return 0


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
