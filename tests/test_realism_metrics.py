"""Fréchet distance, KID and diversity on cases with known answers."""

import numpy as np
import pytest

from mm2latent.eval.realism import frechet_distance, kernel_inception_distance, mean_pairwise_distance


def test_frechet_known_values():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    mu = np.array([1.0, 2.0, 0.0, 0.0])
    # same covariance, shifted mean: FD = |mu|^2
    assert frechet_distance(a, a + mu) == pytest.approx(5.0, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 4-d: trace(I + 4I - 2*2I) = 4
    b = rng.standard_normal((200000, 4)) * 2
    c = rng.standard_normal((200000, 4))
    assert frechet_distance(c, b) == pytest.approx(4.0, rel=0.03)


def test_kid_zero_for_same_distribution_positive_for_different():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=300)
    diff, _ = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=300)
    assert abs(same) < 0.02 and diff > 0.3


def test_pairwise_distance():
    f = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert mean_pairwise_distance(f) == pytest.approx(np.sqrt(2))
    assert mean_pairwise_distance(np.ones((5, 3))) == pytest.approx(0.0, abs=1e-6)
