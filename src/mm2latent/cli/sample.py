"""``mm2latent sample``: unconditional samples from a StyleGAN2 generator, with their w (argument
parsing only; the work is :mod:`mm2latent.pipeline.sampling`)."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import seed_int


def register(sub) -> None:
    p = sub.add_parser("sample", help="random faces from the generator (PNG files + latents.npy)")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi around w_avg (1 = none)")
    p.add_argument("--weights", default=None,
                   help="generator checkpoint or a weights / pipeline folder (default: the shipped world generator)")
    p.add_argument("--prior", choices=("auto", "fitted", "normal"), default="auto",
                   help="where w comes from: 'fitted' = the Gaussian fitted to encoded training renders "
                   "(latent_prior.safetensors beside the generator), 'normal' = mapping(z), z ~ N(0, I); "
                   "'auto' (default) = fitted when that file exists")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--grid", default=None, help="also write all samples as one grid PNG here")
    p.set_defaults(func=_sample)


def _sample(a) -> int:
    from ..common.fileio import check_output_file, check_writable_dir
    from ..models.stylegan2 import load_generator
    from ..pipeline.sampling import default_generator_path, load_prior, sample_generator, write_samples

    if a.num <= 0:
        raise UserError("--num must be positive")
    if not 0.0 <= a.truncation <= 2.0:
        raise UserError("--truncation must lie in [0, 2]")
    grid_path = check_output_file(a.grid) if a.grid else None
    out = check_writable_dir(a.out)
    gpath = Path(a.weights) if a.weights else default_generator_path()
    if gpath.is_dir():  # a weights directory / pipeline folder: its generator (and the prior beside it)
        from ..models.parts import MissingPartError, missing_part_message
        from ..models.registry import COMPONENT_FILES

        gpath = gpath / COMPONENT_FILES["generator"]
        if not gpath.exists():
            raise MissingPartError(missing_part_message("generator"))
    G = load_generator(gpath).eval()
    prior = load_prior(gpath, a.prior)
    imgs, ws = sample_generator(G, a.num, a.seed, a.truncation, prior=prior)
    write_samples(out, imgs, ws, grid_path)
    src = "the fitted latent prior" if prior is not None else "mapping(z), z ~ N(0, I)"
    print(f"wrote {a.num} samples (w from {src}) and latents.npy (w, shape {ws.shape}) to {out}")
    return 0


