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
