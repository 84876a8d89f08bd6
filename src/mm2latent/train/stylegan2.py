"""StyleGAN2 training: single process on CPU, or ``torchrun`` with gloo/NCCL.

The recipe is the official one (Karras et al. 2020, stylegan2-ada-pytorch):
non-saturating logistic loss, lazy R1 on reals every ``r1_every`` steps,
optional lazy path-length regularisation, style-mixing regularisation, an
EMA generator, and Adam with betas (0, 0.99) whose lr/betas are adjusted
for the lazy regularisation interval. Optional DiffAugment (translation,
colour, cutout) helps on small data.

Distributed: every rank builds identical models (same init seed), draws its
own slice of each global batch and its own latents (per-rank RNG seed);
gradients are averaged with one flat all-reduce per phase, so parameters
stay identical on all ranks without DDP wrappers.

Checkpoints are safetensors + JSON (no pickle): models, EMA, both Adam
states flattened to tensors, every rank's Python/NumPy/torch RNG states,
the step and the data position. They are written atomically to
``RUN_DIR/checkpoints/ckpt-<step>``; the previous one is kept, and a
checksum lets ``--resume`` detect a damaged latest checkpoint and fall back
to the previous one. Resuming continues bit-exactly. The loop (checkpoint
timing, SIGTERM / Ctrl-C, ranks agreeing on when to stop) is
:func:`mm2latent.train.state.run_loop`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.fileio import check_writable_dir, write_text_atomic
from ..common.imageio import make_grid
from ..models.stylegan2 import Discriminator, Generator, StyleGAN2Config, load_state_checked, save_generator
from . import state as ckpt
from .state import DataOrder, DistEnv, init_distributed
from .state import warn as _warn

TRAIN_KIND = "stylegan2-train"
SAMPLE_NAME = "step-{step:09d}.png"  # RUN/samples/
AUGMENTS = ("translation", "color", "cutout")


# =========================================================================== data


class ImageSource(Protocol):
    """What the trainer needs from data: random access to images by index."""

    def __len__(self) -> int: ...

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """Float (B, 3, R, R) in [-1, 1]."""
        ...


class TensorSource:
    """In-memory images (N, 3, R, R) in [-1, 1] (API use and tests)."""

    def __init__(self, images: torch.Tensor):
        self.data = images.float()

    def __len__(self) -> int:
        return self.data.shape[0]

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        return self.data[list(indices)]


def _u8_to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0)


class PngFolderSource:
    """A directory of PNG/JPEG images, centre-cropped and resized to ``size``.

    Decoded images are cached as uint8 (128x128: 48 KiB each).
    """

    EXTS = (".png", ".jpg", ".jpeg")

    def __init__(self, directory: str | os.PathLike, size: int):
        d = Path(directory)
        if not d.is_dir():
            raise UserError(f"training data directory not found: {d}")
        self.files = sorted(p for p in d.iterdir() if p.suffix.lower() in self.EXTS and p.is_file())
        if not self.files:
            raise UserError(f"no .png/.jpg images in {d}")
        self.size = size
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> torch.Tensor:
        from ..common.imageio import load_image, resize_image

        t = self._cache.get(i)
        if t is None:
            arr = resize_image(load_image(self.files[i]), self.size)
            t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
            self._cache[i] = t
        return t

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        return _u8_to_float(torch.stack([self._load(i) for i in indices]))


class NpyImagesSource:
    """A pre-rendered image array ``DIR/images.npy`` (N, H, W, 3) uint8, memory-mapped.

    This is the layout of ``mm2latent world cache`` output, read without
    importing the world code.
    """

    def __init__(self, directory: str | os.PathLike, size: int):
        path = Path(directory) / "images.npy"
        try:
            self.arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        if self.arr.ndim != 4 or self.arr.shape[3] != 3 or self.arr.dtype != np.uint8:
            raise UserError(f"{path} must hold uint8 images (N, H, W, 3), got {self.arr.dtype} {self.arr.shape}")
        if self.arr.shape[1:3] != (size, size):
            raise UserError(f"{path} holds {self.arr.shape[2]}x{self.arr.shape[1]} images but --size is {size}")

    def __len__(self) -> int:
        return int(self.arr.shape[0])

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        batch = np.stack([np.asarray(self.arr[i]) for i in indices])
        return _u8_to_float(torch.from_numpy(batch).permute(0, 3, 1, 2))


class WorldSource:
    """The procedural Face World's train split (imported lazily), quantised to uint8 and cached.

    Quantising every image (cached or not) keeps the data identical however
    often it is rendered, which exact resume relies on. Rendering costs tens
    of milliseconds per image; for long runs pre-render with
    ``mm2latent world cache`` and pass that directory as ``--data``.
    """

    def __init__(self, size: int, length: int, cache_items: int = 20000):
        try:
            from ..world.dataset import FaceWorldDataset  # noqa: PLC0415 - optional, written elsewhere
        except ImportError as e:
            raise UserError(f"the Face World is not available ({e}); use --data DIR_OF_PNGS") from None
        try:
            self.ds = FaceWorldDataset(size=size, length=length, split="train", with_captions=False)
        except TypeError:  # older signature without with_captions
            self.ds = FaceWorldDataset(size=size, length=length, split="train")
        self.cache_items = cache_items
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def _load(self, i: int) -> torch.Tensor:
        t = self._cache.get(i)
        if t is None:
            img = self.ds[i]["image"]
            t = img.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
            if len(self._cache) < self.cache_items:
                self._cache[i] = t
        return t

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        return _u8_to_float(torch.stack([self._load(i) for i in indices]))


def open_source(spec: str, size: int, world_length: int = 100_000) -> ImageSource:
    """``world`` renders the Face World; a directory with ``images.npy`` is a world cache;
    any other directory is read as PNG/JPEG files."""
    if spec == "world":
        return WorldSource(size, world_length)
    if (Path(spec) / "images.npy").is_file():
        return NpyImagesSource(spec, size)
    return PngFolderSource(spec, size)


# =========================================================================== DiffAugment


def diff_augment(x: torch.Tensor, policy: Sequence[str]) -> torch.Tensor:
    """Differentiable augmentation (Zhao et al. 2020), applied to reals and fakes alike."""
    for p in policy:
        x = _AUG[p](x)
    return x


def _aug_color(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    r = lambda: torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype)  # noqa: E731
    x = x + (r() - 0.5)  # brightness
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (r() * 2) + m  # saturation
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (r() + 0.5) + m  # contrast


def _aug_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    b, c, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    gy = (torch.arange(h, device=x.device)[None, :, None] + ty + 1).clamp(0, h + 1)
    gx = (torch.arange(w, device=x.device)[None, None, :] + tx + 1).clamp(0, w + 1)
    xp = F.pad(x, [1, 1, 1, 1])  # out-of-range reads land on the zero border
    bi = torch.arange(b, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[bi, gy, gx].permute(0, 3, 1, 2)


def _aug_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    b, c, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    yy = torch.arange(h, device=x.device)[None, :, None] - oy + ch // 2
    xx = torch.arange(w, device=x.device)[None, None, :] - ox + cw // 2
    inside = (yy >= 0) & (yy < ch) & (xx >= 0) & (xx < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_AUG: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "translation": _aug_translation, "color": _aug_color, "cutout": _aug_cutout,
}


# =========================================================================== options


@dataclass
class TrainOptions(ckpt.OptionsDict):
    """Everything that defines a run (stored in every checkpoint)."""

    out: str  # run directory
    #: 'world' (render the Face World train split), a world cache directory (images.npy from
    #: 'mm2latent world cache'), or a directory of PNG/JPEG images
    data: str = "world"
    size: int = 128  # image resolution, a power of two
    batch: int = 16  # global batch, split across ranks
    kimg: float = 1000.0  # train until this many thousand images
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8  # mapping network depth
    channel_base: int = 16384  # width rule min(channel_base / resolution, channel_max)
    channel_max: int = 512
    channels: list[int] | None = None  # widths for 4, 8, ..., size (overrides base/max)
    lr: float = 0.0025
    r1_gamma: float | None = None  # None: 0.0002 * size^2 / batch (the official heuristic)
    r1_every: int = 16
    pl_weight: float = 0.0  # 2.0 in the paper; off by default to save CPU time
    pl_every: int = 4
    ema_kimg: float | None = None  # None: batch * 10 / 32
    ema_rampup: float | None = 0.05
    mixing_prob: float = 0.9
    augment: str = ""  # comma list from translation,color,cutout
    seed: int = 0
    world_length: int = 100_000  # Face World training-set size
    ckpt_every: int = 0  # steps; 0 = only by time and at the end
    ckpt_minutes: float = 10.0  # checkpoint interval
    sample_every: int = 500  # steps; 0 = only at the end
    minutes: float | None = None  # wall-clock budget for this invocation (continue with --resume)
    resume: bool = False  # continue the run in --out from its latest checkpoint
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch CPU threads per process
    grid: int = 16  # faces in each sample grid

    #: fields that may differ when a run is resumed
    RESUMABLE = ("out", "kimg", "ckpt_every", "ckpt_minutes", "sample_every", "minutes", "resume", "device",
                 "threads", "grid")

    def validate(self) -> None:
        if self.batch < 1:
            raise UserError("--batch must be positive")
        if self.kimg <= 0:
            raise UserError("--kimg must be positive")
        if self.r1_every < 1 or self.pl_every < 1:
            raise UserError("regularisation intervals must be >= 1")
        bad = [a for a in self.augment_policy if a not in AUGMENTS]
        if bad:
            raise UserError(f"unknown augmentation {bad[0]!r}; choose from {', '.join(AUGMENTS)}")
        if not 0 <= self.mixing_prob <= 1:
            raise UserError("--mixing-prob must be in [0, 1]")
        self.model_config()

    @property
    def augment_policy(self) -> list[str]:
        return [a.strip() for a in self.augment.split(",") if a.strip()]

    def model_config(self) -> StyleGAN2Config:
        channels = None
        if self.channels is not None:
            res = [2**i for i in range(2, int(math.log2(max(self.size, 4))) + 1)]
            if len(self.channels) != len(res):
                raise UserError(f"--channels needs {len(res)} widths (for {', '.join(map(str, res))}), "
                                f"got {len(self.channels)}")
            channels = dict(zip(res, self.channels))
        return StyleGAN2Config(resolution=self.size, z_dim=self.z_dim, w_dim=self.w_dim,
                               mapping_layers=self.mapping_layers, channel_base=self.channel_base,
                               channel_max=self.channel_max, channels=channels)

    @property
    def gamma(self) -> float:
        return self.r1_gamma if self.r1_gamma is not None else 0.0002 * self.size**2 / self.batch

    @property
    def total_steps(self) -> int:
        return math.ceil(self.kimg * 1000 / self.batch)


def _rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, rank, 0xC0FFEE]).generate_state(1)[0])


# =========================================================================== trainer


class StyleGAN2Trainer:
    """Holds models, optimisers and counters; :meth:`train_step` runs one iteration."""

    def __init__(self, opts: TrainOptions, env: DistEnv | None = None, source: ImageSource | None = None):
        opts.validate()
        self.opts = opts
        self.env = env or DistEnv()
        if opts.batch % self.env.world_size:
            raise UserError(f"--batch {opts.batch} is not divisible by the {self.env.world_size} processes")
        self.local_batch = opts.batch // self.env.world_size
        self.device = self.env.device
        self.source = source if source is not None else open_source(opts.data, opts.size, opts.world_length)
        if len(self.source) < 1:
            raise UserError("the training data is empty")
        self.cfg = opts.model_config()
        dev = self.device

        torch.manual_seed(opts.seed)  # identical initialisation on every rank
        self.G = Generator(self.cfg).to(dev).train()
        self.D = Discriminator(self.cfg).to(dev).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)

        def adam(params, interval: int | None):
            c = interval / (interval + 1) if interval else 1.0
            return torch.optim.Adam(params, lr=opts.lr * c, betas=(0.0**c, 0.99**c), eps=1e-8)

        self.optG = adam(self.G.parameters(), opts.pl_every if opts.pl_weight > 0 else None)
        self.optD = adam(self.D.parameters(), opts.r1_every)
        self.pl_mean = torch.zeros((), device=dev)
        self.step = 0
        self.elapsed = 0.0  # this invocation's seconds (``minutes`` is per invocation)
        self.images_per_step = opts.batch
        self.order = DataOrder(len(self.source), opts.seed)
        self.augment = opts.augment_policy
        self.stats: dict[str, float] = {}

        seed = _rank_seed(opts.seed, self.env.rank)  # per-rank latents, noise and augmentation
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # ------------------------------------------------------------------ helpers

    @property
    def nimg(self) -> int:
        return self.step * self.opts.batch

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {"G": f"{stats['loss_G']:.3f}", "D": f"{stats['loss_D']:.3f}", "kimg": f"{self.nimg / 1000:.1f}"}

    def log_extra(self) -> dict[str, float]:
        return {"kimg": self.nimg / 1000}

    def _all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.env.world_size > 1:
            dist.all_reduce(t)
            t /= self.env.world_size
        return t

    def _sync_grads(self, module: torch.nn.Module) -> None:
        """Average gradients over ranks (one flat all-reduce).

        Parameters without a gradient (e.g. D's output bias under R1) are left
        out, as in the official code, so Adam skips them exactly as it does in
        a single process; the graph, and so that set, is the same on every rank.
        """
        params = [p for p in module.parameters() if p.grad is not None]
        if self.env.world_size > 1 and params:
            flat = torch.cat([p.grad.flatten() for p in params])
            self._all_reduce_mean(flat)
            torch.nan_to_num(flat, nan=0.0, posinf=1e5, neginf=-1e5, out=flat)
            off = 0
            for p in params:
                p.grad.copy_(flat[off:off + p.numel()].view_as(p))
                off += p.numel()
        else:
            for p in params:
                torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.augment) if self.augment else x

    def _run_G(self, z: torch.Tensor):
        """Generator pass with style-mixing regularisation; returns image, w and the w+ used."""
        G = self.G
        w = G.mapping(z)
        ws = G.broadcast(w)
        if self.opts.mixing_prob > 0:
            cutoff = int(torch.randint(1, G.num_ws, ()).item())
            if torch.rand(()).item() < self.opts.mixing_prob:
                ws = G.mix(ws, G.broadcast(G.mapping(torch.randn_like(z))), cutoff)
        return G.synthesis(ws, noise_mode="random"), w, ws

    def _next_reals(self) -> torch.Tensor:
        idx = self.order.take(self.opts.batch)
        r = self.env.rank * self.local_batch
        return self.source.images(idx[r:r + self.local_batch]).to(self.device)

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, device=self.device)

    # ------------------------------------------------------------------ one iteration

    def train_step(self) -> dict[str, float]:
        opts, G, D = self.opts, self.G, self.D
        b = self.local_batch
        reals = self._next_reals()
        stats = {}

        # G main: non-saturating logistic loss
        G.requires_grad_(True)
        D.requires_grad_(False)
        img, w, _ = self._run_G(self._z(b))
        loss_G = F.softplus(-D(self._aug(img))).mean()
        self.optG.zero_grad(set_to_none=True)
        loss_G.backward()
        self._sync_grads(G)
        self.optG.step()
        stats["loss_G"] = loss_G.item()
        with torch.no_grad():  # track w_avg for truncation, identically on all ranks
            w_mean = self._all_reduce_mean(w.detach().mean(0))
            G.mapping.w_avg.copy_(w_mean.lerp(G.mapping.w_avg, self.cfg.w_avg_beta))

        # G reg: lazy path-length regularisation
        if opts.pl_weight > 0 and self.step % opts.pl_every == 0:
            pb = max(b // 2, 1)
            img, _, ws = self._run_G(self._z(pb))
            noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
            (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
            lengths = grads.square().sum(2).mean(1).sqrt()
            batch_mean = self._all_reduce_mean(lengths.mean().detach().clone())
            pl_mean = self.pl_mean.lerp(batch_mean, 0.01)
            self.pl_mean.copy_(pl_mean)
            loss_pl = (lengths - pl_mean).square().mean() * opts.pl_weight * opts.pl_every
            self.optG.zero_grad(set_to_none=True)
            loss_pl.backward()
            self._sync_grads(G)
            self.optG.step()
            stats["pl"] = loss_pl.item()

        # D main
        G.requires_grad_(False)
        D.requires_grad_(True)
        with torch.no_grad():
            fake, _, _ = self._run_G(self._z(b))
        loss_D = F.softplus(D(self._aug(fake))).mean() + F.softplus(-D(self._aug(reals))).mean()
        self.optD.zero_grad(set_to_none=True)
        loss_D.backward()
        self._sync_grads(D)
        self.optD.step()
        stats["loss_D"] = loss_D.item()

        # D reg: lazy R1 on reals
        if self.step % opts.r1_every == 0 and self.opts.gamma > 0:
            x = reals.detach().requires_grad_(True)
            logits = D(self._aug(x))
            (grads,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
            r1 = grads.square().sum(dim=(1, 2, 3))
            loss_r1 = (r1 * (opts.gamma / 2)).mean() * opts.r1_every
            self.optD.zero_grad(set_to_none=True)
            loss_r1.backward()
            self._sync_grads(D)
            self.optD.step()
            stats["r1"] = r1.mean().item()

        # EMA generator (half-life ema_kimg, ramped up early in training)
        with torch.no_grad():
            ema_nimg = (opts.ema_kimg if opts.ema_kimg is not None else opts.batch * 10 / 32) * 1000
            if opts.ema_rampup is not None:
                ema_nimg = min(ema_nimg, self.nimg * opts.ema_rampup)
            beta = 0.5 ** (opts.batch / max(ema_nimg, 1e-8))
            for pe, p in zip(self.G_ema.parameters(), G.parameters()):
                pe.copy_(p.detach().lerp(pe, beta))
            for be, bf in zip(self.G_ema.buffers(), G.buffers()):
                be.copy_(bf)
        self.step += 1
        self.stats = stats
        return stats

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue exactly (collective: call on all ranks)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, m in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            for k, v in m.state_dict().items():
                tensors[f"{name}.{k}"] = v
        tg, meta_g = ckpt.flatten_optimizer(self.optG, "optG")
        td, meta_d = ckpt.flatten_optimizer(self.optD, "optD")
        tensors.update(tg)
        tensors.update(td)
        tensors["pl_mean"] = self.pl_mean
        mine = ckpt.rng_state_tensors(self.device)
        for k, v in mine.items():
            if self.env.world_size > 1:
                backend_dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
                parts = [torch.empty_like(v, device=backend_dev) for _ in range(self.env.world_size)]
                dist.all_gather(parts, v.to(backend_dev))
            else:
                parts = [v]
            for r, t in enumerate(parts):
                tensors[f"rng.{r}.{k}"] = t.cpu()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format_version": 1,
            "model": self.cfg.to_dict(),
            "train": self.opts.to_dict(),
            "step": self.step,
            "nimg": self.nimg,
            "data": {"epoch": self.order.epoch, "cursor": self.order.cursor, "n": self.order.n},
            "optG": meta_g,
            "optD": meta_d,
            "world_size": self.env.world_size,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, what: str = "checkpoint") -> None:
        if meta.get("world_size") != self.env.world_size:
            raise UserError(f"{what} was written by {meta.get('world_size')} processes; resume with the same "
                            f"number (now {self.env.world_size})")
        if meta["data"]["n"] != len(self.source):
            raise UserError(f"{what} was trained on {meta['data']['n']} images but the data now has "
                            f"{len(self.source)}")
        for name, m in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            sub = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            load_state_checked(m, {k: v.to(self.device) for k, v in sub.items()}, f"{what} ({name})")
        ckpt.unflatten_optimizer(self.optG, "optG", tensors, meta["optG"])
        ckpt.unflatten_optimizer(self.optD, "optD", tensors, meta["optD"])
        self.pl_mean.copy_(tensors["pl_mean"])
        self.step = int(meta["step"])
        self.order.epoch, self.order.cursor = int(meta["data"]["epoch"]), int(meta["data"]["cursor"])
        prefix = f"rng.{self.env.rank}."
        ckpt.set_rng_state_tensors({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                   self.device)

    @torch.no_grad()
    def sample_grid(self, n: int | None = None, psi: float = 1.0) -> np.ndarray:
        """A fixed-latent grid from G_ema (own RNG, const noise: training RNG untouched)."""
        n = n or self.opts.grid
        g = torch.Generator().manual_seed(self.opts.seed + 12345)
        z = torch.randn(n, self.cfg.z_dim, generator=g).to(self.device)
        imgs = torch.cat([self.G_ema(z[i:i + 16], truncation_psi=psi, noise_mode="const") for i in range(0, n, 16)])
        u8 = imgs.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return make_grid(u8, int(math.ceil(math.sqrt(n))))


# =========================================================================== run


def export_generator(trainer: StyleGAN2Trainer, run_dir: Path) -> None:
    """RUN/generator.safetensors: G_ema, written with every checkpoint."""
    save_generator(run_dir / "generator", trainer.G_ema,
                   extra={"training": {"step": trainer.step, "kimg": trainer.nimg / 1000, "run": str(run_dir)}})


def train_stylegan2(opts: TrainOptions, source: ImageSource | None = None,
                    env: DistEnv | None = None) -> StyleGAN2Trainer:
    """Run (or resume) a training run; returns the trainer with its final models.

    Under torchrun each process calls this; rank 0 writes files.
    """
    if opts.threads:
        torch.set_num_threads(opts.threads)
    own_env = env is None
    env = env or init_distributed(opts.device)
    try:
        trainer = _train(opts, source, env)
        if own_env and env.owns_group and dist.is_initialized():
            dist.barrier()  # all ranks done before the group is torn down (see train.mapping.train_mapping)
        return trainer
    finally:
        if own_env and env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(opts: TrainOptions, source: ImageSource | None, env: DistEnv) -> StyleGAN2Trainer:
    run_dir = Path(opts.out)
    if env.is_main:
        check_writable_dir(run_dir)
    found = (ckpt.latest_good_checkpoint(run_dir, TRAIN_KIND, warn_damaged=env.is_main, clean=env.is_main)
             if run_dir.is_dir() else None)
    if found and not opts.resume:
        raise UserError(f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out")
    if opts.resume and found:
        stem, tensors, meta = found
        saved = TrainOptions.from_dict(meta["train"])
        for name in TrainOptions.RESUMABLE:
            setattr(saved, name, getattr(opts, name))
        opts = saved
    elif opts.resume and env.is_main:
        _warn(f"no checkpoint in {run_dir}; starting a new run")

    trainer = StyleGAN2Trainer(opts, env, source)
    if opts.resume and found:
        trainer.load_state(tensors, meta, f"checkpoint {stem}")
        if env.is_main:
            print(f"resuming {run_dir} from step {trainer.step} ({trainer.nimg / 1000:.1f} kimg)", file=sys.stderr)
    if env.is_main:
        write_text_atomic(run_dir / "options.json", json.dumps(opts.to_dict(), indent=2) + "\n")

    total = opts.total_steps
    loop = ckpt.LoopOptions(steps=total, minutes=opts.minutes, ckpt_minutes=opts.ckpt_minutes,
                            ckpt_every=opts.ckpt_every, sample_every=opts.sample_every)
    ckpt.run_loop(trainer, loop, run_dir, TRAIN_KIND, export_generator, desc="stylegan2",
                  sample_name=SAMPLE_NAME, count_checkpoint_time=True)
    if env.is_main:
        if not (opts.sample_every and trainer.step % opts.sample_every == 0):  # else the loop just drew it
            ckpt.write_sample_grid(trainer, run_dir, SAMPLE_NAME)
        print(f"step {trainer.step}/{total} ({trainer.nimg / 1000:.1f} kimg); generator: {run_dir / 'generator'}"
              f".safetensors", file=sys.stderr)
    return trainer
