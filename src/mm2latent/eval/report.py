"""``mm2latent eval --out DIR``: the measuring protocol (docs/design.md section 4), all methods in one run.

Methods, on the same held-out world inputs (test split, ``num`` faces):

* ``mm2latent/<inputs>``: MappingNet, one pass (text+mask, text, text+sketch, text+coeffs);
* ``optimisation-<k>/text+mask``: TediGAN-style latent optimisation (eval.baselines), k steps;
* ``ablation/<name>/...``: extra MappingNets (e.g. trained without pseudo-text noise);
* ``retrieval/text+mask``: the training render whose image embedding best matches the
  caption plus whose mask embedding best matches the mask (memorisation floor).

For each: text fidelity (in-grammar; held-out grammar where the input is text),
mask mIoU / sketch F-score / coefficient MAE where that control is an input,
Fréchet distance and KID to held-out renders in the world encoder's feature
space, seconds per image. Generated images are cached per method in
``DIR/cache`` (safetensors), so an interrupted run resumes where it stopped; the cache
carries a fingerprint of the weights and settings (``cache/run.json``), and a run with
other weights or settings starts it afresh instead of reusing images the old ones made.
Writes ``DIR/report.json``, ``DIR/report.md``, ``DIR/grid.png`` (first inputs,
one row per method) and ``DIR/bars.png``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..common.fileio import write_text_atomic
from ..common.progress import progress
from ..models.metrics import coeff_mae_raw, confusion_matrix, edge_match_counts, fscore_from_counts, mean_iou
from .pipeline import _batched_embeddings, fact_accuracy, render_test
from .realism import encoder_features, frechet_distance, kernel_inception_distance

INPUTS = {"text+mask": ("text", "mask"), "text": ("text",), "text+sketch": ("text", "sketch"),
          "text+coeffs": ("text", "coeffs")}


def _mm2latent(pipe, data, use, key="caption", batch=25) -> Callable[[], torch.Tensor]:
    def run():
        out = []
        n = len(data["caption"])
        for a in range(0, n, batch):
            sl = slice(a, min(n, a + batch))
            seeds = list(range(sl.start, sl.stop))
            out.append(pipe.synthesize(pipe.latents(_batched_embeddings(pipe, data, sl, use, key), seeds), seeds))
        return torch.cat(out)
    return run


def _not_cached(name: str) -> Callable[[], torch.Tensor]:
    def run():
        raise RuntimeError(f"{name} should have been cached")
    return run


def _retrieval(pipe, data, bank_size: int):
    from ..models.controls import resize_images

    def run():
        from .generator import render_split

        imgs, masks = render_split("train", bank_size, data["image"].shape[-1])
        c = pipe.controls
        img_emb = torch.cat([c.embed_image(imgs[i:i + 100]) for i in range(0, bank_size, 100)])
        mask_emb = torch.cat([c.embed_mask(torch.from_numpy(masks[i:i + 100].astype(np.int64)))
                              for i in range(0, bank_size, 100)])
        q_txt = c.embed_text(data["caption"])
        q_mask = c.embed_mask(data["mask"])
        score = (torch.nn.functional.normalize(q_txt, dim=-1) @ torch.nn.functional.normalize(img_emb, dim=-1).T
                 + torch.nn.functional.normalize(q_mask, dim=-1) @ torch.nn.functional.normalize(mask_emb, dim=-1).T)
        return resize_images(imgs[score.argmax(1)], pipe.resolution)
    return run


def _cache_file(cache: Path, name: str) -> Path:
    return cache / (name.replace("/", "__") + ".safetensors")


def _store(cache: Path, name: str, x: torch.Tensor, sec: float) -> None:
    from safetensors.torch import save_file

    from ..common.fileio import atomic_path

    f = _cache_file(cache, name)
    with atomic_path(f) as tmp:
        save_file({"images": x.detach().contiguous()}, str(tmp))
    write_text_atomic(f.with_suffix(".json"), json.dumps({"seconds": sec}))


def _cached(cache: Path, name: str, fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    from safetensors.torch import load_file

    f = _cache_file(cache, name)
    if f.exists():
        meta = json.loads(f.with_suffix(".json").read_text())
        return load_file(str(f))["images"], meta["seconds"]
    t = time.perf_counter()
    with torch.no_grad():
        x = fn()
    sec = time.perf_counter() - t
    _store(cache, name, x, sec)
    return x.detach(), sec


def run_fingerprint(pipe, num: int, seed: int, optimisation_steps, ablations: dict[str, Any] | None,
                    bank_size: int, baseline_settings: dict | None) -> str:
    """sha256 over every weight that shapes a method's images (generator, MappingNet, control
    encoders, latent prior, inference settings; each ablation's too) and the run's settings."""
    import hashlib

    h = hashlib.sha256(json.dumps({"num": num, "seed": seed, "opt": [int(k) for k in optimisation_steps],
                                   "bank": bank_size, "baseline": baseline_settings,
                                   "ablations": sorted(ablations or {})}, sort_keys=True, default=str).encode())
    for p in [pipe, *(ablations or {}).values()]:
        c = p.controls
        h.update(json.dumps([p.text_noise_std, p.text_guidance, p.guidance_from_layer]).encode())
        for m in (p.G, p.mapping, p.latent_prior, c.encoder, c.parser, c.analyzer, c.mask_ae, c.sketch_ae, c.coeff_ae):
            if m is None:
                h.update(b"none")
                continue
            for k, t in m.state_dict().items():
                h.update(k.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _open_cache(cache: Path, fingerprint: str) -> None:
    """Keep the cached images only if they were made by the same weights and settings."""
    import sys

    stamp = cache / "run.json"
    old = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
    stale = [f for f in cache.iterdir() if f.suffix in (".safetensors", ".json") and f.name != "run.json"]
    if stale and old != fingerprint:
        print(f"{cache}: cached images were made by other weights or settings; recomputing them", file=sys.stderr)
        for f in stale:
            f.unlink()
    write_text_atomic(stamp, json.dumps({"fingerprint": fingerprint}))


def run_report(pipe, out: str | Path, num: int = 200, seed: int = 0, optimisation_steps=(100,),
               ablations: dict[str, Any] | None = None, bank_size: int = 2000,
               baseline_settings: dict | None = None) -> dict[str, Any]:
    """``baseline_settings``: the optimisation baseline's lr/reg_weight/seg_weight (e.g. the
    ``best`` of ``mm2latent eval tune-baseline`` on the validation split); defaults otherwise."""
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    _open_cache(cache, run_fingerprint(pipe, num, seed, optimisation_steps, ablations, bank_size, baseline_settings))
    data = render_test(num, pipe.resolution)
    c = pipe.controls
    methods: dict[str, tuple[Callable, tuple[str, ...]]] = {}
    for name, use in INPUTS.items():
        methods[f"mm2latent/{name}"] = (_mm2latent(pipe, data, use), use)
    methods["mm2latent/text (held-out grammar)"] = (_mm2latent(pipe, data, ("text",), "caption_heldout"), ("text",))
    opt_names = {k: f"optimisation-{k}/text+mask" for k in optimisation_steps}
    if opt_names and not all(_cache_file(cache, n).exists() for n in opt_names.values()):
        # every budget is a snapshot of one run of the longest, so all are (re)computed together
        from .baselines import optimise_budgets

        for k, (x, sec) in optimise_budgets(pipe, data["caption"], data["mask"], opt_names,
                                            settings=baseline_settings).items():
            _store(cache, opt_names[k], x, sec)
    for k, name in opt_names.items():
        methods[name] = (_not_cached(name), ("text", "mask"))
    for abl_name, abl_pipe in (ablations or {}).items():
        methods[f"ablation/{abl_name}/text+mask"] = (_mm2latent(abl_pipe, data, ("text", "mask")), ("text", "mask"))
        methods[f"ablation/{abl_name}/text"] = (_mm2latent(abl_pipe, data, ("text",)), ("text",))
    methods["retrieval/text+mask"] = (_retrieval(pipe, data, bank_size), ("text", "mask"))

    from ..models.controls import resize_labels

    tmask = resize_labels(data["mask"], c.mask_size)
    ref_feats = encoder_features(c.encoder, data["image"])
    rows: dict[str, dict[str, Any]] = {}
    images: dict[str, torch.Tensor] = {}
    from ..models.controls import resize_sketch

    for name, (fn, use) in progress(list(methods.items()), desc="methods", unit="method"):
        x, sec = _cached(cache, name, fn)
        images[name] = x
        d = c.derive(x)
        facts = data["facts_heldout"] if "held-out" in name else data["facts"]
        row: dict[str, Any] = {"text_fidelity": fact_accuracy(d["attributes"], facts)["accuracy"],
                               "seconds_per_image": sec / num}
        if "mask" in use:
            row["mask_miou"] = mean_iou(confusion_matrix(d["mask"], tmask))
        if "sketch" in use:
            row["sketch_fscore"] = fscore_from_counts(edge_match_counts(d["sketch"], resize_sketch(data["sketch"], c.sketch_size)))["fscore"]
        if "coeffs" in use:
            mae = coeff_mae_raw(d["coeffs"], data["coeffs"])
            row["yaw_pitch_roll_mae_deg"] = [round(float(v), 2) for v in mae[:3]]
            row["expression_shape_mae"] = float(np.mean(mae[3:]))
        feats = encoder_features(c.encoder, x)
        row["frechet"] = frechet_distance(feats, ref_feats)
        row["kid"] = kernel_inception_distance(feats, ref_feats, subset_size=min(100, num))[0]
        rows[name] = row
    ceiling = c.derive(data["image"])
    report = {
        "protocol": "docs/design.md section 4 on the held-out world test split",
        "num": num, "seed": seed, "rows": rows,
        "judges_on_renders": {"text_fidelity": fact_accuracy(ceiling["attributes"], data["facts"])["accuracy"],
                              "mask_miou": mean_iou(confusion_matrix(ceiling["mask"], tmask))},
        "config": {"weights": pipe.info.get("weights"), "text_noise_std": pipe.text_noise_std,
                   "text_guidance": pipe.text_guidance, "guidance_from_layer": pipe.guidance_from_layer,
                   "optimisation_steps": list(optimisation_steps), "retrieval_bank": bank_size,
                   "optimisation_settings": baseline_settings or "defaults (eval.baselines.OptimisationConfig)",
                   "threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", markdown(report))
    _grid(images, out / "grid.png", data)
    _bars(rows, out / "bars.png")
    return report


def markdown(report: dict) -> str:
    cols = ["text_fidelity", "mask_miou", "sketch_fscore", "frechet", "kid", "seconds_per_image"]
    lines = [f"# Evaluation report ({report['num']} held-out world faces)", "",
             "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in report["rows"].items():
        cells = []
        for k in cols:
            v = row.get(k)
            cells.append("" if v is None else (f"{v:.4f}" if k == "kid" else f"{v:.3f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    j = report["judges_on_renders"]
    lines += ["", f"Judges on the rendered test faces (ceiling): text fidelity {j['text_fidelity']:.3f}, "
              f"mask mIoU {j['mask_miou']:.3f}.", ""]
    return "\n".join(lines) + "\n"


def _grid(images: dict[str, torch.Tensor], path: Path, data, k: int = 8) -> None:
    from ..common.imageio import save_image

    rows = []
    ref = data["image"][:k]
    for x in [ref] + [v[:k] for v in images.values()]:
        x = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False, antialias=True)
        rows.append(torch.cat(list(x), dim=2))
    grid = torch.cat(rows, dim=1).clamp(-1, 1).add(1).mul(127.5).byte().permute(1, 2, 0).numpy()
    save_image(path, grid)


def _bars(rows: dict[str, dict], path: Path) -> None:
    from PIL import Image, ImageDraw

    names = list(rows)
    w, bar_h = 760, 16
    im = Image.new("RGB", (w, 40 + len(names) * (2 * bar_h + 10)), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 8), "text fidelity (blue) and mask mIoU (orange), 0..1", fill="black")
    y = 34
    for n in names:
        d.text((10, y + 4), n[:44], fill="black")
        for j, (key, col) in enumerate((("text_fidelity", (60, 110, 200)), ("mask_miou", (230, 140, 40)))):
            v = rows[n].get(key)
            if v is not None:
                d.rectangle([300, y + j * bar_h, 300 + int(400 * v), y + j * bar_h + bar_h - 3], fill=col)
                d.text((305 + int(400 * v), y + j * bar_h), f"{v:.2f}", fill="black")
        y += 2 * bar_h + 10
    im.save(path)
