"""``mm2latent sample``: unconditional samples from a StyleGAN2 generator, with their w."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import seed_int

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


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


def default_generator_path() -> Path:
    p = WEIGHTS_DIR / "generator.safetensors"
    if not p.exists():
        raise UserError(f"no shipped generator weights at {p}; train one with 'mm2latent train stylegan2' "
                        "and pass --weights RUN_DIR/generator.safetensors")
    return p


def prior_path_for(generator_path: Path) -> Path:
    """Where the fitted latent prior of a generator file lives (beside it)."""
    return Path(generator_path).with_name("latent_prior.safetensors")


def load_prior(generator_path: Path, choice: str = "auto"):
    """The fitted latent prior for ``choice`` 'fitted'/'auto' (None for 'normal', or 'auto' without a file)."""
    if choice == "normal":
        return None
    p = prior_path_for(generator_path)
    if not p.exists():
        if choice == "fitted":
            raise UserError(f"no fitted latent prior at {p}; fit one with 'mm2latent train latent-prior'")
        return None
    from ..perception import load_module_file

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
    gpath = Path(a.weights) if a.weights else default_generator_path()
    G = load_generator(gpath).eval()
    prior = load_prior(gpath, a.prior)
    imgs, ws = sample_generator(G, a.num, a.seed, a.truncation, prior=prior)
    for i in progress(range(a.num), desc="writing", unit="img"):
        save_image(out / f"{i:06d}.png", imgs[i])
    with atomic_path(out / "latents.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ws)
    if grid_path:
        save_image(grid_path, make_grid(imgs, int(np.ceil(np.sqrt(a.num)))))
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


def stratification_groups(attributes, names: list[str]):
    """One integer label per render: the combination of the named 0/1 ``attributes`` (N, A) columns."""
    import numpy as np
    import torch

    from ..world.attributes import ATTRIBUTES, check_attribute_names

    check_attribute_names(names, "--stratify")
    cols = np.asarray(attributes)[:, [ATTRIBUTES.index(n) for n in names]].astype(np.int64)
    return torch.from_numpy(cols @ (1 << np.arange(len(names), dtype=np.int64)))


def _fit_prior(a) -> int:
    import torch

    from ..common.fileio import check_output_file
    from ..models.latent_prior import GaussianLatentPrior, encode_latents
    from ..perception import save_module
    from ..pipeline import load_components
    from ..world.cache import CachedWorldDataset

    if a.num <= 0 or a.components < 1:
        raise UserError("--num and --components must be positive")
    out = check_output_file(a.out)
    if Path(out).suffix != ".safetensors":
        raise UserError(f"--out must be a .safetensors path, got {a.out}")
    if a.threads:
        torch.set_num_threads(a.threads)
    comp = load_components(a.weights, need=("generator", "image_encoder"))
    G, E = comp["generator"].eval(), comp["image_encoder"].eval()
    data = CachedWorldDataset(a.data, length=a.num)
    n = len(data)
    if n <= G.w_dim:
        raise UserError(f"need more than {G.w_dim} renders to fit the prior, got {n}")
    if n < 2 * a.components:
        raise UserError(f"--components {a.components} needs at least {2 * a.components} renders, got {n}")
    names = [s.strip() for s in a.stratify.split(",") if s.strip()]
    groups = stratification_groups(data.attributes[:n], names) if names else None
    combos = 0 if groups is None else len(torch.unique(groups))
    if a.components < combos:  # checked before the slow encoding; fit() would refuse it too
        raise UserError(f"--components {a.components} is fewer than the {combos} attribute "
                        f"combinations of --stratify {a.stratify}")
    ws = encode_latents(G, E, data)
    prior = GaussianLatentPrior.fit(ws, components=a.components, seed=a.seed, groups=groups)
    info = {"fitted": {"data": str(a.data), "num": n, "generator": comp["generator_info"],
                       "components": prior.config.components, "stratified_by": names,
                       "seed": a.seed, "mean_norm": float(prior.mean.norm()),
                       "mean_log_likelihood": float(prior.log_prob(ws).mean())}}
    save_module(prior, out, half=False, extra=info)
    k = prior.config.components
    what = "a Gaussian" if k == 1 else f"a mixture of {k} Gaussians" + (f" stratified by {', '.join(names)}" if names else "")
    print(f"fitted {what} over w to {n} encoded renders -> {out}")
    return 0
