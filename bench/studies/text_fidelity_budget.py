"""Where does text fidelity go? The same caption facts, judged on the same test faces, along the route.

Text fidelity (fraction of caption-stated facts the attribute classifier confirms) is measured
at each stage between the rendered face and a face generated from its caption:

1. the render itself (the judge's ceiling);
2. the generator's reconstruction of the render through the W+ inverter, and through the
   image encoder in W (what the generator can draw of that face when the latent is found
   from the image itself: the ceiling of any mapping to w);
3. MappingNet fed the render's own image embedding in place of text (its training input,
   the pseudo-text of the method), with and without the render's mask;
4. MappingNet fed the caption's text embedding (what a user gets), with and without the mask.

Every MappingNet row uses the shipped inference settings (text guidance, seeds as in
``mm2latent eval generation``). Gaps between rows say which stage loses the facts: 1->2 the
generator, 2->3 MappingNet, 3->4 the text-image gap of the encoder. Prints and writes JSON.

    .venv/bin/python bench/studies/text_fidelity_budget.py --num 200 --threads 2 --out docs/reports/text_fidelity_budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bench/pipeline_args.py, also when imported from tests

from mm2latent.common.fileio import write_text_atomic  # noqa: E402
from mm2latent.common.progress import progress  # noqa: E402
from mm2latent.eval.generator import reconstruct  # noqa: E402
from mm2latent.models.metrics import confusion_matrix, mean_iou  # noqa: E402
from mm2latent.eval.pipeline import fact_accuracy, render_test  # noqa: E402
from mm2latent.models.inversion import reconstruction_loss  # noqa: E402
from mm2latent.models.controls import resize_labels  # noqa: E402
from mm2latent.pipeline.editing import FEATURE_WEIGHT, feature_loss  # noqa: E402
from pipeline_args import parse_with_pipeline  # noqa: E402


@torch.no_grad()
def judge(pipe, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([pipe.controls.attribute_probs(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def wplus_reconstruct(pipe, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """The W+ inverter's one pass (as ``pipe.invert`` without refinement), batched."""
    return torch.cat([pipe.G.synthesis(pipe.one_pass_codes(images[i:i + batch], "wplus")[0], noise_mode="const")
                      .clamp(-1, 1) for i in range(0, len(images), batch)])


