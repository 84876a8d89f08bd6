"""Real-image editing: invert a photo into W+, then re-map it with changed controls.

:class:`Pipeline` (``mm2latent.Pipeline``) is the generation core
(:class:`~mm2latent.pipeline.core.GenerationPipeline`) plus the methods here;
this module depends on the core, never the reverse.

Inversion, in one pass: the e4e-style W+ inverter (``wplus_inverter``: w plus
small per-layer offsets, :class:`~mm2latent.models.inversion.WPlusInverter`)
when the weights have one, else a published e4e/pSp encoder
(``e4e_encoder``, :class:`~mm2latent.models.e4e.E4EImageEncoder`, put in a
pipeline folder by ``mm2latent assemble --encoder``), else the generator-AE's
image encoder (``w = G.mapping(mu(x))``, one w for every layer). ``refine_steps`` > 0 then
optimises the W+ code by Adam on pixel L1 + downsampled L2 + a feature loss
(cosine distance of the world image encoder's embeddings) with a pull towards
the one-pass code (the regulariser keeps it editable). ``tune_steps`` > 0 then
fine-tunes a private copy of the synthesis network around that code (pivotal
tuning, Roich et al. 2021, in our words): the code stays where MappingNet's
edits make sense while the generator learns the details of this photo that no
code reaches; edits of that inversion are drawn with the tuned copy.

Editing (``Pipeline.edit(image, **controls)``, one keyword per registered
control): the photo's own controls are read off it (parser mask, sketch,
coefficients, image embedding; ``Control.photo_embedding``); what the user
gives replaces the corresponding control (a control also leaves out the
photo's controls it contradicts, ``Control.clears``: a user mask drops the
photo's sketch). MappingNet maps both the photo's controls and the
edited controls; two ways to combine with the inverted code:

* ``delta`` (default): w_edit = w_inv + strength * (M(edited) - M(photo)) --
  the inverted code moves by the change MappingNet sees between the two sets
  of controls, so what the user did not change stays as inverted;
* ``blend``: w_edit = lerp(w_inv, M(edited), strength) -- replaces the code by
  the mapped one (strength 1 = pure MappingNet output).

``mm2latent eval editing`` measures which keeps more (at stop 25, with the phase-7 generator: ``delta``,
untouched-attribute change 0.099 vs 0.135; that report is in git history,
``git show 3246dbe:docs/reports/editing_eval.json``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from ..models.controls import CONTROLS, embed_controls, get_control, one_of
from ..models.inversion import reconstruction_loss
from .core import GenerationPipeline, to_pil

EDIT_MODES = ("delta", "blend")
FEATURE_WEIGHT = 0.1  # refinement: weight of the image-embedding (feature) loss next to pixel L1 + L2


@dataclass
class Inversion:
    ws: torch.Tensor            # (1, num_ws, w_dim)
    image: torch.Tensor         # (1, 3, R, R) the aligned input in [-1, 1]
    reconstruction: torch.Tensor
    seconds: float
    alignment: str
    history: list[float] = field(default_factory=list)
    method: str = "w"  # "wplus" (W+ inverter), "e4e" (e4e/pSp encoder) or "w" (image encoder); "+refined" / "+tuned"
    synthesis: Any = None  # a pivot-tuned copy of G.synthesis for this photo (None: the shared one)

    def draw(self, ws: torch.Tensor, default_synthesis) -> torch.Tensor:
        """Images of codes ``ws`` with this inversion's synthesis network."""
        with torch.no_grad():
            return (self.synthesis if self.synthesis is not None else default_synthesis)(ws, noise_mode="const")


