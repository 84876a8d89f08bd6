"""``mm2latent sample``: unconditional samples from a StyleGAN2 generator, with their w."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def register(sub) -> None:
    p = sub.add_parser("sample", help="random faces from the generator (PNG files + latents.npy)")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi around w_avg (1 = none)")
    p.add_argument("--weights", default=None, help="generator checkpoint (default: the shipped world generator)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--grid", default=None, help="also write all samples as one grid PNG here")
    p.set_defaults(func=_sample)


def default_generator_path() -> Path:
    p = WEIGHTS_DIR / "generator.safetensors"
    if not p.exists():
        raise UserError(f"no shipped generator weights at {p}; train one with 'mm2latent train stylegan2' "
                        "and pass --weights RUN_DIR/generator.safetensors")
    return p


def sample_generator(G, num: int, seed: int, truncation: float, batch: int = 16):
    """Deterministic samples: z from a seeded generator, constant noise. Returns (uint8 NHWC, w)."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(num, G.z_dim, generator=g)
    imgs, ws = [], []
    with torch.no_grad():
        for i in range(0, num, batch):
            w = G.mapping(z[i:i + batch], truncation_psi=truncation)
            x = G.synthesis(w, noise_mode="const")
            imgs.append(x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
            ws.append(w.numpy())
    return np.concatenate(imgs), np.concatenate(ws)


def _sample(a) -> int:
    import numpy as np

    from ..common.fileio import atomic_path, check_output_file, check_writable_dir
    from ..common.imageio import make_grid, save_image
    from ..common.progress import progress
    from ..models.stylegan2 import load_generator

    if a.num <= 0:
        raise UserError("--num must be positive")
    if not 0.0 <= a.truncation <= 2.0:
        raise UserError("--truncation must lie in [0, 2]")
    grid_path = check_output_file(a.grid) if a.grid else None
    out = check_writable_dir(a.out)
    G = load_generator(a.weights or default_generator_path()).eval()
    imgs, ws = sample_generator(G, a.num, a.seed, a.truncation)
    for i in progress(range(a.num), desc="writing", unit="img"):
        save_image(out / f"{i:06d}.png", imgs[i])
    with atomic_path(out / "latents.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ws)
    if grid_path:
        save_image(grid_path, make_grid(imgs, int(np.ceil(np.sqrt(a.num)))))
    print(f"wrote {a.num} samples and latents.npy (w, shape {ws.shape}) to {out}")
    return 0
