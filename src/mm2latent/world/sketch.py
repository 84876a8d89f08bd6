"""Sketch (edge map) extraction, shared by the world and by generated images.

The same function turns a world render and a generator output into a sketch,
so the two are comparable. Grey level -> Gaussian blur -> Sobel magnitude ->
fixed threshold; batched, deterministic, differentiable up to the threshold
(``soft=True`` returns the smooth edge strength instead).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: edge threshold on Sobel magnitude of [0, 1] grey images (after blur)
EDGE_THRESHOLD = 0.16
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def edge_strength(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, 1, H, W) Sobel magnitude of the blurred grey image."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("expected (B, 3, H, W) images")
    x = images.float()
    grey = ((x + 1) * 0.5 * _LUMA.to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    size = x.shape[-1]
    sigma = 1.0 * size / 128
    k = _gauss_kernel(sigma).to(x.device)
    r = k.numel() // 2
    grey = F.pad(grey, (r, r, r, r), mode="replicate")
    grey = F.conv2d(grey, k.view(1, 1, 1, -1))
    grey = F.conv2d(grey, k.view(1, 1, -1, 1))
    sob = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    g = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(g, sob.view(1, 1, 3, 3))
    gy = F.conv2d(g, sob.t().contiguous().view(1, 1, 3, 3))
    # the blur lowers gradients in proportion to its width; undo that so the
    # threshold means the same edge contrast at every resolution
    return torch.sqrt(gx * gx + gy * gy + 1e-12) * (size / 128)


def extract_sketch(images: torch.Tensor, soft: bool = False) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W) edges: 1 = line, 0 = paper."""
    e = edge_strength(images)
    if soft:
        return torch.sigmoid((e - EDGE_THRESHOLD) * 40.0)
    return (e > EDGE_THRESHOLD).float()


def sketch_from_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 sketch image: black lines on white."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    e = extract_sketch(t)[0, 0].numpy()
    return np.where(e > 0.5, 0, 255).astype(np.uint8)


def sketch_to_tensor(sketch: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 sketch image (black lines on white) -> (1, H, W) float, 1 = line."""
    return torch.from_numpy((np.asarray(sketch) < 128).astype(np.float32))[None]
