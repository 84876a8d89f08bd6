"""Why do samples hold fewer accessory pixels than the renders: drawn less often, or drawn smaller?

For eyeglasses, hats, earrings and necklaces: the share of pixels, the share of images holding the
class at all (more than a class-specific handful of pixels) and the mean size where it is held, on
held-out test renders (true masks, and the shipped parser on them), the generator's reconstructions
of those renders, and untruncated samples from the latent prior (all parsed). Ratios are against the
parsed renders, as in ``mm2latent eval generator``.

    .venv/bin/python bench/studies/accessory_presence.py --num 1500 --out docs/reports/accessory_presence.json
"""

import argparse

import numpy as np
import torch

from mm2latent.pipeline.sampling import sample_generator
from mm2latent.common.fileio import emit_json_report
from mm2latent.common.palette import CLASS_NAMES
from mm2latent.eval.generator import parse_all, reconstruct, render_split, to_float
from mm2latent.pipeline import Pipeline

#: a class counts as present above this share of an image's pixels (a 128 px earring is ~10-20 px)
PRESENT = {"eye_g": 0.002, "hat": 0.005, "ear_r": 0.0003, "neck_l": 0.001}


def presence(seg: np.ndarray) -> dict:
    out = {}
    for name, th in PRESENT.items():
        f = (seg == CLASS_NAMES.index(name)).reshape(len(seg), -1).mean(1)
        held = f > th
        out[name] = {"share": float(f.mean()), "held": float(held.mean()),
                     "size_where_held": float(f[held].mean()) if held.any() else 0.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = Pipeline.from_pretrained()
    parser = pipe.controls.parser
    x, masks = render_split("test", a.num, pipe.resolution)
    rec = reconstruct(pipe.G, pipe.image_encoder, x)
    samples = to_float(sample_generator(pipe.G, a.num, a.seed, 1.0, prior=pipe.latent_prior)[0])
    sets = {"true_masks": presence(masks), "parsed_renders": presence(parse_all(parser, x)),
            "reconstructions": presence(parse_all(parser, rec)), "samples": presence(parse_all(parser, samples))}
    ref = sets["parsed_renders"]
    ratios = {s: {c: {k: round(v[k] / ref[c][k], 2) if ref[c][k] else None for k in v} for c, v in sets[s].items()}
              for s in sets}
    for s, per in ratios.items():
        print(f"{s:16s}", "  ".join(f"{c}: share {r['share']} held {r['held']} size {r['size_where_held']}"
                                    for c, r in per.items()))
    emit_json_report({"num": a.num, "seed": a.seed, "truncation": 1.0, "present_above": PRESENT,
                      "command": f"bench/studies/accessory_presence.py --num {a.num}", "absolute": sets,
                      "ratio_to_parsed_renders": ratios}, a.out)


if __name__ == "__main__":
    main()
