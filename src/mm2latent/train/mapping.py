"""MappingNet training on generator-derived data (no captions: that is the method).

Each step takes a batch of (w, image embedding, control embeddings) made by
:mod:`mm2latent.train.mapping_data` and builds MappingNet's input as at
inference, except that the text slot holds the *pseudo text embedding*
normalise(image_emb + N(0, text_noise_std^2 I)) and every modality is replaced
by its learned absent embedding with probability ``drop_prob`` (so any subset
works at inference). Loss: L1 + cosine on w (docs/design.md section 1), plus an
optional image-space terms on G(w_pred), sharing one generator pass per step
(costly on CPU): the parser's cross-entropy against the sample's mask
(``seg_weight``) and the attribute classifier's binary cross-entropy against
the sample's attribute probabilities (``attr_weight``), both read off G(w) by
the same judges when the data was made.

The last ``val_fraction`` of the data is held out; its w loss with all
modalities and with text only is logged at each checkpoint. The loop and the
checkpoints are :func:`mm2latent.train.state.run_loop`'s; ``resume`` continues exactly.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.fileio import check_writable_dir, write_text_atomic
from ..models.mapping import MODALITIES, MappingNet, MappingNetConfig, w_loss
from . import state as ckpt
from .mapping_data import load_mapping_data
from .state import DataOrder

TRAIN_KIND = "mapping-net-train"


def emb_key(modality: str) -> str:
    """The data array of a modality's embeddings (its control's ``data_key``)."""
    from ..models.controls import get_control

    return get_control(modality).data_key


@dataclass
class MappingTrainOptions(ckpt.OptionsDict):
    """A MappingNet training run (configs/mapping_net.toml; stored in every checkpoint)."""

    data: str  # mapping data directory ('mm2latent mapping-data'), or "synthetic" for tests
    out: str  # run directory
    steps: int = 4000
    minutes: float | None = None  # wall-clock budget, counted across resumes
    batch: int = 256
    lr: float = 1e-3
    text_noise_std: float = 0.04  # std of the noise on image embeddings (pseudo text)
    drop_prob: float = 0.3  # per-modality dropout probability
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # the controls MappingNet reads
    wplus: bool = False  # predict W+ (one w per generator layer)
    layers: int = 8  # MLP depth
    hidden: int = 512  # MLP width
    dropout: float = 0.1
    cos_weight: float = 1.0  # weight of the cosine term beside L1 on w
    seg_weight: float = 0.0  # parser cross-entropy of G(w) against the sample's mask
    attr_weight: float = 0.0  # attribute classifier's BCE of G(w) against the sample's attributes
    seg_batch: int = 8  # samples per step that go through the generator for the image-space terms
    weights: str | None = None  # generator + parser/analyzer for the image-space terms (default: shipped)
    init: str | None = None  # start from this exported MappingNet (fine-tuning, e.g. with the image-space terms)
    val_fraction: float = 0.05  # share of the data held out for validation
    seed: int = 0
    ckpt_minutes: float = 2.0  # checkpoint interval
    threads: int | None = None  # torch CPU threads
    resume: bool = False  # continue the run in --out from its latest checkpoint
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda; under torchrun, one GPU a process
    amp: str = "none"  # none | bf16 | fp16: autocast of the forward passes

    RESUMABLE = ("out", "steps", "minutes", "ckpt_minutes", "threads", "resume", "data", "weights", "device", "amp")

    def validate(self) -> None:
        from ..models.controls import control_names

        bad = [m for m in self.modalities if m not in control_names()]
        if bad or not self.modalities:
            raise UserError(f"--modalities must be a subset of {', '.join(control_names())}")
        if self.steps is not None and self.steps < 1:
            raise UserError("--steps must be positive")
        if self.text_noise_std < 0 or not 0 <= self.drop_prob < 1:
            raise UserError("--text-noise-std must be >= 0 and --drop-prob in [0, 1)")
        if self.batch < 2:
            raise UserError("--batch must be at least 2 (BatchNorm)")
        if self.seg_weight < 0 or self.attr_weight < 0 or self.seg_batch < 1:
            raise UserError("--seg-weight and --attr-weight must be >= 0 and --seg-batch positive")
        if not 0 < self.val_fraction < 0.5:
            raise UserError("--val-fraction must lie in (0, 0.5)")


def pseudo_text(image_emb: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """normalise(image embedding + Gaussian noise): MM2Latent's stand-in for a caption embedding."""
    if std <= 0:
        return F.normalize(image_emb, dim=-1)
    noise = (torch.randn(image_emb.shape, generator=generator).to(image_emb.device) if generator is not None
             else torch.randn_like(image_emb))
    return F.normalize(image_emb + std * noise, dim=-1)


