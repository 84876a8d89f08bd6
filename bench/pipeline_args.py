"""Command-line plumbing shared by the bench scripts that run a Pipeline: --weights, --threads, --out."""

from __future__ import annotations

import argparse

import torch


def parse_with_pipeline(ap: argparse.ArgumentParser):
    """Add --weights/--threads/--out to ``ap``, parse, set the thread count, load the Pipeline:
    (args, pipe)."""
    from mm2latent.pipeline import Pipeline

    ap.add_argument("--weights", default=None, help="weights directory (default: the shipped weights)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    return a, Pipeline.from_pretrained(a.weights)
