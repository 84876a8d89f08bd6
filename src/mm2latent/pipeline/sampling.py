"""Unconditional samples from a StyleGAN2 generator file, with their w (``mm2latent sample``).

w comes from the fitted latent prior beside the generator (``latent_prior.safetensors``, see
:mod:`mm2latent.models.latent_prior`) when there is one and it is asked for, else from
mapping(z), z ~ N(0, I). Noise is constant, so a seed gives the same images every time.
"""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from ..models.registry import COMPONENT_FILES, default_weights_dir


def default_generator_path() -> Path:
    """The shipped generator file (a UserError when the package ships none)."""
    p = default_weights_dir() / COMPONENT_FILES["generator"]
    if not p.exists():
        raise UserError(f"no shipped generator weights at {p}; train one with 'mm2latent train stylegan2' "
                        "and pass --weights RUN_DIR/generator.safetensors")
    return p


def prior_path_for(generator_path: Path) -> Path:
    """Where the fitted latent prior of a generator file lives (beside it)."""
    return Path(generator_path).with_name(COMPONENT_FILES["latent_prior"])


def load_prior(generator_path: Path, choice: str = "auto"):
    """The fitted latent prior for ``choice`` 'fitted'/'auto' (None for 'normal', or 'auto' without a file)."""
    if choice == "normal":
        return None
    p = prior_path_for(generator_path)
    if not p.exists():
        if choice == "fitted":
            raise UserError(f"no fitted latent prior at {p}; fit one with 'mm2latent train latent-prior'")
        return None
    from ..models.registry import load_module_file

    return load_module_file(p, "latent_prior")


def sample_generator(G, num: int, seed: int, truncation: float, batch: int = 16, prior=None):
    """Deterministic samples: z (or, with a fitted ``prior``, w) from a seeded generator,
    constant noise. Returns (uint8 NHWC, w)."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(int(seed))
    if prior is not None:
        if prior.config.dim != G.w_dim:
            raise UserError(f"the latent prior is {prior.config.dim}-d but the generator's w is {G.w_dim}-d")
        w_all = prior.sample(num, g, truncation)
    else:
        z = torch.randn(num, G.z_dim, generator=g)
    imgs, ws = [], []
    with torch.no_grad():
        for i in range(0, num, batch):
            w = w_all[i:i + batch] if prior is not None else G.mapping(z[i:i + batch], truncation_psi=truncation)
            x = G.synthesis(w, noise_mode="const")
            imgs.append(x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
            ws.append(w.numpy())
    return np.concatenate(imgs), np.concatenate(ws)


def write_samples(out: Path, imgs, ws, grid_path: Path | None = None) -> None:
    """Samples as ``out/000000.png``... plus ``out/latents.npy`` (w), and optionally one grid PNG."""
    import numpy as np

    from ..common.fileio import atomic_path
    from ..common.imageio import make_grid, save_image
    from ..common.progress import progress

    for i in progress(range(len(imgs)), desc="writing", unit="img"):
        save_image(out / f"{i:06d}.png", imgs[i])
    with atomic_path(out / "latents.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ws)
    if grid_path:
        save_image(grid_path, make_grid(imgs, int(np.ceil(np.sqrt(len(imgs))))))