class MappingTrainer:
    """Single process, or one of ``env.world_size`` processes under torchrun: every rank draws the
    same global batch order, trains on its slice, and gradients are averaged (all-reduce) before
    each step, so all ranks hold identical parameters; BatchNorm statistics are averaged at
    checkpoints."""

    def __init__(self, opts: MappingTrainOptions, data: dict[str, np.ndarray] | None = None, env=None):
        opts.validate()
        self.opts = opts
        self.env = env or ckpt.DistEnv(device=ckpt.pick_device(opts.device))
        self.compute = ckpt.Compute(self.env.device.type, opts.amp, self.env.device.index or 0)
        dev = self.compute.device
        if opts.batch % self.env.world_size:
            raise UserError(f"--batch {opts.batch} must be divisible by the {self.env.world_size} processes")
        torch.manual_seed(opts.seed)
        names = ("w", "mask") + (("attributes",) if opts.attr_weight > 0 else ()) + tuple(emb_key(m) for m in opts.modalities)
        d = data if data is not None else load_mapping_data(opts.data, names)
        missing = [k for k in names if k not in d]
        if missing:
            raise UserError(f"MappingNet data lacks {', '.join(missing)}")
        n = len(d["w"])
        n_val = max(1, int(round(n * opts.val_fraction)))
        if n - n_val < opts.batch:
            raise UserError(f"{n} samples are too few for batch {opts.batch}")
        self.t = {k: torch.from_numpy(np.asarray(d[k], dtype=np.uint8 if k == "mask" else np.float32)).to(dev)
                  for k in names}
        self.n_train = n - n_val
        w = self.t["w"]  # (n, w_dim), or (n, num_ws, w_dim): W+ targets (e4e inversions of photos)
        num_ws = w.shape[1] if w.dim() == 3 else 1
        self.G = self.parser = self.analyzer = None
        if opts.seg_weight > 0 or opts.attr_weight > 0 or opts.wplus:
            from ..models.registry import load_components

            comp = load_components(opts.weights, need=("generator",))
            self.G = comp["generator"].requires_grad_(False).to(dev)
            if opts.wplus and num_ws == 1:
                num_ws = self.G.num_ws
            elif w.dim() == 3 and num_ws != self.G.num_ws:
                raise UserError(f"the data's W+ targets have {num_ws} layers; the generator has {self.G.num_ws}")
        if opts.seg_weight > 0 or opts.attr_weight > 0:
            from ..models.registry import component_file, default_weights_dir, load_module_file

            wd = Path(opts.weights) if opts.weights else default_weights_dir()
            if opts.seg_weight > 0:
                self.parser = load_module_file(component_file(wd, "parser"), "parser").requires_grad_(False).to(dev)
            if opts.attr_weight > 0:
                self.analyzer = load_module_file(component_file(wd, "analyzer"), "analyzer").requires_grad_(False).to(dev)
        dims = {m: self.t[emb_key(m)].shape[1] for m in opts.modalities}
        self.net = MappingNet(MappingNetConfig(dims=dims, w_dim=w.shape[-1], num_ws=num_ws, hidden=opts.hidden,
                                               layers=opts.layers, dropout=opts.dropout))
        train_w = w[:self.n_train].reshape(-1, w.shape[-1])  # W+: statistics over the layers too
        self.net.w_mean.copy_(train_w.mean(0))
        self.net.w_std.copy_(train_w.std(0).clamp_min(1e-3))
        if opts.init:
            self._load_init(opts.init)
        self.net.to(dev)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=opts.lr, betas=(0.9, 0.99))
        self.order = DataOrder(self.n_train, opts.seed)
        self.step = 0
        self.elapsed = 0.0
        self.stats: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self._synced_at: int | None = None  # the step whose BatchNorm statistics were last averaged

    def _load_init(self, path: str) -> None:
        """Weights (and w statistics) of an exported MappingNet of the same shape; a W net
        also starts a W+ run (``--wplus``): its output layer is repeated once per generator
        layer, so the W+ net begins by predicting the W net's w at every layer and the
        image-space terms can then move layers apart."""
        from ..models.registry import load_module_file

        src = load_module_file(path, "mapping_net")
        mine, theirs = self.net.config.to_dict(), src.config.to_dict()
        widen = theirs["num_ws"] == 1 and mine["num_ws"] > 1 and {**theirs, "num_ws": mine["num_ws"]} == mine
        if theirs != mine and not widen:
            raise UserError(f"--init {path} is a MappingNet of another shape ({theirs}); this run builds {mine}")
        state = src.state_dict()
        if widen:
            state["head.weight"] = state["head.weight"].repeat(mine["num_ws"], 1)
            state["head.bias"] = state["head.bias"].repeat(mine["num_ws"])
        self.net.load_state_dict({k: v.to(self.net.w_mean.device) for k, v in state.items()})

    def lr_at(self, step: int) -> float:
        total = self.opts.steps or 10**9
        warm = min(200, total // 10 + 1)
        if step < warm:
            return self.opts.lr * (step + 1) / warm
        return self.opts.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, total - warm))))

    def inputs(self, idx: torch.Tensor, train: bool) -> tuple[dict, dict | None]:
        o = self.opts
        emb = {m: self.t[emb_key(m)][idx] for m in o.modalities}
        if "text" in emb:
            emb["text"] = pseudo_text(emb["text"], o.text_noise_std)
        present = None
        if train and o.drop_prob > 0:
            present = {m: torch.rand(len(idx)).to(self.compute.device) >= o.drop_prob for m in o.modalities}
        return emb, present

    def train_step(self) -> dict[str, float]:
        o = self.opts
        idx = torch.as_tensor(self.order.take(o.batch), device=self.compute.device)
        if self.env.world_size > 1:
            lb = o.batch // self.env.world_size
            idx = idx[self.env.rank * lb:(self.env.rank + 1) * lb]
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        self.net.train()
        emb, present = self.inputs(idx, train=True)
        with self.compute.autocast():
            pred = self.net(emb, present).float()
            loss, stats = w_loss(pred, self.t["w"][idx], center=self.net.w_mean, cos_weight=o.cos_weight)
            if self.parser is not None or self.analyzer is not None:
                loss = loss + self.image_space_loss(pred, idx, stats)
        self.opt.zero_grad(set_to_none=True)
        self.compute.step(loss, self.opt, before_step=self.average_gradients if self.env.world_size > 1 else None)
        self.step += 1
        stats["loss"] = loss.item()
        self.stats = stats
        return stats

    def average_gradients(self) -> None:
        """All-reduce the gradients over the ranks (one flat tensor), so every rank takes the same step."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.net.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.env.world_size
        k = 0
        for p, g in zip(self.net.parameters(), grads):
            p.grad = flat[k:k + g.numel()].view_as(g).clone()
            k += g.numel()

    def image_space_loss(self, pred: torch.Tensor, idx: torch.Tensor, stats: dict) -> torch.Tensor:
        """The judges' losses on G(w_pred) for the first ``seg_batch`` samples (one generator pass)."""
        from ..models.controls import resize_images

        o = self.opts
        k = min(o.seg_batch, len(idx))
        x = self.G.synthesis(self.G.broadcast(pred[:k]), noise_mode="const")
        total = x.new_zeros(())
        if self.parser is not None:
            seg = F.cross_entropy(self.parser(resize_images(x, self.parser.config.size)), self.t["mask"][idx[:k]].long())
            total = total + o.seg_weight * seg
            stats["seg"] = seg.item()
        if self.analyzer is not None:
            logits, _ = self.analyzer(resize_images(x, self.analyzer.config.size))
            attr = F.binary_cross_entropy_with_logits(logits, self.t["attributes"][idx[:k]])
            total = total + o.attr_weight * attr
            stats["attr"] = attr.item()
        return total

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.net.eval()
        idx = torch.arange(self.n_train, len(self.t["w"]))
        g = torch.Generator().manual_seed(1)
        out = {}
        subsets = {"all": self.opts.modalities, **{f"{m}_only": [m] for m in self.opts.modalities}}
        for name, mods in subsets.items():
            emb = {m: self.t[emb_key(m)][idx] if m in mods else None for m in self.opts.modalities}
            if emb.get("text") is not None:
                emb["text"] = pseudo_text(emb["text"], self.opts.text_noise_std, g)
            _, s = w_loss(self.net(emb, batch=len(idx)), self.t["w"][idx], center=self.net.w_mean)
            out[f"val_{name}_l1"] = round(s["l1"], 5)
            out[f"val_{name}_cos"] = round(s["cos"], 5)
        return out

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{stats['loss']:.4f}"}

    def sync_buffers(self) -> None:
        """Average BatchNorm statistics over the ranks (collective; once per step)."""
        if self.env.world_size > 1 and self._synced_at != self.step:
            self._synced_at = self.step
            import torch.distributed as dist

            for b in self.net.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b /= self.env.world_size

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        self.sync_buffers()
        tensors = ckpt.module_tensors("net", self.net)
        t, m = ckpt.flatten_optimizer(self.opt, "opt")
        tensors.update(t)
        tensors.update({f"rng.{k}": v for k, v in ckpt.rng_state_tensors(self.compute.device).items()})
        return tensors, {"train": self.opts.to_dict(), "optim": m, "elapsed": self.elapsed,
                         "order": [self.order.epoch, self.order.cursor]}

    def load_state(self, tensors, meta) -> None:
        ckpt.load_module_tensors("net", self.net, tensors)
        ckpt.unflatten_optimizer(self.opt, "opt", tensors, meta["optim"])
        self.step, self.elapsed = int(meta["step"]), float(meta["elapsed"])
        self.order.epoch, self.order.cursor = (int(v) for v in meta["order"])
        ckpt.set_rng_state_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}, self.compute.device)


