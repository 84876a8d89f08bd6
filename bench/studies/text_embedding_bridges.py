"""Inference-time bridges between caption and image embeddings, measured with the shipped MappingNet.

MappingNet is trained on pseudo-text (image embedding + noise) and reads real caption
embeddings at inference. This bench asks whether moving caption embeddings towards
the image-embedding distribution *before* MappingNet helps text fidelity (no
retraining; captions are never used to train anything):

* ``plain``: the caption embedding as is (what the pipeline does);
* ``mean shift a``: normalise(t + a (mu_image - mu_text)), the centroids of the
  training image embeddings (MappingNet data) and of unpaired training-grammar
  captions -- the "modality gap" offset;
* ``soft-NN tau``: normalise(softmax(t . B / tau) B) over a bank B of training image
  embeddings -- the caption replaced by the image embeddings it is closest to.

Prints and writes a JSON table (text fidelity in-grammar and held-out grammar, text+mask
fidelity and mIoU on the same held-out faces).

    .venv/bin/python bench/studies/text_embedding_bridges.py --data runs/mdata3 --captions runs/cache_train128 \
        --num 200 --threads 1 --out docs/reports/text_embedding_bridges.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ablation_mapping (this folder)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bench/pipeline_args.py

from ablation_mapping import evaluate  # noqa: E402
from mm2latent.common.fileio import emit_json_report  # noqa: E402
from mm2latent.eval.pipeline import render_test  # noqa: E402
from pipeline_args import parse_with_pipeline  # noqa: E402
from mm2latent.train.mapping_data import load_mapping_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="MappingNet data (image embeddings of the training renders)")
    ap.add_argument("--captions", required=True, help="world cache whose captions.json gives unpaired captions")
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--num-captions", type=int, default=3000)
    ap.add_argument("--bank", type=int, default=4096)
    ap.add_argument("--shifts", default="0.5,1.0")
    ap.add_argument("--taus", default="0.02,0.05")
    a, pipe = parse_with_pipeline(ap)
    emb = F.normalize(torch.from_numpy(np.asarray(load_mapping_data(a.data, ("image_emb",))["image_emb"], np.float32)),
                      dim=-1)
    mu_i = emb.mean(0)
    caps = json.loads((Path(a.captions) / "captions.json").read_text())
    rng = np.random.default_rng(0)
    picked = [caps[i][rng.integers(len(caps[i]))] for i in rng.choice(len(caps), min(a.num_captions, len(caps)),
                                                                      replace=False)]
    with torch.no_grad():
        mu_t = torch.cat([pipe.controls.embed_text(picked[s:s + 250]) for s in range(0, len(picked), 250)]).mean(0)
    bank = emb[torch.randperm(len(emb), generator=torch.Generator().manual_seed(0))[:a.bank]]
    data = render_test(a.num, pipe.resolution)
    plain = pipe.controls.embed_text
    bridges = {"plain": plain}
    for s in (float(v) for v in a.shifts.split(",") if v):
        bridges[f"mean shift {s:g}"] = lambda t, s=s: F.normalize(plain(t) + s * (mu_i - mu_t), dim=-1)
    for tau in (float(v) for v in a.taus.split(",") if v):
        bridges[f"soft-NN tau {tau:g}"] = lambda t, tau=tau: F.normalize(
            torch.softmax(plain(t) @ bank.T / tau, dim=-1) @ bank, dim=-1)
    table = {"num": a.num, "data": a.data, "bank": len(bank), "gap_norm": round(float((mu_i - mu_t).norm()), 4),
             "rows": {}}
    try:
        for name, fn in bridges.items():
            pipe.controls.embed_text = fn
            table["rows"][name] = evaluate(pipe, data)
            print(name, json.dumps(table["rows"][name]), flush=True)
    finally:
        pipe.controls.embed_text = plain
    emit_json_report(table, a.out)


if __name__ == "__main__":
    main()
