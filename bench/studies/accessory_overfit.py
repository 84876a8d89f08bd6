"""Can the shipped synthesis draw full-size earrings and necklaces at all?

Takes the first test renders that wear earrings or a necklace, encodes them (the generator's own
encoder, w broadcast to every layer) and fine-tunes only the synthesis network on just these images,
full batch, with pixel L1 + the parser's cross-entropy against the true masks: a deliberate overfit.
Reports accessory pixel shares of the parsed outputs against the parsed renders before and during
the overfit. If even this stays short, the shortfall is what the synthesis can draw at 128 px, not
what its training asked of it. Nothing is saved; the shipped weights are only read.

    .venv/bin/python bench/studies/accessory_overfit.py --num 64 --steps 200 --out docs/reports/accessory_overfit.json
    .venv/bin/python bench/studies/accessory_overfit.py --num 64 --steps 200 --widen 128:32,64:64 \
        --out docs/reports/accessory_overfit_widened.json
    .venv/bin/python bench/studies/accessory_overfit.py --num 64 --steps 200 --image-share-weight 0.1 \
        --out docs/reports/accessory_overfit_image_share.json
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from mm2latent.common.fileio import emit_json_report
from mm2latent.common.palette import CLASS_NAMES
from mm2latent.eval.generator import class_frequencies, parse_all, render_split, split_attributes
from mm2latent.models.latent_prior import encode_latents
from mm2latent.models.stylegan2 import widen_generator
from mm2latent.pipeline import Pipeline
from mm2latent.models.registry import default_weights_dir, load_optional
from mm2latent.train.generator_ae import image_share_loss
from mm2latent.world.attributes import ATTRIBUTES

CLASSES = ("eye_g", "hat", "ear_r", "neck_l")


def shares(seg: np.ndarray) -> dict:
    freq = class_frequencies(seg)
    return {c: float(freq[CLASS_NAMES.index(c)]) for c in CLASSES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--widen", default=None, metavar="RES:CH,...",
                    help="first widen these synthesis blocks (widen_generator; same images before the overfit), "
                         "e.g. 128:32,64:64: is the narrow last block what limits the accessories?")
    ap.add_argument("--image-share-weight", type=float, default=0.0,
                    help="add this weight x the per-image class-share term (train.generator_ae.image_share_loss)")
    ap.add_argument("--share-temperature", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    pipe = Pipeline.from_pretrained()
    G, parser = pipe.G, pipe.controls.parser
    if a.widen:
        G = widen_generator(G, {int(r): int(c) for r, c in (item.split(":") for item in a.widen.split(","))})
    pool = 10 * a.num
    at = split_attributes("test", pool)
    wearing = (at[:, ATTRIBUTES.index("Wearing_Earrings")] > 0.5) | (at[:, ATTRIBUTES.index("Wearing_Necklace")] > 0.5)
    sel = np.where(wearing)[0][:a.num]
    x, masks = render_split("test", pool, pipe.resolution)
    x, target = x[sel], torch.as_tensor(masks[sel]).long()
    ws = G.broadcast(encode_latents(G, load_optional(default_weights_dir(), "image_encoder"), x, progress_desc=None))
    G.requires_grad_(False)
    parser.requires_grad_(False)
    G.synthesis.requires_grad_(True)
    opt = torch.optim.Adam([p for p in G.synthesis.parameters() if p.requires_grad], lr=a.lr, betas=(0.5, 0.99))
    ref = shares(parse_all(parser, x))

    def measure(step: int, loss: float | None) -> dict:
        with torch.no_grad():
            y = torch.cat([G.synthesis(ws[i:i + 16], noise_mode="const") for i in range(0, len(ws), 16)]).clamp(-1, 1)
        got = shares(parse_all(parser, y))
        row = {"step": step, "loss": loss, **{c: round(got[c] / ref[c], 3) for c in CLASSES}}
        print(row, flush=True)
        return row

    rows, t0 = [measure(0, None)], time.time()
    for step in range(1, a.steps + 1):
        opt.zero_grad()
        total = 0.0
        for i in range(0, len(ws), 16):
            y = G.synthesis(ws[i:i + 16], noise_mode="const")
            logits = parser(y)
            loss = (y - x[i:i + 16]).abs().mean() + F.cross_entropy(logits, target[i:i + 16])
            if a.image_share_weight > 0:
                loss = loss + a.image_share_weight * image_share_loss(logits, target[i:i + 16], a.share_temperature)
            loss = loss * len(y) / len(ws)
            loss.backward()
            total += loss.item()
        opt.step()
        if step % 50 == 0 or step == a.steps:
            rows.append(measure(step, round(total, 4)))
    emit_json_report({"num": len(sel), "steps": a.steps, "lr": a.lr, "seconds": round(time.time() - t0),
                      "widths": {r: G.cfg.g_width(r) for r in G.cfg.resolutions},
                      "command": f"bench/studies/accessory_overfit.py --num {a.num} --steps {a.steps} --lr {a.lr}"
                                 + (f" --widen {a.widen}" if a.widen else "")
                                 + (f" --image-share-weight {a.image_share_weight} --share-temperature {a.share_temperature}"
                                    if a.image_share_weight > 0 else ""),
                      "renders_parsed_shares": ref, "ratio_to_parsed_renders": rows}, a.out)


if __name__ == "__main__":
    main()
