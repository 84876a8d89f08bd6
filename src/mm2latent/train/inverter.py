"""Training the e4e-style W+ inverter (:class:`~mm2latent.models.inversion.WPlusInverter`).

The generator is frozen. The inverter starts as exactly the generator-AE's
encoder + mapping (offset heads initialised to zero), so training can only
improve on the W inversion it replaces. Each step sees

* world renders, with the renderer's truth: pixel L1 + low-resolution L2 of
  the reconstruction, parser cross-entropy against the true mask, and the
  frozen analyzer's attribute BCE / coefficient MSE against the true
  attributes and coefficients (the analyzer plays the part of e4e's identity
  network: it says whether the face is still *that* face);
* generator samples (z ~ N(0, I), random truncation, style-mixed half the
  time so that true W+ codes occur), whose code is known: MSE between the
  predicted and the true w+ in addition to the pixel terms;
* e4e's regularisers: the mean square of the offsets (w+ stays centred on one
  w, where MappingNet's edits were learnt) and progressive training (offsets
  switched on one layer at a time, coarse first, every ``progressive_steps``).

Checkpoints go through :mod:`mm2latent.train.state`; ``resume`` continues exactly.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.fileio import check_writable_dir, write_text_atomic
from ..models.inversion import WPlusInverter, reconstruction_loss
from . import state as ckpt
from .generator_ae import frozen_judge, judge_losses
from .state import DataOrder

TRAIN_KIND = "wplus-inverter-train"


@dataclass
class InverterOptions(ckpt.OptionsDict):
    """A W+ inverter training run (configs/wplus_inverter.toml; stored in every checkpoint)."""

    out: str  # run directory
    data: str = "runs/cache_train128"  # world cache (mm2latent world cache)
    weights: str | None = None  # generator + image_encoder to start from; None = shipped
    batch: int = 8  # world renders per step
    sample_batch: int = 4  # generator samples per step
    steps: int | None = None
    minutes: float | None = None  # wall-clock budget, counted across resumes
    lr: float = 1e-3  # offset heads
    base_lr: float = 5e-5  # encoder + mapping copy (0 freezes the base code)
    pixel_weight: float = 1.0  # L1 + L2 at 1/4 resolution
    seg_weight: float = 0.5
    attr_weight: float = 0.2
    coeff_weight: float = 1.0
    latent_weight: float = 0.1  # MSE to the true w+ of generator samples
    offset_reg: float = 0.1  # mean square of the offsets
    progressive_steps: int = 100  # one more layer's offset every k steps (0 = all from the start)
    mix_prob: float = 0.5  # probability of style-mixing the generator samples
    head_width: int = 128  # width of the offset heads
    parser: str | None = None  # judge weights; None = shipped, "" = loss off
    analyzer: str | None = None
    seed: int = 0
    ckpt_minutes: float = 5.0  # checkpoint interval
    ckpt_every: int = 0  # steps; 0 = by time only
    sample_every: int = 500  # steps between sample grids
    threads: int | None = None  # torch CPU threads
    resume: bool = False  # continue the run in --out from its latest checkpoint
    #: start from an exported inverter (``wplus_inverter.safetensors``) instead of the W encoder with
    #: zero offsets -- e.g. to follow a generator whose synthesis was fine-tuned; every offset is then
    #: active from the first step (progressive_steps is ignored) and the architecture comes from the file
    init: str | None = None
    #: with ``init``: "inverter" keeps the file's base code (encoder + mapping copy); "weights" replaces
    #: it by the current generator's mapping and image encoder (``weights``), so the base code is again
    #: exactly the W inversion of a generator-AE that was trained on, and only the offset heads carry over
    init_base: str = "inverter"
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16: autocast of the forward passes

    RESUMABLE = ("out", "steps", "minutes", "ckpt_minutes", "ckpt_every", "sample_every", "threads", "resume", "data",
                 "weights", "device", "amp")

    def validate(self) -> None:
        if self.steps is None and self.minutes is None:
            raise UserError("give a budget: --steps N and/or --minutes M")
        if self.batch < 1 or self.sample_batch < 0:
            raise UserError("--batch must be >= 1 and --sample-batch >= 0")
        for name in ("lr", "base_lr", "pixel_weight", "seg_weight", "attr_weight", "coeff_weight", "latent_weight",
                     "offset_reg", "progressive_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0")
        if not 0 <= self.mix_prob <= 1:
            raise UserError("--mix-prob must lie in [0, 1]")
        if self.init_base not in ("inverter", "weights"):
            raise UserError("--init-base must be 'inverter' or 'weights'")


class InverterTrainer:
    def __init__(self, opts: InverterOptions, data=None, generator=None, image_encoder=None):
        from ..models.registry import default_weights_dir, load_components
        from ..world.cache import CachedWorldDataset

        opts.validate()
        self.opts = opts
        torch.manual_seed(opts.seed)
        if generator is None or image_encoder is None:
            comp = load_components(opts.weights or default_weights_dir(), need=("generator", "image_encoder"))
            generator, image_encoder = comp["generator"], comp["image_encoder"]
            self.generator_info = comp.get("generator_info", {})
        else:
            self.generator_info = {}
        self.compute = ckpt.Compute(opts.device, opts.amp)
        dev = self.compute.device
        self.G = generator.eval().requires_grad_(False).to(dev)
        if image_encoder.config.size != self.G.resolution:
            raise UserError(f"the image encoder takes {image_encoder.config.size}px images but the generator makes "
                            f"{self.G.resolution}px")
        if opts.init is not None:
            self.inv = load_init(opts.init, self.G, image_encoder if opts.init_base == "weights" else None)
        else:
            self.inv = WPlusInverter.from_parts(image_encoder, self.G, {"head_width": opts.head_width})
        self.inv.to(dev)
        self.data = data if data is not None else CachedWorldDataset(opts.data)
        if getattr(self.data, "size", self.G.resolution) != self.G.resolution:
            raise UserError(f"data {opts.data} is {self.data.size}px but the generator makes {self.G.resolution}px")
        self.parser = frozen_judge("parser", opts.parser) if opts.parser != "" and opts.seg_weight > 0 else None
        self.analyzer = (frozen_judge("analyzer", opts.analyzer)
                         if opts.analyzer != "" and (opts.attr_weight > 0 or opts.coeff_weight > 0) else None)
        for judge in (self.parser, self.analyzer):
            if judge is not None:
                judge.to(dev)
        base = list(self.inv.encoder.parameters()) + list(self.inv.mapping.parameters())
        groups = [{"params": list(self.inv.heads.parameters()), "lr": opts.lr}]
        if opts.base_lr > 0:
            groups.append({"params": base, "lr": opts.base_lr})
        else:
            for p in base:
                p.requires_grad_(False)
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.999))
        self.order = DataOrder(len(self.data), opts.seed)
        self.step = 0
        self.elapsed = 0.0
        self._set_active()

    def _set_active(self) -> None:
        k, n = self.opts.progressive_steps, self.inv.config.num_ws
        if self.opts.init is not None:
            k = 0
        on = n if k == 0 else min(n, self.step // k)
        self.inv.active.copy_((torch.arange(n, device=self.inv.active.device) < on).float())

    @torch.no_grad()
    def generator_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, true w+) of ``n`` samples: random truncation in [0.5, 1], style mixing with ``mix_prob``."""
        G, dev = self.G, self.compute.device
        w = G.mapping(torch.randn(n, G.z_dim, device=dev))
        w = G.mapping.w_avg.lerp(w, torch.empty(n, 1, device=dev).uniform_(0.5, 1.0))
        ws = G.broadcast(w).clone()
        w2 = G.mapping.w_avg.lerp(G.mapping(torch.randn(n, G.z_dim, device=dev)),
                                  torch.empty(n, 1, device=dev).uniform_(0.5, 1.0))
        cut = torch.randint(1, G.num_ws, (n,), device=dev)
        mix = torch.rand(n, device=dev) < self.opts.mix_prob
        layer = torch.arange(G.num_ws, device=dev)[None, :]
        sel = (mix[:, None] & (layer >= cut[:, None]))[..., None]
        ws = torch.where(sel, w2[:, None, :], ws)
        return G.synthesis(ws, noise_mode="const"), ws

    def train_step(self) -> dict[str, float]:
        o, G = self.opts, self.G
        self._set_active()
        b = self.compute.to(self.data.batch(self.order.take(o.batch)))
        x, nr = b["image"], o.batch
        target_ws = None
        if o.sample_batch:
            xs, target_ws = self.generator_samples(o.sample_batch)
            x = torch.cat([x, xs])
        with self.compute.autocast():
            ws, offsets = self.inv(x)
            y = G.synthesis(ws, noise_mode="const")
        ws, offsets, y = ws.float(), offsets.float(), y.float()
        stats: dict[str, float] = {}
        pix = reconstruction_loss(y, x)
        reg = offsets.square().mean()
        loss = o.pixel_weight * pix + o.offset_reg * reg
        stats["pix"], stats["offset_ms"] = pix.item(), reg.item()
        stats["l1_renders"] = (y[:nr] - x[:nr]).abs().mean().item()
        if target_ws is not None and o.latent_weight > 0:
            lat = F.mse_loss(ws[nr:], target_ws)
            loss = loss + o.latent_weight * lat
            stats["latent"] = lat.item()
        loss = loss + judge_losses(y[:nr], b, self.parser, self.analyzer, stats, seg_weight=o.seg_weight,
                                   attr_weight=o.attr_weight, coeff_weight=o.coeff_weight)
        self.opt.zero_grad(set_to_none=True)
        self.compute.step(loss, self.opt, clip=5.0)
        self.step += 1
        return stats

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = ckpt.module_tensors("inv", self.inv)
        t, m = ckpt.flatten_optimizer(self.opt, "opt")
        tensors.update(t)
        tensors.update({f"rng.{k}": v for k, v in ckpt.rng_state_tensors(self.compute.device).items()})
        meta: dict[str, Any] = {"train": self.opts.to_dict(), "elapsed": self.elapsed,
                                "order": [self.order.epoch, self.order.cursor], "optim": {"opt": m}}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        ckpt.load_module_tensors("inv", self.inv, tensors)
        ckpt.unflatten_optimizer(self.opt, "opt", tensors, meta["optim"]["opt"])
        self.step = int(meta["step"])
        self.elapsed = float(meta["elapsed"])
        self.order.epoch, self.order.cursor = (int(v) for v in meta["order"])
        ckpt.set_rng_state_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}, self.compute.device)
        self._set_active()

    @torch.no_grad()
    def sample_grid(self, n: int = 8):
        """Rows: renders; their W inversion (base code only); their W+ inversion."""
        import numpy as np

        from ..common.imageio import make_grid

        x = self.data.batch(list(range(n)))["image"].to(self.compute.device)
        ws, _ = self.inv(x)
        base = self.G.synthesis(self.G.broadcast(self.inv.base(x)), noise_mode="const")
        full = self.G.synthesis(ws, noise_mode="const")
        rows = torch.cat([x, base, full]).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        return make_grid(np.asarray(rows.permute(0, 2, 3, 1).cpu().numpy()), n)


