"""Contrastive training of the world CLIP/FaRL model (symmetric InfoNCE).

Pairs are (world render, one of its captions from the training grammar). The
captions are tokenised once up front; each batch trims token sequences to its
longest caption, which is exact because the text tower is causal and pools at
the end token. Checkpoints carry model, optimiser, RNG and data-order state,
so ``--resume`` continues the same run bit for bit.

``hard_negatives``: random in-batch captions differ from an image's own in
many attributes at once, so the towers can score well while ignoring any
single one (the first world model left eyeglasses, hats and smiles at chance).
With this option every image also meets one caption of *itself with one
stated attribute flipped* ("... wearing glasses" -> "... with no glasses"),
written by the world's caption grammar and checked to state the flipped fact;
it is an extra negative in the image->text softmax (NegCLIP, Yuksekgonul et
al. 2023). Attribute-level and negation sensitivity is what MappingNet needs
from the text embedding.

``attr_weight``: contrastive training alone left thin, few-pixel attributes
(eyeglasses, smiles, an open mouth) out of the image embedding altogether (a
linear probe reads them at chance), so neither MappingNet's pseudo-text nor
the text tower can carry them. With this option one linear attribute head,
*shared* by both towers, reads every unit embedding: binary cross-entropy
against the renderer's attributes for images and against the facts a
caption states (asserted or negated; the rest are masked out) for captions.
Sharing the head asks both towers to put an attribute along the same
direction, which is the part of the image-text gap MappingNet cares about.
The head is training state only; exports carry the CLIP model alone.
``init`` starts from an exported CLIP (its config, weights) instead of
random weights, for a further cycle on the same data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.progress import progress
from ..models.clip import CLIP, CLIPConfig, save_clip
from ..world.attributes import ATTRIBUTES, HAIR_COLOURS, HAIR_TEXTURES
from ..world.captions import make_captions, stated_facts
from . import state as st

TRAIN_KIND = "clip-train"


@dataclass
class CLIPTrainOptions:
    """A CLIP/FaRL encoder training run (configs/clip.toml)."""

    data: str                 # a world cache directory (mm2latent world cache)
    out: str                  # run directory
    steps: int = 3000
    batch: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 150  # linear warm-up steps
    seed: int = 0
    ckpt_every: int = 250  # steps
    minutes: float | None = None   # stop (with a checkpoint) after this much wall time
    config: str | dict = "world_small"   # a CLIPConfig preset (world_small, farl_vit_b16), or fields overriding world_small
    hard_negatives: bool = False         # add one attribute-flipped caption per image as a negative
    attr_weight: float = 0.0             # shared attribute head on image and text embeddings (see module doc)
    init: str | None = None              # start from this exported CLIP (weights and config)
    device: str = "auto"                 # auto (the GPU when there is one) | cpu | cuda
    amp: str = "none"                    # none | bf16 | fp16: autocast of the forward passes


def eot_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Length of each token row up to and including its end token (the largest id, 49407)."""
    return tokens.argmax(-1) + 1