def feature_loss(encoder, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Refinement's feature term: 1 - cosine between the image encoder's unit embedding of ``y``
    and the target embeddings, averaged over the batch."""
    return (1 - (encoder.encode_image(y) * target).sum(-1)).mean()


def align_photo(image: Any, size: int) -> tuple[torch.Tensor, str]:
    """Any photo (path / PIL / uint8 array, any size or mode) -> (1, 3, size, size) in [-1, 1], and what was done."""
    from PIL import Image

    from ..common.imageio import image_to_tensor, load_image, resize_image, to_rgb

    if isinstance(image, (str, os.PathLike)):
        arr = load_image(image)
    elif isinstance(image, Image.Image):
        arr = np.asarray(to_rgb(image))
    elif isinstance(image, torch.Tensor):
        if image.dim() != 4 or image.shape[1] != 3:
            raise UserError("an image tensor must be (1, 3, H, W) in [-1, 1]")
        arr = image[0].clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise UserError("an image array must be uint8 (H, W, 3) or (H, W, 4)")
        arr = arr[..., :3]
    h, w = arr.shape[:2]
    if min(h, w) < 16:
        raise UserError(f"image is too small ({w}x{h}); give at least 16x16 pixels")
    s = min(h, w)
    steps = []
    if h != w:
        steps.append(f"centre-cropped {w}x{h} to {s}x{s}")
    if s != size:
        steps.append(f"resized {s}x{s} to {size}x{size}")
    note = ", ".join(steps) if steps else f"used as is ({size}x{size})"
    return image_to_tensor(resize_image(arr, size))[None], note


class Pipeline(GenerationPipeline):
    """Multimodal face generation (:class:`~mm2latent.pipeline.core.GenerationPipeline`: ``generate``,
    ``generate_batch``, ``parse``, ``attributes``) plus real-image inversion and editing
    (``invert``, ``edit``, ``reconstruct``); see the module docstrings. Load with :meth:`from_pretrained`."""

    def _need_inverter(self, inverter: str = "auto"):
        """(module, "wplus" | "e4e" | "w") for ``inverter`` in auto / wplus / w (``wplus``: the W+
        inverter, else the e4e/pSp encoder)."""
        from ..models.parts import MissingPartError, missing_part_message

        if inverter not in ("auto", "wplus", "w"):
            raise UserError("inverter must be auto, wplus or w")
        if inverter in ("auto", "wplus") and self.wplus_inverter is not None:
            return self.wplus_inverter, "wplus"
        if inverter in ("auto", "wplus") and self.e4e_encoder is not None:
            return self.e4e_encoder, "e4e"
        if inverter == "wplus":
            raise UserError("these weights have no W+ inverter (wplus_inverter.safetensors or e4e_encoder.safetensors);"
                            " use inverter 'w'")
        if self.image_encoder is None:
            if inverter == "w":
                raise UserError("these weights have no image_encoder (image_encoder.safetensors); editing needs one")
            raise MissingPartError(missing_part_message("inverter"))
        return self.image_encoder, "w"

    @torch.no_grad()
    def one_pass_codes(self, x: torch.Tensor, inverter: str = "auto") -> tuple[torch.Tensor, str]:
        """Aligned images (B, 3, R, R) in [-1, 1] -> their W+ codes (B, L, D) from the one-pass
        inverter, and which inverter gave them ("wplus" or "w")."""
        enc, method = self._need_inverter(inverter)
        if method == "e4e":  # resizes to its own input size (256); W+ of the generator's layer count
            return enc.encode(x), method
        size = enc.config.encoder["size"] if method == "wplus" else enc.config.size
        xe = x if size == x.shape[-1] else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (enc(xe)[0] if method == "wplus" else self.G.broadcast(self.G.mapping(enc(xe)[0]))), method

    def invert(self, image: Any, refine_steps: int = 0, lr: float = 0.02, reg: float = 0.01,
               inverter: str = "auto", tune_steps: int = 0, tune_lr: float = 3e-4,
               feature_weight: float = FEATURE_WEIGHT) -> Inversion:
        """Photo -> W+ code (one-pass inverter, then optional optimisation refinement of the code and
        optional pivotal tuning of a copy of the synthesis network)."""
        if refine_steps < 0 or refine_steps > 5000:
            raise UserError("refine steps must lie in 0..5000")
        if tune_steps < 0 or tune_steps > 5000:
            raise UserError("tune steps must lie in 0..5000")
        x, note = align_photo(image, self.resolution)
        t0 = time.perf_counter()
        w0, method = self.one_pass_codes(x, inverter)
        ws = w0.clone()
        hist = []
        if refine_steps:
            ws.requires_grad_(True)
            opt = torch.optim.Adam([ws], lr=lr)
            enc_img = self.controls.encoder
            with torch.no_grad():
                target = enc_img.encode_image(x) if feature_weight else None
            for _ in range(refine_steps):
                y = self.G.synthesis(ws, noise_mode="const")
                loss = reconstruction_loss(y, x) + reg * (ws - w0).square().mean()
                if feature_weight:  # feature loss: the world image encoder's embedding (FaRL's image tower)
                    loss = loss + feature_weight * feature_loss(enc_img, y, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hist.append(loss.item())
            ws = ws.detach()
        synthesis = self._pivotal_tuning(ws, x, tune_steps, tune_lr, hist) if tune_steps else None
        with torch.no_grad():
            rec = (synthesis if synthesis is not None else self.G.synthesis)(ws, noise_mode="const")
        return Inversion(ws, x, rec, time.perf_counter() - t0, note, hist,
                         method + ("+refined" if refine_steps else "") + ("+tuned" if tune_steps else ""), synthesis)

    def _pivotal_tuning(self, ws: torch.Tensor, x: torch.Tensor, steps: int, lr: float, hist: list[float]):
        """A copy of G.synthesis fine-tuned to draw ``x`` from the fixed pivot ``ws``."""
        import copy

        synthesis = copy.deepcopy(self.G.synthesis).train().requires_grad_(True)
        opt = torch.optim.Adam(synthesis.parameters(), lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                y = synthesis(ws, noise_mode="const")
                loss = reconstruction_loss(y, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hist.append(loss.item())
        return synthesis.eval().requires_grad_(False)

    def reconstruct(self, image: Any, refine_steps: int = 0, inverter: str = "auto", tune_steps: int = 0):
        return to_pil(self.invert(image, refine_steps, inverter=inverter, tune_steps=tune_steps).reconstruction)[0]

    @torch.no_grad()
    def photo_controls(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The controls read off an aligned photo (see ControlEncoders.derive)."""
        return self.controls.derive(x)

    @torch.no_grad()
    def edit_latent(self, inv: Inversion, *, strength: float = 1.0, mode: str = "delta",
                    own_controls: dict | None = None, **controls) -> torch.Tensor:
        """The edited W+ code of ``inv`` with the given controls (keywords: the registered controls'
        names); ``own_controls``: the photo's controls when already read (ControlEncoders.derive)."""
        if mode not in EDIT_MODES:
            raise UserError(f"edit mode must be one of {', '.join(EDIT_MODES)}")
        if not (np.isfinite(strength) and 0.0 <= strength <= 2.0):
            raise UserError("strength must lie in [0, 2]")
        given = {m: v for m, v in controls.items() if v is not None}
        if not given:
            raise UserError(f"say what to change: give {one_of(c.noun for c in CONTROLS.values())}")
        c = self.controls
        own = own_controls if own_controls is not None else self.photo_controls(inv.reconstruction)
        base = {m: get_control(m).photo_embedding(c, own) for m in self.mapping.modalities}
        for m in given:  # the photo's controls a given one contradicts (on both sides of the delta)
            for cleared in get_control(m).clears:
                if cleared not in given and cleared in base:
                    base[cleared] = None
        new = {**base, **embed_controls(c, self.mapping.modalities, controls)}
        w_new = self.G.broadcast(self.mapping(new, batch=1))
        if mode == "blend":
            return inv.ws.lerp(w_new, float(strength))
        w_old = self.G.broadcast(self.mapping(base, batch=1))
        return inv.ws + float(strength) * (w_new - w_old)

    def edit(self, image: Any, *, strength: float = 1.0, mode: str = "delta", refine_steps: int = 0,
             inverter: str = "auto", tune_steps: int = 0, **controls):
        """Edited photo (PIL) with the given controls. ``image`` may also be an :class:`Inversion`
        from :meth:`invert` (drawn with its pivot-tuned generator when it has one)."""
        inv = image if isinstance(image, Inversion) else self.invert(image, refine_steps, inverter=inverter,
                                                                     tune_steps=tune_steps)
        ws = self.edit_latent(inv, strength=strength, mode=mode, **controls)
        return to_pil(inv.draw(ws, self.G.synthesis))[0]
