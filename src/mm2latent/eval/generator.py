"""Realism of an unconditional generator against held-out world renders.

Fréchet distance and KID in the world image encoder's feature space between
``num`` generated images and ``num`` held-out renders (test split), reported
next to two references measured the same way: a disjoint set of renders (val
split; the floor any generator can reach) and the same renders blurred (a
trivially bad "generator", for scale). With a parser, also the per-class
pixel frequencies of generated images against the renders' true masks and against
the same parser on the renders (which separates the parser's bias from the generator's).

With the image encoder and the judges, :func:`judge_reconstructions` measures
the generator's ceiling for conditional generation: the parser and attribute
classifier on reconstructions of held-out renders (the best any mapping to w
could do) next to the same judges on the renders themselves.
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


def split_attributes(split: str, num: int) -> np.ndarray:
    """(N, A) world attributes (0/1) of the first ``num`` samples of a split (no rendering needed)."""
    from ..world.dataset import SPLIT_SEEDS
    from ..world.params import sample_params

    return np.stack([sample_params(SPLIT_SEEDS[split], i).attr_vector() for i in range(num)])


@torch.no_grad()
def reconstruct(G, image_encoder, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """G.synthesis(mapping(mu(x))) of images (N, 3, H, W) in [-1, 1]: the decoder's best case."""
    from ..models.latent_prior import encode_latents

    w = encode_latents(G, image_encoder, images, progress_desc=None)
    rec = torch.cat([G.synthesis(G.broadcast(w[i:i + batch]), noise_mode="const") for i in range(0, len(w), batch)])
    return rec.clamp(-1, 1)


@torch.no_grad()
def judge_reconstructions(images: torch.Tensor, reconstructions: torch.Tensor, masks: np.ndarray,
                          attributes: np.ndarray, parser, analyzer, batch: int = 64) -> dict:
    """Parser mIoU and attribute balanced accuracy of the judges on renders and on their
    reconstructions; also the Male share each predicts (a generator biased towards one
    gender shows here before it shows in any caption)."""
    from ..world.attributes import ATTRIBUTES
    from ..models.metrics import balanced_accuracy, confusion_matrix, mean_iou

    truth = np.asarray(attributes) > 0.5
    true_masks = torch.from_numpy(np.asarray(masks)).long()
    male = ATTRIBUTES.index("Male")
    out = {"num": int(len(images)), "true_male_share": float(truth[:, male].mean())}
    for name, x in (("renders", images), ("reconstructions", reconstructions)):
        seg = torch.cat([parser(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
        pred = torch.cat([torch.sigmoid(analyzer(x[i:i + batch])[0]) for i in range(0, len(x), batch)]).numpy() > 0.5
        acc = balanced_accuracy(pred, truth)
        out[name] = {"parser_miou": mean_iou(confusion_matrix(seg, true_masks)),
                     "attribute_balanced_accuracy": float(np.nanmean(acc)),
                     "male_balanced_accuracy": float(acc[male]), "predicted_male_share": float(pred[:, male].mean())}
    return out


def blur(images: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    r = int(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    y = F.pad(images, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def to_float(u8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images (what ``sample_generator`` returns) -> (N, 3, H, W) floats in [-1, 1]."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def class_frequencies(masks: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(masks).ravel(), minlength=len(CLASS_NAMES)) / np.asarray(masks).size


@torch.no_grad()
def parse_all(parser, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Parser masks (N, H, W) of a batch of images in [-1, 1]."""
    return np.concatenate([parser(images[i:i + batch]).argmax(1).numpy() for i in range(0, len(images), batch)])


def prior_sampling(prior) -> str:
    """How samples were drawn, for the report (a mixture's component draw changes class shares)."""
    if prior.config.components == 1:
        return "w from the fitted latent prior (one Gaussian)"
    return f"w from the fitted latent prior ({prior.config.components} components, drawn systematically)"


@torch.no_grad()
def evaluate_generator(G, encoder, num: int = 2000, truncation: float = 1.0, seed: int = 0, parser=None,
                       prior=None, image_encoder=None, analyzer=None) -> dict:
    """Realism of samples against held-out renders. With a fitted ``prior`` the samples
    ("generated") draw w from it, and "generated_normal" adds mapping(z), z ~ N(0, I), for
    comparison; with the ``image_encoder`` "reconstructed" adds the generator's
    reconstructions of other renders (what the decoder can do at best), and with
    ``parser`` and ``analyzer`` too, "reconstruction_judged" (:func:`judge_reconstructions`)."""
    from ..pipeline.sampling import sample_generator

    size = G.cfg.resolution
    gen = to_float(sample_generator(G, num, seed, truncation, prior=prior)[0])
    test, test_masks = render_split("test", num, size)
    other, other_masks = render_split("val", num, size)
    sets = [("test", test), ("generated", gen), ("renders_val", other), ("blurred_val", blur(other))]
    if prior is not None:
        sets.append(("generated_normal", to_float(sample_generator(G, num, seed, truncation)[0])))
    rec = None
    if image_encoder is not None:
        rec = reconstruct(G, image_encoder, other)
        sets.append(("reconstructed_val", rec))
    feats = {name: encoder_features(encoder, x) for name, x in sets}
    ref = feats["test"]
    out: dict = {"num": num, "truncation": truncation, "feature_space": "world CLIP image tower, unnormalised 512-d",
                 "sampling": prior_sampling(prior) if prior is not None else "mapping(z), z ~ N(0, I)"}
    for name in [n for n, _ in sets if n != "test"]:
        kid, kid_std = kernel_inception_distance(feats[name], ref, subset_size=min(1000, num))
        out[name] = {"frechet": frechet_distance(feats[name], ref), "kid": kid, "kid_std": kid_std}
    if parser is not None:
        fg, ft = class_frequencies(parse_all(parser, gen)), class_frequencies(test_masks)
        fp = class_frequencies(parse_all(parser, test))
        # "renders" is the true masks; "renders_parsed" is the same parser on the renders, so
        # generated / renders_parsed is the generator's own over- or under-drawing, free of
        # the parser's bias (which generated / renders would include)
        out["class_frequencies"] = {n: {"generated": float(a), "renders": float(b), "renders_parsed": float(c)}
                                    for n, a, b, c in zip(CLASS_NAMES, fg, ft, fp)}
        if rec is not None:
            # the decoder's drawing with w from the encoder (of val renders: same distribution as the
            # test split): over-drawing here is the synthesis's own, over-drawing only in "generated"
            # comes from the prior's w (or the truncation)
            for n, f in zip(CLASS_NAMES, class_frequencies(parse_all(parser, rec))):
                out["class_frequencies"][n]["reconstructed"] = float(f)
    if rec is not None and parser is not None and analyzer is not None:
        out["reconstruction_judged"] = judge_reconstructions(other, rec, other_masks, split_attributes("val", num),
                                                             parser, analyzer)
    return out