def optimised_reconstruct(pipe, images: torch.Tensor, steps: int, space: str, lr: float = 0.02,
                          batch: int = 50) -> torch.Tensor:
    """A tighter ceiling than one pass: start from the one-pass code (image encoder for "w", W+
    inverter for "wplus") and optimise it by Adam on ``pipe.invert``'s refinement loss (pixel +
    image-embedding), without the pull back to the start. In "w" one w is shared by all layers,
    so the result is a face that a mapping to W could still output."""
    enc_img = pipe.controls.encoder
    out = []
    for i in progress(range(0, len(images), batch), desc=f"optimising {space}", unit="batch"):
        x = images[i:i + batch]
        codes, _ = pipe.one_pass_codes(x, "w" if space == "w" else "wplus")
        p = (codes[:, 0] if space == "w" else codes).clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=lr)
        with torch.no_grad():
            target = enc_img.encode_image(x)

        def draw():
            return pipe.G.synthesis(pipe.G.broadcast(p) if space == "w" else p, noise_mode="const")

        with torch.enable_grad():
            for _ in range(steps):
                y = draw()
                loss = reconstruction_loss(y, x) + FEATURE_WEIGHT * feature_loss(enc_img, y, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            out.append(draw().clamp(-1, 1))
    return torch.cat(out)


@torch.no_grad()
def generated(pipe, data: dict, use: dict, seed: int = 0, batch: int = 25) -> torch.Tensor:
    """Faces from the embeddings in ``use`` (name -> function of a batch slice), seeds as in eval generation."""
    n = len(data["caption"])
    out = []
    for a in range(0, n, batch):
        sl = slice(a, min(n, a + batch))
        seeds = [seed * 100003 + i for i in range(sl.start, sl.stop)]
        emb = {m: None for m in pipe.mapping.modalities}
        emb.update({m: f(sl) for m, f in use.items()})
        out.append(pipe.synthesize(pipe.latents(emb, seeds), seeds))
    return torch.cat(out)


def mapping_rows(pipe, data: dict, img_emb: torch.Tensor) -> dict[str, torch.Tensor]:
    c = pipe.controls
    return {
        "MappingNet, render's image embedding as text": generated(pipe, data, {"text": lambda s: img_emb[s]}),
        "MappingNet, render's image embedding as text + mask": generated(
            pipe, data, {"text": lambda s: img_emb[s], "mask": lambda s: c.embed_mask(data["mask"][s])}),
        "MappingNet, caption text": generated(pipe, data, {"text": lambda s: c.embed_text(data["caption"][s])}),
        "MappingNet, caption text + mask": generated(
            pipe, data, {"text": lambda s: c.embed_text(data["caption"][s]), "mask": lambda s: c.embed_mask(data["mask"][s])}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--split", default="test", choices=("test", "val"))
    ap.add_argument("--optimise-steps", type=int, default=0,
                    help="also judge reconstructions optimised this many steps in W and in W+ (0: skip)")
    ap.add_argument("--only-ceilings", action="store_true",
                    help="judge only the render and the generator's reconstructions (no MappingNet rows)")
    a, pipe = parse_with_pipeline(ap)
    data = render_test(a.num, pipe.resolution, a.split)
    c = pipe.controls
    img_emb = torch.cat([c.embed_image(data["image"][i:i + 50]) for i in range(0, a.num, 50)])
    rows = {
        "render (judge ceiling)": data["image"],
        "W+ inverter reconstruction": wplus_reconstruct(pipe, data["image"]),
        "W reconstruction (image encoder)": reconstruct(pipe.G, pipe.image_encoder, data["image"]),
    }
    if a.optimise_steps:
        k = a.optimise_steps
        rows[f"W+ reconstruction, inverter + {k} optimisation steps"] = optimised_reconstruct(pipe, data["image"], k, "wplus")
        rows[f"W reconstruction, image encoder + {k} optimisation steps"] = optimised_reconstruct(pipe, data["image"], k, "w")
    if not a.only_ceilings:
        rows.update(mapping_rows(pipe, data, img_emb))
    report = {"num": a.num, "split": a.split, "weights": a.weights or "shipped", "text_guidance": pipe.text_guidance,
              "guidance_from_layer": pipe.guidance_from_layer, "optimise_steps": a.optimise_steps, "rows": {}}
    held = {"MappingNet, caption text", "MappingNet, caption text + mask"}
    true_masks = resize_labels(data["mask"], c.mask_size)
    for name, images in rows.items():
        probs = judge(pipe, images)
        masks = torch.cat([c.parse_mask(images[i:i + 50]) for i in range(0, len(images), 50)])
        row = {"in_grammar": fact_accuracy(probs, data["facts"]),
               "heldout_grammar_facts": fact_accuracy(probs, data["facts_heldout"]),
               "parser_miou_vs_render_mask": mean_iou(confusion_matrix(masks, true_masks))}
        if name in held:  # the held-out-grammar caption itself as the input
            x = generated(pipe, data, {"text": lambda s: c.embed_text(data["caption_heldout"][s]),
                                       **({"mask": lambda s: c.embed_mask(data["mask"][s])} if "mask" in name else {})})
            row["heldout_grammar_caption_input"] = fact_accuracy(judge(pipe, x), data["facts_heldout"])
        report["rows"][name] = row
        print(f"{name:55s} in-grammar facts {row['in_grammar']['accuracy']:.3f}  held-out facts "
              f"{row['heldout_grammar_facts']['accuracy']:.3f}  mask mIoU {row['parser_miou_vs_render_mask']:.3f}",
              flush=True)
    if a.out:
        write_text_atomic(a.out, json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: round(v["in_grammar"]["accuracy"], 3) for k, v in report["rows"].items()}, indent=1))


if __name__ == "__main__":
    main()
