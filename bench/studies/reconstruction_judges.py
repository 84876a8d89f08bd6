"""Judge generators' reconstructions with the shipped judges *and* a second,
independently trained attribute classifier.

The shipped generator is trained with the shipped analyzer's attribute loss,
and that analyzer is also the text-fidelity judge; a second analyzer trained
separately (another run from scratch) tells whether a gain is real or learnt
against one network. For each weights directory (generator + image encoder):
parser mIoU, attribute and Male balanced accuracy, Male share of the
reconstructions of the first N test renders. Prints one JSON object.

    .venv/bin/python bench/studies/reconstruction_judges.py --second-analyzer runs/analyzer2/analyzer.safetensors \\
        --num 256 OLD_WEIGHTS_DIR src/mm2latent/weights
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from mm2latent.eval.generator import judge_reconstructions, reconstruct, render_split, split_attributes  # noqa: E402
from mm2latent.models.stylegan2 import load_generator  # noqa: E402
from mm2latent.models.registry import load_module, load_module_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+", help="directories with generator + image_encoder (.safetensors + .json)")
    ap.add_argument("--second-analyzer", required=True, help="an independently trained analyzer .safetensors")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    parser, analyzer = load_module(None, "parser"), load_module(None, "analyzer")
    second = load_module_file(a.second_analyzer, "analyzer")
    x, masks = render_split("test", a.num, 128)
    truth = split_attributes("test", a.num)
    out = {"num": a.num, "split": "test", "second_analyzer": a.second_analyzer, "generators": {}}
    with torch.no_grad():
        for d in a.weights:
            G = load_generator(os.path.join(d, "generator.safetensors")).eval()
            E = load_module_file(os.path.join(d, "image_encoder.safetensors"), "image_encoder")
            rec = reconstruct(G, E, x)
            shipped = judge_reconstructions(x, rec, masks, truth, parser, analyzer)
            other = judge_reconstructions(x, rec, masks, truth, parser, second)
            out["generators"][d] = {"shipped_judges": shipped["reconstructions"],
                                    "second_analyzer": {k: v for k, v in other["reconstructions"].items()
                                                        if k != "parser_miou"},
                                    "renders_under_second_analyzer": other["renders"]["attribute_balanced_accuracy"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
