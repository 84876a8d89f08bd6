"""Autoencoding StyleGAN2 training: the shipped world generator on a 2-core CPU.

Why not plain adversarial training: a StyleGAN2 needs millions of images
before faces appear, and this machine shows it ~10 images a second. Here the
same StyleGAN2 generator (mapping + synthesis, unchanged) is the decoder of a
VAE-GAN: an :class:`~mm2latent.models.inversion.ImageEncoder` gives
q(z | x), the generator reconstructs x from a sample of it, and the
StyleGAN2 discriminator judges both reconstructions and samples from the
prior N(0, I). Reconstruction gives structure within a few thousand images;
the KL term and the adversarial loss on prior samples make ``G(z)``,
z ~ N(0, I), a usable unconditional generator; the adversarial loss sharpens.
A frozen face parser adds a segmentation loss on reconstructions against the
renderer's mask, so that generated faces parse the way MappingNet will be
asked to follow.

Losses (generator + encoder):
    L1(x_rec, x) + kl_weight * KL + seg_weight * CE(parser(x_rec), mask)
    + attr_weight * BCE(analyzer_attr(x_rec), attributes) + coeff_weight * MSE(analyzer_coeffs(x_rec), coeffs)
    + adv_weight * [softplus(-D(x_rec)) + softplus(-D(G(z_prior)))]
    (+ seg_freq_weight * class shares of reconstructions vs masks)
Discriminator: non-saturating logistic loss with lazy R1 on reals.

Checkpoints (all weights, optimisers, RNG states, data position, elapsed
time) go through :mod:`mm2latent.train.state`; ``resume`` continues exactly.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..common.fileio import check_writable_dir, write_text_atomic
from ..models.inversion import ImageEncoder, ImageEncoderConfig, kl_to_standard_normal
from ..models.stylegan2 import Discriminator, Generator, StyleGAN2Config, save_generator
from . import state as ckpt
from .state import DataOrder, pick_device

TRAIN_KIND = "generator-ae-train"
#: default softmax temperature of :func:`class_share_loss` (1 = the parser's own probabilities; -> 0 = argmax)
SEG_FREQ_TEMPERATURE = 0.5


@dataclass
class GeneratorAEOptions(ckpt.OptionsDict):
    """A generator-AE training phase (configs/generator_ae.toml; stored in every checkpoint)."""

    out: str  # run directory
    data: str = "runs/cache_train128"  # world cache (mm2latent world cache)
    batch: int = 16
    prior_batch: int = 8  # unconditional samples from the prior per step (for the discriminator)
    steps: int | None = None
    minutes: float | None = None  # wall-clock budget, counted across resumes
    z_dim: int = 256
    w_dim: int = 256
    mapping_layers: int = 4
    channels: list[int] = field(default_factory=lambda: [256, 256, 128, 64, 32, 16])  # 4 .. 128 px
    d_channels: list[int] = field(default_factory=lambda: [128, 128, 64, 32, 16, 16])  # discriminator, 4 .. 128 px
    enc_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256])
    lr: float = 0.002
    enc_lr: float = 0.0005  # plain (not equalised-LR) convolutions: Adam at the generator's rate made KL spike
    kl_weight: float = 2.5e-4  # KL of the encoder's posterior to N(0, I)
    seg_weight: float = 0.1  # parser cross-entropy of reconstructions against the render's mask
    #: frozen attribute/pose analyzer on reconstructions vs the renderer's truth: BCE over the world's
    #: attributes (attr_weight) and MSE over the normalised coefficients (coeff_weight). The gradient
    #: runs through synthesis *and* mapping/encoder, so w must carry what L1 barely rewards (smile,
    #: beard, gender cues); the analyzer is also an evaluation judge (as ArcFace is in pSp/e4e)
    attr_weight: float = 0.0
    coeff_weight: float = 0.0
    analyzer: str | None = None  # analyzer weights; None = the shipped analyzer
    adv_weight: float = 0.05  # StyleGAN2 generator loss on reconstructions and prior samples
    adv_start: int = 300  # steps of pure reconstruction before the adversarial terms
    adv_every: int = 2  # lazy adversarial terms: every k-th step, weight scaled by k (halves D cost on CPU)
    r1_gamma: float = 1.0
    r1_every: int = 16  # lazy R1 interval (steps)
    ema_kimg: float = 5.0  # EMA half-life of generator and encoder
    seed: int = 0
    parser: str | None = None  # parser weights; None = the shipped parser; "" = no segmentation loss
    ckpt_minutes: float = 5.0  # checkpoint interval
    ckpt_every: int = 0  # steps; 0 = by time only
    sample_every: int = 250  # steps between sample grids
    threads: int | None = None  # torch CPU threads
    resume: bool = False  # continue the run in --out from its latest checkpoint
    #: train the synthesis network only: encoder (EMA) and mapping stay fixed, so every latent already
    #: derived from them (MappingNet's training targets, saved inversions) keeps its meaning while the
    #: decoder is sharpened (adversarial fine-tuning); no prior samples in this phase
    freeze_latents: bool = False
    #: start from exported weights: a directory holding ``generator.safetensors`` and
    #: ``image_encoder.safetensors`` (the shipped weights directory, or a run's export); the
    #: discriminator and optimisers start fresh. The files must match this run's architecture options.
    #: The exports continue the init's "training" record (cumulative step/kimg/minutes, its phases + this run)
    init: str | None = None
    #: steps at the start during which the discriminator trains but the generator gets no adversarial
    #: gradient (a fresh discriminator next to a trained generator: its first judgements are noise)
    d_warmup: int = 0
    #: class balance of the parser loss: each pixel weighs freq(class) ** -seg_balance (normalised so
    #: the average pixel weighs 1, capped at 50); 0 = plain cross-entropy, 0.5 = the parser's own
    #: training weights. Eyes, brows and lips cover ~0.2 % of the image each, so plain cross-entropy
    #: barely asks the synthesis to draw them
    seg_balance: float = 0.0
    #: weight of a class-share term on the parser's output: per class c, (log(share_c of the
    #: reconstructions) - log(share_c of the true masks))**2, summed over classes, with shares over the
    #: batch's pixels and the parser's softmax sharpened by seg_freq_temperature (close to argmax, which
    #: is how samples are judged). Cross-entropy scores pixels one by one, and on a blurry decoder (more so
    #: class-weighted) its optimum draws small parts larger than they are; this term asks for their size
    seg_freq_weight: float = 0.0
    #: softmax temperature of the class-share term: lower is closer to the argmax that judges samples.
    #: A part the parser is unsure of (a faint earring at p = 0.4) counts 0.4 of its pixels at
    #: temperature 1 but none under argmax, so a soft share can be met while the argmax share falls short
    seg_freq_temperature: float = SEG_FREQ_TEMPERATURE
    #: extra factor on the parser cross-entropy weight of named classes ("ear_r=8,neck_l=4"), on top of
    #: --seg-balance: a targeted push for parts the synthesis under-draws, leaving the others' balance alone
    seg_class_boost: str = ""
    #: autoencoder phases from --init: a linear head on w (= mapping(mu)) trained with BCE to read these
    #: world attributes ("Wearing_Earrings,Wearing_Necklace"), weight latent_attr_weight. Measured at stop 33:
    #: the shipped encoder's w tells earrings and necklaces apart no better than gender does (linear probe
    #: balanced accuracy 0.68 / 0.67; hats 0.997), so the synthesis cannot know whom to give them; this
    #: puts the information into w, where the parser loss can teach the synthesis to draw it. Phase 10
    #: (shipped; weight 0.5, then 5 after the head stalled at the gender level) took the probe to
    #: 0.98 / 0.97 and earrings in samples from 0.75x to 0.87x of the renders' share
    #: (docs/reports/accessory_encoding.json, docs/reports/generator_eval_untruncated.json)
    latent_attrs: str = ""
    latent_attr_weight: float = 0.0
    #: autoencoder phases from --init: mean squared distance of w = mapping(mu(x)) to the --init weights'
    #: w of the same image, so that everything fitted to the old latent space (MappingNet, latent prior,
    #: inverters) stays close to valid while the encoder learns what it lacked
    w_anchor_weight: float = 0.0
    #: auto (the GPU when there is one), cpu or cuda; a checkpoint resumes on either
    device: str = "auto"

    #: may change when a run is resumed (budget, bookkeeping, and the loss schedule knobs)
    RESUMABLE = ("out", "steps", "minutes", "ckpt_minutes", "ckpt_every", "sample_every", "threads", "resume", "data",
                 "adv_start", "adv_weight", "seg_weight", "kl_weight", "freeze_latents", "attr_weight", "coeff_weight",
                 "analyzer", "d_warmup", "seg_balance", "device", "seg_freq_weight",
                 "seg_freq_temperature", "seg_class_boost",
                 "latent_attr_weight", "w_anchor_weight")

    def validate(self) -> None:
        if self.steps is None and self.minutes is None:
            raise UserError("give a budget: --steps N and/or --minutes M")
        if self.adv_every < 1 or self.r1_every < 1:
            raise UserError("--adv-every and --r1-every must be >= 1")
        if self.batch < 2 or self.prior_batch < 0:
            raise UserError("--batch must be >= 2 and --prior-batch >= 0")
        if self.d_warmup < 0 or not (0.0 <= self.seg_balance <= 1.0):
            raise UserError("--d-warmup must be >= 0 and --seg-balance in [0, 1]")
        for name in ("kl_weight", "seg_weight", "adv_weight", "r1_gamma", "attr_weight", "coeff_weight",
                     "seg_freq_weight"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0")
        if not self.seg_freq_temperature > 0:
            raise UserError("--seg-freq-temperature must be > 0")
        from ..world.attributes import parse_attribute_list

        boost_factors(self.seg_class_boost)
        parse_attribute_list(self.latent_attrs, "--latent-attrs")
        if self.latent_attr_weight < 0 or self.w_anchor_weight < 0:
            raise UserError("--latent-attr-weight and --w-anchor-weight must be >= 0")
        if (self.latent_attr_weight > 0) != bool(self.latent_attrs.strip()):
            raise UserError("--latent-attrs and --latent-attr-weight go together")
        if (self.latent_attr_weight > 0 or self.w_anchor_weight > 0) and self.freeze_latents:
            raise UserError("--latent-attr-weight and --w-anchor-weight train the encoder: drop --freeze-latents")
        if self.w_anchor_weight > 0 and self.init is None:
            raise UserError("--w-anchor-weight keeps w near the --init weights' w: give --init")
        self.model_config()
        ImageEncoderConfig(size=self.size, z_dim=self.z_dim, widths=list(self.enc_widths))

    @property
    def size(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1)

    def model_config(self) -> StyleGAN2Config:
        res = [4 * 2**i for i in range(len(self.channels))]
        return StyleGAN2Config(resolution=self.size, z_dim=self.z_dim, w_dim=self.w_dim,
                               mapping_layers=self.mapping_layers, channels=dict(zip(res, self.channels)),
                               d_channels=dict(zip(res, self.d_channels)))


def boost_factors(spec: str) -> dict[int, float]:
    """"ear_r=8,neck_l=4" -> {class index: factor}; a clear error for unknown classes or bad factors."""
    from ..common.palette import CLASS_NAMES

    out: dict[int, float] = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        name, _, value = item.partition("=")
        if name.strip() not in CLASS_NAMES:
            raise UserError(f"--seg-class-boost: unknown class {name.strip()!r}; classes: {', '.join(CLASS_NAMES)}")
        try:
            f = float(value)
        except ValueError:
            raise UserError(f"--seg-class-boost: {item!r} is not CLASS=FACTOR") from None
        if not f > 0:
            raise UserError(f"--seg-class-boost: the factor of {name.strip()} must be > 0")
        out[CLASS_NAMES.index(name.strip())] = f
    return out


def frozen_judge(name: str, path: str | None) -> torch.nn.Module:
    """A perception model used as a fixed loss: the shipped one (``path`` None) or a file."""
    from ..models.registry import load_module, load_module_file

    model = load_module(None, name) if path is None else load_module_file(path, name)
    return model.eval().requires_grad_(False)


def resized_for(x: torch.Tensor, judge: torch.nn.Module) -> torch.Tensor:
    """``x`` bilinearly resized to the judge's input size (unchanged when it already fits)."""
    s = judge.config.size
    return x if x.shape[-1] == s else F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)


