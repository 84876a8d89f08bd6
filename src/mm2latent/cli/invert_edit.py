"""``mm2latent invert`` and ``mm2latent edit``: real-image inversion and editing."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import nonneg_int
from .controls import add_control_options, control_files, given_controls, option_list

INVERTER_HELP = ("wplus: the e4e-style W+ inverter (wplus_inverter.safetensors, else an assembled e4e/pSp encoder, "
                 "e4e_encoder.safetensors); w: the generator-AE's encoder (one w for all layers); auto (default): "
                 "wplus when the weights have it")
TUNE_HELP = ("pivotal tuning: fine-tune a copy of the generator on this photo for N steps around the inverted "
             "code (default 0; 50-100 recovers details no code reaches; edits are drawn with the tuned copy)")


def register(sub) -> None:
    p = sub.add_parser("invert", help="invert a photo into the generator (reconstruction PNG + latent .npy)",
                       description="Encode a photo to W+ with the W+ inverter (or the W encoder; optionally refined "
                       "by optimisation), write the reconstruction and the latent (OUT with .npy suffix).")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="reconstruction PNG; the latent goes next to it as .npy")
    p.add_argument("--refine", type=int, default=0, help="optimisation steps after the encoder (default 0)")
    p.add_argument("--inverter", default="auto", choices=("auto", "wplus", "w"), help=INVERTER_HELP)
    p.add_argument("--tune", type=nonneg_int, default=0, help=TUNE_HELP)
    p.add_argument("--weights", default=None)
    p.set_defaults(func=_invert)

    e = sub.add_parser("edit", help="edit a photo with text, a mask, a sketch or coefficients",
                       description="Invert the photo, read its own controls, replace those you give, map with "
                       "MappingNet and combine with the inverted latent (--mode delta keeps what you did not "
                       "change; blend replaces by strength).")
    e.add_argument("image")
    add_control_options(e)
    e.add_argument("--strength", type=float, default=1.0, help="0 = unchanged, 1 = full edit (max 2)")
    e.add_argument("--mode", default="delta", choices=("delta", "blend"))
    e.add_argument("--refine", type=int, default=0, help="inversion refinement steps (default 0)")
    e.add_argument("--inverter", default="auto", choices=("auto", "wplus", "w"), help=INVERTER_HELP)
    e.add_argument("--tune", type=nonneg_int, default=0, help=TUNE_HELP)
    e.add_argument("--weights", default=None)
    e.add_argument("--out", required=True)
    e.set_defaults(func=_edit)


def _check_paths(a, out: Path, extra=()) -> None:
    from ..common.fileio import check_input_file, check_output_file

    ins = [a.image] + [p for p in extra if p is not None]
    for p in ins:
        check_input_file(p)
    if any(out.resolve() == Path(p).resolve() for p in ins):
        raise UserError(f"--out {out} is one of the inputs; the input is never overwritten, choose another path")
    check_output_file(out)


def _invert(a) -> int:
    import numpy as np

    from ..common.fileio import atomic_path
    from ..common.imageio import save_image
    from ..pipeline import Pipeline
    from ..pipeline.core import to_pil

    out = Path(a.out)
    _check_paths(a, out)
    latent = out.with_suffix(".npy")
    if latent.resolve() == Path(a.image).resolve():
        raise UserError(f"the latent file {latent} would overwrite the input")
    pipe = Pipeline.from_pretrained(a.weights)
    inv = pipe.invert(a.image, refine_steps=a.refine, inverter=a.inverter, tune_steps=a.tune)
    save_image(out, to_pil(inv.reconstruction)[0])
    with atomic_path(latent) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, inv.ws.numpy())
    print(f"input {inv.alignment}; {inv.method} inversion; wrote {out} and {latent} (w+ {tuple(inv.ws.shape)}) "
          f"in {inv.seconds:.2f} s")
    return 0


def _edit(a) -> int:
    from ..common.imageio import save_image
    from ..pipeline import Pipeline

    out = Path(a.out)
    given = given_controls(a)
    _check_paths(a, out, control_files(given))
    if not given:
        raise UserError(f"say what to change: {option_list()}")
    pipe = Pipeline.from_pretrained(a.weights)
    inv = pipe.invert(a.image, refine_steps=a.refine, inverter=a.inverter, tune_steps=a.tune)
    img = pipe.edit(inv, strength=a.strength, mode=a.mode, **given)
    save_image(out, img)
    print(f"input {inv.alignment}; wrote {out}")
    return 0
