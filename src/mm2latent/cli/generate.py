"""``mm2latent generate``: faces from text and/or mask, sketch, coefficients (every registered control) in one pass."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import positive_int, seed_int
from .controls import add_control_options, control_files, given_controls, option_list


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate faces from text + mask/sketch/coefficients",
                       description="MM2Latent generation: the controls are embedded, MappingNet maps them to w and "
                       "the StyleGAN2 generator draws the face. At least one control is needed. The seed varies "
                       "what the controls leave open (text-embedding noise, synthesis noise).")
    add_control_options(p)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--num", type=positive_int, default=1, help="images for seeds seed..seed+num-1")
    p.add_argument("--truncation", type=float, default=1.0, help="pull w towards the mean w (1 = none)")
    p.add_argument("--variation", type=float, default=0.0, help="mix fine layers towards a random w (0..1)")
    p.add_argument("--text-guidance", type=float, default=None, metavar="G",
                   help="extrapolate the text's effect on w by G (0 = off; default: the shipped setting)")
    p.add_argument("--weights", default=None, help="weights directory (default: the shipped world models)")
    p.add_argument("--out", required=True, help="output PNG (with --num > 1: a directory, plus grid.png)")
    p.set_defaults(func=_generate)


def _generate(a) -> int:
    from ..common.fileio import check_input_file, check_output_file, check_writable_dir
    from ..common.imageio import make_grid, save_image

    given = given_controls(a)
    if not given:
        raise UserError(f"give at least one of {option_list(None)}")
    inputs = control_files(given)
    for p in inputs:
        check_input_file(p)
    out = Path(a.out)
    if any(out.resolve() == Path(p).resolve() for p in inputs):
        raise UserError(f"--out {out} is one of the inputs; choose another path")
    if a.num == 1:
        check_output_file(out)
    else:
        check_writable_dir(out)
    from ..pipeline import Pipeline
    import numpy as np

    pipe = Pipeline.from_pretrained(a.weights)
    seeds = list(range(a.seed, a.seed + a.num))
    imgs = pipe.generate_batch(seeds=seeds, truncation=a.truncation, variation=a.variation,
                               text_guidance=a.text_guidance, **given)
    if a.num == 1:
        save_image(out, imgs[0])
        print(f"wrote {out}")
    else:
        for s, im in zip(seeds, imgs):
            save_image(out / f"seed{s:04d}.png", im)
        save_image(out / "grid.png", make_grid(np.stack([np.asarray(i) for i in imgs]), min(a.num, 8)))
        print(f"wrote {a.num} images and grid.png to {out}")
    return 0