def judge_losses(x_rec: torch.Tensor, batch: dict, parser, analyzer, stats: dict[str, float], *,
                 seg_weight: float, attr_weight: float, coeff_weight: float, seg_freq_weight: float = 0.0,
                 seg_class_weights: torch.Tensor | None = None,
                 seg_freq_temperature: float = SEG_FREQ_TEMPERATURE) -> torch.Tensor:
    """The frozen judges' losses on reconstructions against the renderer's truth in ``batch``:
    ``seg_weight`` x parser cross-entropy (mask), ``seg_freq_weight`` x :func:`class_share_loss`,
    ``attr_weight`` x analyzer attribute BCE, ``coeff_weight`` x analyzer coefficient MSE; each
    term's value goes into ``stats``. ``seg_class_weights`` (19,) weighs the parser cross-entropy per class."""
    loss = x_rec.new_zeros(())
    if parser is not None:
        logits = parser(resized_for(x_rec, parser))
        mask = batch["mask"]
        if logits.shape[-1] != mask.shape[-1]:
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        seg = F.cross_entropy(logits, mask, weight=seg_class_weights)
        loss = loss + seg_weight * seg
        stats["seg"] = seg.item()
        if seg_freq_weight > 0:
            freq = class_share_loss(logits, mask, temperature=seg_freq_temperature)
            loss = loss + seg_freq_weight * freq
            stats["seg_freq"] = freq.item()
    if analyzer is not None:
        attr_logits, coeffs = analyzer(resized_for(x_rec, analyzer))
        if attr_weight > 0:
            attr = F.binary_cross_entropy_with_logits(attr_logits, batch["attributes"])
            loss = loss + attr_weight * attr
            stats["attr"] = attr.item()
        if coeff_weight > 0:
            coeff = F.mse_loss(coeffs, batch["coeffs"])
            loss = loss + coeff_weight * coeff
            stats["coeff"] = coeff.item()
    return loss


