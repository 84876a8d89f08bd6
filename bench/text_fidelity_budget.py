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

    .venv/bin/python bench/text_fidelity_budget.py --num 200 --threads 2 --out docs/reports/text_fidelity_budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from mm2latent.common.fileio import write_text_atomic  # noqa: E402
from mm2latent.eval.generator import reconstruct  # noqa: E402
from mm2latent.eval.pipeline import fact_accuracy, render_test  # noqa: E402
from pipeline_args import parse_with_pipeline  # noqa: E402


@torch.no_grad()
def judge(pipe, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([pipe.controls.attribute_probs(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def wplus_reconstruct(pipe, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """The W+ inverter's one pass (as ``pipe.invert`` without refinement), batched."""
    return torch.cat([pipe.G.synthesis(pipe.one_pass_codes(images[i:i + batch], "wplus")[0], noise_mode="const")
                      .clamp(-1, 1) for i in range(0, len(images), batch)])


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--split", default="test", choices=("test", "val"))
    a, pipe = parse_with_pipeline(ap)
    data = render_test(a.num, pipe.resolution, a.split)
    c = pipe.controls
    img_emb = torch.cat([c.embed_image(data["image"][i:i + 50]) for i in range(0, a.num, 50)])
    rows = {
        "render (judge ceiling)": data["image"],
        "W+ inverter reconstruction": wplus_reconstruct(pipe, data["image"]),
        "W reconstruction (image encoder)": reconstruct(pipe.G, pipe.image_encoder, data["image"]),
        "MappingNet, render's image embedding as text": generated(pipe, data, {"text": lambda s: img_emb[s]}),
        "MappingNet, render's image embedding as text + mask": generated(
            pipe, data, {"text": lambda s: img_emb[s], "mask": lambda s: c.embed_mask(data["mask"][s])}),
        "MappingNet, caption text": generated(pipe, data, {"text": lambda s: c.embed_text(data["caption"][s])}),
        "MappingNet, caption text + mask": generated(
            pipe, data, {"text": lambda s: c.embed_text(data["caption"][s]), "mask": lambda s: c.embed_mask(data["mask"][s])}),
    }
    report = {"num": a.num, "split": a.split, "weights": a.weights or "shipped", "text_guidance": pipe.text_guidance,
              "guidance_from_layer": pipe.guidance_from_layer, "rows": {}}
    held = {"MappingNet, caption text", "MappingNet, caption text + mask"}
    for name, images in rows.items():
        probs = judge(pipe, images)
        row = {"in_grammar": fact_accuracy(probs, data["facts"]),
               "heldout_grammar_facts": fact_accuracy(probs, data["facts_heldout"])}
        if name in held:  # the held-out-grammar caption itself as the input
            x = generated(pipe, data, {"text": lambda s: c.embed_text(data["caption_heldout"][s]),
                                       **({"mask": lambda s: c.embed_mask(data["mask"][s])} if "mask" in name else {})})
            row["heldout_grammar_caption_input"] = fact_accuracy(judge(pipe, x), data["facts_heldout"])
        report["rows"][name] = row
        print(f"{name:55s} in-grammar facts {row['in_grammar']['accuracy']:.3f}  held-out facts "
              f"{row['heldout_grammar_facts']['accuracy']:.3f}", flush=True)
    if a.out:
        write_text_atomic(a.out, json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: round(v["in_grammar"]["accuracy"], 3) for k, v in report["rows"].items()}, indent=1))


if __name__ == "__main__":
    main()
