"""Seconds per face of each step of the real-data route, on random weights of the true sizes
(e4e FFHQ encoder, BiSeNet, FaRL ViT-B/16, FID Inception, a 1024 px StyleGAN2, MappingNet),
measured in one run on this machine (or ``--device cuda``). docs/real-data.md quotes them.

    .venv/bin/python bench/real_route.py [--device cuda] [--batch 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def timed(fn, repeats: int, batch: int, device: torch.device) -> float:
    """Best seconds per face over ``repeats`` calls (after one warm-up call)."""
    with torch.no_grad():
        fn()
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    return best / batch


def main() -> int:
    from mm2latent.models.bisenet import BiSeNetParser
    from mm2latent.models.clip import CLIP, CLIPConfig
    from mm2latent.models.e4e import E4EConfig, E4EEncoder
    from mm2latent.models.inception import InceptionV3
    from mm2latent.models.mapping import MappingNet, MappingNetConfig
    from mm2latent.models.stylegan2 import Generator, StyleGAN2Config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    b = a.batch
    enc = E4EEncoder(E4EConfig()).eval().to(dev)
    parser = BiSeNetParser().eval().to(dev)
    farl = CLIP(CLIPConfig.farl_vit_b16()).eval().to(dev)
    inception = InceptionV3().eval().to(dev)
    G = Generator(StyleGAN2Config(resolution=1024, z_dim=512, w_dim=512, mapping_layers=8)).eval().to(dev)
    net = MappingNet(MappingNetConfig(dims={"text": 512, "mask": 512, "sketch": 512}, w_dim=512,
                                      num_ws=G.num_ws)).eval().to(dev)
    x1024 = torch.rand(b, 3, 1024, 1024, device=dev) * 2 - 1
    x224 = torch.rand(b, 3, 224, 224, device=dev) * 2 - 1
    steps = {
        "e4e encode (photo -> W+, 256 px input)": lambda: enc.encode(x1024),
        "FaRL image embedding (224 px)": lambda: farl.encode_image(x224),
        "FaRL text embedding": lambda: farl.encode_text(["a smiling woman with blond hair"] * b),
        "Inception features (299 px)": lambda: inception.features(torch.rand(b, 3, 299, 299, device=dev)),
        "MappingNet (embeddings -> W+)": lambda: net({m: torch.randn(b, 512, device=dev) for m in ("text", "mask", "sketch")}),
        "StyleGAN2 1024 px synthesis": lambda: G.synthesis(G.broadcast(torch.randn(b, 512, device=dev)), noise_mode="const"),
        "BiSeNet parse (512 px)": lambda: parser.parse(x1024),
    }
    out = {}
    for name, fn in steps.items():
        out[name] = round(timed(fn, a.repeats, b, dev), 4)
        print(f"{name:45s} {out[name]:8.4f} s/face", flush=True)
    print(json.dumps({"device": str(dev), "threads": torch.get_num_threads(), "seconds_per_face": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
