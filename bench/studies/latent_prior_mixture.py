"""Sampling prior of the world generator: one Gaussian over w against Gaussian mixtures.

The shipped generator is the decoder of an autoencoder; unconditional samples draw
w from a density fitted to w = mapping(mu(x)) of the training renders
(:mod:`mm2latent.models.latent_prior`). One Gaussian covers the modes of that
aggregate posterior (hats, glasses, bald heads ...) with one ellipsoid, so samples
fall between modes, and truncation towards its single mean removes rare modes.
A mixture keeps them; its truncation pulls each sample towards its own
component's mean.

For each prior and truncation psi, in one run on the same held-out renders:
Frechet distance and KID in the world encoder's feature space to ``--num`` test
renders, and how often the accessories appear (the analyzer's rate of
Wearing_Hat / Eyeglasses / Wearing_Earrings / Wearing_Necklace, and the parser's
hat pixel share) next to the renders' true rates.

A K suffixed with ``s`` (``--components 16,16s``) fits the mixture stratified by
``--stratify`` (default Wearing_Hat,Eyeglasses): each attribute combination gets its
own share of the K components, fitted to its renders only (``mm2latent train
latent-prior --stratify``).

With ``--val``, each prior's mean log-likelihood of encoded val-split renders: the
criterion K is chosen by (the test renders only measure).

    .venv/bin/python bench/studies/latent_prior_mixture.py --data runs/cache_train128 --val runs/cache_val500 \
        --components 1,8,16,32 --truncation 0.7,1.0 --num 1000 --out docs/reports/latent_prior_mixture.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from mm2latent.common.fileio import emit_json_report  # noqa: E402
from mm2latent.common.palette import CLASS_NAMES  # noqa: E402
from mm2latent.eval.generator import class_frequencies, render_split, split_attributes, to_float  # noqa: E402
from mm2latent.eval.realism import encoder_features, frechet_distance, kernel_inception_distance  # noqa: E402
from mm2latent.models.latent_prior import GaussianLatentPrior, encode_latents, stratification_groups  # noqa: E402
from mm2latent.models.registry import default_weights_dir, load_components, load_optional  # noqa: E402
from mm2latent.pipeline.sampling import sample_generator  # noqa: E402
from mm2latent.world.attributes import ATTRIBUTES  # noqa: E402
from mm2latent.world.cache import CachedWorldDataset  # noqa: E402

ACCESSORIES = ("Wearing_Hat", "Eyeglasses", "Wearing_Earrings", "Wearing_Necklace")


@torch.no_grad()
def judged(images: torch.Tensor, controls, batch: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(attribute probabilities (N, A), parser label maps (N, H, W)) of images in [-1, 1]."""
    probs, masks = [], []
    for i in range(0, len(images), batch):
        d = controls.derive(images[i:i + batch])
        probs.append(d["attributes"].numpy())
        masks.append(d["mask"].numpy())
    return np.concatenate(probs), np.concatenate(masks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="world cache of training renders (the prior is fitted to their w)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--fit-num", type=int, default=20000)
    ap.add_argument("--components", default="1,8,32", help="comma list of K; K's' = stratified by --stratify")
    ap.add_argument("--stratify", default="Wearing_Hat,Eyeglasses")
    ap.add_argument("--truncation", default="0.7,1.0")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", default=None, metavar="CACHE",
                    help="world cache of val-split renders: each prior's mean log-likelihood of their encoded w "
                    "(how K is chosen, without looking at the test renders)")
    ap.add_argument("--latents", default=None, help="cache the encoded training w here (.npy)")
    ap.add_argument("--save-dir", default=None, help="write each fitted prior here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    wd = Path(a.weights) if a.weights else default_weights_dir()
    comp = load_components(wd, need=("generator", "controls"))
    G, controls = comp["generator"].eval(), comp["controls"]
    cached = bool(a.latents) and Path(a.latents).exists()
    enc = load_optional(wd, "image_encoder").eval() if a.val or not cached else None
    if cached:
        ws = torch.from_numpy(np.load(a.latents))
    else:
        ws = encode_latents(G, enc, CachedWorldDataset(a.data, length=a.fit_num))
        if a.latents:
            np.save(a.latents, ws.numpy())
    val_ws = encode_latents(G, enc, CachedWorldDataset(a.val)) if a.val else None
    size = G.cfg.resolution
    test, test_masks = render_split("test", a.num, size)
    ref = encoder_features(controls.encoder, test)
    truth = split_attributes("test", a.num).mean(0)
    col = [ATTRIBUTES.index(n) for n in ACCESSORIES]
    hat, glasses = CLASS_NAMES.index("hat"), CLASS_NAMES.index("eye_g")
    groups = stratification_groups(CachedWorldDataset(a.data, length=a.fit_num).attributes[:len(ws)],
                                   [n.strip() for n in a.stratify.split(",") if n.strip()])
    table = {"command": " ".join(sys.argv), "fit_latents": len(ws), "num": a.num,
             "feature_space": "world CLIP image tower, unnormalised 512-d", "reference": "test-split renders",
             "renders": {"accessory_rate": {n: round(float(truth[c]), 4) for n, c in zip(ACCESSORIES, col)},
                         "hat_pixel_share": round(float(class_frequencies(test_masks)[hat]), 5),
                         "eyeglasses_pixel_share": round(float(class_frequencies(test_masks)[glasses]), 5)},
             "rows": {}}
    for spec in a.components.split(","):
        k, strat = int(spec.rstrip("s")), spec.endswith("s")
        t0 = time.time()
        prior = GaussianLatentPrior.fit(ws, components=k, seed=a.seed, groups=groups if strat else None)
        fit_s = time.time() - t0
        if a.save_dir:
            from mm2latent.models.registry import save_module

            Path(a.save_dir).mkdir(parents=True, exist_ok=True)
            save_module(prior, Path(a.save_dir) / f"prior_k{spec}.safetensors", half=False,
                        extra={"fitted": {"data": a.data, "num": len(ws), "components": prior.config.components,
                                          "stratified_by": a.stratify.split(",") if strat else []}})
        fit_ll = float(prior.log_prob(ws).mean())
        val_ll = None if val_ws is None else round(float(prior.log_prob(val_ws).mean()), 1)
        for psi in (float(v) for v in a.truncation.split(",")):
            x = to_float(sample_generator(G, a.num, a.seed, psi, prior=prior)[0])
            feats = encoder_features(controls.encoder, x)
            kid, kid_std = kernel_inception_distance(feats, ref, subset_size=min(1000, a.num))
            probs, masks = judged(x, controls)
            rate = (probs[:, col] > 0.5).mean(0)
            freq = class_frequencies(masks)
            row = {"components": k, "stratified": strat, "truncation": psi, "frechet": round(frechet_distance(feats, ref), 2),
                   "kid": round(kid, 4), "kid_std": round(kid_std, 4), "fit_seconds": round(fit_s, 1),
                   "train_log_likelihood": round(fit_ll, 1), "val_log_likelihood": val_ll,
                   "accessory_rate": {n: round(float(r), 4) for n, r in zip(ACCESSORIES, rate)},
                   "hat_pixel_share": round(float(freq[hat]), 5),
                   "eyeglasses_pixel_share": round(float(freq[glasses]), 5)}
            name = f"K={k}{' stratified' if strat else ''}, psi={psi:g}"
            table["rows"][name] = row
            print(name, json.dumps(row), flush=True)
    emit_json_report(table, a.out)


if __name__ == "__main__":
    main()
