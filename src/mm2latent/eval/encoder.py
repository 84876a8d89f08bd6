"""Evaluation of the text/image encoder on held-out world pairs.

- retrieval recall@1/@5 text->image and image->text among N pairs, with
  captions of the training grammar and of the held-out grammar;
- zero-shot attribute probing: for each attribute, does the image sit closer
  to "a photo of a person with X" than to "... without X" (balanced accuracy),
  with training-grammar wording and with held-out synonyms where they exist;
- the image-text cosine gap, and the Gaussian noise std that reproduces it
  for MappingNet's pseudo text embeddings: for a unit vector x in d
  dimensions, cos(x, normalise(x + n)) ~ 1 / sqrt(1 + d sigma^2), so
  sigma = sqrt((1 / c^2 - 1) / d) for a measured mean cosine c.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..common.progress import progress
from ..world.attributes import ATTRIBUTES

#: attribute -> (with, without) phrasing for zero-shot probes (training-grammar words)
PROBES: dict[str, tuple[str, str]] = {
    "5_o_Clock_Shadow": ("a photo of a person with a 5 o'clock shadow", "a photo of a clean-shaven person"),
    "Arched_Eyebrows": ("a photo of a person with arched eyebrows", "a photo of a person with straight eyebrows"),
    "Bags_Under_Eyes": ("a photo of a person with bags under the eyes", "a photo of a person with no bags under the eyes"),
    "Bald": ("a photo of a bald person", "a photo of a person with hair"),
    "Bangs": ("a photo of a person with bangs", "a photo of a person without bangs"),
    "Big_Lips": ("a photo of a person with big lips", "a photo of a person with thin lips"),
    "Big_Nose": ("a photo of a person with a big nose", "a photo of a person with a small nose"),
    "Black_Hair": ("a photo of a person with black hair", "a photo of a person with blond hair"),
    "Blond_Hair": ("a photo of a person with blond hair", "a photo of a person with black hair"),
    "Blurry": ("a blurry photo of a person", "a sharp photo of a person"),
    "Brown_Hair": ("a photo of a person with brown hair", "a photo of a person with black hair"),
    "Bushy_Eyebrows": ("a photo of a person with bushy eyebrows", "a photo of a person with thin eyebrows"),
    "Chubby": ("a photo of a chubby person", "a photo of a slim person"),
    "Double_Chin": ("a photo of a person with a double chin", "a photo of a person without a double chin"),
    "Eyeglasses": ("a photo of a person with glasses", "a photo of a person without glasses"),
    "Goatee": ("a photo of a person with a goatee", "a photo of a person without a goatee"),
    "Gray_Hair": ("a photo of a person with gray hair", "a photo of a person with black hair"),
    "Heavy_Makeup": ("a photo of a person with heavy makeup", "a photo of a person with no makeup"),
    "Male": ("a photo of a man", "a photo of a woman"),
    "Mouth_Slightly_Open": ("a photo of a person with the mouth slightly open", "a photo of a person with a closed mouth"),
    "Mustache": ("a photo of a person with a mustache", "a photo of a person without a mustache"),
    "Narrow_Eyes": ("a photo of a person with narrow eyes", "a photo of a person with wide eyes"),
    "No_Beard": ("a photo of a person with no beard", "a photo of a person with a beard"),
    "Pale_Skin": ("a photo of a person with pale skin", "a photo of a person with tanned skin"),
    "Pointy_Nose": ("a photo of a person with a pointy nose", "a photo of a person with a round nose"),
    "Receding_Hairline": ("a photo of a person with a receding hairline", "a photo of a person with a full hairline"),
    "Rosy_Cheeks": ("a photo of a person with rosy cheeks", "a photo of a person without rosy cheeks"),
    "Sideburns": ("a photo of a person with sideburns", "a photo of a person without sideburns"),
    "Smiling": ("a photo of a smiling person", "a photo of a person who is not smiling"),
    "Straight_Hair": ("a photo of a person with straight hair", "a photo of a person with wavy hair"),
    "Wavy_Hair": ("a photo of a person with wavy hair", "a photo of a person with straight hair"),
    "Wearing_Earrings": ("a photo of a person wearing earrings", "a photo of a person without earrings"),
    "Wearing_Hat": ("a photo of a person wearing a hat", "a photo of a person without a hat"),
    "Wearing_Lipstick": ("a photo of a person wearing lipstick", "a photo of a person without lipstick"),
    "Wearing_Necklace": ("a photo of a person wearing a necklace", "a photo of a person without a necklace"),
    "Wearing_Necktie": ("a photo of a person wearing a necktie", "a photo of a person without a necktie"),
    "Young": ("a photo of a young person", "a photo of an old person"),
}

#: the same probes worded with held-out synonyms (only where the grammar holds one back)
HELDOUT_PROBES: dict[str, tuple[str, str]] = {
    "Eyeglasses": ("a picture of someone in spectacles", "a picture of someone without spectacles"),
    "Smiling": ("a picture of someone grinning", "a picture of someone who is not grinning"),
    "Blond_Hair": ("a picture of someone with golden hair", "a picture of someone with black hair"),
    "Gray_Hair": ("a picture of someone with silver hair", "a picture of someone with black hair"),
    "Brown_Hair": ("a picture of someone with chestnut hair", "a picture of someone with black hair"),
    "Wavy_Hair": ("a picture of someone with curly hair", "a picture of someone with straight hair"),
    "Mustache": ("a picture of someone with a moustache", "a picture of someone without a moustache"),
    "Bangs": ("a picture of someone with a fringe", "a picture of someone without a fringe"),
    "5_o_Clock_Shadow": ("a picture of someone with stubble", "a picture of someone without stubble"),
    "Big_Lips": ("a picture of someone with full lips", "a picture of someone with thin lips"),
    "Narrow_Eyes": ("a picture of someone with squinting eyes", "a picture of someone with wide eyes"),
    "Bags_Under_Eyes": ("a picture of someone with puffy eyes", "a picture of someone without puffy eyes"),
    "Male": ("a picture of a fellow", "a picture of a woman"),
}


def recall_at_k(sim: torch.Tensor, k: int) -> float:
    """Fraction of rows whose matching column (the diagonal) is among the top k."""
    k = min(k, sim.shape[1])
    top = sim.topk(k, dim=1).indices
    return (top == torch.arange(sim.shape[0])[:, None]).any(1).float().mean().item()


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates (nan when a class is absent)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if truth.all() or (~truth).all():
        return float("nan")
    return 0.5 * (float((pred & truth).sum() / truth.sum()) + float((~pred & ~truth).sum() / (~truth).sum()))


def noise_std_for_cosine(c: float, dim: int) -> float:
    """Per-dimension Gaussian std that makes cos(x, normalise(x + n)) ~ c for unit x."""
    c = min(max(c, 1e-3), 0.999999)
    return math.sqrt((1.0 / (c * c) - 1.0) / dim)


@torch.no_grad()
def _encode_texts(model, texts: list[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([model.encode_text(texts[i:i + batch]) for i in range(0, len(texts), batch)])


@torch.no_grad()
def evaluate_encoder(model, images: torch.Tensor, attributes: np.ndarray, captions: list[str],
                     captions_heldout: list[str], batch: int = 128) -> dict:
    """``images`` (N, 3, H, W) in [-1, 1]; ``attributes`` (N, A) booleans in ATTRIBUTES order."""
    model.eval()
    n = len(images)
    img = torch.cat([model.encode_image(images[i:i + batch]) for i in progress(range(0, n, batch), desc="images")])
    txt = _encode_texts(model, captions)
    txt_h = _encode_texts(model, captions_heldout)
    out: dict = {"num_pairs": n}
    for name, t in (("train_grammar", txt), ("heldout_grammar", txt_h)):
        sim = t @ img.t()
        out[name] = {
            "t2i_R@1": recall_at_k(sim, 1), "t2i_R@5": recall_at_k(sim, 5),
            "i2t_R@1": recall_at_k(sim.t(), 1), "i2t_R@5": recall_at_k(sim.t(), 5),
        }
    cos = (img * txt).sum(1)
    perm = torch.roll(torch.arange(n), 1)
    cos_wrong = (img * txt[perm]).sum(1)
    dim = img.shape[1]
    out["cosine_gap"] = {
        "matched_mean": cos.mean().item(), "matched_std": cos.std().item(),
        "mismatched_mean": cos_wrong.mean().item(), "mismatched_std": cos_wrong.std().item(),
        "embed_dim": dim,
        "noise_std_matching_mean_cosine": noise_std_for_cosine(cos.mean().item(), dim),
    }
    attributes = np.asarray(attributes, bool)
    for name, probes in (("zero_shot", PROBES), ("zero_shot_heldout_words", HELDOUT_PROBES)):
        per = {}
        for a, (pos, neg) in probes.items():
            e = _encode_texts(model, [pos, neg])
            pred = ((img @ e[0]) > (img @ e[1])).numpy()
            per[a] = balanced_accuracy(pred, attributes[:, ATTRIBUTES.index(a)])
        vals = [v for v in per.values() if not math.isnan(v)]
        out[name] = {"per_attribute_balanced_accuracy": per, "mean": float(np.mean(vals)) if vals else float("nan")}
    return out
