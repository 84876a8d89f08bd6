"""The generation pipeline: controls (text, mask, sketch, coefficients...) -> w -> face, in one pass.

:class:`GenerationPipeline` is the core; :class:`mm2latent.pipeline.editing.Pipeline`
(exported as ``mm2latent.Pipeline``) adds inversion and editing on top of it, so
this module never imports the editing one.

A weights directory (default: the package's shipped ``mm2latent/weights``)
holds one safetensors + JSON pair per model; what it holds and how it loads is
:mod:`mm2latent.models.registry`:

    generator      StyleGAN2 generator (kind stylegan2-generator)
    encoder        FaRL/CLIP-style text + image encoder (kind clip)
    parser, analyzer, mask_ae, sketch_ae, coeff_ae   perception stack
    mapping_net    MappingNet (kind mapping_net)
    image_encoder  image -> latent inverter (optional; needed for editing)
    e4e_encoder    an e4e/pSp W+ encoder (optional; ``mm2latent assemble --encoder``)

A pipeline folder may lack parts (``mm2latent assemble`` writes any subset):
the pipeline starts, and a call that needs a missing part raises a one-line
UserError naming it and how to get one (:mod:`mm2latent.models.parts`).

``generate(**controls)`` (or ``pipe(**controls)``) takes one keyword per
registered control (:data:`mm2latent.models.controls.CONTROLS`: ``text``,
``mask``, ``sketch``, ``coeffs`` and any plug-in), embeds what it is given
(absent modalities take MappingNet's learned "absent" embedding), maps to w,
optionally truncates towards the generator's mean w and synthesises.

What the seed varies: the given text embedding is perturbed with the same
Gaussian noise MappingNet was trained with (its measured image-text gap,
``mapping_net.json: text_noise_std``), so different seeds give different
faces that the same caption describes equally well; the seed also draws the
synthesis network's per-layer noise (fine texture). With ``variation > 0``
the finest ``variation_layers`` style layers are additionally mixed towards a
random w drawn from the seed -- from the fitted latent prior when the weights
have one (``latent_prior.safetensors``: w of real renders, where the decoder is
good), else mapping(z) -- and truncation pulls towards that prior's mean. Same
inputs + same seed -> the same image.

Text guidance (``text_guidance`` g, from layer ``guidance_from_layer`` k): the
text's contribution to w is extrapolated, as classifier-free guidance does in
diffusion models: ``w_k.. = w + g * (w - w_without_text)``, where
``w_without_text`` is MappingNet's output for the same inputs with the text
replaced by its learned "absent" embedding (one more MappingNet pass, no
extra synthesis). The pseudo-text noise MappingNet is trained with blurs what
the text says; guidance sharpens it again. When a control that states the
layout is given (``Control.states_layout``: mask, sketch, coefficients),
guidance is restricted to the layers from k on, leaving the coarse layers,
which lay out the face (what those controls state), unchanged; with text alone
it applies to every layer. Defaults come from ``mapping_net.json`` (``text_guidance``,
``guidance_from_layer``; both chosen on the validation split), else 0 (off).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..models.controls import ControlEncoders, embed_controls, get_control, one_of
from ..models.parts import MissingPart, is_missing
from ..models.registry import default_weights_dir, load_folder


# ---------------------------------------------------------------------------- pipeline


class GenerationPipeline:
    """Multimodal face generation with MappingNet (see module docstring). The user-facing
    :class:`~mm2latent.pipeline.editing.Pipeline` adds inversion and editing."""

    def __init__(self, generator, controls: ControlEncoders, mapping_net, image_encoder=None,
                 text_noise_std: float = 0.0, info: dict | None = None, latent_prior=None, wplus_inverter=None,
                 text_guidance: float = 0.0, guidance_from_layer: int = 0, e4e_encoder=None):
        # a missing part (None or MissingPart) stays a MissingPart: its first use names it
        self.G = generator.eval().requires_grad_(False) if not is_missing(generator) else MissingPart("generator")
        has_g = not is_missing(self.G)
        self.latent_prior = latent_prior.eval() if latent_prior is not None else None
        if self.latent_prior is not None and has_g and self.latent_prior.config.dim != self.G.w_dim:
            raise UserError(f"the latent prior is {self.latent_prior.config.dim}-d but the generator's w is "
                            f"{self.G.w_dim}-d: they were not made together")
        self.controls = controls
        self.mapping = (mapping_net.eval().requires_grad_(False) if not is_missing(mapping_net)
                        else MissingPart("mapping_net"))
        self.image_encoder = image_encoder.eval().requires_grad_(False) if image_encoder is not None else None
        self.wplus_inverter = wplus_inverter.eval().requires_grad_(False) if wplus_inverter is not None else None
        self.e4e_encoder = e4e_encoder.eval().requires_grad_(False) if e4e_encoder is not None else None
        if self.e4e_encoder is not None and has_g:
            n, d = self.e4e_encoder.n_styles, self.e4e_encoder.style_dim
            if (n, d) != (self.G.num_ws, self.G.w_dim):
                raise UserError(f"the e4e encoder makes {n}x{d} W+ codes but the generator takes "
                                f"{self.G.num_ws}x{self.G.w_dim}: they were not made together")
        if self.wplus_inverter is not None and has_g:
            c = self.wplus_inverter.config
            if (c.num_ws, c.w_dim) != (self.G.num_ws, self.G.w_dim):
                raise UserError(f"the W+ inverter makes {c.num_ws}x{c.w_dim} codes but the generator takes "
                                f"{self.G.num_ws}x{self.G.w_dim}: they were not made together")
        self.text_noise_std = float(text_noise_std)
        self.text_guidance, self.guidance_from_layer = check_guidance(text_guidance, guidance_from_layer,
                                                                      self.G.num_ws if has_g else None)
        self.info = info or {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> "GenerationPipeline":
        """Load a weights directory or pipeline folder (default: the shipped weights). Parts it lacks
        are left out: the pipeline starts, and using one says which part is missing."""
        comp = load_folder(path)
        d = Path(path) if path is not None else default_weights_dir()
        minfo = comp["mapping_net_info"]
        missing = [n for n in ("generator", "mapping_net") if is_missing(comp[n])]
        missing += [n for n in ("encoder", "parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae")
                    if not comp["controls"].has(n)]
        pipe = cls(comp["generator"], comp["controls"], comp["mapping_net"], comp["image_encoder"],
                   text_noise_std=float(minfo.get("text_noise_std", 0.0)),
                   info={"weights": str(d), "missing": missing, "manifest": comp["manifest"]},
                   latent_prior=comp["latent_prior"], wplus_inverter=comp["wplus_inverter"],
                   text_guidance=float(minfo.get("text_guidance", 0.0)),
                   guidance_from_layer=int(minfo.get("guidance_from_layer", 0)), e4e_encoder=comp["e4e_encoder"])
        if not missing_any(pipe.mapping, pipe.G) and pipe.mapping.config.w_dim != pipe.G.w_dim:
            raise UserError(f"mapping_net in {d} outputs {pipe.mapping.config.w_dim}-d w but the generator takes "
                            f"{pipe.G.w_dim}-d w: they were not trained together")
        return pipe

    def set_text_guidance(self, scale: float | None = None, from_layer: int | None = None) -> None:
        """Change the default text guidance (None keeps the current value)."""
        self.text_guidance, self.guidance_from_layer = check_guidance(
            self.text_guidance if scale is None else scale,
            self.guidance_from_layer if from_layer is None else from_layer, self.G.num_ws)

    @property
    def resolution(self) -> int:
        return self.G.resolution

    # -- embeddings ---------------------------------------------------------
    def embed(self, **controls) -> dict[str, torch.Tensor | None]:
        """Embeddings (1, D) of the given controls (keywords: the registered controls' names);
        None for the ones left out."""
        emb: dict[str, torch.Tensor | None] = {m: None for m in self.mapping.modalities}
        emb.update(embed_controls(self.controls, self.mapping.modalities, controls))
        if all(v is None for v in emb.values()):
            raise UserError(f"give at least one of {one_of(self.mapping.modalities)}")
        return emb

    # -- mapping + synthesis --------------------------------------------------
    @torch.no_grad()
    def latents(self, embeddings: dict[str, torch.Tensor | None], seeds: Sequence[int], truncation: float = 1.0,
                variation: float = 0.0, variation_layers: int = 4, text_guidance: float | None = None) -> torch.Tensor:
        """w+ (B, num_ws, w_dim) for each seed; embeddings have batch 1 or len(seeds).
        ``text_guidance`` None: the pipeline's default (see the module docstring)."""
        g, k = check_guidance(self.text_guidance if text_guidance is None else text_guidance,
                              self.guidance_from_layer, self.G.num_ws)
        b = len(seeds)
        gens = [torch.Generator().manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF) for s in seeds]
        emb = {}
        for m, e in embeddings.items():
            if e is None:
                emb[m] = None
                continue
            e = e.expand(b, -1) if e.shape[0] == 1 else e
            if m == "text" and self.text_noise_std > 0:
                noise = torch.stack([torch.randn(e.shape[1], generator=g) for g in gens])
                e = F.normalize(e + self.text_noise_std * noise, dim=-1)
            emb[m] = e
        w = self.mapping(emb, batch=b)
        ws = self.G.broadcast(w)
        if g > 0 and emb.get("text") is not None:
            # with a spatial control the coarse layers keep the layout it states; text alone: all layers
            k = k if any(e is not None and get_control(m).states_layout for m, e in emb.items()) else 0
            w_without = self.mapping({**emb, "text": None}, batch=b)
            ws = ws.clone()
            ws[:, k:] = ws[:, k:] + g * (w - w_without)[:, None]
        if variation > 0:
            if self.latent_prior is not None:
                w_rand = torch.cat([self.latent_prior.sample(1, g) for g in gens])
            else:
                w_rand = self.G.mapping(torch.stack([torch.randn(self.G.z_dim, generator=g) for g in gens]))
            k = max(0, min(variation_layers, self.G.num_ws))
            ws = ws.clone()
            ws[:, self.G.num_ws - k:] = ws[:, self.G.num_ws - k:].lerp(w_rand[:, None], float(variation))
        if truncation != 1.0:
            ws = self.w_center.lerp(ws, truncation)
        return ws

    @property
    def w_center(self) -> torch.Tensor:
        """Where truncation pulls: the fitted prior's mean (the mean w of real renders) if
        shipped, else the generator's tracked w_avg."""
        return self.latent_prior.mean if self.latent_prior is not None else self.G.w_avg

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Images (B, 3, R, R) in [-1, 1]; per-layer noise drawn from each seed (constant noise if None)."""
        if seeds is None:
            return self.G.synthesis(ws, noise_mode="const")
        out = []
        for i, s in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF)
                out.append(self.G.synthesis(ws[i:i + 1], noise_mode="random"))
        return torch.cat(out)

    def generate_tensor(self, *, seeds: Sequence[int] = (0,), truncation: float = 1.0, variation: float = 0.0,
                        text_guidance: float | None = None, **controls) -> torch.Tensor:
        _check_truncation(truncation, variation)
        emb = self.embed(**controls)
        return self.synthesize(self.latents(emb, list(seeds), truncation, variation, text_guidance=text_guidance),
                               list(seeds))

    def generate(self, *, seed: int = 0, truncation: float = 1.0, variation: float = 0.0,
                 text_guidance: float | None = None, **controls):
        """One face as a PIL image from the given controls (see the module docstring for what
        ``seed`` varies and what ``text_guidance`` does; None takes the shipped default)."""
        return to_pil(self.generate_tensor(seeds=[seed], truncation=truncation, variation=variation,
                                           text_guidance=text_guidance, **controls))[0]

    def __call__(self, **kwargs):
        """``pipe(text=..., mask=..., seed=...)``: :meth:`generate`, in the diffusers manner."""
        return self.generate(**kwargs)

    def generate_batch(self, *, seeds: Sequence[int] = (0, 1, 2, 3), truncation: float = 1.0, variation: float = 0.0,
                       text_guidance: float | None = None, **controls) -> list:
        """Several seeds for the same inputs (one batched pass)."""
        return to_pil(self.generate_tensor(seeds=seeds, truncation=truncation, variation=variation,
                                           text_guidance=text_guidance, **controls))

    # -- reading photos -------------------------------------------------------
    def parse(self, image) -> np.ndarray:
        from ..common.imageio import load_image
        from ..models.registry import parse_image

        img = load_image(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        return parse_image(self.controls.parser, img)

    def attributes(self, image) -> dict[str, float]:
        from ..common.imageio import load_image
        from ..models.registry import analyze_image

        img = load_image(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        return analyze_image(self.controls.analyzer, img)[0]


def missing_any(*parts) -> bool:
    return any(is_missing(p) for p in parts)


def check_guidance(scale: float, from_layer: int, num_ws: int | None) -> tuple[float, int]:
    """Validated (text guidance scale, first guided layer); ``num_ws`` None: the generator is not known
    yet (a MappingNet file on its own), so the layer is only checked to be >= 0."""
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise UserError(f"text guidance must be a number, got {scale!r}") from None
    if not (0.0 <= scale <= 10.0):
        raise UserError(f"text guidance must lie in [0, 10], got {scale}")
    if num_ws is None:
        if int(from_layer) < 0:
            raise UserError(f"guidance_from_layer must be >= 0, got {from_layer}")
    elif not (0 <= int(from_layer) < num_ws):
        raise UserError(f"guidance_from_layer must lie in [0, {num_ws - 1}], got {from_layer}")
    return scale, int(from_layer)


def _check_truncation(truncation: float, variation: float) -> None:
    if not (np.isfinite(truncation) and 0.0 <= truncation <= 2.0):
        raise UserError("truncation must lie in [0, 2] (1 = none)")
    if not (np.isfinite(variation) and 0.0 <= variation <= 1.0):
        raise UserError("variation must lie in [0, 1]")


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    arr = images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]
