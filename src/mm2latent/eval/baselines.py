"""Baselines that MM2Latent is compared against, on the same inputs.

* :func:`optimise_latents` -- TediGAN-style latent optimisation: start from the
  pipeline's centre w (the fitted latent prior's mean -- the mean w of real
  renders -- when shipped, else the generator's w_avg), optimise a W+ code per
  face by Adam on
  ``-text_weight * cos(E_img(G(w)), E_txt(text)) + seg_weight * CE(parser(G(w)), mask)
  + reg_weight * ||w - w_centre||^2`` for ``steps`` steps. Strong (it sees the
  judges' own kind of signal at every step) and slow (a generator, parser and
  image-encoder forward and backward per step); a batch of faces is optimised
  together, each with its own loss.
The conditional-retrieval floor (nearest training render by caption and mask
embedding) lives in :mod:`mm2latent.eval.report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.controls import resize_images, resize_labels


@dataclass
class OptimisationConfig:
    steps: int = 100
    lr: float = 0.03
    text_weight: float = 1.0
    seg_weight: float = 1.0
    reg_weight: float = 0.02
    wplus: bool = True


def optimise_latents(pipe, text_emb: torch.Tensor | None, masks: torch.Tensor | None,
                     cfg: OptimisationConfig = OptimisationConfig(),
                     snapshot_steps: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict]:
    """Optimised codes (B, num_ws, w_dim) for B faces; returns (ws, info with seconds and loss history).
    ``snapshot_steps``: also keep the codes after each of these step counts (info["snapshots"][k])
    with the wall time spent up to then (info["seconds_at"][k]), so that one run gives the
    baseline at every shorter budget (the codes after k steps are exactly a k-step run's)."""
    if any(k < 1 or k > cfg.steps for k in snapshot_steps):
        raise ValueError("snapshot steps must lie in 1..steps")
    if text_emb is None and masks is None:
        raise ValueError("the baseline needs text and/or masks")
    G, c = pipe.G, pipe.controls
    b = len(text_emb) if text_emb is not None else len(masks)
    w_avg = pipe.w_center.detach()
    start = w_avg.expand(b, -1)
    ws = (G.broadcast(start) if cfg.wplus else start).clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=cfg.lr)
    target_mask = resize_labels(masks, c.parser.config.size) if masks is not None else None
    hist = []
    snaps: dict[int, torch.Tensor] = {}
    seconds_at: dict[int, float] = {}
    t0 = time.perf_counter()
    with torch.enable_grad():
        for _ in range(cfg.steps):
            x = G.synthesis(G.broadcast(ws), noise_mode="const")
            loss = cfg.reg_weight * (ws - w_avg).square().sum(-1).mean()
            if text_emb is not None and cfg.text_weight:
                img_emb = c.encoder.encode_image(x)
                loss = loss - cfg.text_weight * (img_emb * text_emb).sum(-1).mean()
            if target_mask is not None and cfg.seg_weight:
                logits = c.parser(resize_images(x, c.parser.config.size))
                loss = loss + cfg.seg_weight * F.cross_entropy(logits, target_mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.append(loss.item())
            if len(hist) in snapshot_steps:
                snaps[len(hist)] = G.broadcast(ws.detach().clone())
                seconds_at[len(hist)] = time.perf_counter() - t0
    return G.broadcast(ws.detach()), {"seconds": time.perf_counter() - t0, "history": hist,
                                      "snapshots": snaps, "seconds_at": seconds_at}


def optimise_budgets(pipe, captions, masks: torch.Tensor, steps, settings: dict | None = None, batch: int = 25,
                     desc: str | None = None) -> dict[int, tuple[torch.Tensor, float]]:
    """The baseline at several step budgets from one run of the longest, snapshotted at the
    shorter ones: {k: (images, seconds)}, where a budget's seconds are the text embedding, the
    optimisation up to its own step and the synthesis of its codes, summed over batches."""
    from ..common.progress import progress

    steps = tuple(sorted(set(steps)))
    out: dict[int, list[torch.Tensor]] = {k: [] for k in steps}
    seconds = dict.fromkeys(steps, 0.0)
    n = len(captions)
    for a in progress(range(0, n, batch), desc=desc or f"optimisation {'/'.join(map(str, steps))}", unit="batch"):
        t = time.perf_counter()
        te = pipe.controls.embed_text(captions[a:a + batch])
        t_embed = time.perf_counter() - t
        _, info = optimise_latents(pipe, te, masks[a:a + batch], OptimisationConfig(steps=steps[-1], **(settings or {})),
                                   snapshot_steps=steps)
        for k in steps:
            t = time.perf_counter()
            with torch.no_grad():
                out[k].append(pipe.G.synthesis(info["snapshots"][k], noise_mode="const"))
            seconds[k] += t_embed + info["seconds_at"][k] + time.perf_counter() - t
    return {k: (torch.cat(out[k]), seconds[k]) for k in steps}


def load_tuned_settings(path: str | None) -> dict | None:
    """The ``best`` settings of a ``mm2latent eval tune-baseline`` result file (None for no file),
    with one clear error for anything else."""
    import json
    from pathlib import Path

    from ..common.errors import UserError

    if path is None:
        return None
    try:
        best = json.loads(Path(path).read_text())["best"]
    except FileNotFoundError:
        raise UserError(f"baseline config {path} not found") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a 'mm2latent eval tune-baseline' result (no 'best' settings)") from None
    allowed = {"lr", "reg_weight", "seg_weight", "text_weight"}
    if not isinstance(best, dict) or not set(best) <= allowed or not all(isinstance(v, (int, float)) for v in best.values()):
        raise UserError(f"{path}: 'best' must map {sorted(allowed)} to numbers")
    return {k: float(v) for k, v in best.items()}


#: the grid searched by :func:`tune_optimisation` (learning rate x mean pull x mask weight)
TUNING_GRID = {"lr": (0.01, 0.03, 0.1), "reg_weight": (0.002, 0.02), "seg_weight": (1.0, 3.0)}


def tune_optimisation(pipe, num: int = 16, steps: int = 100, grid: dict | None = None, batch: int = 16,
                      split: str = "val") -> dict:
    """Grid search of the baseline's settings on a *validation* split (never the test
    split the report uses), scored by text fidelity + mask mIoU on ``num`` faces
    with ``steps`` steps; returns every row and the best config."""
    import itertools

    from ..common.progress import progress
    from ..models.metrics import confusion_matrix, mean_iou
    from .pipeline import fact_accuracy, render_test

    if split == "test":
        raise ValueError("tune on a validation split, not on the test split")
    grid = grid or TUNING_GRID
    data = render_test(num, pipe.resolution, split=split)
    c = pipe.controls
    text = c.embed_text(data["caption"])
    tmask = resize_labels(data["mask"], c.mask_size)
    rows = []
    keys = list(grid)
    for values in progress(list(itertools.product(*(grid[k] for k in keys))), desc="tuning baseline", unit="config"):
        cfg = OptimisationConfig(steps=steps, **dict(zip(keys, values)))
        xs, sec = [], 0.0
        for a in range(0, num, batch):
            sl = slice(a, min(num, a + batch))
            ws, info = optimise_latents(pipe, text[sl], data["mask"][sl], cfg)
            sec += info["seconds"]
            with torch.no_grad():
                xs.append(pipe.G.synthesis(ws, noise_mode="const"))
        d = c.derive(torch.cat(xs))
        tf = fact_accuracy(d["attributes"], data["facts"])["accuracy"]
        mi = mean_iou(confusion_matrix(d["mask"], tmask))
        rows.append({**dict(zip(keys, values)), "text_fidelity": tf, "mask_miou": mi, "score": tf + mi,
                     "seconds_per_image": sec / num})
    best = max(rows, key=lambda r: r["score"])
    return {"split": split, "num": num, "steps": steps, "grid": {k: list(v) for k, v in grid.items()}, "rows": rows,
            "best": {k: best[k] for k in keys}}
