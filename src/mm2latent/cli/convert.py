"""``mm2latent convert``: official StyleGAN2 checkpoint -> our safetensors + JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a rosinality .pt or NVlabs .pkl StyleGAN2 generator to safetensors + JSON",
        description="Convert an official StyleGAN2 generator checkpoint (rosinality/stylegan2-pytorch .pt "
        "or NVlabs stylegan2-ada-pytorch .pkl) into mm2latent's format. NVlabs pickles are read with a "
        "restricted unpickler that never runs code from the file.",
    )
    p.add_argument("input", help="checkpoint file (.pt or .pkl)")
    p.add_argument("--out", required=True, help="output path DIR/name (writes name.safetensors and name.json)")
    p.add_argument("--key", default=None, help="entry to convert (default g_ema / G_ema)")
    p.add_argument("--lr-mlp", type=float, default=None,
                   help="mapping learning-rate multiplier for rosinality files (not stored in them; default 0.01)")
    p.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..common.fileio import check_output_file, check_writable_dir
    from ..models.official import load_official
    from ..models.stylegan2 import save_generator

    out = Path(args.out)
    if out.suffix in (".safetensors", ".json"):
        out = out.with_suffix("")
    check_writable_dir(out.parent)
    check_output_file(out.with_suffix(".safetensors"))
    G = load_official(args.input, key=args.key, lr_mlp=args.lr_mlp)
    path = save_generator(out, G, dtype=torch.float16 if args.fp16 else None,
                          extra={"source": {"file": Path(args.input).name, "converted_by": "mm2latent convert"}})
    cfg = G.cfg
    print(f"wrote {path} ({cfg.resolution}x{cfg.resolution}, {cfg.num_ws} ws, "
          f"{sum(p.numel() for p in G.parameters()):,} parameters)")
    return 0