def _cosine_lr(step: int, o: CLIPTrainOptions) -> float:
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    t = (step - o.warmup) / max(1, o.steps - o.warmup)
    return o.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class CLIPTrainer:
    def __init__(self, opts: CLIPTrainOptions):
        from ..world.cache import CachedWorldDataset

        self.o = opts
        self.data = CachedWorldDataset(opts.data)
        torch.manual_seed(opts.seed)
        if opts.init:
            from ..models.clip import load_clip

            self.model = load_clip(opts.init)
        else:
            self.model = CLIP(clip_config(opts.config))
        self.compute = st.Compute(opts.device, opts.amp)
        self.model.train().to(self.compute.device)
        self.attr_head = (torch.nn.Linear(self.model.config.embed_dim, len(ATTRIBUTES)).to(self.compute.device)
                          if opts.attr_weight > 0 else None)
        decay, no_decay = [], []
        params = list(self.model.named_parameters())
        if self.attr_head is not None:
            params += [(f"attr_head.{n}", p) for n, p in self.attr_head.named_parameters()]
        self.params = [p for _, p in params]  # clipped together each step
        for n, p in params:
            (decay if p.ndim >= 2 and "embedding" not in n else no_decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.98), eps=1e-6)
        self.step = 0
        self.elapsed = 0.0  # this invocation's training seconds (``minutes`` is per invocation)
        self.images_per_step = opts.batch
        self.rng = np.random.default_rng(opts.seed)
        self.tokens, self.lengths = self._tokenize_all()
        if opts.hard_negatives or self.attr_head is not None:
            self.facts = [[stated_facts(c) for c in row]
                          for row in progress(self.data.captions, desc="caption facts", unit="image")]

    def _tokenize_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All captions -> (N, C, 77) int32 tokens and their lengths (position of EOT + 1)."""
        caps = self.data.captions
        n, c = len(caps), len(caps[0])
        flat = [t for row in caps for t in row]
        tok = self.model.tokenizer
        out = torch.zeros(len(flat), self.model.config.context_length, dtype=torch.int32)
        for i in progress(range(0, len(flat), 512), desc="tokenising", unit="batch"):
            out[i:i + 512] = tok.tokenize(flat[i:i + 512]).to(torch.int32)
        return out.view(n, c, -1), eot_lengths(out).view(n, c)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and caption tokens (then the hard negatives' tokens, if on); the attribute
        head's targets for this batch are left in ``self.targets``."""
        idx = self.rng.choice(len(self.data), self.o.batch, replace=False)
        cap = self.rng.integers(0, self.tokens.shape[1], self.o.batch)
        b = self.data.batch(idx)
        order = np.argsort(idx)  # data.batch sorts indices; keep captions aligned
        idx_sorted, cap_sorted = idx[order], cap[order]
        toks = self.tokens[idx_sorted, cap_sorted]
        L = int(self.lengths[idx_sorted, cap_sorted].max())
        if self.attr_head is not None:
            self.targets = (b["attributes"], *fact_targets([self.facts[i][c] for i, c in
                                                            zip(idx_sorted.tolist(), cap_sorted.tolist())]))
        if not self.o.hard_negatives:
            return b["image"], toks[:, :L].long()
        negs = [flipped_caption(self.data.attributes[i], self.facts[i][c], self.rng)
                for i, c in zip(idx_sorted.tolist(), cap_sorted.tolist())]
        neg_toks = self.model.tokenizer.tokenize(negs)
        L = max(L, int(eot_lengths(neg_toks).max()))
        return b["image"], torch.cat([toks[:, :L].long(), neg_toks[:, :L].long()])

    def train_step(self) -> dict[str, float]:
        for g in self.opt.param_groups:
            g["lr"] = _cosine_lr(self.step, self.o)
        images, tokens = (self.compute.to(t) for t in self.batch())
        with self.compute.autocast():
            img = self.model.encode_image(images).float()
            txt = self.model.encode_text(tokens).float()  # (B, D), or (2B, D): the captions, then their hard negatives
        scale = self.model.logit_scale.exp().clamp(max=100)
        n = len(img)
        logits_i2t = scale * img @ txt.t()  # (B, B) or (B, 2B)
        logits = logits_i2t[:, :n]
        target = torch.arange(n, device=img.device)
        loss = 0.5 * (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits.t(), target))
        extra = {}
        if self.attr_head is not None:
            attrs, fact_value, fact_mask = (self.compute.to(t) for t in self.targets)
            scale_in = math.sqrt(img.shape[1])  # unit vectors -> entries of order one
            l_img = F.binary_cross_entropy_with_logits(self.attr_head(img * scale_in), attrs)
            per = F.binary_cross_entropy_with_logits(self.attr_head(txt[:n] * scale_in), fact_value, reduction="none")
            l_txt = (per * fact_mask).sum() / fact_mask.sum().clamp(min=1)
            extra = {"attr_img": l_img.item(), "attr_txt": l_txt.item()}
            loss_total = loss + self.o.attr_weight * (l_img + l_txt)
        else:
            loss_total = loss
        self.opt.zero_grad(set_to_none=True)
        self.compute.step(loss_total, self.opt, clip=1.0, params=self.params)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
            acc = (logits.argmax(1) == target).float().mean().item()
            out = {"loss": loss.item(), "acc": acc, "scale": scale.item(), **extra}
            if len(txt) > n:  # how often the true caption beats its own flipped version
                own = logits_i2t.diagonal()
                out["neg_acc"] = (own > logits_i2t[:, n:].diagonal()).float().mean().item()
        self.step += 1
        return out

    def postfix(self, stats: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{stats['loss']:.3f}", "acc": f"{stats['acc']:.2f}"}

    # -- state ----------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = st.module_tensors("model", self.model)
        if self.attr_head is not None:
            tensors.update(st.module_tensors("attr_head", self.attr_head))
        ot, ometa = st.flatten_optimizer(self.opt, "opt")
        tensors.update(ot)
        tensors.update({f"rng.{k}": v for k, v in st.rng_state_tensors(self.compute.device).items()})
        rng_state = self.rng.bit_generator.state
        meta = {"options": asdict(self.o), "optim": ometa, "data_rng": json.loads(json.dumps(rng_state, default=int)),
                "model_config": self.model.config.to_dict()}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        st.load_module_tensors("model", self.model, tensors)
        if self.attr_head is not None:
            st.load_module_tensors("attr_head", self.attr_head, tensors)
        st.unflatten_optimizer(self.opt, "opt", tensors, meta["optim"])
        st.set_rng_state_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}, self.compute.device)
        self.rng.bit_generator.state = meta["data_rng"]
        self.step = int(meta["step"])


