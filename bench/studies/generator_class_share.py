"""Compare generator evaluations (``mm2latent eval generator --out X.json``) side by side.

Prints, per evaluation, realism (Fréchet/KID of samples and reconstructions), the parser's mIoU on
reconstructions and, per class, the share of generated (and reconstructed) pixels over the share in
the parsed held-out renders -- the quantity the generator issue asks to bring to 1. The summary
column ``worst`` is the largest |log ratio| over classes, ``mean`` the mean |log ratio|; both are
reported as factors (exp), so 1.00 is a perfect match.

    python bench/studies/generator_class_share.py shipped=runs/shipped.json new=runs/new.json [--out report.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys


def ratios(report: dict, column: str) -> dict[str, float]:
    """Class share of ``column`` ('generated' or 'reconstructed') over the parsed renders' share."""
    out = {}
    for name, row in report["class_frequencies"].items():
        if column in row and row["renders_parsed"] > 0:
            out[name] = row[column] / row["renders_parsed"]
    return out


def spread(r: dict[str, float]) -> tuple[float, float]:
    """(worst, mean) |log ratio| over classes, as factors >= 1."""
    logs = [abs(math.log(max(v, 1e-9))) for v in r.values()]
    return math.exp(max(logs)), math.exp(sum(logs) / len(logs))


def summary(report: dict) -> dict:
    gen, rec = ratios(report, "generated"), ratios(report, "reconstructed")
    judged = report.get("reconstruction_judged", {}).get("reconstructions", {})
    return {
        "num": report["num"], "truncation": report["truncation"],
        "frechet_generated": round(report["generated"]["frechet"], 2),
        "kid_generated_x100": round(100 * report["generated"]["kid"], 3),
        "frechet_floor_renders": round(report["renders_val"]["frechet"], 2),
        "frechet_reconstructions": round(report["reconstructed_val"]["frechet"], 2) if "reconstructed_val" in report else None,
        "reconstruction_parser_miou": round(judged["parser_miou"], 3) if "parser_miou" in judged else None,
        "class_share_ratio_generated": {k: round(v, 2) for k, v in gen.items()},
        "class_share_ratio_reconstructed": {k: round(v, 2) for k, v in rec.items()},
        "generated_worst_mean_factor": [round(x, 2) for x in spread(gen)],
        "reconstructed_worst_mean_factor": [round(x, 2) for x in spread(rec)] if rec else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=EVAL.json")
    p.add_argument("--out", help="write the summaries here as JSON")
    a = p.parse_args(argv)
    rows = {}
    for item in a.runs:
        name, _, path = item.partition("=")
        if not path:
            p.error(f"expected NAME=EVAL.json, got {item!r}")
        try:
            with open(path) as f:
                rows[name] = summary(json.load(f))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: cannot read evaluation {path}: {e}", file=sys.stderr)
            return 2
    names = list(rows)
    w = max(12, *(len(n) for n in names)) + 2
    print(f"{'':28}" + "".join(f"{n:>{w}}" for n in names))
    for key in ("frechet_generated", "kid_generated_x100", "frechet_reconstructions", "reconstruction_parser_miou"):
        print(f"{key:28}" + "".join(f"{str(rows[n][key]):>{w}}" for n in names))
    for col in ("generated", "reconstructed"):
        print(f"-- class share ratio, {col} / parsed renders (worst, mean factor: "
              + ", ".join(str(rows[n][f'{col}_worst_mean_factor']) for n in names) + ")")
        classes = rows[names[0]][f"class_share_ratio_{col}"]
        for c in classes:
            print(f"{c:28}" + "".join(f"{rows[n][f'class_share_ratio_{col}'].get(c, float('nan')):>{w}.2f}" for n in names))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
