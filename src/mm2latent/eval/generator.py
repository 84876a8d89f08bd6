"""Realism of an unconditional generator against held-out world renders.

Fréchet distance and KID in the world image encoder's feature space between
``num`` generated images and ``num`` held-out renders (test split), reported
next to two references measured the same way: a disjoint set of renders (val
split; the floor any generator can reach) and the same renders blurred (a
trivially bad "generator", for scale). With a parser, also the per-class
pixel frequencies of generated images against the renders' true masks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..common.palette import CLASS_NAMES
from ..common.progress import progress
from .realism import encoder_features, frechet_distance, kernel_inception_distance


def render_split(split: str, num: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(images (N,3,H,W) in [-1,1], masks (N,H,W)) of the first ``num`` samples of a split."""
    from ..common.imageio import image_to_tensor
    from ..world.dataset import SPLIT_SEEDS
    from ..world.params import sample_params
    from ..world.render import render

    from ..common.palette import resize_mask
    from ..world.render import drawable_size

    seed = SPLIT_SEEDS[split]
    draw = drawable_size(size)
    imgs, masks = [], []
    for i in progress(range(num), desc=f"rendering {split}", unit="face"):
        r = render(sample_params(seed, i), draw)
        imgs.append(image_to_tensor(r.image))
        masks.append(r.mask if draw == size else resize_mask(r.mask, size))
    x = torch.stack(imgs)
    if draw != size:  # the renderer draws a few sizes only; area-resize to the one asked for
        x = F.interpolate(x, size=(size, size), mode="area")
    return x, np.stack(masks)


def blur(images: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    r = int(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    y = F.pad(images, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def class_frequencies(masks: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(masks).ravel(), minlength=len(CLASS_NAMES)) / np.asarray(masks).size


@torch.no_grad()
def evaluate_generator(G, encoder, num: int = 2000, truncation: float = 1.0, seed: int = 0, parser=None,
                       prior=None, image_encoder=None) -> dict:
    """Realism of samples against held-out renders. With a fitted ``prior`` the samples
    ("generated") draw w from it, and "generated_normal" adds mapping(z), z ~ N(0, I), for
    comparison; with the ``image_encoder`` "reconstructed" adds the generator's
    reconstructions of other renders (what the decoder can do at best)."""
    from ..cli.sample import sample_generator

    def to_float(u8):
        return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1)

    size = G.cfg.resolution
    gen = to_float(sample_generator(G, num, seed, truncation, prior=prior)[0])
    test, test_masks = render_split("test", num, size)
    other, _ = render_split("val", num, size)
    sets = [("test", test), ("generated", gen), ("renders_val", other), ("blurred_val", blur(other))]
    if prior is not None:
        sets.append(("generated_normal", to_float(sample_generator(G, num, seed, truncation)[0])))
    if image_encoder is not None:
        from ..models.latent_prior import encode_latents

        w = encode_latents(G, image_encoder, other, progress_desc=None)
        rec = torch.cat([G.synthesis(G.broadcast(w[i:i + 64]), noise_mode="const") for i in range(0, num, 64)])
        sets.append(("reconstructed_val", rec.clamp(-1, 1)))
    feats = {name: encoder_features(encoder, x) for name, x in sets}
    ref = feats["test"]
    out: dict = {"num": num, "truncation": truncation, "feature_space": "world CLIP image tower, unnormalised 512-d",
                 "sampling": "w from the fitted latent prior" if prior is not None else "mapping(z), z ~ N(0, I)"}
    for name in [n for n, _ in sets if n != "test"]:
        kid, kid_std = kernel_inception_distance(feats[name], ref, subset_size=min(1000, num))
        out[name] = {"frechet": frechet_distance(feats[name], ref), "kid": kid, "kid_std": kid_std}
    if parser is not None:
        pm = np.concatenate([parser(gen[i:i + 64]).argmax(1).numpy() for i in range(0, num, 64)])
        fg, ft = class_frequencies(pm), class_frequencies(test_masks)
        out["class_frequencies"] = {n: {"generated": float(a), "renders": float(b)}
                                    for n, a, b in zip(CLASS_NAMES, fg, ft)}
    return out