def clip_config(spec: str | dict) -> CLIPConfig:
    """A preset name (``world_small``, ``farl_vit_b16``) or a dict of fields overriding ``world_small``."""
    if isinstance(spec, dict):
        base = CLIPConfig.world_small().to_dict()
        unknown = sorted(set(spec) - set(base))
        if unknown:
            raise UserError(f"unknown CLIP config fields: {', '.join(unknown)}")
        return CLIPConfig.from_dict({**base, **spec})
    if spec not in ("world_small", "farl_vit_b16"):
        raise UserError(f"unknown CLIP preset {spec!r}; use world_small, farl_vit_b16 or a JSON object of fields")
    return getattr(CLIPConfig, spec)()


_EXCLUSIVE_GROUPS = (HAIR_COLOURS, HAIR_TEXTURES)


def fact_targets(facts: list[dict[str, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) target values and (B, A) mask of the attributes each caption states."""
    value = torch.zeros(len(facts), len(ATTRIBUTES))
    mask = torch.zeros(len(facts), len(ATTRIBUTES))
    col = {a: j for j, a in enumerate(ATTRIBUTES)}
    for i, f in enumerate(facts):
        for a, v in f.items():
            if a in col:
                value[i, col[a]] = float(v)
                mask[i, col[a]] = 1.0
    return value, mask


def flipped_caption(attrs: np.ndarray, facts: dict[str, bool], rng: np.random.Generator, tries: int = 12) -> str:
    """A training-grammar caption of a face that differs from ``attrs`` in one of
    the attributes its caption states (``facts``), accepted only if it says so
    (many attributes have no negated surface form, so "not bushy eyebrows" may
    be unsayable: then another attribute is tried). Hair colours and textures
    stay exclusive (blond -> one of the other colours). If the grammar does not
    oblige within ``tries``, the last caption of a flipped face is used as it is."""
    base = {a: bool(attrs[j]) for j, a in enumerate(ATTRIBUTES)}
    keys = sorted(facts) or list(ATTRIBUTES)
    cap = None
    for t in range(tries):
        a = keys[int(rng.integers(len(keys)))] if t < tries // 2 else ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
        want = not base[a]
        flipped = dict(base)
        group = next((g for g in _EXCLUSIVE_GROUPS if a in g), None)
        if group is not None:  # blond -> another colour; not blond -> blond and no other colour
            for g in group:
                flipped[g] = False
            if want:
                flipped[a] = True
            else:
                other = [g for g in group if g != a]
                flipped[other[int(rng.integers(len(other)))]] = True
        else:
            flipped[a] = want
        cap = make_captions(flipped, rng, n=1)[0]
        if any(base[k] != v for k, v in cap.facts.items()):
            return cap.text
    return cap.text


def train_clip(opts: CLIPTrainOptions, resume: bool = False, export: str | None = None,
               stop_at: int | None = None) -> CLIPTrainer:
    """Train (or resume) a run. ``stop_at`` ends this invocation early at that step, as an
    interruption would (the schedule still follows ``opts.steps``)."""
    clip_config(opts.config)  # a bad config is refused before anything is written
    if opts.init:
        from ..common.fileio import check_input_file

        check_input_file(opts.init)
    run = Path(opts.out)
    if run.exists() and any(run.iterdir()) and not resume:
        raise UserError(f"run directory {run} is not empty; pass --resume to continue it")
    run.mkdir(parents=True, exist_ok=True)
    tr = CLIPTrainer(opts)
    if resume:
        found = st.latest_good_checkpoint(run, TRAIN_KIND, clean=True)
        if found:
            stem, tensors, meta = found
            saved = dict(meta["options"])
            for k in ("steps", "minutes", "ckpt_every", "out", "data", "device", "amp"):
                saved.pop(k, None)
            mine = {k: v for k, v in asdict(opts).items() if k in saved}
            if mine != saved:
                raise UserError(f"--resume with different training options than {stem}: {saved} vs {mine}")
            tr.load_state(tensors, meta)
            print(f"resumed from {stem.name} at step {tr.step}")
    loop = st.LoopOptions(steps=min(opts.steps, stop_at or opts.steps), minutes=opts.minutes,
                          ckpt_every=opts.ckpt_every)
    st.run_loop(tr, loop, run, TRAIN_KIND, desc="clip", count_checkpoint_time=True)
    if export and tr.step >= opts.steps:
        tr.model.eval()
        save_clip(tr.model, export, meta={"trained_steps": tr.step, "batch": opts.batch, "data": str(opts.data)},
                  dtype=torch.float16)
        print(f"exported {export}")
    return tr
