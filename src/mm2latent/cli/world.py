"""``mm2latent world ...``: render Face World samples, contact sheets, calibration."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import nonneg_int, positive_int


def register(sub) -> None:
    p = sub.add_parser("world", help="the procedural Face World")
    wsub = p.add_subparsers(dest="world_command", parser_class=type(p))

    r = wsub.add_parser("render", help="render N samples with image, mask, sketch and metadata")
    r.add_argument("--num", type=positive_int, required=True, help="number of samples")
    r.add_argument("--seed", type=nonneg_int, default=0, help="world seed (default 0)")
    r.add_argument("--start", type=nonneg_int, default=0, help="first sample index (default 0)")
    r.add_argument("--size", type=int, default=128, help="resolution: 64, 128 or 256 (default 128)")
    r.add_argument("--out", required=True, help="output directory")
    r.set_defaults(func=_render)

    s = wsub.add_parser("sheet", help="contact sheet of renders with their colour masks")
    s.add_argument("--num", type=positive_int, default=16)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--out", required=True, help="output PNG")
    s.set_defaults(func=_sheet)

    c = wsub.add_parser("calibrate", help="compare world layout with real CelebAMask-HQ masks")
    c.add_argument("--real", required=True, help="folder with masks-index/ and masks-color/")
    c.add_argument("--num", type=positive_int, default=300)
    c.set_defaults(func=_calibrate)
    k = wsub.add_parser("cache", help="pre-render a split into memory-mappable arrays for training")
    k.add_argument("--split", default="train", help="train, val or test (disjoint world seeds)")
    k.add_argument("--num", type=positive_int, required=True)
    k.add_argument("--size", type=int, default=128)
    k.add_argument("--workers", type=positive_int, default=None)
    k.add_argument("--out", required=True, help="cache directory (must not exist)")
    k.set_defaults(func=_cache)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cache(a) -> int:
    from ..world.cache import build_cache

    _check_size(a.size)
    out = build_cache(a.out, a.split, a.num, a.size, a.workers)
    print(f"wrote {a.num} {a.split} samples to {out}")
    return 0


def _check_size(size: int) -> None:
    from ..world.render import SUPPORTED_SIZES

    if size not in SUPPORTED_SIZES:
        raise UserError(f"unsupported size {size}; choose one of {', '.join(map(str, SUPPORTED_SIZES))}")


def _render(a) -> int:
    from ..common.fileio import check_writable_dir
    from ..common.progress import progress
    from ..world.sample import make_sample, write_sample

    _check_size(a.size)
    out = check_writable_dir(a.out)
    for i in progress(range(a.start, a.start + a.num), desc="rendering", unit="face"):
        write_sample(out, a.seed, i, make_sample(a.seed, i, a.size))
    print(f"wrote {a.num} samples to {out}")
    return 0


def _sheet(a) -> int:
    import numpy as np

    from ..common.fileio import check_output_file
    from ..common.imageio import make_grid, save_image
    from ..common.palette import index_to_color
    from ..world.params import sample_params
    from ..world.render import render

    _check_size(a.size)
    out = check_output_file(a.out)
    tiles = []
    for i in range(a.num):
        r = render(sample_params(a.seed, i), a.size)
        tiles.append(np.concatenate([r.image, index_to_color(r.mask)], 0))
    save_image(out, make_grid(tiles, min(8, a.num)))
    print(f"wrote {out}")
    return 0


def _calibrate(a) -> int:
    from ..world.calibration import calibration_table, mean_stats, real_masks, world_masks

    root = Path(a.real)
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    real = real_masks(root)
    if not real:
        raise UserError(f"no masks found under {root}/masks-index or {root}/masks-color")
    print(f"real masks: {len(real)}, world masks: {a.num}")
    print(calibration_table(mean_stats(real), mean_stats(world_masks(a.num))))
    return 0
