"""``mm2latent train MODEL``: every trainer of the project, each run from a recipe file.

``mm2latent train MODEL --recipe configs/MODEL.toml --out RUN`` reads the recipe into the trainer's
options dataclass; every field of that dataclass is also an option that overrides the file (see
:mod:`mm2latent.cli.recipe_options`; ``mm2latent train MODEL --help`` lists them with their
comments). The trainers share one loop (:func:`mm2latent.train.state.run_loop`): progress bar,
checkpoints every few minutes, exact resume, ``--device cuda``.

Multi-process: ``torchrun --nproc_per_node=K -m mm2latent.cli.main train stylegan2 ...`` (gloo on
CPU, NCCL on GPUs); ``--batch`` is the global batch.
"""

from __future__ import annotations

import argparse

from ..common.errors import UserError
from .recipe_options import add_dataclass_options, add_trainer, options_from_args

#: CLI verb -> (perception task, what it is)
PERCEPTION_VERBS = {
    "parser": ("parser", "face parser (image -> 19-class label map)"),
    "analyzer": ("analyzer", "attribute classifier + pose/expression/shape regressor"),
    "mask-ae": ("mask_ae", "mask autoencoder (19-class one-hot -> 512-d)"),
    "sketch-ae": ("sketch_ae", "sketch autoencoder (edge map -> 512-d)"),
    "coeff-ae": ("coeff_ae", "coefficient autoencoder (13 -> 512-d)"),
}
#: perception options that only some tasks read (the others do not offer them)
PERCEPTION_ONLY = {"augment_p": ("mask_ae", "sketch_ae"), "freeze_encoder": ("mask_ae", "sketch_ae"),
                   "class_weight_power": ("parser", "mask_ae"), "lovasz_weight": ("mask_ae",)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train every model: generator, mapping net, encoders, perception, prior, inverter",
                       description="Train a model from a recipe file (configs/); each MODEL has its own --help.")
    models = p.add_subparsers(dest="model", metavar="MODEL", parser_class=type(p))
    p.set_defaults(func=_need_model)

    add_trainer(models, "generator", "mm2latent.train.generator_world:GeneratorRecipe", _run_generator,
                recipe_required=True, extra=_generator_run_options,
                help="train the world generator from a recipe file (resumable)",
                description="Train the world generator (StyleGAN2 conditioned on the world code: supervised, then "
                "adversarial, then the image encoder) from a TOML recipe such as configs/generator_world.toml. "
                "Running the same command again resumes RUN_DIR exactly from its newest checkpoint (after kill -9 "
                "too); the weights are exported to RUN_DIR/export only when the recipe is finished.")
    add_trainer(models, "generator-ae", "mm2latent.train.generator_ae:GeneratorAEOptions", _run_generator_ae,
                help="train the shipped generator as an autoencoding StyleGAN2 (VAE-GAN; CPU-sized)",
                description="StyleGAN2 generator trained as the decoder of a VAE-GAN with the StyleGAN2 "
                "discriminator and a parser segmentation loss (see mm2latent.train.generator_ae; recipe "
                "configs/generator_ae.toml). Exports RUN_DIR/generator.safetensors (EMA) and "
                "RUN_DIR/image_encoder.safetensors at every checkpoint; --resume continues exactly.")
    add_trainer(models, "stylegan2", "mm2latent.train.stylegan2:TrainOptions", _run_stylegan2,
                help="train a StyleGAN2 generator (Face World or a PNG folder)",
                description="Train StyleGAN2 (non-saturating loss, lazy R1, EMA generator, style mixing, Adam "
                "betas (0, 0.99)); recipe configs/stylegan2.toml. Checkpoints in RUN_DIR/checkpoints resume "
                "bit-exactly with --resume; the EMA generator is exported to RUN_DIR/generator.safetensors and "
                "sample grids to RUN_DIR/samples.")
    add_trainer(models, "clip", "mm2latent.train.clip:CLIPTrainOptions", _run_clip, extra=_resume_and_export,
                help="contrastive training of the world CLIP/FaRL encoder",
                description="Contrastive training of the text/image encoder on world captions (recipe "
                "configs/clip.toml); --resume continues exactly, --export writes the fp16 weights.")
    for verb, (task, what) in PERCEPTION_VERBS.items():
        add_trainer(models, verb, "mm2latent.train.perception:PerceptionTrainOptions", _run_perception,
                    skip=("task",) + tuple(k for k, tasks in PERCEPTION_ONLY.items() if task not in tasks),
                    extra=_resume, task=task, help=f"train the {what}",
                    description=f"Train the {what} on a world cache (recipe configs/{task}.toml). Checkpoints go "
                    "to RUN_DIR/checkpoints every --ckpt-minutes (atomic; the last two kept); --resume continues "
                    f"exactly; the float16 weights are written to --export (default RUN_DIR/{task}.safetensors).")
    add_trainer(models, "mapping", "mm2latent.train.mapping:MappingTrainOptions", _run_mapping, extra=_export,
                help="train MappingNet on data from 'mm2latent mapping-data'",
                description="MappingNet: [pseudo-text ; mask ; sketch ; coeff embeddings] -> w with L1 + cosine "
                "loss, pseudo text = normalise(image embedding + noise), random modality dropout (recipe "
                "configs/mapping_net.toml).")
    add_trainer(models, "inverter", "mm2latent.train.inverter:InverterOptions", _run_inverter,
                help="train the e4e-style W+ inverter for editing (generator frozen)",
                description="Image -> w+ = w + per-layer offsets, initialised from the generator-AE's encoder and "
                "mapping (offsets start at zero); recipe configs/wplus_inverter.toml. Exports "
                "RUN_DIR/wplus_inverter.safetensors; --resume continues exactly.")
    add_trainer(models, "latent-prior", "mm2latent.train.latent_prior:LatentPriorOptions", _run_latent_prior,
                help="fit the generator's sampling prior: a Gaussian (or mixture) over w of encoded training renders",
                description="Encode world renders with the image encoder, map them to w, and fit a full-covariance "
                "Gaussian, or a mixture of --components of them (see mm2latent.models.latent_prior; recipe "
                "configs/latent_prior.toml). 'mm2latent sample' draws from it when it lies beside the generator "
                "as latent_prior.safetensors.")


