"""Figures that tell whether the world generator draws the world (the targets of its issue).

All on held-out splits, generated against rendered at the same size:

* **sharpness**: variance of the Laplacian of the grey image, generated / render, over whole
  faces and inside the eye classes of the render's mask (the generated face is drawn from the
  render's own world code, so the regions line up); >= 0.5 and <= 2 (noise is not sharpness);
* **seed spread**: mean absolute pixel difference between two seeds of one attribute set (one
  caption's worth of constraints; every other world uniform redrawn), over that between two
  different world faces (renders);
* **Fréchet distance** in the world CLIP image tower's features: generated faces (world codes of
  the val split) against test renders, next to val renders against test renders (the floor);
* **one-pass reconstructions**: test render -> image encoder -> code -> mapping -> synthesis,
  judged by the world parser (mIoU against the render masks) and the attribute analyzer
  (balanced accuracy against the true attributes), next to the same judges on the renders.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..common.palette import CLASS_INDEX
from ..common.progress import progress
from .generator import judge_reconstructions
from .realism import encoder_features, frechet_distance

TARGETS = {"sharpness_ratio": (0.5, 2.0), "eye_sharpness_ratio": (0.5, 2.0), "seed_spread": (0.5, None),
           "frechet_ratio": (None, 2.0), "reconstruction_parser_miou": (0.80, None),
           "reconstruction_attribute_accuracy": (0.85, None)}
EYE_CLASSES = (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"])
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def laplacian_of_grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W) Laplacian of the 0..255 luma (replicate-padded)."""
    x = (images.float().clamp(-1, 1) + 1) * 127.5
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), _LAPLACE).squeeze(1)


def laplacian_variance(images: torch.Tensor, region: torch.Tensor | None = None) -> np.ndarray:
    """Per-image variance of the Laplacian, over all pixels or those where ``region`` (N, H, W) holds
    (NaN where a region is empty)."""
    lap = laplacian_of_grey(images)
    if region is None:
        return lap.flatten(1).var(dim=1).numpy()
    out = []
    for v, m in zip(lap, region.bool()):
        out.append(float(v[m].var()) if int(m.sum()) > 1 else float("nan"))
    return np.array(out)


def sharpness_ratios(generated: torch.Tensor, renders: torch.Tensor, masks: np.ndarray) -> dict:
    """Whole-face and eye-region Laplacian-variance ratios (ratio of the means over the set)."""
    eyes = torch.from_numpy(np.isin(np.asarray(masks), EYE_CLASSES))
    whole_g, whole_r = laplacian_variance(generated), laplacian_variance(renders)
    eye_g, eye_r = laplacian_variance(generated, eyes), laplacian_variance(renders, eyes)
    ok = np.isfinite(eye_g) & np.isfinite(eye_r)
    return {"sharpness_ratio": float(whole_g.mean() / whole_r.mean()),
            "eye_sharpness_ratio": float(eye_g[ok].mean() / eye_r[ok].mean()),
            "sharpness_render": float(whole_r.mean()), "sharpness_generated": float(whole_g.mean()),
            "eye_faces": int(ok.sum())}


@torch.no_grad()
def generate_from_codes(G, codes: torch.Tensor, noise_mode: str = "random", batch: int = 64,
                        seed: int = 0) -> torch.Tensor:
    """G(code) for (N, CODE_DIM) codes; noise from a fixed seed so figures repeat exactly."""
    torch.manual_seed(seed)
    return torch.cat([G(codes[i:i + batch], noise_mode=noise_mode) for i in range(0, len(codes), batch)]).clamp(-1, 1)