def load_init(path: str, G, image_encoder=None) -> WPlusInverter:
    """An exported inverter to fine-tune; it must predict codes for this generator. With
    ``image_encoder``, its base code is reset to ``G.mapping(image_encoder(x)[0])``."""
    from ..models.registry import load_module_file

    if not Path(path).exists():
        raise UserError(f"--init {path}: no such file")
    inv = load_module_file(path, "wplus_inverter")
    if inv.config.num_ws != G.num_ws or inv.config.w_dim != G.w_dim:
        raise UserError(f"--init {path}: the inverter predicts {inv.config.num_ws} x {inv.config.w_dim} codes but "
                        f"the generator takes {G.num_ws} x {G.w_dim}")
    if image_encoder is not None:
        try:
            inv.encoder.load_state_dict(image_encoder.state_dict())
            inv.mapping.load_state_dict(G.mapping.state_dict())
        except RuntimeError as e:
            raise UserError(f"--init {path} --init-base weights: the inverter's encoder or mapping does not match "
                            f"the generator-AE's ({str(e).splitlines()[0]})") from None
    return inv.train().requires_grad_(True)


def export(trainer: InverterTrainer, run_dir: Path) -> None:
    from ..models.registry import save_module

    o = trainer.opts
    info = {"training": {"method": "e4e-style W+ encoder (offsets from w), generator frozen", "step": trainer.step,
                         "kimg": trainer.step * (o.batch + o.sample_batch) / 1000,
                         "minutes": round(trainer.elapsed / 60, 1), "data": o.data,
                         "generator_step": trainer.generator_info.get("step"),
                         "losses": {k: getattr(o, k) for k in ("pixel_weight", "seg_weight", "attr_weight",
                                                               "coeff_weight", "latent_weight", "offset_reg")}}}
    save_module(trainer.inv, run_dir / "wplus_inverter.safetensors", half=True, extra=info)


def train_inverter(opts: InverterOptions, data=None, generator=None, image_encoder=None) -> InverterTrainer:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    run_dir = Path(opts.out)
    check_writable_dir(run_dir)
    found, opts = ckpt.find_resume(run_dir, TRAIN_KIND, opts, opts.resume)
    tr = InverterTrainer(opts, data, generator, image_encoder)
    if found:
        tr.load_state(found[1], found[2])
        print(f"resuming {run_dir} from step {tr.step}", file=sys.stderr)
    write_text_atomic(run_dir / "options.json", json.dumps(opts.to_dict(), indent=2) + "\n")
    ckpt.run_loop(tr, opts, run_dir, TRAIN_KIND, export, "wplus-inverter")
    print(f"step {tr.step} ({tr.elapsed / 60:.1f} min); inverter: {run_dir / 'wplus_inverter.safetensors'}",
          file=sys.stderr)
    return tr
