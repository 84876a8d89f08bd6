"""Is the generator's over-drawing of small parts real, or the parser's bias?

Per-class pixel shares of 2,000 held-out test renders: their true masks, and the shipped parser
on the same renders; next to the shares the parser finds in 2,000 generated samples (read from
``docs/reports/generator_eval.json``, truncation 0.7). generated / parsed is the generator's own
over- or under-drawing. ``mm2latent eval generator`` now reports the parsed column as well.

    .venv/bin/python bench/studies/parser_class_bias.py --out docs/reports/parser_class_bias.json
"""

import argparse
import json

import torch

from mm2latent.common.fileio import emit_json_report
from mm2latent.common.palette import CLASS_NAMES
from mm2latent.eval.generator import class_frequencies, parse_all, render_split
from mm2latent.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--generator-report", default="docs/reports/generator_eval.json")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = Pipeline.from_pretrained()
    x, masks = render_split("test", a.num, pipe.resolution)
    parsed, true = class_frequencies(parse_all(pipe.controls.parser, x)), class_frequencies(masks)
    gen = json.load(open(a.generator_report))["class_frequencies"]
    rows = {}
    for n, p, t in zip(CLASS_NAMES, parsed, true):
        g = gen[n]["generated"]
        rows[n] = {"true": round(float(t), 5), "parsed": round(float(p), 5), "generated": round(g, 5),
                   "parsed_over_true": round(float(p / t), 2), "generated_over_parsed": round(float(g / p), 2)}
    res = {"num": a.num, "command": "bench/studies/parser_class_bias.py", "classes": rows}
    emit_json_report(res, a.out)


if __name__ == "__main__":
    main()