def class_share_loss(logits: torch.Tensor, mask: torch.Tensor, temperature: float = SEG_FREQ_TEMPERATURE,
                     eps: float = 1e-4) -> torch.Tensor:
    """sum_c (log(eps + predicted share of class c) - log(eps + true share of c))**2 over the batch's
    pixels: zero when the parser finds every class in the batch exactly as often as the masks hold it,
    whatever the pixels; the log makes a rare class drawn twice as often cost as much as a common one."""
    pred = soft_class_shares(logits, temperature)
    truth = torch.bincount(mask.reshape(-1), minlength=pred.numel()).to(pred.dtype) / mask.numel()
    return log_share_gap(pred, truth, eps)


def soft_class_shares(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(C,) share of each class over all pixels of parser ``logits`` (N, C, H, W), softmax at ``temperature``."""
    return F.softmax(logits / temperature, dim=1).mean(dim=(0, 2, 3))


def log_share_gap(pred: torch.Tensor, truth: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """sum_c (log(eps + pred_c) - log(eps + truth_c))**2 over the last (class) dimension: the
    class-share term's distance."""
    return (torch.log(pred + eps) - torch.log(truth + eps)).square().sum(-1)


class GeneratorAETrainer:
    """``resuming``: the caller will :meth:`load_state` a checkpoint of this run, so ``--init`` weights are
    not read (the checkpoint holds the weights and the init's training record)."""

    def __init__(self, opts: GeneratorAEOptions, data=None, resuming: bool = False):
        from ..world.cache import CachedWorldDataset

        opts.validate()
        self.opts = opts
        torch.manual_seed(opts.seed)
        cfg = opts.model_config()
        self.G, self.D, self.G_ema = Generator(cfg), Discriminator(cfg), Generator(cfg)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.G_ema.requires_grad_(False).eval()
        self.E = ImageEncoder(ImageEncoderConfig(size=opts.size, z_dim=opts.z_dim, widths=list(opts.enc_widths)))
        self.E_ema = ImageEncoder(self.E.config)
        self.E_ema.load_state_dict(self.E.state_dict())
        self.E_ema.requires_grad_(False).eval()
        self.data = data if data is not None else CachedWorldDataset(opts.data)
        if getattr(self.data, "size", opts.size) != opts.size:
            raise UserError(f"data {opts.data} is {self.data.size}px but the generator makes {opts.size}px images")
        self.parser = frozen_judge("parser", opts.parser) if opts.parser != "" and opts.seg_weight > 0 else None
        self.analyzer = (frozen_judge("analyzer", opts.analyzer) if opts.attr_weight > 0 or opts.coeff_weight > 0
                         else None)
        self.seg_class_weights = None
        if self.parser is not None and opts.seg_balance > 0:
            from .perception import class_weights

            self.seg_class_weights = torch.from_numpy(class_weights(self.data, power=opts.seg_balance)).float()
        boost = boost_factors(opts.seg_class_boost)
        if self.parser is not None and boost:
            if self.seg_class_weights is None:
                self.seg_class_weights = torch.ones(self.parser.config.num_classes)
            for c, f in boost.items():
                self.seg_class_weights[c] *= f
        #: --latent-attrs: which attribute columns the linear head on w reads, and the head
        from ..world.attributes import ATTRIBUTES, parse_attribute_list

        names = parse_attribute_list(opts.latent_attrs, "--latent-attrs")
        self.latent_attr_index = [ATTRIBUTES.index(n) for n in names]
        self.latent_head = (torch.nn.Linear(opts.w_dim, len(self.latent_attr_index))  # validate(): both or neither
                            if self.latent_attr_index else None)
        #: --w-anchor-weight: frozen copies of the --init encoder and mapping (filled by load_init, or by a
        #: checkpoint on resume)
        self.anchor_E = self.anchor_mapping = None
        if opts.w_anchor_weight > 0:
            self.anchor_E = ImageEncoder(self.E.config).requires_grad_(False).eval()
            self.anchor_mapping = Generator(cfg).mapping.requires_grad_(False).eval()
        #: the "training" record of the --init weights (their history: steps, kimg, minutes, phases);
        #: empty without --init. Kept in checkpoints, so a resume never re-reads the init directory
        self.init_training: dict[str, Any] = {}
        if opts.init is not None and not resuming:
            self.init_training = load_init(self, opts.init)
            if self.anchor_E is not None:
                self.anchor_E.load_state_dict(self.E_ema.state_dict())
                self.anchor_mapping.load_state_dict(self.G_ema.mapping.state_dict())
        self.device = dev = pick_device(opts.device)
        for m in (self.G, self.D, self.G_ema, self.E, self.E_ema, self.parser, self.analyzer, self.latent_head,
                  self.anchor_E, self.anchor_mapping):
            if m is not None:
                m.to(dev)
        if self.seg_class_weights is not None:
            self.seg_class_weights = self.seg_class_weights.to(dev)
        betas = (0.5, 0.99)
        self.optG = torch.optim.Adam([{"params": list(self.G.parameters())},
                                      {"params": list(self.E.parameters()), "lr": opts.enc_lr}]
                                     + ([{"params": list(self.latent_head.parameters()), "lr": opts.enc_lr}]
                                        if self.latent_head is not None else []), lr=opts.lr, betas=betas)
        c = opts.r1_every / (opts.r1_every + 1)  # lazy-regularisation correction, as in StyleGAN2
        self.optD = torch.optim.Adam(self.D.parameters(), lr=opts.lr * c, betas=(betas[0] ** c, betas[1] ** c))
        self.order = DataOrder(len(self.data), opts.seed)
        self.step = 0
        self.elapsed = 0.0
        self.stats: dict[str, float] = {}

    @property
    def nimg(self) -> int:
        return self.step * self.opts.batch

    def train_step(self) -> dict[str, float]:
        o, G, D, E = self.opts, self.G, self.D, self.E
        dev = self.device
        b = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in self.data.batch(self.order.take(o.batch)).items()}
        x = b["image"]
        adv_on = o.adv_weight > 0 and self.step >= o.adv_start and self.step % o.adv_every == 0
        # the discriminator may start d_warmup steps before the generator hears from it
        d_on = o.adv_weight > 0 and self.step >= o.adv_start - o.d_warmup and self.step % o.adv_every == 0
        stats: dict[str, float] = {}

        # generator + encoder
        D.requires_grad_(False)
        if o.freeze_latents:  # the shipped (EMA) encoder + mapping give w; only the synthesis learns
            G.requires_grad_(False)
            G.synthesis.requires_grad_(True)
            with torch.no_grad():
                w = self.G_ema.mapping(self.E_ema(x)[0])
            x_rec = G.synthesis(G.broadcast(w), noise_mode="random")
            rec = (x_rec - x).abs().mean()
            loss = rec
            stats["rec"] = rec.item()
        else:
            G.requires_grad_(True)
            mu, logvar = E(x)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            x_rec = G.synthesis(G.broadcast(G.mapping(z)), noise_mode="random")
            rec = (x_rec - x).abs().mean()
            kl = kl_to_standard_normal(mu, logvar).mean()
            loss = rec + o.kl_weight * kl
            stats["rec"], stats["kl"] = rec.item(), kl.item()
            if self.latent_head is not None or self.anchor_E is not None:
                w_mu = G.mapping(mu)  # the w the shipped pipeline uses for this image (posterior mean)
                if self.latent_head is not None:
                    target = b["attributes"][:, self.latent_attr_index]
                    la = F.binary_cross_entropy_with_logits(self.latent_head(w_mu), target)
                    loss = loss + o.latent_attr_weight * la
                    stats["latent_attr"] = la.item()
                if self.anchor_E is not None:
                    with torch.no_grad():
                        w_ref = self.anchor_mapping(self.anchor_E(x)[0])
                    anchor = (w_mu - w_ref).square().mean()
                    loss = loss + o.w_anchor_weight * anchor
                    stats["w_anchor"] = anchor.item()
        loss = loss + judge_losses(x_rec, b, self.parser, self.analyzer, stats, seg_weight=o.seg_weight,
                                   attr_weight=o.attr_weight, coeff_weight=o.coeff_weight,
                                   seg_freq_weight=o.seg_freq_weight, seg_class_weights=self.seg_class_weights,
                                   seg_freq_temperature=o.seg_freq_temperature)
        x_pri = None
        if adv_on:
            adv = F.softplus(-D(x_rec)).mean()
            if o.prior_batch and not o.freeze_latents:
                x_pri = G(torch.randn(o.prior_batch, o.z_dim, device=dev))
            if x_pri is not None:
                adv = adv + F.softplus(-D(x_pri)).mean()
            loss = loss + o.adv_weight * o.adv_every * adv
            stats["adv_G"] = adv.item()
        self.optG.zero_grad(set_to_none=True)
        loss.backward()
        if not o.freeze_latents:
            stats["enc_grad"] = float(torch.nn.utils.clip_grad_norm_(E.parameters(), 5.0))
        self.optG.step()

        # discriminator
        if d_on:
            G.requires_grad_(False)
            D.requires_grad_(True)
            fakes = x_rec.detach() if x_pri is None else torch.cat([x_rec.detach(), x_pri.detach()])
            loss_D = F.softplus(D(fakes)).mean() + F.softplus(-D(x)).mean()
            self.optD.zero_grad(set_to_none=True)
            loss_D.backward()
            self.optD.step()
            stats["loss_D"] = loss_D.item()
            if (self.step // o.adv_every) % o.r1_every == 0 and o.r1_gamma > 0:
                xr = x.detach().requires_grad_(True)
                (grads,) = torch.autograd.grad(D(xr).sum(), xr, create_graph=True)
                r1 = grads.square().sum(dim=(1, 2, 3)).mean()
                self.optD.zero_grad(set_to_none=True)
                (r1 * (o.r1_gamma / 2) * o.r1_every).backward()
                self.optD.step()
                stats["r1"] = r1.item()

        with torch.no_grad():  # EMA of generator and encoder; w_avg from the prior
            beta = 0.5 ** (o.batch / max(min(o.ema_kimg * 1000, (self.nimg + o.batch) * 0.1), 1e-8))
            if o.freeze_latents:
                for pe, p in zip(self.G_ema.synthesis.parameters(), G.synthesis.parameters()):
                    pe.copy_(p.detach().lerp(pe, beta))
            else:
                for pe, p in zip(self.G_ema.parameters(), G.parameters()):
                    pe.copy_(p.detach().lerp(pe, beta))
                for pe, p in zip(self.E_ema.parameters(), E.parameters()):
                    pe.copy_(p.detach().lerp(pe, beta))
                w_prior = G.mapping(torch.randn(64, o.z_dim, device=dev))
                G.mapping.w_avg.copy_(w_prior.mean(0).lerp(G.mapping.w_avg, G.cfg.w_avg_beta))
                self.G_ema.mapping.w_avg.copy_(G.mapping.w_avg)
        self.step += 1
        self.stats = stats
        return stats

    # ------------------------------------------------------------------ state

    def state_modules(self) -> list[tuple[str, torch.nn.Module]]:
        """The modules a checkpoint holds: networks, and the latent head and anchor copies when used."""
        mods = [("G", self.G), ("D", self.D), ("G_ema", self.G_ema), ("E", self.E), ("E_ema", self.E_ema)]
        for name in ("latent_head", "anchor_E", "anchor_mapping"):
            if getattr(self, name) is not None:
                mods.append((name, getattr(self, name)))
        return mods

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors: dict[str, torch.Tensor] = {}
        for name, m in self.state_modules():
            tensors.update(ckpt.module_tensors(name, m))
        meta: dict[str, Any] = {"train": self.opts.to_dict(), "elapsed": self.elapsed,
                                "order": [self.order.epoch, self.order.cursor], "optim": {},
                                "init_training": self.init_training}
        for name, opt in (("optG", self.optG), ("optD", self.optD)):
            t, m = ckpt.flatten_optimizer(opt, name)
            tensors.update(t)
            meta["optim"][name] = m
        tensors.update({f"rng.{k}": v for k, v in ckpt.rng_state_tensors(self.device).items()})
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        for name, m in self.state_modules():
            if not any(k.startswith(name + ".") for k in tensors):
                flag = {"latent_head": "--latent-attrs", "anchor_E": "--w-anchor-weight",
                        "anchor_mapping": "--w-anchor-weight"}.get(name, name)
                raise UserError(f"the checkpoint was written without {flag}: it cannot be switched on in a "
                                "resumed run (start a new run with --init from this run's export)")
            ckpt.load_module_tensors(name, m, tensors)
        for name, opt in (("optG", self.optG), ("optD", self.optD)):
            ckpt.unflatten_optimizer(opt, name, tensors, meta["optim"][name])
        self.step = int(meta["step"])
        self.elapsed = float(meta["elapsed"])
        self.order.epoch, self.order.cursor = (int(v) for v in meta["order"])
        ckpt.set_rng_state_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}, self.device)
        if "init_training" in meta:
            self.init_training = dict(meta["init_training"] or {})
        elif self.opts.init is not None:  # a checkpoint written before the init's record was carried
            self.init_training = legacy_init_training(self.opts)

    @torch.no_grad()
    def sample_grid(self, n: int = 8):
        """Top rows: prior samples (psi 0.7); bottom: validation-free reconstructions of the first images."""
        import numpy as np

        g = torch.Generator().manual_seed(1234)
        z = torch.randn(n * 2, self.opts.z_dim, generator=g).to(self.device)
        pri = self.G_ema(z, truncation_psi=0.7, noise_mode="const")
        x = self.data.batch(list(range(n)))["image"].to(self.device)
        rec = self.G_ema.synthesis(self.G_ema.broadcast(self.G_ema.mapping(self.E_ema(x)[0])), noise_mode="const")
        rows = torch.cat([pri, x, rec]).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        rows = rows.permute(0, 2, 3, 1).cpu().numpy()
        from ..common.imageio import make_grid

        return make_grid(np.asarray(rows), n)


