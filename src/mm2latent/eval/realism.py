"""Realism and diversity metrics in a feature space of our own encoders.

No Inception weights exist here, so Fréchet distance and KID are computed on
features from the world image encoder (CLIP/FaRL image tower, unnormalised
512-d embedding). The formulas are the standard ones (Heusel et al. 2017;
Binkowski et al. 2018, cubic polynomial kernel, unbiased MMD^2 averaged over
subsets); the matrix square root is scipy's.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2):
    |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^(1/2)) (the matrix square root is scipy's)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def frechet_distance_lowrank(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`frechet_distance` (same sample moments, ddof 1) without a D x D matrix square root.

    With A, B the centred feature sets, s1 = A'A / (n-1) and s2 = B'B / (m-1), the non-zero
    eigenvalues of s1 s2 are the squared singular values of A B' / sqrt((n-1)(m-1)), so
    tr((s1 s2)^(1/2)) is the sum of those singular values: exact, and fast when N, M << D
    (2048-d Inception features of a few hundred faces)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    tr1 = float((ac ** 2).sum() / (n - 1))
    tr2 = float((bc ** 2).sum() / (m - 1))
    sv = np.linalg.svd(ac @ bc.T, compute_uv=False)
    return float(((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * sv.sum() / np.sqrt((n - 1) * (m - 1)))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 500,
                              seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) with the kernel k(x, y) = (x.y / d + 1)^3."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2 * kxy.mean())
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def mean_pairwise_distance(feats: np.ndarray | torch.Tensor) -> float:
    """Diversity: mean L2 distance between all pairs of (L2-normalised) features."""
    f = torch.as_tensor(np.asarray(feats), dtype=torch.float64)
    f = torch.nn.functional.normalize(f, dim=1)
    n = len(f)
    if n < 2:
        return 0.0
    d = torch.cdist(f, f)
    return float(d.sum() / (n * (n - 1)))


@torch.no_grad()
def encoder_features(encoder, images: torch.Tensor, batch: int = 128) -> np.ndarray:
    """Unnormalised image embeddings (N, D) of images (N, 3, H, W) in [-1, 1]."""
    encoder.eval()
    out = [encoder.encode_image(images[i:i + batch], normalize=False) for i in range(0, len(images), batch)]
    return torch.cat(out).float().numpy()
