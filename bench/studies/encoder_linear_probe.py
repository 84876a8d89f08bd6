"""Does an encoder's image embedding carry each attribute at all? A linear probe says.

Zero-shot probing mixes two failures: the image tower not seeing an attribute,
and the text tower not naming it. This fits one class-balanced logistic
regression per attribute on the (standardised) image embeddings of the first
``--train`` renders of a world cache and reports balanced accuracy on the rest.
Attributes at 0.5 here are invisible to the image tower, whatever the text says.

    .venv/bin/python bench/studies/encoder_linear_probe.py --data runs/cache_test1k \\
        src/mm2latent/weights/encoder.safetensors runs/wprev_enc/encoder.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from mm2latent.eval.encoder import balanced_accuracy  # noqa: E402
from mm2latent.models.clip import load_clip  # noqa: E402
from mm2latent.world.attributes import ATTRIBUTES  # noqa: E402
from mm2latent.world.cache import CachedWorldDataset  # noqa: E402


def probe(weights: str, data: CachedWorldDataset, num: int, train: int, steps: int = 500) -> dict:
    model = load_clip(weights).eval()
    b = data.batch(np.arange(num))
    with torch.no_grad():
        f = torch.cat([model.encode_image(b["image"][i:i + 200]) for i in range(0, num, 200)])
    y = b["attributes"]
    tr, te = slice(0, train), slice(train, num)
    f = (f - f[tr].mean(0)) / f[tr].std(0).clamp(min=1e-6)
    torch.manual_seed(0)
    W = torch.zeros(f.shape[1], y.shape[1], requires_grad=True)
    bias = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([W, bias], 1e-2)
    pos_weight = (1 - y[tr]).sum(0) / y[tr].sum(0).clamp(min=1)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(f[tr] @ W + bias, y[tr], pos_weight=pos_weight) + 1e-3 * W.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (f[te] @ W + bias > 0).numpy()
    truth = y[te].numpy() > 0.5
    per = {}
    for j, a in enumerate(ATTRIBUTES):
        if 5 <= truth[:, j].sum() <= len(truth) - 5:  # both classes present in the test part
            per[a] = round(float(balanced_accuracy(pred[:, j], truth[:, j])), 4)
    return {"weights": weights, "mean": round(float(np.mean(list(per.values()))), 4), "per_attribute": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("weights", nargs="+", help="CLIP weights (.safetensors with its .json)")
    ap.add_argument("--data", default="runs/cache_test1k", help="world cache (held-out renders)")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--train", type=int, default=700, help="renders used to fit the probe; the rest test it")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = CachedWorldDataset(a.data)
    num = min(a.num, len(data))
    rows = [probe(w, data, num, min(a.train, num - 10)) for w in a.weights]
    for r in rows:
        low = sorted(r["per_attribute"].items(), key=lambda kv: kv[1])[:6]
        print(f"{r['weights']}: mean {r['mean']:.3f}; lowest {low}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"data": a.data, "num": num, "train": a.train, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