def load_init(trainer: GeneratorAETrainer, weights_dir: str) -> dict[str, Any]:
    """Generator (into G and G_ema) and image encoder (into E and E_ema) from exported files; returns
    the generator's "training" record (``{}`` when it has none), the history this run continues."""
    from ..models.stylegan2 import read_generator
    from ..models.registry import load_module_file

    d = Path(weights_dir)
    files = {"generator": d / "generator.safetensors", "image encoder": d / "image_encoder.safetensors"}
    for what, f in files.items():
        if not f.exists():
            raise UserError(f"--init {weights_dir}: no {what} file {f.name} there")
    generator, gen_json = read_generator(files["generator"])
    record = init_record(gen_json.get("training"), f"--init {weights_dir}")
    loaded = {"generator": generator, "image encoder": load_module_file(files["image encoder"], "image_encoder")}
    for name, targets in (("generator", (trainer.G, trainer.G_ema)), ("image encoder", (trainer.E, trainer.E_ema))):
        for dst in targets:
            try:
                dst.load_state_dict(loaded[name].state_dict())
            except RuntimeError as e:
                raise UserError(f"--init {weights_dir}: the {name} does not match this run's architecture "
                                f"(--channels/--enc-widths/--z-dim): {str(e).splitlines()[1].strip()}") from None
    return record


