"""Perception commands: ``parse``, ``attributes``, ``coeffs`` and ``eval perception``.

``register(sub)`` adds the top-level verbs; :mod:`mm2latent.cli.eval` owns ``eval`` and hooks
``eval perception`` in with :func:`register_eval_subcommands`. The perception trainers are
``train parser|analyzer|mask-ae|sketch-ae|coeff-ae`` in :mod:`mm2latent.cli.train`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..common.errors import UserError
from .argtypes import positive_int as _positive_int

WEIGHTS_HELP = "directory of perception weights (default: the package's shipped mm2latent/weights/)"


def _json_object(text: str) -> dict:
    try:
        v = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"base\": 16}'")
    return v


# --------------------------------------------------------------------------- top-level verbs


def register(sub) -> None:
    p = sub.add_parser("parse", help="face parsing: photo -> 19-class CelebAMask-HQ label map",
                       description="Write the label map of a face photo as an index PNG (values 0..18) or, with "
                       "--color, in the CelebAMask-HQ palette. Non-square photos are centre-cropped; the mask "
                       "has the cropped side length unless --size is given.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--out", required=True, metavar="MASK.png", help="output mask (.png)")
    p.add_argument("--color", action="store_true", help="write a colour PNG in the CelebAMask-HQ palette")
    p.add_argument("--size", type=_positive_int, default=None, help="output side in pixels (default: the input's)")
    p.add_argument("--weights", default=None, metavar="DIR", help=WEIGHTS_HELP)
    p.set_defaults(func=_parse)

    a = sub.add_parser("attributes", help="attribute probabilities of a face photo (JSON, CelebA names)")
    a.add_argument("image", metavar="IMAGE")
    a.add_argument("--weights", default=None, metavar="DIR", help=WEIGHTS_HELP)
    a.set_defaults(func=_attributes)

    c = sub.add_parser("coeffs", help="pose/expression/shape coefficients of a face photo (JSON, raw units)")
    c.add_argument("image", metavar="IMAGE")
    c.add_argument("--weights", default=None, metavar="DIR", help=WEIGHTS_HELP)
    c.set_defaults(func=_coeffs)

    cal = sub.add_parser(
        "calibrate-mask-ae", help="fit per-class output offsets of a mask AE to maximise mIoU (encoder untouched)",
        description="Add one constant per class to a trained mask autoencoder's output logits, chosen by coordinate "
        "ascent to maximise reconstruction mIoU on training masks, and write the result as new weights. "
        "Class-weighted training makes the AE over-draw small parts at their boundaries; this removes that bias. "
        "The encoder and its 512-d code are unchanged, so MappingNet needs no retraining.")
    cal.add_argument("weights", metavar="WEIGHTS", help="mask AE weights (.safetensors)")
    cal.add_argument("--data", required=True, metavar="CACHE_DIR", help="world cache of training masks")
    cal.add_argument("--num", type=_positive_int, default=512, help="training masks to fit on (default 512)")
    cal.add_argument("--out", required=True, metavar="OUT.safetensors", help="calibrated weights (a new file)")
    cal.add_argument("--val", default=None, metavar="CACHE_DIR", help="validation cache, scored before and after")
    cal.add_argument("--val-limit", type=_positive_int, default=256, help="validation masks (default 256)")
    cal.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    cal.set_defaults(func=_calibrate_mask_ae)


def register_eval_subcommands(esub) -> None:
    p = esub.add_parser("perception", help="held-out metrics of parser, analyzer and the autoencoders",
                        description="Parser mIoU and per-class IoU (plus mIoU on the real CelebAMask-HQ photos), "
                        "attribute balanced accuracy, coefficient MAE (raw units), mask-AE mIoU on clean and "
                        "perturbed masks, sketch-AE edge F-score (1 px tolerance), coeff-AE MAE. nan is written as null.")
    p.add_argument("--weights", default=None, metavar="DIR", help=WEIGHTS_HELP)
    p.add_argument("--data", required=True, metavar="TEST_CACHE_DIR", help="held-out world cache (e.g. --split test)")
    p.add_argument("--out", required=True, metavar="report.json")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of parser,analyzer,mask_ae,sketch_ae,coeff_ae (default: all found)")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N samples only")
    p.add_argument("--real-photos", default=None, metavar="DIR",
                   help="CelebAMask-HQ folder with photos/ and masks-index/ (default: the shared eval set if present)")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.set_defaults(func=_eval_perception)


def _load_photo(path: str):
    from ..common.imageio import load_image

    return load_image(path)


def _parse(args) -> int:
    from ..common.fileio import check_output_file
    from ..common.palette import save_mask
    from ..models.registry import load_module, parse_image

    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"masks are written as PNG; got --out {args.out}")
    image = _load_photo(args.image)
    check_output_file(args.out)
    parser = load_module(args.weights, "parser")
    mask = parse_image(parser, image, out_size=args.size)
    save_mask(args.out, mask, color=args.color)
    return 0


def _calibrate_mask_ae(args) -> int:
    import torch

    from ..common.fileio import check_output_file
    from ..models.metrics import eval_mask_ae
    from ..models.registry import save_module
    from ..train.calibration import collect_logits, fit_output_bias
    from ..train.perception import load_init_weights, open_data, read_masks

    src, out = Path(args.weights), Path(args.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must be a .safetensors path, got {out}")
    if src.exists() and out.exists() and src.resolve() == out.resolve():
        raise UserError("--out must differ from WEIGHTS (the input weights are never overwritten)")
    check_output_file(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, trained = load_init_weights(src, "mask_ae")
    data = open_data(args.data, limit=args.num)
    n = min(args.num, len(data))
    if n == 0:
        raise UserError(f"no masks in {args.data}")
    masks = read_masks(data, n)
    fit = fit_output_bias(collect_logits(model, masks), masks)
    val_data = open_data(args.val) if args.val else None
    before = eval_mask_ae(model, val_data, limit=args.val_limit) if val_data is not None else None
    model.shift_output_logits(fit.bias)
    record = {"bias": [round(b, 4) for b in fit.bias], "data": str(args.data), "num": n,
              "train_miou_before": round(fit.miou_before, 4), "train_miou_after": round(fit.miou_after, 4),
              "rounds": len(fit.history) - 1}
    val = {}  # the input's validation figures no longer hold; only what is measured here is written
    if val_data is not None:
        after = eval_mask_ae(model, val_data, limit=args.val_limit)
        record["val_miou_before"] = round(before["miou"], 4)
        val = {"miou": after["miou"], **{f"miou_{k}": v for k, v in after["perturbed_miou"].items()}}
        record["val_miou_after"] = round(after["miou"], 4)
    save_module(model, out, half=True, extra={"trained": dict(trained, output_calibration=record), "val": val})
    print(json.dumps(record, indent=2))
    return 0


def _attributes(args) -> int:
    from ..models.registry import analyze_image, load_module

    image = _load_photo(args.image)
    probs, _ = analyze_image(load_module(args.weights, "analyzer"), image)
    print(json.dumps({k: round(v, 4) for k, v in probs.items()}, indent=2))
    return 0


def _coeffs(args) -> int:
    from ..models.registry import analyze_image, load_module

    image = _load_photo(args.image)
    _, coeffs = analyze_image(load_module(args.weights, "analyzer"), image)
    print(json.dumps({k: round(v, 4) for k, v in coeffs.items()}, indent=2))
    return 0


def _eval_perception(args) -> int:
    import torch

    from ..common.fileio import check_output_file, write_text_atomic
    from ..eval.perception import REAL_PHOTOS_DIR, evaluate_perception, jsonable
    from ..models.registry import NAMES, default_weights_dir, load_module
    from ..world.cache import CachedWorldDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    check_output_file(args.out)
    wdir = Path(args.weights) if args.weights else default_weights_dir()
    if args.models:
        names = [n.strip().replace("-", "_") for n in args.models.split(",") if n.strip()]
        bad = [n for n in names if n not in NAMES]
        if bad:
            raise UserError(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(NAMES)}")
    else:
        if not wdir.is_dir():
            raise UserError(f"weights directory {wdir} does not exist")
        names = [n for n in NAMES if (wdir / f"{n}.safetensors").exists()]
        if not names:
            raise UserError(f"no perception weights in {wdir} (expected e.g. parser.safetensors)")
    modules = {n: load_module(args.weights, n) for n in names}
    data = CachedWorldDataset(args.data)
    real = args.real_photos or REAL_PHOTOS_DIR
    if args.real_photos and not Path(args.real_photos, "photos").is_dir():
        raise UserError(f"{args.real_photos} has no photos/ folder")
    report = evaluate_perception(modules, data, limit=args.limit, real_photos=real)
    report["weights"] = str(wdir)
    report["data"] = str(args.data)
    write_text_atomic(args.out, json.dumps(jsonable(report), indent=2) + "\n")
    print(_summary(report))
    return 0


def _summary(r: dict) -> str:
    lines = [f"perception eval on {r['num_samples']} samples"]
    if "parser" in r:
        s = f"parser mIoU {r['parser']['miou']:.4f}"
        if "real_photos" in r["parser"]:
            s += f" (real photos {r['parser']['real_photos']['miou']:.4f})"
        lines.append(s)
    if "analyzer" in r:
        mae = r["analyzer"]["coeffs"]["mae"]
        lines.append(f"attributes mean balanced accuracy {r['analyzer']['attributes']['mean_balanced_accuracy']:.4f}; "
                     f"yaw/pitch/roll MAE {mae['yaw']:.2f}/{mae['pitch']:.2f}/{mae['roll']:.2f} deg")
    if "mask_ae" in r:
        pm = r["mask_ae"]["perturbed_miou"]
        lines.append(f"mask AE mIoU {r['mask_ae']['miou']:.4f} (" + ", ".join(f"{k} {v:.4f}" for k, v in pm.items()) + ")")
    if "sketch_ae" in r:
        lines.append(f"sketch AE F-score {r['sketch_ae']['fscore']:.4f} (rough {r['sketch_ae']['rough']['fscore']:.4f})")
    if "coeff_ae" in r:
        mae = r["coeff_ae"]["mae"]
        lines.append(f"coeff AE yaw MAE {mae['yaw']:.3f} deg, smile MAE {mae['smile']:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the mm2latent command")