@torch.no_grad()
def reconstruct_with_code_encoder(G, encoder, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """One pass: image -> encoder's code -> mapping -> synthesis (const noise)."""
    out = []
    for i in range(0, len(images), batch):
        code = encoder(images[i:i + batch])[0]
        out.append(G(code, noise_mode="const"))
    return torch.cat(out).clamp(-1, 1)


def seed_spread(G, params: list, seeds: int = 2, base_seed: int = 0) -> dict:
    """Generated pixel spread across seeds of one attribute set, over renders' spread across faces."""
    from ..world.code import resample_keeping_attributes, world_code
    from ..world.render import render

    size = G.cfg.resolution
    within = []
    for k, p in enumerate(params):
        codes = np.stack([world_code(resample_keeping_attributes(p, base_seed + 1000 * k + s)) for s in range(seeds)])
        imgs = generate_from_codes(G, torch.from_numpy(codes), seed=base_seed + k)
        for a in range(seeds):
            for b in range(a + 1, seeds):
                within.append(float((imgs[a] - imgs[b]).abs().mean()))
    renders = torch.stack([_to_float(render(p, size).image) for p in params])
    across = [float((renders[a] - renders[b]).abs().mean()) for a in range(len(renders)) for b in range(a + 1, len(renders))]
    return {"seed_spread": float(np.mean(within) / np.mean(across)), "seed_pixel_difference": float(np.mean(within)),
            "face_pixel_difference": float(np.mean(across)), "attribute_sets": len(params), "seeds": seeds}


def _to_float(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1).float().div(127.5).sub(1)


def check_targets(figures: dict) -> dict:
    """{figure: True/False} against :data:`TARGETS`."""
    out = {}
    for name, (lo, hi) in TARGETS.items():
        v = figures.get(name)
        out[name] = bool(v is not None and np.isfinite(v) and (lo is None or v >= lo) and (hi is None or v <= hi))
    return out


@torch.no_grad()
def evaluate_world_generator(G, image_encoder=None, clip=None, parser=None, analyzer=None, num: int = 500,
                             sharp_num: int = 64, spread_sets: int = 12) -> dict:
    """Every figure of the generator's issue; parts whose models are not given are skipped."""
    from ..world.code import world_codes
    from ..world.dataset import SPLIT_SEEDS
    from ..world.params import sample_params
    from .generator import render_split, split_attributes

    size = G.cfg.resolution
    G = G.eval()
    test, test_masks = render_split("test", num, size)
    test_codes = torch.from_numpy(world_codes(SPLIT_SEEDS["test"], range(num)))
    out: dict = {"num": num, "resolution": size}
    n = min(sharp_num, num)
    gen_test = generate_from_codes(G, test_codes[:n])
    out.update(sharpness_ratios(gen_test, test[:n], test_masks[:n]))
    out.update(seed_spread(G, [sample_params(SPLIT_SEEDS["test"], i) for i in range(spread_sets)]))
    if clip is not None:
        val, _ = render_split("val", num, size)
        gen_val = generate_from_codes(G, torch.from_numpy(world_codes(SPLIT_SEEDS["val"], range(num))), seed=1)
        feats = {k: encoder_features(clip, x) for k, x in progress(
            [("test", test), ("val", val), ("generated", gen_val)], desc="features", unit="set")}
        fg, fr = frechet_distance(feats["generated"], feats["test"]), frechet_distance(feats["val"], feats["test"])
        out.update({"frechet_generated": fg, "frechet_renders": fr, "frechet_ratio": fg / fr,
                    "feature_space": "world CLIP image tower, unnormalised"})
    if parser is not None and analyzer is not None:
        attrs = split_attributes("test", num)
        gen_all = generate_from_codes(G, test_codes, noise_mode="const")
        from_code = judge_reconstructions(test, gen_all, test_masks, attrs, parser, analyzer)
        out["from_code"] = from_code["reconstructions"]
        out["renders_judged"] = from_code["renders"]
        if image_encoder is not None:
            rec = reconstruct_with_code_encoder(G, image_encoder, test)
            judged = judge_reconstructions(test, rec, test_masks, attrs, parser, analyzer)["reconstructions"]
            out["reconstruction"] = judged
            out["reconstruction_parser_miou"] = judged["parser_miou"]
            out["reconstruction_attribute_accuracy"] = judged["attribute_balanced_accuracy"]
            out["reconstruction_psnr"] = float(_psnr(rec, test))
    out["targets_met"] = check_targets(out)
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) / 2).square().flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


def load_judges(weights_dir=None) -> dict:
    """The world CLIP (features for Fréchet), parser and analyzer from a weights directory (default: shipped)."""
    from ..models.clip import load_clip
    from ..models.registry import default_weights_dir, load_module

    from pathlib import Path

    d = Path(weights_dir) if weights_dir else default_weights_dir()
    return {"clip": load_clip(d / "encoder.safetensors"), "parser": load_module(d, "parser"),
            "analyzer": load_module(d, "analyzer")}


@torch.no_grad()
def comparison_figure(G, image_encoder=None, n: int = 8, seeds: int = 8, seed_face: int = 0) -> np.ndarray:
    """Rows: test renders; G from their world codes; encoder reconstructions (if given); then
    ``seeds`` seeds of one face's attribute set (test face ``seed_face``)."""
    from ..common.imageio import make_grid
    from ..world.code import resample_keeping_attributes, world_code, world_codes
    from ..world.dataset import SPLIT_SEEDS
    from ..world.params import sample_params
    from ..world.render import render

    size = G.cfg.resolution
    test = SPLIT_SEEDS["test"]
    renders = torch.stack([_to_float(render(sample_params(test, i), size).image) for i in range(n)])
    rows = [renders, generate_from_codes(G, torch.from_numpy(world_codes(test, range(n))))]
    if image_encoder is not None:
        rows.append(reconstruct_with_code_encoder(G, image_encoder, renders))
    p = sample_params(test, seed_face)
    codes = np.stack([world_code(resample_keeping_attributes(p, s)) for s in range(seeds)])
    seeded = generate_from_codes(G, torch.from_numpy(codes), seed=7)
    cols = max(n, seeds)
    tiles = []
    for row in rows + [seeded]:
        u8 = row.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pad = np.full((cols - len(u8), size, size, 3), 255, np.uint8)
        tiles.append(np.concatenate([u8, pad]))
    return make_grid(np.concatenate(tiles), cols)