def init_record(record: Any, where: str) -> dict[str, Any]:
    """A generator's "training" record as the history of a run started from it: ``{}`` when absent;
    otherwise checked now (not at the first export, hours later) and returned unchanged."""
    if not isinstance(record, dict):
        return {}
    carried_history(record, where)
    return record


def carried_history(record: dict[str, Any], where: str = "the --init weights") -> tuple[int, float, float, list[str]]:
    """(step, kimg, minutes, phases) of an init's "training" record. A record without "phases" (written
    before they were recorded) counts as one phase described by its "last_phase"."""
    try:
        step = int(record.get("step", 0))
        kimg = float(record.get("kimg", 0.0))
        minutes = float(record.get("minutes", 0.0))
    except (TypeError, ValueError):
        raise UserError(f"{where}: the generator's training record has a non-numeric step/kimg/minutes") from None
    phases = record.get("phases")
    if phases is None:
        phases = [f"steps 0-{step}: {record.get('last_phase', record.get('method', 'training'))}"] if step else []
    if not isinstance(phases, list) or not all(isinstance(p, str) for p in phases):
        raise UserError(f"{where}: the generator's training record has a malformed 'phases' list")
    return step, kimg, minutes, list(phases)


def legacy_init_training(opts: GeneratorAEOptions) -> dict[str, Any]:
    """The init's record for a resumed checkpoint that does not carry it: read from ``opts.init`` now, with a
    warning (the directory may have changed since the run started); ``{}`` when it cannot be read."""
    from ..common.checkpoint import load_checkpoint
    from ..models.stylegan2 import GENERATOR_KIND

    d = Path(opts.init)
    if d.resolve() == Path(opts.out).resolve():
        ckpt.warn(f"the checkpoint does not carry the training record of --init {opts.init}, and that directory "
                  "is this run's own export; the exported history starts at this run")
        return {}
    try:
        record = init_record(load_checkpoint(d / "generator", expect_kind=GENERATOR_KIND)[1].get("training"),
                             f"--init {opts.init}")
    except UserError as e:
        ckpt.warn(f"the checkpoint does not carry the training record of --init {opts.init} and it cannot be read "
                  f"now ({e}); the exported history starts at this run")
        return {}
    ckpt.warn(f"the checkpoint does not carry the training record of --init {opts.init}; it was read from there "
              "now (check it if that directory changed since the run started)")
    return record


