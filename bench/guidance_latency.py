"""Latency of one generate() call (text + mask, batch 1) and batched throughput with text
guidance off and on, alternated in one run (guidance costs one extra MappingNet pass).

    .venv/bin/python bench/guidance_latency.py --threads 2 --out docs/reports/guidance_latency.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from mm2latent.common.fileio import emit_json_report  # noqa: E402
from mm2latent.eval.pipeline import latency  # noqa: E402
from pipeline_args import parse_with_pipeline  # noqa: E402

MASK = Path(__file__).resolve().parents[1] / "examples" / "mask_long_hair.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternations of off/on")
    a, pipe = parse_with_pipeline(ap)
    shipped = pipe.text_guidance
    runs = {"off": [], "on": []}
    for _ in range(a.rounds):
        for name, g in (("off", 0.0), ("on", shipped or 1.0)):
            pipe.set_text_guidance(g)
            runs[name].append(latency(pipe, str(MASK)))
    report = {"text_guidance_on": shipped or 1.0, "guidance_from_layer": pipe.guidance_from_layer, "runs": runs}
    for name, rs in runs.items():
        report[name] = {"latency_ms_median_of_runs": round(1000 * sorted(r["generate_latency_s_median"] for r in rs)[len(rs) // 2], 1),
                        "faces_per_s_best": round(max(r["batched_faces_per_s"] for r in rs), 1)}
    report["ratio_on_over_off_latency"] = round(report["on"]["latency_ms_median_of_runs"] / report["off"]["latency_ms_median_of_runs"], 3)
    emit_json_report(report, a.out)


if __name__ == "__main__":
    main()
