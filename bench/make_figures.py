"""Write the committed figures of docs/figures/ from the shipped weights.

* teaser.png -- rows of input mask/sketch + caption, outputs for 3 seeds (eval.figures.teaser);
* generator_samples_fitted.png -- 8x8 truncation-0.7 samples with w from the fitted latent
  prior (what `mm2latent sample` draws); generator_samples_prior.png -- the same with
  mapping(z), z ~ N(0, I); generator_samples_posterior.png -- reconstructions of 64 test
  renders through the encoder's posterior (the decoder's best case);
* editing_real_photos.png -- the four real CelebAMask-HQ photos: aligned input, inversion,
  and edits by text and by mask;
* editing_world.png -- the same sheet for four held-out world renders.

    .venv/bin/python bench/make_figures.py --out docs/figures
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from mm2latent.common.imageio import make_grid, save_image  # noqa: E402
from mm2latent.eval.figures import editing_sheet, teaser  # noqa: E402
from mm2latent.pipeline import Pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "eval" / "celebamask-hq" / "photos"
EDITS = [
    {"label": "text: blond hair", "text": "a person with blond hair"},
    {"label": "text: smiling", "text": "a smiling person"},
    {"label": "text: eyeglasses", "text": "a person wearing eyeglasses"},
    {"label": "mask: long hair", "mask": str(ROOT / "examples" / "mask_long_hair.png")},
    {"label": "mask: bald", "mask": str(ROOT / "examples" / "mask_bald.png")},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.from_pretrained(a.weights)
    save_image(out / "teaser.png", teaser(pipe, ROOT / "examples"))
    G = pipe.G
    with torch.no_grad():
        z = torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(0))
        prior = G(z, truncation_psi=0.7, noise_mode="const")
        from mm2latent.eval.pipeline import render_test

        data = render_test(64, G.resolution)
        mu, lv = pipe.image_encoder(data["image"])
        post = G.synthesis(G.broadcast(G.mapping(mu + torch.randn_like(mu) * (0.5 * lv).exp())), noise_mode="const")

    def u8(x):
        return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()

    if pipe.latent_prior is not None:
        from mm2latent.pipeline.sampling import sample_generator

        fitted, _ = sample_generator(G, 64, 0, 0.7, prior=pipe.latent_prior)
        save_image(out / "generator_samples_fitted.png", make_grid(fitted, 8))
    save_image(out / "generator_samples_prior.png", make_grid(u8(prior), 8))
    save_image(out / "generator_samples_posterior.png", make_grid(u8(post), 8))
    real = sorted(REAL.glob("*.jpg"))
    if real:
        save_image(out / "editing_real_photos.png", editing_sheet(pipe, real, EDITS))
    world = [data["image"][i:i + 1] for i in range(4)]
    save_image(out / "editing_world.png", editing_sheet(pipe, world, EDITS))
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
