"""``mm2latent train``: the command group, and the generator trainers it holds itself --
``train generator`` (the world generator from a recipe), ``train generator-ae`` (the shipped
autoencoding StyleGAN2) and ``train stylegan2`` (a plain StyleGAN2 on the Face World or a PNG
folder). The other models' ``train`` subcommands are registered by their own command modules.

Multi-process: ``torchrun --nproc_per_node=K -m mm2latent.cli.main train stylegan2 ...``
(gloo on CPU, NCCL on GPUs); ``--batch`` is the global batch.
"""

from __future__ import annotations

import argparse

from ..common.errors import UserError
from .argtypes import positive_float, positive_int, seed_int


def _widths(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError("widths must be positive integers")
    return vals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train every model: generator, mapping net, encoders, perception, prior, inverter",
                       description="Train models; each MODEL has its own --help.")
    models = p.add_subparsers(dest="model", metavar="MODEL", parser_class=type(p))
    from .encoder import add_train_clip
    from .perception import register_train_subcommands

    from .mapping import add_train_mapping
    from .invert_edit import add_train_inverter
    from .sample import add_train_latent_prior

    add_train_clip(models)
    register_train_subcommands(models)
    add_train_generator_ae(models)
    add_train_mapping(models)
    add_train_latent_prior(models)
    add_train_inverter(models)
    add_train_generator(models)
    s = models.add_parser(
        "stylegan2",
        help="train a StyleGAN2 generator",
        description="Train StyleGAN2 (non-saturating loss, lazy R1, EMA generator, style mixing, Adam "
        "betas (0, 0.99)). Checkpoints in RUN_DIR/checkpoints resume bit-exactly with --resume; the EMA "
        "generator is exported to RUN_DIR/generator.safetensors and sample grids to RUN_DIR/samples.",
    )
    s.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    s.add_argument("--data", default="world", metavar="world|DIR",
                   help="'world' (render the Face World train split), a world cache directory (images.npy from "
                        "'mm2latent world cache'), or a directory of PNG/JPEG images (default world)")
    s.add_argument("--size", type=int, default=128, help="image resolution, a power of two (default 128)")
    s.add_argument("--batch", type=int, default=16, help="global batch size (default 16)")
    s.add_argument("--kimg", type=float, default=1000.0, help="train until this many thousand images (default 1000)")
    s.add_argument("--channels", type=_widths, default=None, metavar="C4,C8,...",
                   help="widths per resolution from 4 up to --size, e.g. 256,256,256,128,64,32 for 128px")
    s.add_argument("--channel-base", type=int, default=16384, help="width rule min(base/res, max) (default 16384)")
    s.add_argument("--channel-max", type=int, default=512, help="(default 512)")
    s.add_argument("--z-dim", type=int, default=512)
    s.add_argument("--w-dim", type=int, default=512)
    s.add_argument("--map-layers", type=int, default=8, help="mapping network depth (default 8)")
    s.add_argument("--lr", type=float, default=0.0025)
    s.add_argument("--gamma", type=float, default=None, help="R1 weight (default 0.0002*size^2/batch)")
    s.add_argument("--r1-every", type=int, default=16, help="lazy R1 interval (default 16)")
    s.add_argument("--pl-weight", type=float, default=0.0,
                   help="path-length regularisation weight (paper: 2; default off)")
    s.add_argument("--pl-every", type=int, default=4)
    s.add_argument("--ema-kimg", type=float, default=None, help="EMA half-life in kimg (default batch*10/32)")
    s.add_argument("--mixing", type=float, default=0.9, help="style-mixing probability (default 0.9)")
    s.add_argument("--augment", default="", help="DiffAugment policy, e.g. translation,color,cutout (default none)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--world-length", type=int, default=100_000, help="Face World training-set size (default 100000)")
    s.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N steps (default: by time only)")
    s.add_argument("--ckpt-minutes", type=float, default=10.0, help="checkpoint every M minutes (default 10)")
    s.add_argument("--sample-every", type=int, default=500, help="sample grid every N steps (0 = at the end)")
    s.add_argument("--minutes", type=float, default=None,
                   help="stop (with a checkpoint) after this many minutes; continue later with --resume")
    s.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its latest checkpoint")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    s.set_defaults(func=run_stylegan2)
    p.set_defaults(func=_need_model)


