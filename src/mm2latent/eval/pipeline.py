"""Held-out evaluation of generation (docs/design.md section 4, issue "MappingNet").

On ``num`` faces of the world test split (rendered with their captions from
the training grammar and from the held-out grammar):

* text fidelity: for every attribute a caption states (asserted or negated),
  is the attribute classifier's decision (p > 0.5) on the generated face the
  stated value? Fraction over all stated facts; text only and text + mask.
  The same check on the *rendered* face gives the judge's ceiling, and on a
  random generator sample the chance level; both are reported alongside.
* mask fidelity: parser mIoU of the generated face against the input mask
  (dataset-level confusion matrix), text + mask.
* sketch fidelity: edge F-score (1 px tolerance) between the input sketch and
  the sketch extracted from the generated face, text + sketch.
* coefficient error: analyzer coefficients of the generated face against the
  input coefficients (raw units), text + coefficients.
* diversity: for a few prompts, mean pairwise L2 distance of (unit) encoder
  image embeddings across seeds, and mean pixel L1 distance, with the text fidelity of those samples.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..common.progress import progress
from ..models.controls import get_control
from ..models.metrics import (coeff_mae_raw, confusion_matrix, edge_match_counts, fscore_from_counts, iou_per_class,
                              mean_iou)
from ..world.attributes import ATTRIBUTES
from ..world.dataset import SPLIT_SEEDS, normalise_coeffs
from ..world.params import COEFF_NAMES

ATTR_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}
DIVERSITY_PROMPTS = ("a smiling woman with blond hair", "a man with black hair and a beard",
                     "an old bald man wearing eyeglasses", "a young woman with wavy brown hair and bangs")


def render_test(num: int, size: int, split: str = "test") -> dict[str, Any]:
    """Renders, masks, sketches, coefficients and one in-grammar + one held-out caption per face
    (at ``size``, or the smallest size the renderer draws if it does not draw that one)."""
    from ..common.imageio import image_to_tensor
    from ..world.render import drawable_size
    from ..world.sample import make_sample

    size = drawable_size(size)
    seed = SPLIT_SEEDS[split]
    out: dict[str, list] = {k: [] for k in ("image", "mask", "sketch", "coeffs", "caption", "facts",
                                            "caption_heldout", "facts_heldout")}
    for i in progress(range(num), desc=f"rendering {split}", unit="face"):
        s = make_sample(seed, i, size, n_captions=1, n_heldout=1)
        out["image"].append(image_to_tensor(s.image))
        out["mask"].append(torch.from_numpy(s.mask.astype(np.int64)))
        out["sketch"].append(torch.from_numpy((s.sketch < 128).astype(np.float32))[None])
        out["coeffs"].append(torch.from_numpy(normalise_coeffs(s.params.coeff_vector()).astype(np.float32)))
        out["caption"].append(s.captions[0].text)
        out["facts"].append(s.captions[0].facts)
        out["caption_heldout"].append(s.captions_heldout[0].text)
        out["facts_heldout"].append(s.captions_heldout[0].facts)
    for k in ("image", "mask", "sketch", "coeffs"):
        out[k] = torch.stack(out[k])
    return out


def fact_accuracy(probs: torch.Tensor, facts: list[dict[str, bool]]) -> dict[str, Any]:
    """Fraction of stated facts the classifier confirms, overall and per attribute."""
    right = total = 0
    per: dict[str, list[int]] = {}
    for p, f in zip(probs, facts):
        for a, v in f.items():
            if a not in ATTR_INDEX:
                continue
            ok = int((float(p[ATTR_INDEX[a]]) > 0.5) == bool(v))
            right += ok
            total += 1
            per.setdefault(a, [0, 0])
            per[a][0] += ok
            per[a][1] += 1
    return {"accuracy": right / max(total, 1), "facts": total,
            "per_attribute": {a: round(r / n, 3) for a, (r, n) in sorted(per.items())}}


@torch.no_grad()
def _generate(pipe, emb: dict, seeds: list[int], truncation: float) -> torch.Tensor:
    return pipe.synthesize(pipe.latents(emb, seeds, truncation), seeds)


def _batched_embeddings(pipe, data, idx: slice, use: tuple[str, ...], caption_key: str = "caption") -> dict:
    """Embeddings of rows ``idx`` of the test data for the controls ``use`` (the text from ``caption_key``)."""
    emb = {m: None for m in pipe.mapping.modalities}
    for m in use:
        emb[m] = get_control(m).embed(pipe.controls, data[caption_key if m == "text" else m][idx])
    return emb


@torch.no_grad()
def evaluate_pipeline(pipe, num: int = 200, batch: int = 25, truncation: float = 1.0, seed: int = 0,
                      data: dict | None = None, diversity_seeds: int = 8, split: str = "test") -> dict[str, Any]:
    data = data if data is not None else render_test(num, pipe.resolution, split)
    n = len(data["caption"])
    c = pipe.controls
    settings = {
        "text": (("text",), "caption"),
        "text_heldout": (("text",), "caption_heldout"),
        "text+mask": (("text", "mask"), "caption"),
        "text_heldout+mask": (("text", "mask"), "caption_heldout"),
        "text+sketch": (("text", "sketch"), "caption"),
        "text+coeffs": (("text", "coeffs"), "caption"),
        "mask": (("mask",), "caption"),
    }
    derived: dict[str, dict[str, list]] = {k: {"attributes": [], "mask": [], "sketch": [], "coeffs": []} for k in settings}
    ref = {"attributes": [], "mask": [], "sketch": [], "coeffs": []}
    rand = {"attributes": []}
    t0 = time.perf_counter()
    for a in progress(range(0, n, batch), desc="generating", unit="batch"):
        sl = slice(a, min(n, a + batch))
        seeds = [seed * 100003 + i for i in range(sl.start, sl.stop)]
        for name, (use, key) in settings.items():
            x = _generate(pipe, _batched_embeddings(pipe, data, sl, use, key), seeds, truncation)
            d = c.derive(x)
            for k in derived[name]:
                derived[name][k].append(d[k])
        d = c.derive(data["image"][sl])
        for k in ref:
            ref[k].append(d[k])
        z = torch.stack([torch.randn(pipe.G.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
        rand["attributes"].append(c.derive(pipe.G(z, truncation_psi=truncation, noise_mode="const"))["attributes"])
    gen_seconds = time.perf_counter() - t0
    cat = {k: {kk: torch.cat(v) for kk, v in d.items()} for k, d in derived.items()}
    ref = {k: torch.cat(v) for k, v in ref.items()}
    rand_attr = torch.cat(rand["attributes"])

    def mask_miou(pred):
        return mean_iou(confusion_matrix(pred, c_mask))

    c_mask = data["mask"] if data["mask"].shape[-1] == c.mask_size else torch.nn.functional.interpolate(
        data["mask"][:, None].float(), size=(c.mask_size,) * 2, mode="nearest")[:, 0].long()
    from ..models.controls import resize_sketch

    in_sk = resize_sketch(data["sketch"], c.sketch_size)
    report: dict[str, Any] = {"num": n, "split": split,
                              "truncation": truncation, "text_noise_std_at_inference": pipe.text_noise_std,
                              "text_guidance": pipe.text_guidance, "guidance_from_layer": pipe.guidance_from_layer}
    report["text_fidelity"] = {
        "in_grammar": {"text": fact_accuracy(cat["text"]["attributes"], data["facts"]),
                       "text+mask": fact_accuracy(cat["text+mask"]["attributes"], data["facts"]),
                       "text+sketch": fact_accuracy(cat["text+sketch"]["attributes"], data["facts"]),
                       "text+coeffs": fact_accuracy(cat["text+coeffs"]["attributes"], data["facts"]),
                       "mask_only (no text)": fact_accuracy(cat["mask"]["attributes"], data["facts"]),
                       "ceiling: judge on the rendered face": fact_accuracy(ref["attributes"], data["facts"]),
                       "chance: random generator sample": fact_accuracy(rand_attr, data["facts"])},
        "heldout_grammar": {"text": fact_accuracy(cat["text_heldout"]["attributes"], data["facts_heldout"]),
                            "text+mask": fact_accuracy(cat["text_heldout+mask"]["attributes"], data["facts_heldout"]),
                            "ceiling: judge on the rendered face": fact_accuracy(ref["attributes"], data["facts_heldout"]),
                            "chance: random generator sample": fact_accuracy(rand_attr, data["facts_heldout"])},
    }
    cm = confusion_matrix(cat["text+mask"]["mask"], c_mask)
    from ..common.palette import CLASS_NAMES

    report["mask_fidelity"] = {
        "text+mask_miou": mask_miou(cat["text+mask"]["mask"]),
        "mask_only_miou": mask_miou(cat["mask"]["mask"]),
        "text_only_miou (no mask given; reference)": mask_miou(cat["text"]["mask"]),
        "ceiling: parser on the rendered face": mask_miou(ref["mask"]),
        "per_class_text+mask": {n_: (None if np.isnan(v) else round(float(v), 3))
                                for n_, v in zip(CLASS_NAMES, iou_per_class(cm))},
    }
    report["sketch_fidelity"] = {
        "text+sketch_fscore": fscore_from_counts(edge_match_counts(cat["text+sketch"]["sketch"], in_sk))["fscore"],
        "text_only_fscore (no sketch given; reference)": fscore_from_counts(edge_match_counts(cat["text"]["sketch"], in_sk))["fscore"],
    }
    mae = coeff_mae_raw(cat["text+coeffs"]["coeffs"], data["coeffs"])
    mae_ref = coeff_mae_raw(cat["text"]["coeffs"], data["coeffs"])
    mae_judge = coeff_mae_raw(ref["coeffs"], data["coeffs"])
    report["coeff_error"] = {
        "text+coeffs_mae": dict(zip(COEFF_NAMES, np.round(mae, 3).tolist())),
        "text_only_mae (no coeffs given; reference)": dict(zip(COEFF_NAMES, np.round(mae_ref, 3).tolist())),
        "judge_error_on_renders": dict(zip(COEFF_NAMES, np.round(mae_judge, 3).tolist())),
    }
    report["diversity"] = diversity(pipe, DIVERSITY_PROMPTS, diversity_seeds, truncation)
    report["generation_seconds_per_face"] = gen_seconds / (n * (len(settings) + 1))
    return report


@torch.no_grad()
def diversity(pipe, prompts, n_seeds: int = 8, truncation: float = 1.0) -> dict[str, Any]:
    from ..world.captions import stated_facts
    from .realism import mean_pairwise_distance

    out = {}
    for p in prompts:
        emb = {m: None for m in pipe.mapping.modalities}
        emb["text"] = pipe.controls.embed_text([p])
        seeds = list(range(n_seeds))
        x = _generate(pipe, emb, seeds, truncation)
        feats = pipe.controls.embed_image(x)
        pix = x.flatten(1)
        d = pipe.controls.derive(x)
        facts = stated_facts(p)
        out[p] = {"embedding_distance": round(float(mean_pairwise_distance(feats)), 4),
                  "pixel_l1_distance": round(float(torch.cdist(pix, pix, p=1).sum() / (n_seeds * (n_seeds - 1) * pix.shape[1])), 4),
                  "text_fidelity": round(fact_accuracy(d["attributes"], [facts] * n_seeds)["accuracy"], 3),
                  "facts": facts}
    return out


@torch.no_grad()
def latency(pipe, mask_path: str, text: str = "a smiling woman with blond hair", repeats: int = 10,
            batch: int = 16) -> dict[str, float]:
    """Median seconds for one generate() (text + mask, batch 1) and faces/s for a batch of seeds."""
    pipe.generate(text=text, mask=mask_path, seed=0)  # warm-up
    ts = []
    for i in range(repeats):
        t = time.perf_counter()
        pipe.generate(text=text, mask=mask_path, seed=i)
        ts.append(time.perf_counter() - t)
    t = time.perf_counter()
    pipe.generate_batch(text=text, mask=mask_path, seeds=list(range(batch)))
    tb = time.perf_counter() - t
    return {"generate_latency_s_median": float(np.median(ts)), "batched_faces_per_s": batch / tb, "batch": batch,
            "threads": torch.get_num_threads()}
