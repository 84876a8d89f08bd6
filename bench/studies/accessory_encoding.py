"""Does the generator's latent space know who wears earrings and necklaces?

Two measurements for one weights directory:

1. A linear probe on w = mapping(mu(x)) of training renders (logistic regression, trained on the
   first 80 %, balanced accuracy on the rest) for earrings, necklaces, hats, eyeglasses, smiling and
   gender. Balanced accuracy near the gender-only level (earrings are worn by 40 % of women and 7 % of
   men, so gender alone gives about 0.67) means w does not carry the accessory.
2. Parsed accessory pixels per image in the reconstructions of held-out test renders, for the faces
   that wear the accessory and those that do not (and earrings by type: hoop or stud), against the
   parsed renders. A synthesis that cannot tell wearers apart draws the same small speck on everyone.

    .venv/bin/python bench/studies/accessory_encoding.py --weights src/mm2latent/weights --out docs/reports/accessory_encoding.json
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from mm2latent.common.fileio import emit_json_report
from mm2latent.common.palette import CLASS_NAMES
from mm2latent.eval.generator import parse_all, reconstruct, render_split
from mm2latent.models.latent_prior import encode_latents
from mm2latent.pipeline import Pipeline
from mm2latent.world.attributes import ATTRIBUTES
from mm2latent.world.cache import CachedWorldDataset
from mm2latent.world.dataset import SPLIT_SEEDS
from mm2latent.world.params import sample_params

PROBED = ("Wearing_Earrings", "Wearing_Necklace", "Wearing_Hat", "Eyeglasses", "Smiling", "Male")


def probe(w: torch.Tensor, attrs: torch.Tensor, steps: int = 400, seed: int = 0) -> dict:
    """Balanced validation accuracy of a class-weighted logistic regression per attribute."""
    w = (w - w.mean(0)) / w.std(0).clamp_min(1e-6)
    cut = int(0.8 * len(w))
    out = {}
    for name in PROBED:
        y = attrs[:, ATTRIBUTES.index(name)]
        torch.manual_seed(seed)
        lin = torch.nn.Linear(w.shape[1], 1)
        opt = torch.optim.Adam(lin.parameters(), 1e-2)
        pos = y[:cut].mean().clamp(1e-3, 1 - 1e-3)
        for _ in range(steps):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(lin(w[:cut]).squeeze(1), y[:cut], pos_weight=(1 - pos) / pos).backward()
            opt.step()
        with torch.no_grad():
            p, yv = lin(w[cut:]).squeeze(1) > 0, y[cut:] > 0.5
        out[name] = round(0.5 * (p[yv].float().mean().item() + (~p[~yv]).float().mean().item()), 3)
    return out


def pixels_by_wearer(masks_parsed: np.ndarray, rec_parsed: np.ndarray, params) -> dict:
    out = {}
    groups = {"ear_r": ("Wearing_Earrings", lambda q: q.u[23] % 0.5 < 0.25), "neck_l": ("Wearing_Necklace", None)}
    for cls, (attr, kind) in groups.items():
        c = CLASS_NAMES.index(cls)
        ref = (masks_parsed == c).reshape(len(masks_parsed), -1).sum(1)
        rec = (rec_parsed == c).reshape(len(rec_parsed), -1).sum(1)
        wear = np.array([q.attrs[attr] for q in params])
        sel = {"wearers": wear, "non_wearers": ~wear}
        if kind is not None:
            k = np.array([kind(q) for q in params])
            sel.update({"hoops": wear & k, "studs": wear & ~k})
        out[cls] = {g: {"n": int(s.sum()), "renders_parsed_px": round(float(ref[s].mean()), 2) if s.any() else None,
                        "reconstructed_px": round(float(rec[s].mean()), 2) if s.any() else None}
                    for g, s in sel.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="weights directory (default: the shipped weights)")
    ap.add_argument("--probe-num", type=int, default=6000, help="training renders encoded for the probe")
    ap.add_argument("--num", type=int, default=800, help="test renders reconstructed")
    ap.add_argument("--data", default="runs/cache_train128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = Pipeline.from_pretrained(a.weights)
    enc = pipe.image_encoder
    data = CachedWorldDataset(a.data, length=a.probe_num)
    n = len(data)
    with torch.no_grad():
        w = encode_latents(pipe.G, enc, data, progress_desc=None)
    attrs = torch.as_tensor(data.attributes[:n], dtype=torch.float32)
    probes = probe(w, attrs)
    x, _ = render_split("test", a.num, pipe.resolution)
    with torch.no_grad():
        rec = reconstruct(pipe.G, enc, x)
    params = [sample_params(SPLIT_SEEDS["test"], i) for i in range(a.num)]
    parser = pipe.controls.parser
    pixels = pixels_by_wearer(parse_all(parser, x), parse_all(parser, rec), params)
    print("linear probe on w, balanced accuracy:", probes)
    for cls, per in pixels.items():
        print(cls, "  ".join(f"{g} (n={v['n']}): {v['reconstructed_px']} / {v['renders_parsed_px']} px"
                             for g, v in per.items()))
    emit_json_report({"weights": pipe.info["weights"], "probe_num": n, "num": a.num,
                      "command": f"bench/studies/accessory_encoding.py --weights {a.weights or 'src/mm2latent/weights'}",
                      "probe_balanced_accuracy": probes, "pixels_per_image_reconstructed_vs_renders": pixels}, a.out)


if __name__ == "__main__":
    main()
