"""MappingNet ablations, trained and evaluated in one run on the same data and test faces.

Variants (each a MappingNet trained for --steps on the same generator-derived
data, then evaluated with *real* captions on held-out world faces):

* text noise: pseudo-text noise std in {0, sigma/2, sigma, 2 sigma}, sigma being the
  shipped setting (the measured image-text gap of our encoder) -- the paper's claim
  is that without noise the net does not transfer from image to text embeddings;
* W vs W+ output;
* with / without the image-space parser loss (--seg, costs a generator pass per step);
  with --from-shipped both arms start from the shipped MappingNet and train --seg-steps
  more steps at --seg-lr, so that the comparison isolates the loss, not the budget.

Prints and writes a JSON table: text fidelity (in-grammar, held-out grammar),
text+mask fidelity and mask mIoU for each variant.

    .venv/bin/python bench/studies/ablation_mapping.py --data runs/mapping_data --steps 3000 --num 200 \
        --out docs/reports/mapping_ablation.json

``--guidance 0,1`` evaluates every variant with and without text guidance
(``Pipeline(text_guidance=...)``), so noise and guidance can be compared in one table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from mm2latent.common.fileio import emit_json_report  # noqa: E402
from mm2latent.common.progress import progress  # noqa: E402
from mm2latent.models.metrics import confusion_matrix, mean_iou  # noqa: E402
from mm2latent.eval.pipeline import _batched_embeddings, fact_accuracy, render_test  # noqa: E402
from mm2latent.pipeline import Pipeline  # noqa: E402
from mm2latent.models.registry import component_file, default_weights_dir  # noqa: E402
from mm2latent.train.mapping import MappingTrainer, MappingTrainOptions  # noqa: E402
from mm2latent.train.mapping_data import load_mapping_data  # noqa: E402


@torch.no_grad()
def evaluate(pipe, data, batch: int = 50) -> dict:
    res = {}
    for name, use, key, facts in (("text", ("text",), "caption", "facts"),
                                  ("text_heldout", ("text",), "caption_heldout", "facts_heldout"),
                                  ("text+mask", ("text", "mask"), "caption", "facts")):
        attrs, masks = [], []
        for a in range(0, len(data["caption"]), batch):
            sl = slice(a, min(len(data["caption"]), a + batch))
            seeds = list(range(sl.start, sl.stop))
            x = pipe.synthesize(pipe.latents(_batched_embeddings(pipe, data, sl, use, key), seeds), seeds)
            d = pipe.controls.derive(x)
            attrs.append(d["attributes"])
            masks.append(d["mask"])
        res[name + "_fidelity"] = round(fact_accuracy(torch.cat(attrs), data[facts])["accuracy"], 4)
        if "mask" in use:
            res[name + "_miou"] = round(mean_iou(confusion_matrix(torch.cat(masks), data["mask"])), 4)
    return res


@torch.no_grad()
def with_render_masks(mdata: dict, cache: str, pipe, batch: int = 256) -> dict:
    """``mdata`` with ``mask`` / ``mask_emb`` taken from the renders of a world cache."""
    from mm2latent.models.controls import resize_labels
    from mm2latent.world.cache import CachedWorldDataset

    renders = CachedWorldDataset(cache)
    n = len(mdata["w"])
    masks, embs = [], []
    for a in range(0, n, batch):
        idx = np.arange(a, min(n, a + batch)) % len(renders)
        m = resize_labels(renders.batch(idx)["mask"], pipe.controls.mask_size)
        masks.append(m.numpy().astype(np.uint8))
        embs.append(pipe.controls.embed_mask(m).numpy().astype(np.float16))
    return {**mdata, "mask": np.concatenate(masks), "mask_emb": np.concatenate(embs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", default=None, help="weights directory (generator, controls; default shipped)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--sigma", type=float, default=None, help="default: the shipped MappingNet's text_noise_std")
    ap.add_argument("--variants", default="noise,wplus", help="comma list from noise, wplus, seg")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seg-steps", type=int, default=300, help="steps for the parser-loss variant (slow on CPU)")
    ap.add_argument("--image-arms", default="0.1:0",
                    help="comma list of SEG:ATTR weight pairs (parser CE, attribute BCE on G(w)) to compare with 0:0")
    ap.add_argument("--seg-lr", type=float, default=None, help="learning rate of the parser-loss arms")
    ap.add_argument("--from-shipped", action="store_true",
                    help="parser-loss arms fine-tune the shipped MappingNet instead of starting fresh")
    ap.add_argument("--wplus-arms", action="store_true",
                    help="the image-space arms output W+ (with --from-shipped: the shipped W net's output layer "
                    "repeated per generator layer, so each arm starts from the shipped predictions)")
    ap.add_argument("--true-masks", default=None, metavar="CACHE",
                    help="replace each sample's mask (and its embedding) by the true mask of the render its z came "
                    "from (posterior data: sample i <- render i mod N): the parser loss then pulls G(w_pred) towards "
                    "world masks, as at test time, instead of towards masks the generator already draws")
    ap.add_argument("--guidance", default="0", metavar="G[,G...]",
                    help="evaluate every variant at each of these text guidance scales (Pipeline text_guidance)")
    ap.add_argument("--guidance-from-layer", type=int, default=0, metavar="K",
                    help="first generator layer the text guidance applies to")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--save-dir", default=None, help="also keep each variant's mapping_net here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    base_pipe = Pipeline.from_pretrained(a.weights)
    sigma = a.sigma if a.sigma is not None else base_pipe.text_noise_std
    data = render_test(a.num, base_pipe.resolution)
    mdata = load_mapping_data(a.data)
    if a.true_masks:
        mdata = with_render_masks(mdata, a.true_masks, base_pipe)
    variants: list[tuple[str, dict]] = []
    wanted = {v.strip() for v in a.variants.split(",")}
    if "noise" in wanted:
        variants += [(f"noise={s:.4f}", {"text_noise_std": s}) for s in (0.0, sigma / 2, sigma, 2 * sigma)]
    if "wplus" in wanted:
        variants.append((f"W+ (noise={sigma:.4f})", {"text_noise_std": sigma, "wplus": True}))
    if "seg" in wanted:
        start = ("shipped + " if a.from_shipped else "") + ("W+, " if a.wplus_arms else "")
        seg_kw = {"text_noise_std": sigma, "steps": a.seg_steps, "wplus": a.wplus_arms,
                  **({"lr": a.seg_lr} if a.seg_lr else {})}
        for arm in ["0:0"] + [v for v in a.image_arms.split(",") if v.strip()]:
            seg_w, attr_w = (float(v) for v in arm.split(":"))
            label = " + ".join([f"parser loss {seg_w:g}"] * (seg_w > 0) + [f"attribute loss {attr_w:g}"] * (attr_w > 0))
            variants.append((f"{start}{a.seg_steps} steps, {label or 'w loss only'}",
                             {**seg_kw, "seg_weight": seg_w, "attr_weight": attr_w, "init": a.from_shipped}))
    scales = [float(g) for g in a.guidance.split(",") if g.strip()]
    table = {"sigma": sigma, "steps": a.steps, "num": a.num, "data": a.data, "rows": {},
             "guidance": scales, "guidance_from_layer": a.guidance_from_layer, "command": " ".join(sys.argv)}
    if "seg" in wanted:
        table.update(seg_steps=a.seg_steps, seg_lr=a.seg_lr, from_shipped=a.from_shipped, true_masks=a.true_masks,
                     wplus_arms=a.wplus_arms)
    shipped_net = str(component_file(Path(a.weights) if a.weights else default_weights_dir(), "mapping_net"))
    for name, kw in variants:
        kw = dict(kw)
        if kw.pop("init", False):
            kw["init"] = shipped_net  # MappingTrainOptions.init: the trainer loads it (same-shape check included)
        with tempfile.TemporaryDirectory() as tmp:
            opts = MappingTrainOptions(data=a.data, out=tmp, **{"steps": a.steps, **kw}, weights=a.weights,
                                       batch=a.batch)
            torch.manual_seed(0)
            tr = MappingTrainer(opts, mdata)
            for _ in progress(range(opts.steps), desc=name, unit="step"):
                tr.train_step()
            val = tr.validate()
            if a.save_dir:
                from mm2latent.train.mapping import export

                safe = "".join(ch if ch.isalnum() or ch in "=-" else "_" for ch in name)  # no dots: suffixes
                Path(a.save_dir).mkdir(parents=True, exist_ok=True)
                export(tr, Path(a.save_dir) / f"{safe}.safetensors", val)
        for g in scales:
            pipe = Pipeline(base_pipe.G, base_pipe.controls, tr.net.eval(), None, text_noise_std=kw["text_noise_std"],
                            text_guidance=g, guidance_from_layer=a.guidance_from_layer)
            row = {**evaluate(pipe, data), "val_all_l1": val["val_all_l1"], "val_text_only_l1": val["val_text_only_l1"]}
            label = name if scales == [0.0] else f"{name}, guidance {g:g}"
            table["rows"][label] = row
            print(label, json.dumps(row), flush=True)
    emit_json_report(table, a.out)


if __name__ == "__main__":
    main()
