"""``mm2latent invert`` and ``mm2latent edit``: real-image inversion and editing."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import nonneg_int, positive_float, positive_int, seed_int

INVERTER_HELP = ("wplus: the e4e-style W+ inverter (wplus_inverter.safetensors); w: the generator-AE's encoder "
                 "(one w for all layers); auto (default): wplus when the weights have it")
TUNE_HELP = ("pivotal tuning: fine-tune a copy of the generator on this photo for N steps around the inverted "
             "code (default 0; 50-100 recovers details no code reaches; edits are drawn with the tuned copy)")


def add_train_inverter(models) -> None:
    t = models.add_parser(
        "inverter", help="train the e4e-style W+ inverter for editing (generator frozen)",
        description="Image -> w+ = w + per-layer offsets, initialised from the generator-AE's encoder and mapping "
        "(offsets start at zero). Losses: pixel L1 + low-res L2, parser CE and analyzer attribute/coefficient "
        "losses against the renderer's truth, w+ MSE on generator samples, offset regulariser; progressive "
        "offsets (see mm2latent.train.inverter). Exports RUN_DIR/wplus_inverter.safetensors; --resume continues "
        "exactly.")
    t.add_argument("--data", required=True, metavar="CACHE_DIR", help="world cache (mm2latent world cache)")
    t.add_argument("--out", required=True, metavar="RUN_DIR")
    t.add_argument("--weights", default=None, help="generator + image_encoder to start from (default: shipped)")
    t.add_argument("--minutes", type=positive_float, default=None, help="budget, counted across resumes")
    t.add_argument("--steps", type=positive_int, default=None)
    t.add_argument("--batch", type=positive_int, default=8, help="world renders per step (default 8)")
    t.add_argument("--sample-batch", type=nonneg_int, default=4, help="generator samples per step (default 4)")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="offset heads (default 1e-3)")
    t.add_argument("--base-lr", type=float, default=5e-5, help="encoder + mapping copy; 0 freezes (default 5e-5)")
    t.add_argument("--offset-reg", type=float, default=0.1, help="weight of the mean square offset (default 0.1)")
    t.add_argument("--seg-weight", type=float, default=0.5)
    t.add_argument("--attr-weight", type=float, default=0.2)
    t.add_argument("--coeff-weight", type=float, default=1.0)
    t.add_argument("--latent-weight", type=float, default=0.1)
    t.add_argument("--progressive-steps", type=nonneg_int, default=100,
                   help="switch on one more layer's offset every N steps (0: all at once; default 100)")
    t.add_argument("--init", default=None, metavar="WPLUS_INVERTER.safetensors",
                   help="fine-tune this exported inverter (e.g. after the generator's synthesis was fine-tuned); "
                   "all offsets active from the start")
    t.add_argument("--init-base", default="inverter", choices=("inverter", "weights"),
                   help="with --init: keep the file's base code, or take the base (encoder + mapping) from --weights "
                   "so that it is exactly their W inversion (after a generator-AE phase that moved W)")
    t.add_argument("--seed", type=seed_int, default=0)
    t.add_argument("--threads", type=positive_int, default=None)
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=_train_inverter)


def _train_inverter(a) -> int:
    from ..train.inverter import InverterOptions, train_inverter

    if a.minutes is None and a.steps is None:
        raise UserError("give a budget: --steps N and/or --minutes M")
    train_inverter(InverterOptions(
        out=a.out, data=a.data, weights=a.weights, minutes=a.minutes, steps=a.steps, batch=a.batch,
        sample_batch=a.sample_batch, lr=a.lr, base_lr=a.base_lr, offset_reg=a.offset_reg, seg_weight=a.seg_weight,
        attr_weight=a.attr_weight, coeff_weight=a.coeff_weight, latent_weight=a.latent_weight,
        progressive_steps=a.progressive_steps, seed=a.seed, threads=a.threads, resume=a.resume, init=a.init,
        init_base=a.init_base))
    return 0


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
    e.add_argument("--text", default=None)
    e.add_argument("--mask", default=None)
    e.add_argument("--sketch", default=None)
    e.add_argument("--coeffs", default=None)
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
    _check_paths(a, out, (a.mask, a.sketch, a.coeffs))
    if a.text is None and a.mask is None and a.sketch is None and a.coeffs is None:
        raise UserError("say what to change: --text, --mask, --sketch or --coeffs")
    pipe = Pipeline.from_pretrained(a.weights)
    inv = pipe.invert(a.image, refine_steps=a.refine, inverter=a.inverter, tune_steps=a.tune)
    img = pipe.edit(inv, a.text, a.mask, a.sketch, a.coeffs, strength=a.strength, mode=a.mode)
    save_image(out, img)
    print(f"input {inv.alignment}; wrote {out}")
    return 0
