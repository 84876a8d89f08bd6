"""Training-state checkpoints shared by every trainer.

A training checkpoint is ``RUN/checkpoints/ckpt-<step>.safetensors`` + ``.json``:
model weights, optimiser state flattened into tensors (no pickle), the RNG
states of Python/NumPy/torch as tensors, and a SHA-256 over all tensors so a
torn or corrupted file is detected. The newest ``keep`` checkpoints are kept;
resuming takes the newest one that verifies and warns about damaged ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from ..common.checkpoint import load_checkpoint, save_checkpoint
from ..common.errors import UserError
from ..common.seeding import numpy_rng

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.json$")


def warn(msg: str) -> None:
    print(f"mm2latent: warning: {msg}", file=sys.stderr, flush=True)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state -> (tensors named ``prefix.state.<pid>.<key>``, JSON-able meta)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    pat = re.compile(rf"^{re.escape(prefix)}\.state\.(\d+)\.(.+)$")
    for k, v in tensors.items():
        m = pat.match(k)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = v
    for k, v in meta.get("scalars", {}).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state_tensors(device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """This process's Python, NumPy and torch RNG states as fixed-shape tensors."""
    device = torch.device(device)
    py = random.getstate()
    npst = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(list(py[1]), dtype=torch.int64),
        "python_gauss": torch.tensor([0.0, 0.0] if py[2] is None else [1.0, py[2]], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(npst[1], dtype=np.int64)),
        "numpy_extra": torch.tensor([npst[2], npst[3], npst[4]], dtype=torch.float64),
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state_tensors(st: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
    device = torch.device(device)
    torch.set_rng_state(st["torch"].cpu().to(torch.uint8))
    has_g, g = st["python_gauss"].tolist()
    random.setstate((3, tuple(int(v) for v in st["python"].tolist()), g if has_g else None))
    pos, has_gauss, gauss = st["numpy_extra"].tolist()
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"].cpu().to(torch.uint8), device)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint stems, newest first."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / p.name[:-5]) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [stem for _, stem in sorted(found, reverse=True)]


class OtherRun(UserError):
    """A readable checkpoint of another kind of run: a wrong run directory, not a damaged file."""


