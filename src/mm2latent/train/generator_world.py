"""The world generator: StyleGAN2 conditioned on the exact world code, trained to be sharp.

Why this recipe (measurements in ``docs/design.md`` and ``docs/results.md``):
the previous generator was a VAE-GAN whose w came from a sampled image
latent; an L1 loss then averaged over everything that sample did not pin
down, and the output was blurred. Here the mapping network reads the world
code of each render (:mod:`mm2latent.world.code`: attributes, coefficients
and the renderer's uniforms), which determines the render up to its texture
noise. So:

1. **supervised** stage: L1 between generated and rendered images at full,
   half and quarter size. The target is a function of the input, so this
   converges to the render, not to an average of several.
2. **adversarial** stage: the StyleGAN2 loss (non-saturating logistic, lazy
   R1, DiffAugment translation) supplies what the code cannot: grain and
   texture, drawn by the per-layer noise inputs; L1 stays on the half and
   quarter sizes (where grain averages out) to keep each face its own.
3. **encoder** stage: an :class:`~mm2latent.models.inversion.ImageEncoder`
   learns image -> code (and so w = mapping(code)) from the same pairs, the
   one-pass inverter that editing and the figures use.

Unconditional samples draw world codes from the world's own prior, so seeds
vary as much as world faces do.

The recipe is a TOML file (``configs/generator_world.toml``) read into
:class:`GeneratorRecipe`; a run directory resumes exactly (models, EMA,
optimisers, RNG, data position) from its newest checkpoint.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.imageio import make_grid
from ..models.inversion import ImageEncoder, ImageEncoderConfig
from ..models.stylegan2 import Discriminator, Generator, StyleGAN2Config, load_state_checked, save_generator
from ..world.cache import CachedWorldDataset
from ..world.code import CODE_DIM, world_codes
from ..world.dataset import SPLIT_SEEDS
from . import state as ckpt
from .recipe import build_options
from .state import DataOrder
from .stylegan2 import AUGMENTS, diff_augment

TRAIN_KIND = "world-generator-train"
STAGES = ("supervised", "adversarial", "encoder")
# recipe keys that only a stage reads: they may change on resume while that stage has not started
STAGE_KEYS = {"adversarial": ("l1_adversarial", "adv_weight", "r1_gamma", "r1_every", "augment"),
              "encoder": ("encoder_lr", "encoder_w_weight")}


@dataclass
class GeneratorRecipe(ckpt.OptionsDict):
    """A training recipe: everything that shapes the weights (stored in every checkpoint)."""

    data: str = "runs/cache_train128"  # world cache of the train split (mm2latent world cache)
    resolution: int = 128
    channels: list[int] = field(default_factory=lambda: [256, 256, 128, 64, 32, 24])  # generator, 4 px .. resolution
    d_channels: list[int] = field(default_factory=lambda: [128, 128, 64, 32, 16, 16])  # discriminator, 4 px .. resolution
    w_dim: int = 256
    mapping_layers: int = 4  # depth of the conditional mapping (world code -> w)
    lr_mlp: float = 0.01  # mapping learning-rate multiplier (StyleGAN's 0.01 all but freezes a conditional mapping)
    batch: int = 16
    supervised_kimg: float = 100.0  # stage 1, thousands of images: L1 only
    adversarial_kimg: float = 500.0  # stage 2: L1 + StyleGAN2 loss
    encoder_kimg: float = 200.0  # stage 3: the image encoder (image -> world code), generator frozen
    lr: float = 0.002
    g_beta1_supervised: float = 0.0  # Adam beta1 of G in the supervised stage (adversarial: 0, as StyleGAN2)
    ema_kimg: float = 5.0  # EMA half-life of G_ema
    ema_rampup: float = 0.05
    l1_supervised: list[float] = field(default_factory=lambda: [10.0, 50.0, 50.0])  # L1 at full, half, quarter size
    l1_adversarial: list[float] = field(default_factory=lambda: [0.0, 50.0, 50.0])  # the same in stage 2
    adv_weight: float = 1.0  # StyleGAN2 generator loss weight in stage 2
    r1_gamma: float = 0.5
    r1_every: int = 16  # lazy R1 interval (steps)
    augment: str = "translation"  # DiffAugment policy for the discriminator (comma list)
    encoder_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256])
    encoder_lr: float = 0.001
    encoder_w_weight: float = 1.0  # weight of the MSE in w (mapping of the code) beside the code's MSE
    seed: int = 0

    def validate(self) -> None:
        if self.batch < 1:
            raise UserError("recipe: batch must be positive")
        if min(self.supervised_kimg, self.adversarial_kimg, self.encoder_kimg) < 0:
            raise UserError("recipe: stage lengths (kimg) must be >= 0")
        for name in ("l1_supervised", "l1_adversarial"):
            if len(getattr(self, name)) != 3:
                raise UserError(f"recipe: {name} needs 3 weights (full, half, quarter size)")
        bad = [a for a in self.augment_policy if a not in AUGMENTS]
        if bad:
            raise UserError(f"recipe: unknown augmentation {bad[0]!r}; choose from {', '.join(AUGMENTS)}")
        self.model_config()
        ImageEncoderConfig(size=self.resolution, z_dim=CODE_DIM, widths=list(self.encoder_widths))

    @property
    def augment_policy(self) -> list[str]:
        return [a.strip() for a in self.augment.split(",") if a.strip()]

    def model_config(self) -> StyleGAN2Config:
        res = [2**i for i in range(2, int(math.log2(max(self.resolution, 4))) + 1)]
        for name in ("channels", "d_channels"):
            if len(getattr(self, name)) != len(res):
                raise UserError(f"recipe: {name} needs {len(res)} widths (for {', '.join(map(str, res))})")
        return StyleGAN2Config(resolution=self.resolution, z_dim=CODE_DIM, w_dim=self.w_dim,
                               mapping_layers=self.mapping_layers, lr_mlp=self.lr_mlp,
                               channels=dict(zip(res, self.channels)), d_channels=dict(zip(res, self.d_channels)))

    def stage_bounds(self) -> list[tuple[str, int]]:
        """(stage, last step + 1) for each stage, in order."""
        out, end = [], 0
        for name in STAGES:
            end += math.ceil(getattr(self, f"{name}_kimg") * 1000 / self.batch)
            out.append((name, end))
        return out

    @property
    def total_steps(self) -> int:
        return self.stage_bounds()[-1][1]


def load_recipe(path: str | Path, overrides: dict | None = None) -> GeneratorRecipe:
    """A TOML recipe (and command-line ``overrides``), validated; unknown keys are an error."""
    recipe = build_options(GeneratorRecipe, path, overrides)
    recipe.validate()
    return recipe


@dataclass
class RunOptions:
    """How to run a recipe here (may change between resumes)."""

    out: str  # run directory (resumed if it holds a run)
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (autocast on the forward passes; bf16 on recent GPUs)
    compile: bool = False  # torch.compile the networks (about 1.7x on CPU)
    threads: int | None = None  # torch CPU threads
    minutes: float | None = None  # stop with a checkpoint after this many minutes
    steps: int | None = None  # stop with a checkpoint at this global step (tests, timed GPU calls)
    ckpt_minutes: float = 5.0  # checkpoint interval
    ckpt_every: int = 0  # steps; 0 = by time only
    sample_every: int = 1000  # steps between sample grids


class WorldGeneratorTrainer:
    """Models, optimisers and counters; :meth:`train_step` runs one step of the current stage."""

    def __init__(self, recipe: GeneratorRecipe, run: RunOptions, data: CachedWorldDataset | None = None):
        recipe.validate()
        self.recipe, self.run = recipe, run
        self.compute = ckpt.Compute(run.device, run.amp)
        self.device = self.compute.device
        self.data = data if data is not None else CachedWorldDataset(recipe.data)
        if self.data.size != recipe.resolution:
            raise UserError(f"{recipe.data} holds {self.data.size}px renders; the recipe trains {recipe.resolution}px")
        seed = int(self.data.meta.get("seed", SPLIT_SEEDS["train"]))
        self.codes = torch.from_numpy(world_codes(seed, range(len(self.data))))
        self.cfg = recipe.model_config()
        dev = self.device
        torch.manual_seed(recipe.seed)
        self.G = Generator(self.cfg).to(dev).train()
        self.D = Discriminator(self.cfg).to(dev).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.E = ImageEncoder(ImageEncoderConfig(size=recipe.resolution, z_dim=CODE_DIM,
                                                 widths=list(recipe.encoder_widths))).to(dev).train()
        c = recipe.r1_every / (recipe.r1_every + 1)
        self.optG = torch.optim.Adam(self.G.parameters(), lr=recipe.lr, betas=(0.0, 0.99), eps=1e-8)
        self.optD = torch.optim.Adam(self.D.parameters(), lr=recipe.lr * c, betas=(0.0, 0.99**c), eps=1e-8)
        self.optE = torch.optim.Adam(self.E.parameters(), lr=recipe.encoder_lr, betas=(0.9, 0.99))
        self.order = DataOrder(len(self.data), recipe.seed)
        self.step = 0
        self.elapsed = 0.0
        # compiled views share parameters with the modules; R1 needs double backward and uses plain D
        self.G_fwd = torch.compile(self.G) if run.compile else self.G
        self.D_fwd = torch.compile(self.D) if run.compile else self.D
        self.E_fwd = torch.compile(self.E) if run.compile else self.E
        torch.manual_seed(recipe.seed + 1)

    # ------------------------------------------------------------------ helpers

    @property
    def stage(self) -> str:
        for name, end in self.recipe.stage_bounds():
            if self.step < end:
                return name
        return "done"

    @property
    def nimg(self) -> int:
        return self.step * self.recipe.batch

    def _autocast(self):
        return self.compute.autocast()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.array(self.order.take(self.recipe.batch))
        b = self.data.batch(idx)  # sorts the indices
        idx = b["index"].numpy()
        return b["image"].to(self.device), self.codes[idx].to(self.device)

    def _backward(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        self.compute.step(loss, opt)

    @staticmethod
    def l1_pyramid(fake: torch.Tensor, real: torch.Tensor, weights) -> torch.Tensor:
        """Weighted L1 at full, half and quarter size (box-downsampled)."""
        total = fake.new_zeros(())
        for k, wgt in enumerate(weights):
            if wgt:
                f = F.avg_pool2d(fake, 2**k) if k else fake
                r = F.avg_pool2d(real, 2**k) if k else real
                total = total + wgt * (f.float() - r).abs().mean()
        return total

    @torch.no_grad()
    def _update_ema(self) -> None:
        r = self.recipe
        ema_nimg = r.ema_kimg * 1000
        if r.ema_rampup:
            ema_nimg = min(ema_nimg, self.nimg * r.ema_rampup)
        beta = 0.5 ** (r.batch / max(ema_nimg, 1e-8))
        for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
            pe.copy_(p.detach().lerp(pe, beta))
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    # ------------------------------------------------------------------ steps

    def train_step(self) -> dict[str, float]:
        stage = self.stage
        if stage == "done":
            raise RuntimeError("the recipe is finished")
        real, code = self._batch()
        if stage != "encoder":  # G's Adam: beta1 of the recipe while supervised, 0 (StyleGAN2) once adversarial
            beta1 = self.recipe.g_beta1_supervised if stage == "supervised" else 0.0
            for group in self.optG.param_groups:
                group["betas"] = (beta1, group["betas"][1])
        stats = {k: float(v.detach()) for k, v in getattr(self, f"_step_{stage}")(real, code).items()}
        self.step += 1
        if stage != "encoder":
            self._update_ema()
        return stats

    def _step_supervised(self, real, code) -> dict[str, float]:
        self.optG.zero_grad(set_to_none=True)
        with self._autocast():
            fake = self.G_fwd(code)
        loss = self.l1_pyramid(fake, real, self.recipe.l1_supervised)
        self._backward(loss, self.optG)
        return {"l1": loss}

    def _step_adversarial(self, real, code) -> dict[str, float]:
        r = self.recipe
        aug = lambda x: diff_augment(x, r.augment_policy)  # noqa: E731
        # G: L1 on the coarse sizes + non-saturating loss
        self.D.requires_grad_(False)
        self.optG.zero_grad(set_to_none=True)
        with self._autocast():
            fake = self.G_fwd(code)
            g_adv = F.softplus(-self.D_fwd(aug(fake))).float().mean()
        l1 = self.l1_pyramid(fake, real, r.l1_adversarial)
        self._backward(l1 + r.adv_weight * g_adv, self.optG)
        self.D.requires_grad_(True)
        # D: logistic loss on the same fakes, lazy R1 on reals
        self.optD.zero_grad(set_to_none=True)
        with self._autocast():
            d_fake = self.D_fwd(aug(fake.detach()))
            d_real = self.D_fwd(aug(real))
        d_loss = (F.softplus(d_fake.float()) + F.softplus(-d_real.float())).mean()
        stats = {"l1": l1, "g_adv": g_adv, "d": d_loss}
        if self.step % r.r1_every == 0:
            x = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(x).sum(), x, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean()
            d_loss = d_loss + r1 * (r.r1_gamma / 2 * r.r1_every)
            stats["r1"] = r1
        self._backward(d_loss, self.optD)
        return stats

    def _step_encoder(self, real, code) -> dict[str, float]:
        self.optE.zero_grad(set_to_none=True)
        with self._autocast():
            mu, _ = self.E_fwd(real)
        mu = mu.float()
        loss_code = (mu - code).square().mean()
        loss = loss_code
        stats = {"code": loss_code}
        if self.recipe.encoder_w_weight:
            with torch.no_grad():
                w_true = self.G_ema.mapping(code)
            loss_w = (self.G_ema.mapping(mu) - w_true).square().mean()
            loss = loss + self.recipe.encoder_w_weight * loss_w
            stats["w"] = loss_w
        self._backward(loss, self.optE)
        return stats

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors: dict[str, torch.Tensor] = {}
        for name, m in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema), ("E", self.E)):
            tensors.update(ckpt.module_tensors(name, m))
        metas = {}
        for name, opt in (("optG", self.optG), ("optD", self.optD), ("optE", self.optE)):
            t, metas[name] = ckpt.flatten_optimizer(opt, name)
            tensors.update(t)
        tensors.update({f"rng.{k}": v for k, v in ckpt.rng_state_tensors(self.device).items()})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"format_version": 1, "recipe": self.recipe.to_dict(), "step": self.step, "nimg": self.nimg,
                "elapsed": self.elapsed, "stage": self.stage,
                "data": {"epoch": self.order.epoch, "cursor": self.order.cursor, "n": self.order.n},
                "scaler": self.compute.scaler.state_dict(), **metas}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, what: str) -> None:
        if meta["data"]["n"] != len(self.data):
            raise UserError(f"{what} was trained on {meta['data']['n']} renders but {self.recipe.data} holds "
                            f"{len(self.data)}")
        for name, m in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema), ("E", self.E)):
            sub = {k[len(name) + 1:]: v.to(self.device) for k, v in tensors.items() if k.startswith(name + ".")}
            load_state_checked(m, sub, f"{what} ({name})")
        for name, opt in (("optG", self.optG), ("optD", self.optD), ("optE", self.optE)):
            ckpt.unflatten_optimizer(opt, name, tensors, meta[name])
        if meta.get("scaler"):
            self.compute.scaler.load_state_dict(meta["scaler"])
        self.step, self.elapsed = int(meta["step"]), float(meta.get("elapsed", 0.0))
        self.order.epoch, self.order.cursor = int(meta["data"]["epoch"]), int(meta["data"]["cursor"])
        ckpt.set_rng_state_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}, self.device)

    @torch.no_grad()
    def sample_grid(self, n: int = 8) -> np.ndarray:
        """Top row: test renders; below: G_ema from their codes; then encoder reconstructions."""
        test = world_codes(SPLIT_SEEDS["test"], range(n))
        from ..world.render import render
        from ..world.params import sample_params

        reals = np.stack([render(sample_params(SPLIT_SEEDS["test"], i), self.recipe.resolution).image
                          for i in range(n)])
        code = torch.from_numpy(test).to(self.device)
        rows = [reals, _to_u8(self.G_ema(code, noise_mode="const"))]
        if self.step > self.recipe.stage_bounds()[1][1]:
            x = torch.from_numpy(reals).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(self.device)
            rows.append(_to_u8(self.G_ema(self.E(x)[0], noise_mode="const")))
        return make_grid(np.concatenate(rows), n)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def generator_from_checkpoint(tensors: dict[str, torch.Tensor], recipe: GeneratorRecipe,
                              name: str = "G_ema") -> Generator:
    """The generator ``name`` of a training checkpoint (for benches beside a live run)."""
    G = Generator(recipe.model_config())
    ckpt.load_module_tensors(name, G, tensors)
    return G.eval().requires_grad_(False)


def export(trainer: WorldGeneratorTrainer, out_dir: Path) -> None:
    """Write the inference weights: generator (G_ema, world-code mapping) and the code encoder."""
    from ..models.registry import save_module

    r = trainer.recipe
    record = {"method": "StyleGAN2 conditioned on the world code (supervised, then adversarial)",
              "recipe": r.to_dict(), "step": trainer.step, "kimg": trainer.nimg / 1000,
              "minutes": round(trainer.elapsed / 60, 1), "conditioning": "world_code"}
    save_generator(out_dir / "generator", trainer.G_ema, extra={"training": record})
    save_module(trainer.E, out_dir / "image_encoder", half=False, extra={"predicts": "world_code", "training": record})


def train_world_generator(recipe: GeneratorRecipe, run: RunOptions,
                          data: CachedWorldDataset | None = None) -> WorldGeneratorTrainer:
    """Run or resume ``recipe`` in ``run.out``; exports the weights to RUN/export when the recipe is done."""
    if run.threads:
        torch.set_num_threads(run.threads)
    run_dir = Path(run.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    found = ckpt.latest_good_checkpoint(run_dir, TRAIN_KIND, clean=True)
    if found:
        stored = GeneratorRecipe.from_dict(found[2]["recipe"])
        if stored.to_dict() != recipe.to_dict():
            changed = sorted(k for k, v in recipe.to_dict().items() if stored.to_dict().get(k) != v)
            allowed = {"supervised_kimg", "adversarial_kimg", "encoder_kimg", "data"}
            started = {name for name, start in zip(STAGES, [0] + [e for _, e in stored.stage_bounds()[:-1]])
                       if found[2]["step"] >= start}
            allowed |= {k for stage, keys in STAGE_KEYS.items() if stage not in started for k in keys}
            if set(changed) - allowed:
                raise UserError(f"{run_dir} holds a run of another recipe (differs in {', '.join(changed)}); "
                                "choose another --out")
            # lengthening (or shortening) stages that have not run yet is allowed
    trainer = WorldGeneratorTrainer(recipe, run, data)
    if found:
        trainer.load_state(found[1], found[2], str(found[0]))
    steps = min(run.steps or trainer.recipe.total_steps, trainer.recipe.total_steps)
    loop_opts = ckpt.LoopOptions(steps=steps, minutes=_minutes_left(run, trainer), sample_every=run.sample_every,
                                 ckpt_minutes=run.ckpt_minutes, ckpt_every=run.ckpt_every)
    ckpt.run_loop(trainer, loop_opts, run_dir, TRAIN_KIND, desc=f"world generator ({trainer.stage})")
    if trainer.stage == "done":
        export(trainer, run_dir / "export")
    return trainer


def _minutes_left(run: RunOptions, trainer: WorldGeneratorTrainer) -> float | None:
    """``run.minutes`` counts for this invocation; run_loop measures the run's total elapsed time."""
    return None if not run.minutes else trainer.elapsed / 60 + run.minutes
