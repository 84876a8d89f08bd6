"""One-pass MM2Latent generation against TediGAN-style latent optimisation, in one run.

On the same held-out world faces (text + mask from the test split) it times,
at the same batch size and thread count:

* the generator alone (mapping + synthesis of a given w): the floor of any
  StyleGAN method;
* the full pipeline (text + mask embedding, MappingNet, synthesis);
* latent optimisation (eval.baselines.optimise_latents) at each --steps budget
  (one run of the longest, snapshotted at the shorter ones);

and reports seconds per image, the ratio baseline / pipeline, the pipeline's
overhead over the generator floor, each method's text fidelity (caption facts
confirmed by the attribute classifier) and mask mIoU, and the smallest budget at
which the baseline reaches MappingNet's mask mIoU and text fidelity (the speed
ratio at equal fidelity).

    .venv/bin/python bench/generation_speed.py --num 16 --batch 8 --steps 100 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from mm2latent.common.fileio import emit_json_report  # noqa: E402
from mm2latent.eval.baselines import load_tuned_settings, optimise_budgets  # noqa: E402
from mm2latent.models.metrics import confusion_matrix, mean_iou  # noqa: E402
from mm2latent.eval.pipeline import fact_accuracy, render_test  # noqa: E402
from mm2latent.pipeline import Pipeline  # noqa: E402


def fidelity(pipe, x, data):
    d = pipe.controls.derive(x)
    return {"text_fidelity": round(fact_accuracy(d["attributes"], data["facts"])["accuracy"], 3),
            "mask_miou": round(mean_iou(confusion_matrix(d["mask"], data["mask"])), 3)}


def matched_budgets(res: dict, steps: list[int]) -> dict:
    """The smallest optimisation budget whose mask mIoU, and whose text fidelity, reach MappingNet's;
    the speed ratio at that budget is how much faster MappingNet is at equal fidelity on that measure.
    None where no budget measured gets there."""
    out = {}
    for measure in ("mask_miou", "text_fidelity"):
        k = next((k for k in steps if res[f"optimisation_{k}"][measure] >= res["mm2latent"][measure]), None)
        out[measure] = {"steps": k, "speed_ratio": None if k is None else res[f"optimisation_{k}_over_mm2latent"]}
    both = next((k for k in steps if all(res[f"optimisation_{k}"][m] >= res["mm2latent"][m]
                                         for m in ("mask_miou", "text_fidelity"))), None)
    out["both"] = {"steps": both, "speed_ratio": None if both is None else res[f"optimisation_{both}_over_mm2latent"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[100])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--baseline-config", default=None, metavar="TUNING.json",
                    help="baseline settings tuned on the validation split (mm2latent eval tune-baseline)")
    a = ap.parse_args()
    settings = load_tuned_settings(a.baseline_config)
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = Pipeline.from_pretrained(a.weights)
    data = render_test(a.num, pipe.resolution)
    n, bsz = a.num, a.batch
    res = {"num": n, "batch": bsz, "threads": torch.get_num_threads(),
           "baseline_settings": settings or "defaults (eval.baselines.OptimisationConfig)"}

    def batches():
        for i in range(0, n, bsz):
            yield slice(i, min(n, i + bsz))

    with torch.no_grad():  # warm-up of every path timed below (first calls allocate, fill the BPE cache, ...)
        pipe.G.synthesis(pipe.G.broadcast(pipe.G.w_avg[None].expand(bsz, -1)), noise_mode="const")
        warm = {m: None for m in pipe.mapping.modalities}
        warm["text"] = pipe.controls.embed_text(data["caption"][:bsz])
        warm["mask"] = pipe.controls.embed_mask(data["mask"][:bsz])
        pipe.synthesize(pipe.latents(warm, list(range(bsz))), None)
    # generator floor: synthesis from ready-made w
    t = time.perf_counter()
    with torch.no_grad():
        for sl in batches():
            w = pipe.G.w_avg[None].expand(sl.stop - sl.start, -1)
            pipe.G.synthesis(pipe.G.broadcast(w), noise_mode="const")
    res["generator_s_per_image"] = (time.perf_counter() - t) / n
    # full pipeline: embed text + mask, map, synthesise
    outs = []
    t = time.perf_counter()
    with torch.no_grad():
        for sl in batches():
            c = pipe.controls
            emb = {m: None for m in pipe.mapping.modalities}
            emb["text"] = c.embed_text(data["caption"][sl])
            emb["mask"] = c.embed_mask(data["mask"][sl])
            seeds = list(range(sl.start, sl.stop))
            outs.append(pipe.synthesize(pipe.latents(emb, seeds), None))
    res["mm2latent_s_per_image"] = (time.perf_counter() - t) / n
    res["mm2latent"] = fidelity(pipe, torch.cat(outs), data)
    res["pipeline_over_generator_floor"] = res["mm2latent_s_per_image"] / res["generator_s_per_image"]
    # latent optimisation: one run of the longest budget; every shorter budget is a snapshot of it
    # (identical codes), timed up to that step (text embedding and synthesis of its codes included)
    steps = sorted(set(a.steps))
    runs = optimise_budgets(pipe, data["caption"], data["mask"], steps, settings, batch=bsz)
    for k in steps:
        key = f"optimisation_{k}"
        res[key + "_s_per_image"] = runs[k][1] / n
        res[key] = fidelity(pipe, runs[k][0], data)
        res[key + "_over_mm2latent"] = res[key + "_s_per_image"] / res["mm2latent_s_per_image"]
    res["matched_fidelity"] = matched_budgets(res, steps)
    emit_json_report(res, a.out)


if __name__ == "__main__":
    main()