def export(tr: MappingTrainer, path: Path, val: dict | None = None) -> None:
    from ..models.registry import save_module

    data_meta = {}
    mp = Path(tr.opts.data) / "meta.json"
    if mp.exists():
        data_meta = json.loads(mp.read_text())
    save_module(tr.net, path, half=True, extra={
        "text_noise_std": tr.opts.text_noise_std,
        "training": {"steps": tr.step, "minutes": round(tr.elapsed / 60, 2), "data": tr.opts.data,
                     "samples": len(tr.t["w"]), "truncation": data_meta.get("truncation"),
                     "options": {k: v for k, v in tr.opts.to_dict().items() if k not in ("out", "resume", "threads")}},
        "val": val or {}})


def train_mapping(opts: MappingTrainOptions, data: dict | None = None, export_to: str | None = None) -> MappingTrainer:
    """Run (or resume) a MappingNet training; under torchrun each process calls this, rank 0 writes."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    env = ckpt.init_distributed(opts.device)
    try:
        trainer = _train_mapping(opts, data, export_to, env)
        if env.owns_group:  # every rank done (rank 0 exports last) before the group is torn down:
            import torch.distributed as dist  # a rank leaving gloo while its peer still talks aborts

            dist.barrier()
        return trainer
    finally:
        if env.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train_mapping(opts, data, export_to, env) -> MappingTrainer:
    run = Path(opts.out)
    if env.is_main:
        check_writable_dir(run)
    found, opts = ckpt.find_resume(run, TRAIN_KIND, opts, opts.resume)
    tr = MappingTrainer(opts, data, env)
    if found:
        tr.load_state(found[1], found[2])
        if env.is_main:
            print(f"resuming {run} from step {tr.step}", file=sys.stderr)
    if env.is_main:
        write_text_atomic(run / "options.json", json.dumps(opts.to_dict(), indent=2) + "\n")

    def validate(trainer: MappingTrainer, why: str) -> None:  # before each checkpoint, on every rank
        trainer.sync_buffers()  # collective
        if env.is_main:
            trainer.last_val = trainer.validate()
            with open(run / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": trainer.step, **trainer.stats, **trainer.last_val}) + "\n")

    loop = ckpt.LoopOptions(steps=opts.steps, minutes=opts.minutes, ckpt_minutes=opts.ckpt_minutes, log_every=0)
    finished = ckpt.run_loop(tr, loop, run, TRAIN_KIND, desc="mapping-net", on_checkpoint=validate)
    if env.is_main and finished:
        export(tr, Path(export_to) if export_to else run / "mapping_net.safetensors", tr.last_val)
        print(json.dumps({"step": tr.step, **tr.last_val}), file=sys.stderr)
    elif env.is_main:
        print(f"stopped at step {tr.step}; checkpoint written, continue with --resume", file=sys.stderr)
    return tr
