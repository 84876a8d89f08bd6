"""Fitting the generator's sampling prior (``mm2latent train latent-prior``).

Training renders are encoded by the image encoder and mapped to w; a full-covariance Gaussian,
or a mixture of them (optionally stratified by world attributes, see
:class:`~mm2latent.models.latent_prior.GaussianLatentPrior`), is fitted to those w and written
as ``latent_prior.safetensors``, which ``mm2latent sample`` and the Pipeline draw from.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..common.errors import UserError


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
