"""Evaluation on a real photo dataset (``mm2latent eval real``; project issue 39, item 5).

On the first ``num`` photos of a dataset (:func:`mm2latent.datasets.layouts.open_photos`: a
CelebAMask-HQ tree with its part masks and, optionally, MM-CelebA-HQ captions, or any image folder),
brought to the generator's resolution:

* **generation inputs**: each photo gives one face, generated from one of its captions (seeded
  choice) and its annotated mask. A photo without captions gives its own image embedding in the
  text slot instead (the pseudo-text MappingNet is trained on); a photo without an annotated mask
  gives the parser's mask of the photo. The report counts each combination.
* **FID**: Fréchet distance between the generated faces and the photos (and, for reference, the
  inversions and the photos, and one half of the photos and the other half). Features: the FID
  Inception-v3's 2048-d pool features when Inception weights are given
  (:mod:`mm2latent.models.inception`), else the world image encoder's unnormalised embedding --
  then the number is *not* an Inception FID and does not compare with published FIDs; the report's
  ``fid.features`` says which. Both sets are at the generator's resolution (and, for Inception,
  rounded to 8 bits, as the image files pytorch-fid reads would be).
* **text-image score**: cosine between the encoder's (FaRL/CLIP) image embedding of each generated
  face and the text embedding of its caption; the same for the photo and its caption (reference),
  and for the generated face and another photo's caption (chance reference).
* **mask mIoU**: parser mIoU (dataset-level confusion matrix) of the generated faces against the
  annotated input masks, and of the parser on the photos themselves (the judge's ceiling).
* **inversion**: PSNR and SSIM of the one-pass reconstructions (W+ inverter, else W encoder) against
  the photos, and an *unweighted LPIPS-style feature distance*: per layer, channel-normalised
  activations, squared difference summed over channels and averaged over positions, averaged over
  layers; on Inception blocks 0-2 when Inception weights are given, else on the world image
  encoder's transformer blocks. It is not LPIPS (no learned per-channel weights, other networks).

Deterministic for a seed (photo order is the dataset's; the seed picks captions and draws the
generation noise), batched, with a progress bar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.imageio import image_to_tensor, resize_image
from ..common.palette import resize_mask
from ..common.progress import progress
from ..common.seeding import numpy_rng
from ..models.controls import get_control
from ..models.metrics import confusion_matrix, mean_iou
from .editing import psnr, ssim
from .realism import frechet_distance, frechet_distance_lowrank

INCEPTION_FEATURES = "FID Inception-v3 pool features (2048-d, pt_inception-2015-12-05 weights)"
ENCODER_FEATURES = ("world image encoder embedding (unnormalised, {dim}-d); NOT Inception features: "
                    "not comparable with published FIDs (give --inception FILE for those)")
PERCEPTUAL_NAME = "unweighted LPIPS-style feature distance (not LPIPS: no learned channel weights)"


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of feature sets (the low-rank identity when there are fewer samples than dims)."""
    if min(len(a), len(b)) <= a.shape[1]:
        return frechet_distance_lowrank(a, b)
    return frechet_distance(a, b)


