"""The world code: every render parameter as one network-friendly vector.

The world generator is conditioned on the exact parameters of each render
instead of on a noisy latent, so nothing the renderer draws is left for a
reconstruction loss to average over except the texture noise (which
StyleGAN's noise inputs and the adversarial loss supply). The code is::

    attributes (37)      -1 / +1, order of ``ATTRIBUTES``
    coefficients (13)    in [-1, 1], order of ``COEFF_NAMES``
    appearance (80)      probit of the renderer's uniforms, ~N(0, 1)

All entries have unit scale, so StyleGAN's pixel norm of its input leaves
them nearly as they are. The prior over codes is the world's own: sampling
seeds of :func:`~mm2latent.world.params.sample_params` draws faces with the
world's attribute frequencies and correlations.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy.special import ndtri

from .attributes import ATTRIBUTES
from .dataset import normalise_coeffs
from .params import COEFF_NAMES, N_APPEARANCE_UNIFORMS, FaceParams, sample_params

N_UNIFORMS = N_APPEARANCE_UNIFORMS + 16  # FaceParams.u: appearance uniforms + coefficient uniforms
CODE_DIM = len(ATTRIBUTES) + len(COEFF_NAMES) + N_UNIFORMS
ATTR_SLICE = slice(0, len(ATTRIBUTES))
COEFF_SLICE = slice(len(ATTRIBUTES), len(ATTRIBUTES) + len(COEFF_NAMES))


def world_code(p: FaceParams) -> np.ndarray:
    """The (CODE_DIM,) float32 code of one face."""
    u = np.clip(np.asarray(p.u, np.float64), 1e-4, 1 - 1e-4)
    if u.shape != (N_UNIFORMS,):
        raise ValueError(f"expected {N_UNIFORMS} uniforms, got {u.shape}")
    return np.concatenate([p.attr_vector() * 2 - 1, normalise_coeffs(p.coeff_vector()),
                           ndtri(u).astype(np.float32)]).astype(np.float32)


def world_codes(seed: int, indices: Iterable[int]) -> np.ndarray:
    """Codes of samples ``indices`` of world ``seed`` (the same faces a cache of that seed holds)."""
    return np.stack([world_code(sample_params(seed, int(i))) for i in indices]).astype(np.float32)


def resample_keeping_attributes(p: FaceParams, seed: int) -> FaceParams:
    """Another face with the same attributes: every other uniform (appearance, coefficients,
    texture noise) drawn afresh from ``seed``. This is what "another seed of the same caption" is
    for the world prior."""
    from ..common.seeding import numpy_rng
    from .params import derive_coeffs

    rng = numpy_rng(seed, 0xA77)
    u = rng.random(N_UNIFORMS)
    attrs = dict(p.attrs)
    return FaceParams(attrs=attrs, coeffs=derive_coeffs(attrs, u[N_APPEARANCE_UNIFORMS:]), u=u,
                      noise_seed=int(rng.integers(0, 2**31 - 1)))