def add_train_generator_ae(models: argparse._SubParsersAction) -> None:
    g = models.add_parser(
        "generator-ae", help="train the world generator as an autoencoding StyleGAN2 (VAE-GAN; CPU-sized)",
        description="StyleGAN2 generator trained as the decoder of a VAE-GAN with the StyleGAN2 discriminator "
        "and a parser segmentation loss (see mm2latent.train.generator_ae). Exports RUN_DIR/generator.safetensors "
        "(EMA) and RUN_DIR/image_encoder.safetensors at every checkpoint; --resume continues exactly.")
    g.add_argument("--data", required=True, metavar="CACHE_DIR", help="world cache (mm2latent world cache)")
    g.add_argument("--out", required=True, metavar="RUN_DIR")
    g.add_argument("--minutes", type=positive_float, default=None, help="budget, counted across resumes")
    g.add_argument("--steps", type=positive_int, default=None)
    g.add_argument("--batch", type=positive_int, default=16)
    g.add_argument("--lr", type=positive_float, default=0.002)
    g.add_argument("--kl-weight", type=float, default=2.5e-4)
    g.add_argument("--seg-weight", type=float, default=0.1)
    g.add_argument("--attr-weight", type=float, default=0.0,
                   help="analyzer attribute BCE on reconstructions vs the renderer's truth")
    g.add_argument("--coeff-weight", type=float, default=0.0,
                   help="analyzer pose/expression MSE on reconstructions vs the renderer's truth")
    g.add_argument("--adv-weight", type=float, default=0.05)
    g.add_argument("--adv-start", type=int, default=300, help="steps of reconstruction before adversarial terms")
    g.add_argument("--freeze-latents", action="store_true",
                   help="train only the synthesis network (encoder and mapping fixed, so latents derived from them "
                   "stay valid): sharpening phase; no prior samples")
    g.add_argument("--init", default=None, metavar="WEIGHTS_DIR",
                   help="start from exported weights (generator.safetensors + image_encoder.safetensors in this "
                   "directory, e.g. the shipped src/mm2latent/weights); discriminator and optimisers start fresh")
    g.add_argument("--d-warmup", type=int, default=0,
                   help="steps before --adv-start in which the discriminator already trains (use with --init)")
    g.add_argument("--seg-balance", type=float, default=0.0,
                   help="parser loss class weights freq**-P (0 = plain cross-entropy, 0.5 = inverse square root)")
    g.add_argument("--seg-freq-weight", type=float, default=0.0,
                   help="weight of the parser class-share term (log share of reconstructions vs masks, squared)")
    g.add_argument("--image-share-weight", type=float, default=0.0,
                   help="weight of the class-share term per image (each reconstruction against its own mask: "
                   "specks of a rare class where none belongs cost)")
    g.add_argument("--seg-class-boost", default="", metavar="CLASS=F,...",
                   help="extra factor on the parser loss weight of named classes, e.g. ear_r=8,neck_l=4")
    g.add_argument("--latent-attrs", default="", metavar="ATTR,...",
                   help="world attributes a linear head must read from w (autoencoder phases), e.g. "
                   "Wearing_Earrings,Wearing_Necklace")
    g.add_argument("--latent-attr-weight", type=float, default=0.0, help="weight of that head's BCE")
    g.add_argument("--w-anchor-weight", type=float, default=0.0,
                   help="autoencoder phases from --init: keep w = mapping(mu(x)) near the --init weights' w "
                   "(mean squared distance), so latents fitted to them stay valid")
    g.add_argument("--sample-share-weight", type=float, default=0.0,
                   help="with --freeze-latents: class-share term on unconditional samples (w from --latent-prior), "
                   "which also meet the discriminator")
    g.add_argument("--latent-prior", default=None, metavar="FILE",
                   help="latent_prior.safetensors the samples are drawn from (default: the shipped one)")
    g.add_argument("--prior-batch", type=positive_int, default=8, help="unconditional samples per step")
    g.add_argument("--seg-freq-temperature", type=float, default=0.5,
                   help="softmax temperature of the class-share term (lower = closer to the argmax that judges samples)")
    g.add_argument("--seed", type=seed_int, default=0)
    g.add_argument("--threads", type=positive_int, default=None)
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (default) trains on the GPU when there is one")
    g.add_argument("--resume", action="store_true")
    g.set_defaults(func=_train_generator_ae)



