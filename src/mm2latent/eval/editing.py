"""Editing evaluation on held-out world renders (issue "Real-image editing").

* inversion: PSNR / SSIM of the reconstruction against the aligned input,
  one pass (the W+ inverter when the weights have one, and the W encoder it
  replaces for comparison), with ``refine_steps`` of optimisation and with
  ``tune_steps`` of pivotal tuning (and text edits drawn with the tuned
  generator), seconds per image;
* text edits: for each face, one attribute it lacks (from ``TEXT_EDITS``) is
  requested by a caption; success = the classifier now finds it; preservation
  = mean change of the classifier's probabilities for the attributes the edit
  does not concern, and mean pixel change;
* mask edits: each face gets the mask of another test face; success = parser
  mIoU of the edit against that mask (and against the face's own mask before,
  for reference); preservation = pixel change where the two masks agree;
* both combination modes (``delta``, ``blend``) side by side; text edits also
  from the W encoder's inversion (``delta_from_w_encoder``): e4e's
  distortion-editability trade-off, measured.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..common.progress import progress
from ..models.controls import resize_labels
from ..models.metrics import confusion_matrix, mean_iou
from ..world.attributes import ATTRIBUTES

#: attribute -> (caption asking for it, attributes the edit legitimately changes)
TEXT_EDITS = {
    "Blond_Hair": ("a person with blond hair", {"Blond_Hair", "Black_Hair", "Brown_Hair", "Gray_Hair"}),
    "Black_Hair": ("a person with black hair", {"Blond_Hair", "Black_Hair", "Brown_Hair", "Gray_Hair"}),
    "Eyeglasses": ("a person wearing eyeglasses", {"Eyeglasses"}),
    "Smiling": ("a smiling person", {"Smiling", "Mouth_Slightly_Open", "High_Cheekbones"}),
    "Wearing_Hat": ("a person wearing a hat", {"Wearing_Hat", "Bangs", "Bald", "Receding_Hairline"}),
}
IDX = {a: i for i, a in enumerate(ATTRIBUTES)}


def _text_edit(pipe, inv, own: dict[str, torch.Tensor], i: int, mode: str = "delta"):
    """Ask face ``i`` (inversion ``inv``, controls ``own`` read off its reconstruction) for one attribute it
    lacks, chosen from ``TEXT_EDITS`` by ``i``. Returns (attribute, success, untouched-attribute change,
    edited image), or None when the face has every one of them."""
    c = pipe.controls
    p0 = own["attributes"][i]
    lacking = [a for a in TEXT_EDITS if p0[IDX[a]] < 0.5]
    if not lacking:
        return None
    a = lacking[i % len(lacking)]
    text, touched = TEXT_EDITS[a]
    ws = pipe.edit_latent(inv, text=text, mode=mode, own_controls={k: v[i:i + 1] for k, v in own.items()})
    y = inv.draw(ws, pipe.G.synthesis)
    p1 = c.derive(y)["attributes"][0]
    keep = [IDX[b] for b in ATTRIBUTES if b not in touched]
    return a, float(p1[IDX[a]] > 0.5), float((p1[keep] - p0[keep]).abs().mean()), y


@torch.no_grad()
def _pivotal_tuning_rows(pipe, data, invs, before: dict[str, torch.Tensor], k: int, steps: int) -> dict[str, Any]:
    """On the first ``k`` faces: reconstruction with a pivot-tuned generator, and whether text edits
    drawn with it still succeed (success and untouched-attribute change, vs the shared generator,
    whose reconstructions' controls ``before`` the caller has read already)."""
    c = pipe.controls
    with torch.enable_grad():
        tuned = [pipe.invert(data["image"][i:i + 1], tune_steps=steps) for i in range(k)]
    x = torch.cat([v.image for v in tuned])
    rt = torch.cat([v.reconstruction for v in tuned])
    row: dict[str, Any] = {"num": k, "steps": steps, "psnr": float(psnr(rt, x).mean()),
                           "ssim": float(ssim(rt, x).mean()),
                           "seconds_per_image": float(np.mean([v.seconds for v in tuned]))}
    shared = {key: v[:k] for key, v in before.items()}
    for name, inv_list, own in (("text_edits_tuned", tuned, c.derive(rt)),
                                ("text_edits_shared_generator", invs[:k], shared)):
        done = [r for i, inv in enumerate(inv_list) if (r := _text_edit(pipe, inv, own, i)) is not None]
        succ, pres = [r[1] for r in done], [r[2] for r in done]
        row[name] = {"success": float(np.mean(succ)) if succ else math.nan, "edits": len(succ),
                     "untouched_attribute_change": float(np.mean(pres)) if pres else math.nan}
    return row


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window, K1=0.01, K2=0.03) of images in [-1, 1]."""
    x, y = (a + 1) / 2, (b + 1) / 2
    c = x.shape[1]
    g = torch.exp(-0.5 * ((torch.arange(window) - window // 2) / sigma) ** 2)
    g = (g / g.sum()).to(x)
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def f(t):
        return F.conv2d(t, k, groups=c)

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.flatten(1).mean(1)


@torch.no_grad()
def evaluate_editing(pipe, num: int = 200, refine_steps: int = 30, refine_num: int = 20, data=None,
                     tune_steps: int = 0) -> dict[str, Any]:
    from .generator import judge_reconstructions, split_attributes
    from .pipeline import render_test

    truth = None
    if data is None:  # the test split: its attributes are known without rendering
        data = render_test(num, pipe.resolution)
        truth = split_attributes("test", num)
    n = len(data["caption"])
    c = pipe.controls
    invs, t_enc = [], []
    for i in progress(range(n), desc="inverting", unit="face"):
        inv = pipe.invert(data["image"][i:i + 1])
        invs.append(inv)
        t_enc.append(inv.seconds)
    x = torch.cat([v.image for v in invs])
    rec = torch.cat([v.reconstruction for v in invs])
    method = invs[0].method
    report: dict[str, Any] = {"num": n, "inversion": {
        "encoder": {"method": method, "psnr": float(psnr(rec, x).mean()), "ssim": float(ssim(rec, x).mean()),
                    "seconds_per_image": float(np.mean(t_enc))}}}
    invs_w = rec_w = None
    if method == "wplus":  # the W encoder it replaces, on the same faces: distortion and (below) editability
        invs_w = [pipe.invert(data["image"][i:i + 1], inverter="w") for i in range(n)]
        rec_w = torch.cat([v.reconstruction for v in invs_w])
        report["inversion"]["w_encoder"] = {"method": "w", "psnr": float(psnr(rec_w, x).mean()),
                                            "ssim": float(ssim(rec_w, x).mean()),
                                            "seconds_per_image": float(np.mean([v.seconds for v in invs_w]))}
        report["inversion"]["wplus_offset_rms"] = float(
            torch.cat([v.ws - v.ws.mean(1, keepdim=True) for v in invs]).square().mean().sqrt())
    if truth is not None and data["mask"].shape[-1] == x.shape[-1]:
        # the judges on the reconstructions: does the inversion keep the face's parts and attributes?
        for key, recs in (("encoder", rec), ("w_encoder", rec_w)):
            if recs is not None:
                j = judge_reconstructions(x, recs, data["mask"].numpy(), truth, c.parser, c.analyzer)
                report["inversion"][key]["judged"] = j["reconstructions"]
                report["inversion"]["judged_renders_for_reference"] = j["renders"]
    if refine_steps and refine_num:
        k = min(refine_num, n)
        with torch.enable_grad():
            ref = [pipe.invert(data["image"][i:i + 1], refine_steps=refine_steps) for i in range(k)]
        rr = torch.cat([v.reconstruction for v in ref])
        report["inversion"][f"refined_{refine_steps}_steps"] = {
            "num": k, "psnr": float(psnr(rr, x[:k]).mean()), "ssim": float(ssim(rr, x[:k]).mean()),
            "seconds_per_image": float(np.mean([v.seconds for v in ref])),
            "encoder_only_on_same_faces": {"psnr": float(psnr(rec[:k], x[:k]).mean()),
                                           "ssim": float(ssim(rec[:k], x[:k]).mean())}}
    before = c.derive(rec)
    if tune_steps and refine_num:
        report["pivotal_tuning"] = _pivotal_tuning_rows(pipe, data, invs, before, min(refine_num, n), tune_steps)
    # ------------------------------------------------------------------ text edits
    runs = [("delta", "delta", invs, before), ("blend", "blend", invs, before)]
    if invs_w is not None:
        runs.append(("delta_from_w_encoder", "delta", invs_w, c.derive(rec_w)))
    for name, mode, inv_list, own_controls in runs:
        succ, pres, pix, counts = [], [], [], {}
        for i in range(n):
            r = _text_edit(pipe, inv_list[i], own_controls, i, mode)
            if r is None:
                continue
            a, ok, change, y = r
            succ.append(ok)
            counts.setdefault(a, []).append(ok)
            pres.append(change)
            pix.append(float((y - inv_list[i].reconstruction).abs().mean()))
        report.setdefault("text_edits", {})[name] = {
            "success": float(np.mean(succ)), "edits": len(succ),
            "per_attribute": {a: round(float(np.mean(v)), 3) for a, v in counts.items()},
            "untouched_attribute_change": float(np.mean(pres)), "pixel_l1_change": float(np.mean(pix))}
    # ------------------------------------------------------------------ mask edits
    own = before["mask"]
    for mode in ("delta", "blend"):
        got, tgt, pix_out = [], [], []
        for i in range(n):
            j = (i + 1) % n
            target = resize_labels(data["mask"][j:j + 1], c.mask_size)
            ws = pipe.edit_latent(invs[i], mask=target[0].numpy().astype(np.uint8), mode=mode,
                                  own_controls={k: v[i:i + 1] for k, v in before.items()})
            y = pipe.G.synthesis(ws, noise_mode="const")
            got.append(c.derive(y)["mask"])
            tgt.append(target)
            same = (own[i] == F.interpolate(target[:, None].float(), size=own.shape[-2:], mode="nearest")[0, 0].long())
            same = F.interpolate(same[None, None].float(), size=y.shape[-2:], mode="nearest")[0, 0].bool()
            diff = (y - rec[i:i + 1]).abs().mean(1)[0]
            pix_out.append(float(diff[same].mean()) if same.any() else math.nan)
        got_t, tgt_t = torch.cat(got), torch.cat(tgt)
        report.setdefault("mask_edits", {})[mode] = {
            "miou_with_edited_mask": mean_iou(confusion_matrix(got_t, tgt_t)),
            "pixel_l1_change_where_masks_agree": float(np.nanmean(pix_out))}
    report["mask_edits"]["reference: miou of the unedited reconstruction with the target masks"] = mean_iou(
        confusion_matrix(own, torch.cat(tgt)))
    return report
