"""``mm2latent eval TARGET``: the evaluation protocols (docs/design.md section 4)."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import UserError
from .argtypes import positive_int, seed_int


def register(sub) -> None:
    from .encoder import add_eval_encoder
    from .perception import register_eval_subcommands

    e = sub.add_parser("eval", help="the evaluation protocol (all methods) or one part of it",
                       description="Without a TARGET: the full protocol of docs/design.md section 4 on the held-out "
                       "world split, every method in one run, written to --out DIR (report.json, report.md, "
                       "grid.png, bars.png; resumable). With a TARGET: one part.")
    e.add_argument("--out", default=None, help="report directory (full protocol)")
    e.add_argument("--num", type=int, default=200, help="held-out faces (full protocol, default 200)")
    e.add_argument("--seed", type=seed_int, default=0)
    e.add_argument("--weights", default=None, help="weights directory (default shipped)")
    e.add_argument("--opt-steps", type=int, nargs="+", default=[100], help="optimisation-baseline steps")
    e.add_argument("--ablation", action="append", default=[], metavar="NAME=MAPPING_NET.safetensors",
                   help="extra MappingNet to compare (repeatable)")
    e.add_argument("--bank", type=int, default=2000, help="training renders for the retrieval floor")
    e.add_argument("--baseline-config", default=None, metavar="TUNING.json",
                   help="optimisation-baseline settings: the 'best' of a 'mm2latent eval tune-baseline' file")
    esub = e.add_subparsers(dest="eval_target", metavar="TARGET", parser_class=type(e))
    add_eval_encoder(esub)
    register_eval_subcommands(esub)
    g = esub.add_parser("generation", help="text/mask/sketch/coeff fidelity and diversity of the pipeline on the "
                        "held-out world test split")
    g.add_argument("--weights", default=None, help="weights directory (default: shipped)")
    g.add_argument("--num", type=int, default=200, help="test faces (default 200)")
    g.add_argument("--truncation", type=float, default=1.0)
    g.add_argument("--seed", type=seed_int, default=0)
    g.add_argument("--latency", action="store_true", help="also time generate() (text + mask)")
    g.add_argument("--split", choices=("test", "val"), default="test",
                   help="world split to render (choose inference settings on val, report on test)")
    g.add_argument("--text-guidance", type=float, default=None, metavar="G",
                   help="text guidance scale (default: the shipped one, mapping_net.json)")
    g.add_argument("--guidance-from-layer", type=int, default=None, metavar="K",
                   help="first generator layer text guidance applies to (default: the shipped one)")
    g.add_argument("--out", default=None, help="write the JSON report here (also printed)")
    g.set_defaults(func=_eval_generation)
    gn = esub.add_parser("generator", help="realism of unconditional samples: Fréchet distance / KID to held-out "
                         "renders in the world encoder's feature space, with render and blurred-render references")
    gn.add_argument("--weights", default=None, help="weights directory (default shipped)")
    gn.add_argument("--num", type=int, default=1000)
    gn.add_argument("--truncation", type=float, default=1.0)
    gn.add_argument("--prior", choices=("auto", "fitted", "normal"), default="auto",
                    help="sample w from the fitted latent prior (auto: when shipped) or mapping(z)")
    gn.add_argument("--out", default=None)
    gn.set_defaults(func=_eval_generator)
    tb = esub.add_parser("tune-baseline", help="grid-search the optimisation baseline's settings on the "
                         "validation split (text fidelity + mask mIoU); feed the result to --baseline-config")
    tb.add_argument("--weights", default=None)
    tb.add_argument("--num", type=int, default=16, help="validation faces (default 16)")
    tb.add_argument("--steps", type=int, default=100, help="optimisation steps per face (default 100)")
    tb.add_argument("--lr", type=float, nargs="+", default=None, help="learning rates to try (default: TUNING_GRID)")
    tb.add_argument("--reg-weight", type=float, nargs="+", default=None, help="pulls to the mean w to try")
    tb.add_argument("--seg-weight", type=float, nargs="+", default=None, help="mask cross-entropy weights to try")
    tb.add_argument("--out", default=None)
    tb.set_defaults(func=_eval_tune_baseline)
    ed = esub.add_parser("editing", help="inversion PSNR/SSIM, text and mask edit success and preservation")
    ed.add_argument("--weights", default=None)
    ed.add_argument("--num", type=int, default=200)
    ed.add_argument("--refine", type=int, default=30, help="refinement steps for the refined-inversion row")
    ed.add_argument("--refine-num", type=int, default=20, help="faces for the (slow) refined row")
    ed.add_argument("--tune", type=int, default=50, help="pivotal-tuning steps for the tuned row (same faces; 0: skip)")
    ed.add_argument("--out", default=None)
    ed.set_defaults(func=_eval_editing)
    rl = esub.add_parser("real", help="real-data figures on a photo dataset: FID (Inception with --inception, else "
                         "encoder features), text-image cosine, mask mIoU, inversion PSNR/SSIM/feature distance",
                         description="Generates a face from each photo's caption and annotated mask (CelebAMask-HQ "
                         "tree; captions from an MM-CelebA-HQ root) and inverts each photo; see "
                         "mm2latent/eval/real.py for what is measured.")
    rl.add_argument("--weights", default=None, help="weights directory (default: shipped)")
    rl.add_argument("--photos", required=True, metavar="ROOT",
                    help="a CelebAMask-HQ tree (CelebA-HQ-img/, CelebAMask-HQ-mask-anno/) or any photo folder")
    rl.add_argument("--captions", default=None, metavar="ROOT", help="an MM-CelebA-HQ root holding text/<id>.txt")
    rl.add_argument("--inception", default=None, metavar="FILE",
                    help="FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); without it "
                    "FID is computed on the world image encoder's features and says so")
    rl.add_argument("--num", type=positive_int, default=200, help="photos to use, the first N (default 200)")
    rl.add_argument("--batch", type=positive_int, default=16, help="photos per batch (default 16)")
    rl.add_argument("--seed", type=seed_int, default=0)
    rl.add_argument("--out", required=True, metavar="REPORT.json", help="where to write the JSON report")
    rl.set_defaults(func=_eval_real)
    e.set_defaults(func=_need_target)


def _eval_generator(a) -> int:
    from ..common.fileio import check_output_file
    from ..eval.generator import evaluate_generator
    from ..models.registry import COMPONENT_FILES, default_weights_dir, load_components, load_optional
    from ..pipeline.sampling import load_prior

    if a.num < 20:
        raise UserError("--num must be at least 20")
    if a.out:
        check_output_file(a.out)

    d = Path(a.weights) if a.weights else default_weights_dir()
    comp = load_components(d, need=("generator", "controls"))
    prior = load_prior(d / COMPONENT_FILES["generator"], a.prior)
    enc = load_optional(d, "image_encoder")
    c = comp["controls"]
    report = evaluate_generator(comp["generator"], c.encoder, num=a.num, truncation=a.truncation, parser=c.parser,
                                prior=prior, image_encoder=enc, analyzer=c.analyzer)
    report["generator_training"] = comp["generator_info"]
    return _emit(report, a)


def _eval_tune_baseline(a) -> int:
    from ..common.fileio import check_output_file
    from ..eval.baselines import TUNING_GRID, tune_optimisation
    from ..pipeline import Pipeline

    if a.num < 2 or a.steps < 1:
        raise UserError("--num must be at least 2 and --steps at least 1")
    if a.out:
        check_output_file(a.out)
    grid = {k: tuple(getattr(a, k) or v) for k, v in TUNING_GRID.items()}
    if min(grid["lr"]) <= 0 or min(grid["seg_weight"]) <= 0 or min(grid["reg_weight"]) < 0:
        raise UserError("grid values must be positive (--reg-weight may be 0)")
    return _emit(tune_optimisation(Pipeline.from_pretrained(a.weights), num=a.num, steps=a.steps, grid=grid), a)


def _eval_editing(a) -> int:
    from ..common.fileio import check_output_file
    from ..eval.editing import evaluate_editing
    from ..pipeline import Pipeline

    if a.num < 2:
        raise UserError("--num must be at least 2")
    if min(a.refine, a.refine_num, a.tune) < 0:
        raise UserError("--refine, --refine-num and --tune must be >= 0")
    if a.out:
        check_output_file(a.out)
    report = evaluate_editing(Pipeline.from_pretrained(a.weights), a.num, a.refine, a.refine_num, tune_steps=a.tune)
    return _emit(report, a)


def _eval_real(a) -> int:
    import json

    from ..common.fileio import check_output_file, write_text_atomic
    from ..datasets.layouts import CAPTION_DIR, open_photos
    from ..eval.perception import jsonable
    from ..eval.real import evaluate_real, summary_lines
    from ..models.inception import load_fid_inception
    from ..pipeline import Pipeline

    if a.num < 2:
        raise UserError("--num must be at least 2 (a Fréchet distance needs two samples per set)")
    check_output_file(a.out)
    if not Path(a.photos).is_dir():
        raise UserError(f"--photos {a.photos} is not a folder")
    if a.captions is not None and not (Path(a.captions) / CAPTION_DIR).is_dir():
        raise UserError(f"--captions {a.captions} is not an MM-CelebA-HQ root: it has no {CAPTION_DIR}/ folder")
    inception = load_fid_inception(a.inception) if a.inception else None
    pipe = Pipeline.from_pretrained(a.weights)
    photos = open_photos(a.photos, size=pipe.resolution, captions=a.captions)
    report = evaluate_real(pipe, photos, inception=inception, num=a.num, seed=a.seed, batch=a.batch)
    report["weights"] = str(a.weights or "shipped")
    report["photos"]["root"] = str(a.photos)
    report["photos"]["captions"] = str(a.captions) if a.captions else None
    report["fid"]["inception_file"] = str(a.inception) if a.inception else None
    write_text_atomic(a.out, json.dumps(jsonable(report), indent=1) + "\n")
    print("\n".join(summary_lines(report)))
    print(f"report: {a.out}")
    return 0


def _eval_generation(a) -> int:
    from pathlib import Path

    from ..common.fileio import check_output_file
    from ..eval.pipeline import evaluate_pipeline, latency
    from ..pipeline import Pipeline

    if a.num < 2:
        raise UserError("--num must be at least 2")
    if a.out:
        check_output_file(a.out)
    pipe = Pipeline.from_pretrained(a.weights)
    pipe.set_text_guidance(a.text_guidance, a.guidance_from_layer)
    report = evaluate_pipeline(pipe, num=a.num, truncation=a.truncation, seed=a.seed, split=a.split)
    if a.latency:
        ex = Path(__file__).resolve().parents[3] / "examples" / "mask_long_hair.png"
        report["latency"] = latency(pipe, str(ex))
    return _emit(report, a)


def _need_target(args) -> int:
    if args.out:
        return _full_report(args)
    raise UserError("choose what to evaluate: mm2latent eval {encoder,perception,generator,generation,editing,real} ... (see --help)")


def _full_report(a) -> int:
    from pathlib import Path

    from ..common.fileio import check_writable_dir
    from ..eval.report import run_report
    from ..models.registry import load_module_file
    from ..pipeline import Pipeline

    if a.num < 10:
        raise UserError("--num must be at least 10")
    check_writable_dir(a.out)
    from ..eval.baselines import load_tuned_settings

    settings = load_tuned_settings(a.baseline_config)
    pipe = Pipeline.from_pretrained(a.weights)
    ablations = {}
    for spec in a.ablation:
        name, _, path = spec.partition("=")
        if not name or not path:
            raise UserError(f"--ablation wants NAME=FILE, got {spec!r}")
        from ..common.checkpoint import load_checkpoint

        _, meta = load_checkpoint(path, expect_kind="mapping_net")  # clear errors for missing/wrong files
        net = load_module_file(path, "mapping_net")
        std = float(meta.get("text_noise_std", 0.0))
        # the same inference recipe (text guidance) as the main pipeline: only the net differs
        ablations[name] = Pipeline(pipe.G, pipe.controls, net, None, text_noise_std=std, latent_prior=pipe.latent_prior,
                                   text_guidance=pipe.text_guidance, guidance_from_layer=pipe.guidance_from_layer)
    run_report(pipe, a.out, a.num, a.seed, tuple(a.opt_steps), ablations, a.bank, baseline_settings=settings)
    print((Path(a.out) / "report.md").read_text())
    return 0


def _emit(report: dict, a) -> int:
    """Print the JSON report and write it to --out (atomically)."""
    import json

    from ..common.fileio import write_text_atomic
    from ..eval.perception import jsonable

    report["weights"] = str(a.weights or "shipped")
    text = json.dumps(jsonable(report), indent=1)
    if a.out:
        write_text_atomic(a.out, text + "\n")
    print(text)
    return 0
