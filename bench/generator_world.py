"""Every figure of the world generator's issue, on shipped weights or a training run.

    .venv/bin/python bench/generator_world.py                       # shipped weights
    .venv/bin/python bench/generator_world.py --run runs/gw          # G_ema (+ encoder) of a run's newest checkpoint
    .venv/bin/python bench/generator_world.py --figure docs/figures/generator_world.png --out report.json

Prints each figure next to its target (see mm2latent.eval.generator_world).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from mm2latent.eval.generator_world import TARGETS, comparison_figure, evaluate_world_generator, load_judges  # noqa: E402


def from_run(run_dir: Path):
    from mm2latent.train import state as ckpt
    from mm2latent.train.generator_world import TRAIN_KIND, GeneratorRecipe, generator_from_checkpoint
    from mm2latent.models.inversion import ImageEncoder, ImageEncoderConfig
    from mm2latent.world.code import CODE_DIM

    found = ckpt.latest_good_checkpoint(run_dir, TRAIN_KIND)
    if not found:
        sys.exit(f"no checkpoint in {run_dir}")
    _, tensors, meta = found
    recipe = GeneratorRecipe.from_dict(meta["recipe"])
    G = generator_from_checkpoint(tensors, recipe)
    E = None
    if meta["stage"] in ("encoder", "done") and any(k.startswith("E.") for k in tensors):
        E = ImageEncoder(ImageEncoderConfig(size=recipe.resolution, z_dim=CODE_DIM, widths=recipe.encoder_widths))
        ckpt.load_module_tensors("E", E, tensors)
        E.eval()
    info = {"step": meta["step"], "kimg": meta["nimg"] / 1000, "stage": meta["stage"],
            "minutes": round(meta.get("elapsed", 0) / 60, 1)}
    return G.eval(), E, info


def from_weights(d: Path | None):
    from mm2latent.models.stylegan2 import read_generator
    from mm2latent.models.registry import default_weights_dir, load_module_file

    d = d or default_weights_dir()
    G, meta = read_generator(d / "generator.safetensors")
    E = load_module_file(d / "image_encoder.safetensors", "image_encoder") if (d / "image_encoder.safetensors").exists() else None
    return G.eval(), E, meta.get("training", {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, help="a training run directory (its newest checkpoint)")
    src.add_argument("--weights", type=Path, help="a weights directory (default: shipped)")
    ap.add_argument("--judges", type=Path, default=None, help="weights directory of the CLIP, parser and analyzer")
    ap.add_argument("--num", type=int, default=500, help="faces for Fréchet and the judges (default 500)")
    ap.add_argument("--out", type=Path, help="write the report JSON here")
    ap.add_argument("--figure", type=Path, help="write the renders / generated / seeds picture here")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    G, E, info = from_run(a.run) if a.run else from_weights(a.weights)
    from mm2latent.world.code import CODE_DIM

    if G.z_dim != CODE_DIM:
        sys.exit("this generator is not conditioned on the world code (old VAE-GAN weights?)")
    report = evaluate_world_generator(G, E, num=a.num, **load_judges(a.judges))
    report["generator"] = info
    for name, (lo, hi) in TARGETS.items():
        v = report.get(name)
        want = " and ".join(s for s in ((f">= {lo}" if lo is not None else ""), (f"<= {hi}" if hi is not None else "")) if s)
        shown = "not measured" if v is None else f"{v:.3f}"
        print(f"{name:36s} {shown:>12s}   target {want:14s} {'met' if report['targets_met'][name] else 'NOT met'}")
    for k in ("frechet_generated", "frechet_renders", "reconstruction_psnr"):
        if k in report:
            print(f"{k:36s} {report[k]:12.3f}")
    if "from_code" in report:
        print(f"{'from-code parser mIoU / attributes':36s} {report['from_code']['parser_miou']:.3f} / "
              f"{report['from_code']['attribute_balanced_accuracy']:.3f}   (renders "
              f"{report['renders_judged']['parser_miou']:.3f} / {report['renders_judged']['attribute_balanced_accuracy']:.3f})")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1) + "\n")
    if a.figure:
        from mm2latent.common.imageio import save_image

        a.figure.parent.mkdir(parents=True, exist_ok=True)
        save_image(a.figure, comparison_figure(G, E))
    return 0


if __name__ == "__main__":
    sys.exit(main())
