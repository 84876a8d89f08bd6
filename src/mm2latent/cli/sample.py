"""``mm2latent sample`` (unconditional samples from a StyleGAN2 generator, with their w) and
``mm2latent train latent-prior`` (the prior they are drawn from): argument parsing only; the
work is :mod:`mm2latent.pipeline.sampling` and :mod:`mm2latent.train.latent_prior`."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import seed_int


def register(sub) -> None:
    p = sub.add_parser("sample", help="random faces from the generator (PNG files + latents.npy)")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi around w_avg (1 = none)")
    p.add_argument("--weights", default=None, help="generator checkpoint (default: the shipped world generator)")
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
    G = load_generator(gpath).eval()
    prior = load_prior(gpath, a.prior)
    imgs, ws = sample_generator(G, a.num, a.seed, a.truncation, prior=prior)
    write_samples(out, imgs, ws, grid_path)
    src = "the fitted latent prior" if prior is not None else "mapping(z), z ~ N(0, I)"
    print(f"wrote {a.num} samples (w from {src}) and latents.npy (w, shape {ws.shape}) to {out}")
    return 0


def add_train_latent_prior(models) -> None:
    p = models.add_parser(
        "latent-prior", help="fit the generator's sampling prior: a Gaussian (or mixture) over w of encoded training renders",
        description="Encode world renders with the image encoder, map them to w, and fit a full-covariance "
        "Gaussian, or with --components K a mixture of K of them (see mm2latent.models.latent_prior). "
        "'mm2latent sample' draws from it when it lies beside the generator as latent_prior.safetensors.")
    p.add_argument("--data", required=True, metavar="CACHE_DIR", help="world cache of training renders")
    p.add_argument("--out", required=True, metavar="PATH", help="output .safetensors (e.g. WEIGHTS/latent_prior.safetensors)")
    p.add_argument("--weights", default=None, help="weights directory with generator + image_encoder (default shipped)")
    p.add_argument("--num", type=int, default=20000, help="renders to encode (default 20000, at most the cache)")
    p.add_argument("--components", type=int, default=1,
                   help="1: one Gaussian; K > 1: a mixture of K full-covariance Gaussians (EM), which keeps rare "
                   "modes such as hats and truncates each sample towards its own component's mean")
    p.add_argument("--stratify", default="", metavar="ATTR[,ATTR]",
                   help="world attributes (e.g. Wearing_Hat,Eyeglasses) whose combinations each get their own "
                   "share of the --components, fitted to their renders only, weighted by how often they occur: "
                   "rare accessories are then sampled as often as they are rendered")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the mixture's k-means++ start")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_fit_prior)


def _fit_prior(a) -> int:
    from ..common.fileio import check_output_file
    from ..train.latent_prior import fit_latent_prior

    if a.num <= 0 or a.components < 1:
        raise UserError("--num and --components must be positive")
    out = check_output_file(a.out)
    if Path(out).suffix != ".safetensors":
        raise UserError(f"--out must be a .safetensors path, got {a.out}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    names = [s.strip() for s in a.stratify.split(",") if s.strip()]
    prior, n = fit_latent_prior(a.data, out, a.weights, num=a.num, components=a.components, stratify=names,
                                seed=a.seed)
    k = prior.config.components
    what = "a Gaussian" if k == 1 else f"a mixture of {k} Gaussians" + (f" stratified by {', '.join(names)}" if names else "")
    print(f"fitted {what} over w to {n} encoded renders -> {out}")
    return 0