def read_checkpoint(stem: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Load and verify one training checkpoint (checksum over all tensors)."""
    tensors, meta = load_checkpoint(stem)
    if meta.get("kind") != kind:
        raise OtherRun(f"{Path(stem).parent.parent} holds a {meta.get('kind', 'unknown')!r} run, not {kind!r}")
    want = meta.get("tensors_sha256")
    if want is None or tensor_digest(tensors) != want:
        raise UserError(f"checkpoint {stem} failed its checksum")
    return tensors, meta


def remove_torn_writes(run_dir: Path) -> int:
    """Delete the temporary files (``.NAME.*.tmp``) that a process killed mid-write left in
    RUN/checkpoints; the finished checkpoints are never touched. Returns how many went."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return 0
    torn = [p for p in d.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
    for p in torn:
        p.unlink(missing_ok=True)
    return len(torn)


def latest_good_checkpoint(run_dir: Path, kind: str, warn_damaged: bool = True, clean: bool = False):
    """Newest readable checkpoint as ``(stem, tensors, meta)``, or None; damaged newer ones are skipped.
    ``clean`` (only for the process that resumes the run, never for a reader beside a live one)
    first removes the half-written temporaries a killed run left."""
    if clean:
        remove_torn_writes(run_dir)
    stems = list_checkpoints(run_dir)
    for stem in stems:
        try:
            tensors, meta = read_checkpoint(stem, kind)
        except OtherRun:
            raise
        except UserError as e:
            if warn_damaged:
                warn(f"{e}; falling back to the previous checkpoint")
            continue
        return stem, tensors, meta
    if stems:
        raise UserError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'} (all {len(stems)} are damaged)")
    return None


def write_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, kind: str,
                     keep: int = 2) -> Path:
    """Write ``ckpt-<step>`` atomically with its checksum; drop all but the newest ``keep``."""
    meta = dict(meta, kind=kind, step=int(step), tensors_sha256=tensor_digest(tensors))
    stem = Path(run_dir) / "checkpoints" / f"ckpt-{int(step):09d}"
    save_checkpoint(stem, tensors, meta)
    for old in list_checkpoints(run_dir)[keep:]:
        for suffix in (".safetensors", ".json"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return stem


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module_tensors(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    sd = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(sd, strict=True)


def pick_device(device: str = "auto", index: int = 0) -> torch.device:
    """``--device`` (auto, cpu or cuda) as a torch device; auto takes the GPU when there is one."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA device is available")
    if not use_cuda:
        return torch.device("cpu")
    dev = torch.device(f"cuda:{index}")
    torch.cuda.set_device(dev)
    return dev


@dataclasses.dataclass
class DistEnv:
    """This process's place under torchrun (rank 0 of 1 when run alone) and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment; start gloo (CPU) or NCCL (GPU) when WORLD_SIZE > 1."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistEnv(rank, world, local, dev, owns)


#: ``--amp`` -> the autocast dtype (None: full float32)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Compute:
    """Where a trainer computes (``--device``) and in what precision (``--amp``): the device,
    autocast for the forward passes, and a gradient scaler for fp16 (bf16 and float32 need none).
    Every trainer goes through one of these, so a run moves between CPU and GPU by its options."""

    def __init__(self, device: str = "auto", amp: str = "none", index: int = 0):
        if amp not in AMP_DTYPES:
            raise UserError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        self.device = pick_device(device, index)
        self.amp_dtype = AMP_DTYPES[amp]
        if amp == "fp16" and self.device.type != "cuda":
            raise UserError("--amp fp16 needs --device cuda (use bf16 on the CPU)")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def to(self, x):
        """A tensor, or the tensors of a dict, on the device (other values as they are)."""
        if isinstance(x, dict):
            return {k: self.to(v) for k, v in x.items()}
        return x.to(self.device, non_blocking=True) if isinstance(x, torch.Tensor) else x

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip: float | None = None,
             params=None, before_step=None) -> float | None:
        """Backward (scaled under fp16), optional gradient-norm clipping of ``params`` (default: the
        optimizer's), ``before_step()`` (e.g. an all-reduce), optimizer step; returns the norm."""
        self.scaler.scale(loss).backward()
        norm = None
        if clip is not None or before_step is not None:
            self.scaler.unscale_(optimizer)
        if before_step is not None:
            before_step()
        if clip is not None:
            ps = params if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
            norm = float(torch.nn.utils.clip_grad_norm_(ps, clip))
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm


class DataOrder:
    """The sample order of every trainer: a fresh seeded permutation per epoch.

    The position (epoch, cursor) fully determines what comes next, so it is all a checkpoint
    needs to store. Every rank computes the same global batch and takes its own slice.
    ``stream`` keys the permutations apart from the trainer's other random streams (the
    perception trainers use their own, so that their runs resume on the order they started with).
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, cursor: int = 0, stream: int = 0x5EED):
        self.n, self.seed, self.epoch, self.cursor, self.stream = n, seed, epoch, cursor, stream
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm = numpy_rng(self.seed, self.stream, epoch).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            perm = self._perm_for(self.epoch)
            k = min(count - len(out), self.n - self.cursor)
            out.extend(int(i) for i in perm[self.cursor:self.cursor + k])
            self.cursor += k
            if self.cursor >= self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
        return out


class OptionsDict:
    """to_dict / from_dict for trainer option dataclasses (unknown stored keys are ignored)."""

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def find_resume(run_dir: Path, kind: str, opts, resume: bool):
    """(checkpoint or None, the options to run with). A run directory that already holds a run needs
    ``resume``; resuming takes the stored options except the fields in ``type(opts).RESUMABLE``."""
    found = latest_good_checkpoint(Path(run_dir), kind, clean=True)
    if found and not resume:
        raise UserError(f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out")
    if found:
        saved = type(opts).from_dict(found[2]["train"])
        for name in type(opts).RESUMABLE:
            setattr(saved, name, getattr(opts, name))
        opts = saved
    return found, opts


def write_sample_grid(trainer, run_dir: Path, name: str = "step-{step:07d}.png") -> Path:
    """RUN/samples/<name>: ``trainer.sample_grid()`` at the trainer's current step."""
    from ..common.imageio import save_image

    path = run_dir / "samples" / name.format(step=trainer.step)
    path.parent.mkdir(exist_ok=True)
    save_image(path, trainer.sample_grid())
    return path


@dataclasses.dataclass
class LoopOptions:
    """The knobs :func:`run_loop` reads from its ``opts`` (any object; a missing field takes the
    default here), for a trainer whose own options name them otherwise."""

    steps: int | None = None  # stop at this step (counted across resumes)
    minutes: float | None = None  # stop once ``trainer.elapsed`` reaches this many minutes
    ckpt_minutes: float | None = None  # checkpoint every M minutes of wall time; 0 / None: not by time
    ckpt_every: int = 0  # checkpoint every N steps; 0: not by steps
    sample_every: int = 0  # sample grid every N steps; 0: never
    log_every: int = 20  # a RUN/log.jsonl line every N steps and at step 1; 0: none


def run_loop(trainer, opts, run_dir: Path, kind: str, export=None, desc: str = "train", *, on_checkpoint=None,
             sample_name: str = "step-{step:07d}.png", count_checkpoint_time: bool = False,
             quiet: bool = False) -> bool:
    """The one training loop of every trainer: a trainer is a model + data + loss behind the
    protocol below, and this function does the rest.

    Steps until ``opts.steps`` / ``opts.minutes`` (see :class:`LoopOptions`), logs to
    RUN/log.jsonl, writes sample grids to RUN/samples, checkpoints (:func:`write_checkpoint`, then
    ``export(trainer, run_dir)``) every ``opts.ckpt_minutes`` / ``opts.ckpt_every`` and at the end.
    SIGTERM / SIGINT finish the current step, checkpoint and return. A periodic checkpoint that
    cannot be written (disk full) is warned about and the previous one kept; the final one raises.
    Returns True when the budget was reached, False when a signal stopped the run.

    ``trainer`` provides:

    * ``step`` (int) and ``elapsed`` (training seconds; run_loop adds each step's wall time),
    * ``train_step() -> stats`` (one optimisation step; advances ``step``),
    * ``state() -> (tensors, meta)`` (everything an exact resume needs; called on every rank),
    * ``sample_grid()`` (an image, when ``opts.sample_every``),

    and optionally ``env`` (a :class:`DistEnv`: under torchrun every rank runs the loop,
    the ranks agree on when to checkpoint and stop, and rank 0 alone writes files and shows the
    bar), ``images_per_step`` (adds img/s to the bar and the log), ``postfix(stats) -> dict`` (the
    bar's fields; default every stat) and ``log_extra() -> dict`` (more fields for each log line).

    ``on_checkpoint(trainer, why)`` runs on every rank before each checkpoint, ``why`` being
    ``"periodic"``, ``"end"`` (budget reached) or ``"stop"`` (signal): validation goes there.
    ``sample_name`` names the grids; ``count_checkpoint_time`` counts checkpoint (and validation)
    time in ``trainer.elapsed``, so a minutes budget is wall-clock; ``quiet`` hides the bar.
    """
    import json
    import signal
    import threading
    import time

    from ..common.progress import progress

    o = LoopOptions(**{f.name: getattr(opts, f.name, f.default) for f in dataclasses.fields(LoopOptions)})
    env = getattr(trainer, "env", None)
    world = env.world_size if env is not None else 1
    main = env is None or env.is_main
    per_step = getattr(trainer, "images_per_step", None)

    def agreed(*flags: bool) -> list[bool]:
        """Every rank acts on the same step: a flag raised on any rank holds on all."""
        if world == 1:
            return [bool(f) for f in flags]
        import torch.distributed as dist

        t = torch.tensor([float(f) for f in flags]).to(env.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.cpu().tolist()]

    def done() -> bool:
        return bool((o.steps and trainer.step >= o.steps) or (o.minutes and trainer.elapsed >= o.minutes * 60))

    def save(why: str) -> None:
        if on_checkpoint is not None:
            on_checkpoint(trainer, why)
        tensors, meta = trainer.state()
        if not main:
            return
        try:
            write_checkpoint(run_dir, trainer.step, tensors, meta, kind)
            if export is not None:
                export(trainer, run_dir)
        except (OSError, UserError) as e:
            msg = f"could not write a checkpoint at step {trainer.step} ({e}); the previous checkpoint is kept"
            if why != "periodic":
                raise UserError(msg) from None
            warn(msg)

    def log(stats: dict, rate: float) -> None:
        rec = {"step": trainer.step, "elapsed": round(trainer.elapsed, 1), **stats}
        if per_step:
            rec["img_per_s"] = round(rate * per_step, 2)
        if hasattr(trainer, "log_extra"):
            rec.update(trainer.log_extra())
        with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    stop = {"flag": False}
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda *_: stop.update(flag=True))
    bar = progress(total=o.steps, initial=min(trainer.step, o.steps) if o.steps else trainer.step, desc=desc,
                   unit="step", disable=True if quiet or not main else None)
    t_last = t_ckpt = t_window = time.monotonic()
    n_window = 0
    try:
        end = agreed(done() or stop["flag"])[0]
        while not end:
            stats = trainer.train_step()
            now = time.monotonic()
            trainer.elapsed += now - t_last
            t_last = now
            n_window += 1
            rate = n_window / max(now - t_window, 1e-9)  # steps per second over the last half minute
            if now - t_window > 30:
                t_window, n_window = now, 0
            if main:
                post = trainer.postfix(stats) if hasattr(trainer, "postfix") else {k: f"{v:.3f}" for k, v in stats.items()}
                if per_step:
                    post["img/s"] = f"{rate * per_step:.1f}"
                if o.minutes:
                    post["min"] = f"{trainer.elapsed / 60:.1f}/{o.minutes:g}"
                bar.update(1)
                bar.set_postfix(post, refresh=False)
                if o.log_every and (trainer.step % o.log_every == 0 or trainer.step == 1):
                    log(stats, rate)
                if o.sample_every and trainer.step % o.sample_every == 0:
                    write_sample_grid(trainer, run_dir, sample_name)
            due, end = agreed(bool(o.ckpt_minutes and now - t_ckpt >= o.ckpt_minutes * 60)
                              or bool(o.ckpt_every and trainer.step % o.ckpt_every == 0),
                              done() or stop["flag"])
            if due and not end:  # the final checkpoint follows anyway
                save("periodic")
                t_ckpt = time.monotonic()
                if not count_checkpoint_time:
                    t_last = t_ckpt
    finally:
        bar.close()
        for sig, h in old.items():
            signal.signal(sig, h)
    stopped = agreed(not done())[0]
    save("stop" if stopped else "end")
    return not stopped