def _train_generator_ae(a) -> int:
    from ..train.generator_ae import GeneratorAEOptions, train_generator_ae

    if a.minutes is None and a.steps is None:
        raise UserError("give a budget: --steps N and/or --minutes M")
    train_generator_ae(GeneratorAEOptions(out=a.out, data=a.data, minutes=a.minutes, steps=a.steps, batch=a.batch,
                                          lr=a.lr, kl_weight=a.kl_weight, seg_weight=a.seg_weight,
                                          attr_weight=a.attr_weight, coeff_weight=a.coeff_weight,
                                          adv_weight=a.adv_weight, adv_start=a.adv_start, seed=a.seed, threads=a.threads, resume=a.resume,
                                          freeze_latents=a.freeze_latents, init=a.init, d_warmup=a.d_warmup,
                                          seg_balance=a.seg_balance, device=a.device,
                                          seg_freq_weight=a.seg_freq_weight,
                                          seg_freq_temperature=a.seg_freq_temperature,
                                          image_share_weight=a.image_share_weight,
                                          seg_class_boost=a.seg_class_boost, latent_attrs=a.latent_attrs,
                                          latent_attr_weight=a.latent_attr_weight,
                                          w_anchor_weight=a.w_anchor_weight,
                                          sample_share_weight=a.sample_share_weight, latent_prior=a.latent_prior,
                                          prior_batch=a.prior_batch))
    return 0


def add_train_generator(models: argparse._SubParsersAction) -> None:
    g = models.add_parser(
        "generator",
        help="train the world generator from a recipe file (resumable)",
        description="Train the world generator (StyleGAN2 conditioned on the world code: supervised, then "
        "adversarial, then the image encoder) from a TOML recipe such as configs/generator_world.toml. "
        "Running the same command again resumes RUN_DIR exactly from its newest checkpoint (after kill -9 "
        "too); the weights are exported to RUN_DIR/export only when the recipe is finished.",
    )
    g.add_argument("--recipe", required=True, metavar="FILE", help="TOML recipe")
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (resumed if it holds a run)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="autocast the forward passes (bf16 on recent GPUs; default none)")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks (about 1.7x on CPU)")
    g.add_argument("--minutes", type=float, default=None, help="stop with a checkpoint after this many minutes")
    g.add_argument("--steps", type=int, default=None, help="stop with a checkpoint at this global step")
    g.add_argument("--ckpt-minutes", type=float, default=5.0, help="checkpoint interval (default 5 minutes)")
    g.add_argument("--sample-every", type=int, default=1000, help="sample grid every N steps (default 1000)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--eval-num", type=int, default=500,
                   help="faces for the figures written beside the exported weights (default 500)")
    g.set_defaults(func=run_generator)


def run_generator(args: argparse.Namespace) -> int:
    from ..train.generator_world import RunOptions, load_recipe, train_world_generator

    recipe = load_recipe(args.recipe)
    run = RunOptions(out=args.out, device=args.device, amp=args.amp, compile=args.compile, threads=args.threads,
                     minutes=args.minutes, steps=args.steps, ckpt_minutes=args.ckpt_minutes,
                     sample_every=args.sample_every)
    trainer = train_world_generator(recipe, run)
    if trainer.stage == "done":
        import json
        from pathlib import Path

        from ..common.fileio import write_text_atomic
        from ..eval.generator_world import evaluate_world_generator, load_judges

        export = Path(args.out) / "export"
        G = trainer.G_ema.cpu()
        figures = evaluate_world_generator(G, trainer.E.cpu().eval(), num=args.eval_num, **load_judges())
        write_text_atomic(export / "figures.json", json.dumps(figures, indent=1) + "\n")
        met = sum(figures["targets_met"].values())
        print(f"finished: weights and figures in {export} ({met} of {len(figures['targets_met'])} targets met)")
    else:
        print(f"stopped at step {trainer.step} of {trainer.recipe.total_steps} ({trainer.stage}); "
              "run the same command to continue")
    return 0


def _need_model(args: argparse.Namespace) -> int:
    raise UserError("choose a model to train: mm2latent train stylegan2 --out RUN_DIR ...")


def run_stylegan2(args: argparse.Namespace) -> int:
    from ..train.stylegan2 import TrainOptions, train_stylegan2

    opts = TrainOptions(
        out=args.out, data=args.data, size=args.size, batch=args.batch, kimg=args.kimg, z_dim=args.z_dim,
        w_dim=args.w_dim, mapping_layers=args.map_layers, channel_base=args.channel_base,
        channel_max=args.channel_max, channels=args.channels, lr=args.lr, r1_gamma=args.gamma,
        r1_every=args.r1_every, pl_weight=args.pl_weight, pl_every=args.pl_every, ema_kimg=args.ema_kimg,
        mixing_prob=args.mixing, augment=args.augment, seed=args.seed, world_length=args.world_length,
        ckpt_every=args.ckpt_every, ckpt_minutes=args.ckpt_minutes, sample_every=args.sample_every,
        minutes=args.minutes, resume=args.resume, device=args.device, threads=args.threads,
    )
    train_stylegan2(opts)
    return 0