def _need_model(args: argparse.Namespace) -> int:
    raise UserError("choose a model to train: mm2latent train MODEL --recipe configs/MODEL.toml --out RUN_DIR "
                    "(mm2latent train --help lists them)")


def _resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export", default=None, metavar="PATH", help="where to write the final weights (.safetensors)")


def _resume_and_export(p: argparse.ArgumentParser) -> None:
    _resume(p)
    _export(p)


# --------------------------------------------------------------------------- the world generator

RUN_PREFIX = "run__"


def _generator_run_options(p: argparse.ArgumentParser) -> None:
    from ..train.generator_world import RunOptions

    add_dataclass_options(p, RunOptions, prefix=RUN_PREFIX, title="run options (may change between resumes)")
    p.add_argument("--eval-num", type=int, default=500,
                   help="faces for the figures written beside the exported weights (default 500)")


def _run_generator(recipe, args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..train.generator_world import RunOptions, train_world_generator

    recipe.validate()
    trainer = train_world_generator(recipe, options_from_args(RunOptions, args, prefix=RUN_PREFIX, recipe=False))
    if trainer.stage != "done":
        print(f"stopped at step {trainer.step} of {trainer.recipe.total_steps} ({trainer.stage}); "
              "run the same command to continue")
        return 0
    from ..common.fileio import write_text_atomic
    from ..eval.generator_world import evaluate_world_generator, load_judges

    export = Path(trainer.run.out) / "export"
    figures = evaluate_world_generator(trainer.G_ema.cpu(), trainer.E.cpu().eval(), num=args.eval_num, **load_judges())
    write_text_atomic(export / "figures.json", json.dumps(figures, indent=1) + "\n")
    met = sum(figures["targets_met"].values())
    print(f"finished: weights and figures in {export} ({met} of {len(figures['targets_met'])} targets met)")
    return 0


# --------------------------------------------------------------------------- the other trainers

def _run_generator_ae(opts, args) -> int:
    from ..train.generator_ae import train_generator_ae

    train_generator_ae(opts)
    return 0


def _run_stylegan2(opts, args) -> int:
    from ..train.stylegan2 import train_stylegan2

    train_stylegan2(opts)
    return 0


def _run_clip(opts, args) -> int:
    from ..train.clip import train_clip

    if opts.steps <= 0 or opts.batch < 2:
        raise UserError("--steps must be positive and --batch at least 2")
    if opts.attr_weight < 0:
        raise UserError("--attr-weight must be >= 0")
    train_clip(opts, resume=args.resume, export=args.export)
    return 0


def _run_perception(opts, args) -> int:
    from ..train.perception import train_perception

    train_perception(opts, resume=args.resume)
    return 0


def _run_mapping(opts, args) -> int:
    from ..train.mapping import train_mapping

    train_mapping(opts, export_to=args.export)
    return 0


def _run_inverter(opts, args) -> int:
    from ..train.inverter import train_inverter

    if opts.minutes is None and opts.steps is None:
        raise UserError("give a budget: --steps N and/or --minutes M")
    train_inverter(opts)
    return 0


def _run_latent_prior(opts, args) -> int:
    from ..train.latent_prior import run_fit

    prior, n = run_fit(opts)
    k = prior.config.components
    what = "a Gaussian" if k == 1 else f"a mixture of {k} Gaussians" + (
        f" stratified by {', '.join(opts.stratify)}" if opts.stratify else "")
    print(f"fitted {what} over w to {n} encoded renders -> {opts.out}")
    return 0