#: CLI flags recorded in a phase's command line when they differ from the defaults (option name, flag)
PHASE_FLAGS = (("freeze_latents", "--freeze-latents"), ("adv_start", "--adv-start"), ("d_warmup", "--d-warmup"),
               ("adv_weight", "--adv-weight"), ("kl_weight", "--kl-weight"), ("seg_weight", "--seg-weight"),
               ("seg_balance", "--seg-balance"), ("seg_freq_weight", "--seg-freq-weight"),
               ("seg_freq_temperature", "--seg-freq-temperature"), ("seg_class_boost", "--seg-class-boost"),
               ("latent_attrs", "--latent-attrs"), ("latent_attr_weight", "--latent-attr-weight"),
               ("w_anchor_weight", "--w-anchor-weight"),
               ("prior_batch", "--prior-batch"),
               ("attr_weight", "--attr-weight"), ("coeff_weight", "--coeff-weight"),
               ("lr", "--lr"), ("batch", "--batch"), ("seed", "--seed"), ("steps", "--steps"),
               ("minutes", "--minutes"), ("threads", "--threads"))


def phase_command(o: GeneratorAEOptions) -> str:
    """The run's command line: ``--init`` and the flags whose values differ from the defaults
    (``--data``/``--out``/``--resume`` left out)."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(GeneratorAEOptions)}
    parts = ["mm2latent train generator-ae"]
    if o.init is not None:
        parts.append(f"--init {o.init}")
    for name, flag in PHASE_FLAGS:
        v = getattr(o, name)
        if v == defaults[name]:
            continue
        parts.append(flag if isinstance(v, bool) else f"{flag} {v}")
    return " ".join(parts)


def phase_description(o: GeneratorAEOptions) -> str:
    what = ("synthesis-only (encoder and mapping frozen)" if o.freeze_latents
            else "autoencoder (encoder + mapping + synthesis)")
    if o.init is not None:
        what += ", started from exported weights"
        what += " with a fresh discriminator" if o.adv_weight > 0 else ", no discriminator"
        if o.d_warmup and o.adv_weight > 0:
            what += f" (D-only for {o.d_warmup} steps)"
    return what


def training_record(trainer: GeneratorAETrainer) -> dict[str, Any]:
    """The "training" record of an export: cumulative over the --init weights' history (step, kimg,
    minutes, phases) plus this run, which adds one phase."""
    o = trainer.opts
    step0, kimg0, minutes0, phases = carried_history(trainer.init_training)
    step = step0 + trainer.step
    phases.append(f"steps {step0}-{step}: {phase_description(o)} ({phase_command(o)})")
    record = {"method": "autoencoding StyleGAN2 (VAE-GAN)", "step": step,
              "kimg": round(kimg0 + trainer.nimg / 1000, 3), "minutes": round(minutes0 + trainer.elapsed / 60, 1),
              "data": o.data, "last_phase": ("synthesis-only (encoder and mapping frozen)"
                                            + (", adversarial sharpening" if o.adv_weight > 0 else ", no discriminator")
                                            if o.freeze_latents else "autoencoder"),
              "losses": {k: getattr(o, k) for k in ("kl_weight", "seg_weight", "seg_balance", "seg_freq_weight",
                                                    "seg_freq_temperature", "attr_weight",
                                                    "coeff_weight", "adv_weight", "seg_class_boost", "latent_attrs",
                                                    "latent_attr_weight", "w_anchor_weight")},
              "phases": phases}
    if o.init is not None:
        record["init"] = o.init
    return record


def export(trainer: GeneratorAETrainer, run_dir: Path) -> None:
    from ..models.registry import save_module

    info = {"training": training_record(trainer)}
    save_generator(run_dir / "generator", trainer.G_ema, dtype=torch.float16, extra=info)
    save_module(trainer.E_ema, run_dir / "image_encoder.safetensors", half=True, extra=info)


def train_generator_ae(opts: GeneratorAEOptions, data=None) -> GeneratorAETrainer:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    run_dir = Path(opts.out)
    check_writable_dir(run_dir)
    found, opts = ckpt.find_resume(run_dir, TRAIN_KIND, opts, opts.resume)
    tr = GeneratorAETrainer(opts, data, resuming=bool(found))
    if found:
        tr.load_state(found[1], found[2])
        print(f"resuming {run_dir} from step {tr.step}", file=sys.stderr)
    write_text_atomic(run_dir / "options.json", json.dumps(opts.to_dict(), indent=2) + "\n")

    ckpt.run_loop(tr, opts, run_dir, TRAIN_KIND, export, "generator-ae")
    print(f"step {tr.step} ({tr.nimg / 1000:.1f} kimg, {tr.elapsed / 60:.1f} min); "
          f"generator: {run_dir / 'generator.safetensors'}", file=sys.stderr)
    return tr
