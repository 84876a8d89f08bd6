"""CLI for MappingNet: its training data (``mapping-data``, ``mapping-reembed``) and its inference
defaults (``mapping-guidance``); ``train mapping`` lives in :mod:`mm2latent.cli.train`."""

from __future__ import annotations

import argparse

from ..common.errors import UserError
from .argtypes import positive_int, seed_int


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/2), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"need 0 <= i < n, got {text}")
    return i, n


def register(sub) -> None:
    p = sub.add_parser("mapping-data", help="derive MappingNet's training data from generator samples or real photos",
                       description="Sample w from the generator, synthesise, and store w with the parser mask, "
                       "sketch, coefficients, image embedding and control embeddings (format: "
                       "mm2latent.train.mapping_data). Resumable; shard with --shard i/n across processes.")
    p.add_argument("--out", required=True, metavar="DATA_DIR")
    p.add_argument("--num", type=positive_int, default=20000)
    p.add_argument("--weights", default=None, help="weights directory (default: shipped)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--chunk", type=positive_int, default=256)
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N")
    p.add_argument("--source", default="prior", choices=("prior", "posterior", "photos"),
                   help="z from N(0, I), from the image encoder's posterior over --renders, or the inversions "
                        "of real --photos (controls read off each photo)")
    p.add_argument("--renders", default=None, metavar="CACHE_DIR", help="world cache for --source posterior")
    p.add_argument("--photos", default=None, metavar="ROOT",
                   help="--source photos: a CelebAMask-HQ tree (CelebA-HQ-img/, CelebAMask-HQ-mask-anno/) or any "
                        "folder of PNG/JPEG photos (FFHQ); --num caps how many")
    p.add_argument("--captions", default=None, metavar="ROOT",
                   help="--source photos: MM-CelebA-HQ captions (ROOT/text/<id>.txt); adds text_emb")
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=_mapping_data)
    register_reembed(sub)
    register_guidance(sub)


def register_guidance(sub) -> None:
    p = sub.add_parser("mapping-guidance", help="set a MappingNet file's default text guidance",
                       description="Record the inference defaults a Pipeline reads from a MappingNet file: text "
                       "guidance scale G and first guided generator layer K (see mm2latent.pipeline.core). Choose "
                       "them on the validation split (mm2latent eval generation --split val --text-guidance G "
                       "--guidance-from-layer K). Only the JSON next to the weights changes (atomically); "
                       "training exports do not carry these keys.")
    p.add_argument("weights", metavar="MAPPING_NET", help="mapping_net.safetensors (or its .json)")
    p.add_argument("--text-guidance", type=float, required=True, metavar="G", help="0 switches guidance off")
    p.add_argument("--from-layer", type=int, required=True, metavar="K")
    p.add_argument("--note", default=None, help="how G and K were chosen (stored as inference_selection)")
    p.set_defaults(func=_mapping_guidance)


def _mapping_guidance(a) -> int:
    import json

    from ..common.checkpoint import config_path, load_checkpoint
    from ..common.fileio import write_text_atomic
    from ..models.mapping import KIND
    from ..pipeline.core import check_guidance

    _, cfg = load_checkpoint(a.weights, expect_kind=KIND)  # refuses a missing, corrupt or foreign file
    # the layer's upper bound depends on the generator: Pipeline checks it when it loads the pair
    scale, layer = check_guidance(a.text_guidance, a.from_layer, None)
    cfg.update(text_guidance=scale, guidance_from_layer=layer)
    if a.note is not None:
        cfg["inference_selection"] = a.note
    js = config_path(a.weights)
    write_text_atomic(js, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    print(f"{js}: text_guidance {scale}, guidance_from_layer {layer}")
    return 0


def register_reembed(sub) -> None:
    p = sub.add_parser("mapping-reembed", help="copy MappingNet data with control embeddings from new autoencoders",
                       description="Recompute the mask/sketch/coefficient embeddings of 'mm2latent mapping-data' "
                       "output from the stored controls with new autoencoder weights (no generator pass), or the image "
                       "embeddings with a new text/image encoder (the stored w synthesised again); the "
                       "source directory is left untouched. Resumable.")
    p.add_argument("data", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="NEW_DATA_DIR")
    p.add_argument("--mask-ae", default=None, metavar="WEIGHTS")
    p.add_argument("--sketch-ae", default=None, metavar="WEIGHTS")
    p.add_argument("--coeff-ae", default=None, metavar="WEIGHTS")
    p.add_argument("--encoder", default=None, metavar="CLIP",
                   help="a new text/image encoder: image embeddings are recomputed from the stored w "
                        "(synthesised again by --generator)")
    p.add_argument("--generator", default=None, metavar="WEIGHTS",
                   help="generator the data was made with (default: the shipped one); only with --encoder")
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=_mapping_reembed)


def _mapping_reembed(a) -> int:
    from ..common.fileio import check_input_file
    from ..train.mapping_data import reembed_mapping_data

    _threads(a.threads)
    enc = {c: p for c, p in (("mask", a.mask_ae), ("sketch", a.sketch_ae), ("coeffs", a.coeff_ae),
                             ("image", a.encoder)) if p}
    for p in enc.values():
        check_input_file(p)
    if a.generator:
        if not a.encoder:
            raise UserError("--generator is only used with --encoder")
        check_input_file(a.generator)
    out = reembed_mapping_data(a.data, a.out, enc, generator=a.generator)
    print(f"re-embedded {', '.join(enc)} into {out}")
    return 0


def _threads(n):
    if n:
        import torch

        torch.set_num_threads(n)


def _mapping_data(a) -> int:
    from ..train.mapping_data import generate_mapping_data

    _threads(a.threads)
    if not 0 <= a.truncation <= 2:
        raise UserError("--truncation must lie in [0, 2]")
    out = generate_mapping_data(a.out, a.num, a.weights, a.seed, a.truncation, a.chunk, a.shard,
                                source=a.source, renders=a.renders, photos=a.photos, captions=a.captions)
    print(f"mapping data (shard {a.shard[0]}/{a.shard[1]}) in {out}")
    return 0