def feature_distance(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
    """Per-image unweighted LPIPS-style distance between two lists of activations, each (B, C, H, W)
    (channels at dim 1) or (B, N, C) tokens (channels last): unit-normalise every position's channel
    vector, sum the squared differences over channels, average over positions, then over layers."""
    out = []
    for a, b in zip(fa, fb):
        dim = 1 if a.dim() == 4 else -1
        d = (F.normalize(a.float(), dim=dim) - F.normalize(b.float(), dim=dim)).square().sum(dim)
        out.append(d.flatten(1).mean(1))
    return torch.stack(out).mean(0)


@torch.no_grad()
def encoder_block_tokens(encoder, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The world image encoder's patch tokens after each transformer block (B, N, W) and its
    unnormalised embedding (B, D), of images (B, 3, H, W) in [-1, 1]."""
    v = encoder.visual
    x = v.conv1(encoder.preprocess(images).to(v.conv1.weight.dtype)).flatten(2).transpose(1, 2)
    cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = v.ln_pre(torch.cat([cls, x], 1) + v.positional_embedding.to(x.dtype))
    tokens = []
    for blk in v.transformer.resblocks:
        x = blk(x)
        tokens.append(x[:, 1:])
    return tokens, v.ln_post(x[:, 0]) @ v.proj


class _Features:
    """FID features and perceptual-distance activations from Inception (when given) or the encoder."""

    def __init__(self, encoder, inception=None):
        self.encoder, self.inception = encoder, inception
        if inception is not None:
            self.fid_name, self.perceptual_net = INCEPTION_FEATURES, "FID Inception-v3, blocks 0-2 (64/192/768 ch)"
        else:
            dim = encoder.visual.proj.shape[1]
            self.fid_name = ENCODER_FEATURES.format(dim=dim)
            self.perceptual_net = f"world image encoder, its {len(encoder.visual.transformer.resblocks)} transformer blocks"

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, list[torch.Tensor]]:
        """(FID features (B, D), activations for the distance) of images in [-1, 1]."""
        if self.inception is not None:  # 8-bit values, as the images files pytorch-fid reads would hold
            x01 = (images.float().clamp(-1, 1) + 1).mul(127.5).round().div(255)
            blocks = self.inception.blocks(x01, last=3)
            return blocks[-1].double().numpy(), blocks[:-1]
        tokens, emb = encoder_block_tokens(self.encoder, images.float())
        return emb.double().numpy(), tokens


def _photo_tensor(sample, size: int) -> torch.Tensor:
    img = sample.image if sample.image.shape[:2] == (size, size) else resize_image(sample.image, size)
    return image_to_tensor(img)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@torch.no_grad()
def evaluate_real(pipe, photos, inception=None, num: int = 200, seed: int = 0, batch: int = 16,
                  truncation: float = 1.0) -> dict[str, Any]:
    """The real-data figures of the module docstring for pipeline ``pipe`` on dataset ``photos``
    (a :mod:`mm2latent.datasets.layouts` adapter), with FID Inception ``inception`` if given."""
    n = min(int(num), len(photos))
    if n < 2:
        raise UserError(f"real-data evaluation needs at least 2 photos (have {len(photos)}, asked for {num})")
    if batch < 1:
        raise UserError("batch must be at least 1")
    c = pipe.controls
    res = pipe.resolution
    mods = pipe.mapping.modalities
    feats = _Features(c.encoder, inception)
    rng = numpy_rng(seed, 39)
    acc: dict[str, list] = {k: [] for k in ("real_f", "gen_f", "rec_f", "psnr", "ssim", "perc", "gen_cos",
                                             "real_cos", "gen_emb_cap", "cap_emb", "pred_gen", "pred_real",
                                             "target")}
    inputs = {"caption+annotated_mask": 0, "caption+parsed_mask": 0, "own_image_embedding+annotated_mask": 0,
              "own_image_embedding+parsed_mask": 0}
    method = None
    for start in progress(range(0, n, batch), desc="real-data eval", unit="batch"):
        idx = list(range(start, min(n, start + batch)))
        samples = [photos[i] for i in idx]
        x = torch.stack([_photo_tensor(s, res) for s in samples])
        # ---- the generation inputs: a caption (seeded choice) or the photo's own image embedding; its mask
        caps = [s.captions[int(rng.integers(len(s.captions)))] if s.captions else None for s in samples]
        own_emb = c.embed_image(x)
        has_cap = [k for k, t in enumerate(caps) if t is not None]
        text_emb = own_emb.clone()
        if has_cap:
            text_emb[has_cap] = c.embed_text([caps[k] for k in has_cap])
        annotated = [s.mask is not None for s in samples]
        parsed = c.parse_mask(x) if not all(annotated) else None
        labels = torch.stack([torch.from_numpy(resize_mask(s.mask, c.mask_size).astype(np.int64))
                              if s.mask is not None else parsed[k] for k, s in enumerate(samples)])
        for k in range(len(samples)):
            inputs[("caption" if caps[k] is not None else "own_image_embedding")
                   + ("+annotated_mask" if annotated[k] else "+parsed_mask")] += 1
        emb: dict[str, torch.Tensor | None] = {m: None for m in mods}
        if "text" in emb:
            emb["text"] = text_emb
        if "mask" in emb:
            emb["mask"] = get_control("mask").embed(c, labels)
        seeds = [seed * 100003 + i for i in idx]
        y = pipe.synthesize(pipe.latents(emb, seeds, truncation), seeds)
        # ---- inversion (one pass)
        ws, method = pipe.one_pass_codes(x)
        rec = pipe.G.synthesis(ws, noise_mode="const")
        # ---- features
        fx, ax = feats(x)
        fy, _ = feats(y)
        fr, ar = feats(rec)
        acc["real_f"].append(fx)
        acc["gen_f"].append(fy)
        acc["rec_f"].append(fr)
        acc["psnr"] += psnr(rec, x).tolist()
        acc["ssim"] += ssim(rec, x).tolist()
        acc["perc"] += feature_distance(ax, ar).tolist()
        # ---- text-image score
        if has_cap:
            ey, ex, et = c.embed_image(y)[has_cap], own_emb[has_cap], text_emb[has_cap]
            acc["gen_cos"] += (ey * et).sum(-1).tolist()
            acc["real_cos"] += (ex * et).sum(-1).tolist()
            acc["gen_emb_cap"].append(ey)
            acc["cap_emb"].append(et)
        # ---- mask fidelity, on annotated masks only
        keep = [k for k, a in enumerate(annotated) if a]
        if keep:
            acc["pred_gen"].append(c.parse_mask(y)[keep])
            acc["pred_real"].append(c.parse_mask(x)[keep])
            acc["target"].append(labels[keep])

    real_f, gen_f, rec_f = (np.concatenate(acc[k]) for k in ("real_f", "gen_f", "rec_f"))
    report: dict[str, Any] = {
        "num": n, "seed": int(seed), "resolution": res, "truncation": float(truncation),
        "photos": {"layout": type(photos).__name__, "available": len(photos), "used": "the first num, in the "
                   "dataset's order", "with_captions": sum(v for k, v in inputs.items() if k.startswith("caption")),
                   "with_annotated_masks": sum(v for k, v in inputs.items() if k.endswith("annotated_mask"))},
        "generation_inputs": {**inputs, "text": "one of the photo's captions, chosen by the seed; without captions "
                              "the photo's own image embedding (MappingNet's pseudo-text)",
                              "mask": "the photo's annotated mask; without one the parser's mask of the photo"},
    }
    fid_row: dict[str, Any] = {"features": feats.fid_name, "inception": inception is not None,
                               "generated_vs_photos": fid(gen_f, real_f),
                               "reference: inversions_vs_photos": fid(rec_f, real_f)}
    if n >= 4:
        fid_row["reference: photos_half_vs_half"] = fid(real_f[0::2], real_f[1::2])
    fid_row["note"] = (f"{n} samples per set ({n // 2} in the half-vs-half reference); FID is biased upwards at "
                       "small N, so compare numbers at equal N only")
    report["fid"] = fid_row
    k = len(acc["gen_cos"])
    if k:
        row: dict[str, Any] = {"encoder": "the pipeline's FaRL/CLIP encoder (unit embeddings, cosine)", "num": k,
                               "generated_with_its_caption": _mean(acc["gen_cos"]),
                               "reference: photo_with_its_caption": _mean(acc["real_cos"])}
        if k >= 2:
            ey, et = torch.cat(acc["gen_emb_cap"]), torch.cat(acc["cap_emb"])
            row["chance: generated_with_another_photos_caption"] = float((ey * et.roll(1, 0)).sum(-1).mean())
        report["text_image_score"] = row
    else:
        report["text_image_score"] = {"num": 0, "skipped": "no photo has captions (give --captions ROOT)"}
    if acc["target"]:
        t = torch.cat(acc["target"])
        report["mask_miou"] = {
            "num": len(t), "size": c.mask_size,
            "generated_vs_input_masks": mean_iou(confusion_matrix(torch.cat(acc["pred_gen"]), t)),
            "ceiling: parser_on_photos_vs_annotations": mean_iou(confusion_matrix(torch.cat(acc["pred_real"]), t))}
    else:
        report["mask_miou"] = {"num": 0, "skipped": "no photo has an annotated mask (a CelebAMask-HQ tree has them)"}
    report["inversion"] = {"method": method, "num": n, "psnr": _mean(acc["psnr"]), "ssim": _mean(acc["ssim"]),
                           "perceptual_distance": {"value": _mean(acc["perc"]), "name": PERCEPTUAL_NAME,
                                                   "network": feats.perceptual_net}}
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal."""
    f, t, m, inv = report["fid"], report["text_image_score"], report["mask_miou"], report["inversion"]
    kind = "Inception" if f["inception"] else "encoder-feature (not Inception)"
    lines = [f"{report['num']} photos at {report['resolution']} px ({report['photos']['with_captions']} with captions, "
             f"{report['photos']['with_annotated_masks']} with annotated masks)",
             f"{kind} FID, generated vs photos: {f['generated_vs_photos']:.3f} "
             f"(inversions vs photos: {f['reference: inversions_vs_photos']:.3f})"]
    if t.get("num"):
        lines.append(f"text-image cosine: generated {t['generated_with_its_caption']:.4f}, "
                     f"photos {t['reference: photo_with_its_caption']:.4f}")
    if m.get("num"):
        lines.append(f"mask mIoU vs input masks: {m['generated_vs_input_masks']:.4f} "
                     f"(parser on photos: {m['ceiling: parser_on_photos_vs_annotations']:.4f})")
    lines.append(f"inversion ({inv['method']}): PSNR {inv['psnr']:.2f} dB, SSIM {inv['ssim']:.4f}, "
                 f"feature distance {inv['perceptual_distance']['value']:.4f}")
    return lines
