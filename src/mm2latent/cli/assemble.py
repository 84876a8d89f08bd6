"""``mm2latent assemble``: a pipeline folder (safetensors + JSON) from parts in their published formats."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..models.assemble import OPTIONS

    p = sub.add_parser(
        "assemble",
        help="write a pipeline folder from parts (StyleGAN2, e4e/pSp, FaRL, BiSeNet checkpoints or our files)",
        description="Write a pipeline folder that Pipeline.from_pretrained(DIR) and every command's --weights DIR "
        "load: each part converted to safetensors + JSON, and pipeline.json listing the parts and their sources. "
        "Every part is optional (at least one is needed); a pipeline with parts missing starts, and using a missing "
        "part says which one and how to get it. Checkpoints are read with weights-only / restricted unpicklers "
        "(nothing from a file is run). The folder is written beside --out and moved into place at the end.",
    )
    for name, opt in OPTIONS.items():
        p.add_argument(opt.flag, dest=name, default=None, metavar="FILE", help=opt.formats)
    p.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write (new or empty)")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out that holds a pipeline folder (only .safetensors / .json files)")
    p.add_argument("--fp16", action="store_true",
                   help="store the converted parts in float16 (half the size; our files are copied as they are)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.assemble import OPTIONS, assemble

    manifest = assemble(args.out, {name: getattr(args, name) for name in OPTIONS}, force=args.force, half=args.fp16)
    for name, entry in manifest["parts"].items():
        print(f"{entry['file']:<26} {entry['kind']:<20} from {entry['source']['option']} ({entry['source']['format']})")
    if manifest["missing"]:
        print(f"missing (the pipeline starts; using these says so): {', '.join(manifest['missing'])}")
    print(f"wrote {args.out}")
    return 0
