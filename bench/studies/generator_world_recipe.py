"""From-scratch comparison of world-generator recipe variants: G_ema-free L1 and sharpness after N steps.

    .venv/bin/python bench/studies/generator_world_recipe.py --steps 400 v1 v2

Each variant trains the recipe's generator on the training cache (``runs/cache_train128``) with the
supervised loss for ``--steps`` steps from the same seed, then prints its L1 (full and quarter size) and
Laplacian sharpness ratio against 32 test renders. ``v1`` is StyleGAN's mapping rate 0.01 with Adam
beta1 0; ``v2`` the shipped recipe's mapping rate 1.0 with beta1 0.9.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from mm2latent.eval.generator_world import laplacian_variance  # noqa: E402
from mm2latent.models.stylegan2 import Generator  # noqa: E402
from mm2latent.train.generator_world import WorldGeneratorTrainer, load_recipe  # noqa: E402
from mm2latent.train.state import DataOrder  # noqa: E402
from mm2latent.world.cache import CachedWorldDataset  # noqa: E402
from mm2latent.world.code import world_codes  # noqa: E402
from mm2latent.world.dataset import SPLIT_SEEDS  # noqa: E402
from mm2latent.world.params import sample_params  # noqa: E402
from mm2latent.world.render import render  # noqa: E402

VARIANTS = {"v1": {"lr_mlp": 0.01, "betas": (0.0, 0.99)}, "v2": {"lr_mlp": 1.0, "betas": (0.9, 0.99)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    ap.add_argument("--recipe", default="configs/generator_world.toml")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = load_recipe(a.recipe)
    data = CachedWorldDataset(r.data)
    codes = torch.from_numpy(world_codes(int(data.meta.get("seed", 0)), range(len(data))))
    test = SPLIT_SEEDS["test"]
    reals = torch.from_numpy(np.stack([render(sample_params(test, i), r.resolution).image for i in range(32)]))
    reals = reals.permute(0, 3, 1, 2).float().div(127.5).sub(1)
    tcodes = torch.from_numpy(world_codes(test, range(32)))
    for name in a.variants:
        v = VARIANTS[name]
        torch.manual_seed(0)
        G = Generator(dataclasses.replace(r.model_config(), lr_mlp=v["lr_mlp"]))
        opt = torch.optim.Adam(G.parameters(), lr=r.lr, betas=v["betas"], eps=1e-8)
        order, t0 = DataOrder(len(data), 0), time.time()
        for _ in range(a.steps):
            b = data.batch(np.array(order.take(r.batch)))
            loss = WorldGeneratorTrainer.l1_pyramid(G(codes[b["index"]]), b["image"], r.l1_supervised)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            f = torch.cat([G(tcodes[i:i + 16], noise_mode="const") for i in range(0, 32, 16)])
        print(json.dumps({"variant": name, "steps": a.steps, "l1": round(float((f - reals).abs().mean()), 4),
                          "l1_quarter": round(float((F.avg_pool2d(f, 4) - F.avg_pool2d(reals, 4)).abs().mean()), 4),
                          "sharpness_ratio": round(float(laplacian_variance(f).mean() / laplacian_variance(reals).mean()), 3),
                          "s_per_step": round((time.time() - t0) / a.steps, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
