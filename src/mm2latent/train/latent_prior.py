"""Fitting the generator's sampling prior (``mm2latent train latent-prior``).

Training renders are encoded by the image encoder and mapped to w; a full-covariance Gaussian,
or a mixture of them (optionally stratified by world attributes, see
:class:`~mm2latent.models.latent_prior.GaussianLatentPrior`), is fitted to those w and written
as ``latent_prior.safetensors``, which ``mm2latent sample`` and the Pipeline draw from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import UserError


@dataclass
class LatentPriorOptions:
    """What ``mm2latent train latent-prior`` fits (configs/latent_prior.toml)."""

    data: str  # world cache of training renders
    out: str  # output .safetensors (e.g. WEIGHTS/latent_prior.safetensors)
    weights: str | None = None  # weights directory with generator + image_encoder (none: shipped)
    num: int = 20000  # renders to encode (at most the cache)
    #: 1: one Gaussian; K > 1: a mixture of K full-covariance Gaussians (EM), which keeps rare modes
    #: such as hats and truncates each sample towards its own component's mean
    components: int = 1
    #: world attributes (e.g. Wearing_Hat,Eyeglasses) whose combinations each get their own share of
    #: the components, fitted to their renders only, weighted by how often they occur: rare
    #: accessories are then sampled as often as they are rendered
    stratify: list[str] = field(default_factory=list)
    seed: int = 0  # seed of the mixture's k-means++ start
    threads: int | None = None  # torch CPU threads

    def validate(self) -> None:
        if self.num <= 0 or self.components < 1:
            raise UserError("--num and --components must be positive")
        if Path(self.out).suffix != ".safetensors":
            raise UserError(f"--out must be a .safetensors path, got {self.out}")


def run_fit(opts: LatentPriorOptions):
    """:func:`fit_latent_prior` for a recipe; returns (prior, renders used)."""
    import torch

    from ..common.fileio import check_output_file

    opts.validate()
    out = check_output_file(opts.out)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    return fit_latent_prior(opts.data, out, opts.weights, num=opts.num, components=opts.components,
                            stratify=opts.stratify, seed=opts.seed)


def fit_latent_prior(data: str | os.PathLike, out: str | os.PathLike, weights: str | os.PathLike | None = None,
                     num: int = 20000, components: int = 1, stratify: list[str] | tuple[str, ...] = (),
                     seed: int = 0):
    """Fit the prior to ``num`` renders of the world cache ``data`` encoded with the generator and
    image encoder of ``weights`` (default shipped), write it to ``out``; returns (prior, renders used)."""
    import torch

    from ..models.latent_prior import GaussianLatentPrior, encode_latents, stratification_groups
    from ..models.registry import load_components, save_module
    from ..world.cache import CachedWorldDataset

    comp = load_components(weights, need=("generator", "image_encoder"))
    G, E = comp["generator"].eval(), comp["image_encoder"].eval()
    ds = CachedWorldDataset(data, length=num)
    n = len(ds)
    if n <= G.w_dim:
        raise UserError(f"need more than {G.w_dim} renders to fit the prior, got {n}")
    if n < 2 * components:
        raise UserError(f"--components {components} needs at least {2 * components} renders, got {n}")
    names = list(stratify)
    groups = stratification_groups(ds.attributes[:n], names) if names else None
    combos = 0 if groups is None else len(torch.unique(groups))
    if components < combos:  # checked before the slow encoding; fit() would refuse it too
        raise UserError(f"--components {components} is fewer than the {combos} attribute "
                        f"combinations of --stratify {','.join(names)}")
    ws = encode_latents(G, E, ds)
    prior = GaussianLatentPrior.fit(ws, components=components, seed=seed, groups=groups)
    info = {"fitted": {"data": str(data), "num": n, "generator": comp["generator_info"],
                       "components": prior.config.components, "stratified_by": names,
                       "seed": seed, "mean_norm": float(prior.mean.norm()),
                       "mean_log_likelihood": float(prior.log_prob(ws).mean())}}
    save_module(prior, Path(out), half=False, extra=info)
    return prior, n
