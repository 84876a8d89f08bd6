"""Controls and their embeddings: the common vocabulary of MappingNet.

Training data and inference go through the same functions, so that a mask
drawn by a user and a mask the parser reads off a generated face reach
MappingNet the same way:

* ``derive(images)``: what the perception stack reads off images (parser mask,
  edge sketch, normalised coefficients, attribute probabilities, image
  embedding) -- used on generator samples to build MappingNet's training set;
* ``embed_*``: a control -> its embedding (mask/sketch/coefficient autoencoder
  encoders, the text tower of the FaRL-style encoder);
* ``resize_labels`` / ``resize_images`` / ``resize_sketch``: the resizing every
  model input goes through.

Controls are plug-ins: each modality is one :class:`Control` subclass (how a
user value is read, which model embeds it, its CLI option and its web widget),
registered in :data:`CONTROLS` with :func:`register_control`. MappingNet's
config, the pipeline's ``generate(**controls)`` / ``edit(**controls)``,
``mm2latent generate`` / ``edit`` and the web page all iterate over that
registry, and :func:`embed_controls` is the one path from user values to
embeddings. The four built-in controls are at the end of this module.

The weights of a :class:`ControlEncoders` load with
:func:`mm2latent.models.registry.load_components` (``need=("controls",)``).
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import UserError
from .clip import CLIP
from .parts import is_missing
from ..world.sketch import extract_sketch


def resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) integer label maps -> (B, size, size), nearest neighbour."""
    if labels.shape[-1] == size and labels.shape[-2] == size:
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_sketch(sketch: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) 0/1 edge maps -> (B, 1, size, size); thin lines survive downsizing (area + low threshold)."""
    if sketch.shape[-1] == size:
        return sketch
    down = sketch.shape[-1] > size
    y = F.interpolate(sketch.float(), size=(size, size), mode="area" if down else "nearest")
    return (y > (0.2 if down else 0.5)).float()


@dataclass
class ControlEncoders:
    encoder: CLIP
    parser: torch.nn.Module
    analyzer: torch.nn.Module
    mask_ae: torch.nn.Module
    sketch_ae: torch.nn.Module
    coeff_ae: torch.nn.Module
    #: encoders of plug-in controls beyond the built-in ones, by component name (see Control.component)
    extra: dict[str, torch.nn.Module] = field(default_factory=dict)
    # a part may be a MissingPart (a pipeline folder without it): its first use says so, and
    # derive() leaves out what it would read

    def __post_init__(self):
        for m in (self.encoder, self.parser, self.analyzer, self.mask_ae, self.sketch_ae, self.coeff_ae,
                  *self.extra.values()):
            if not is_missing(m):
                m.eval().requires_grad_(False)

    def has(self, name: str) -> bool:
        """Whether part ``name`` is there (not a :class:`~.parts.MissingPart`)."""
        return name in self.extra or (name in BUILTIN_PARTS and not is_missing(getattr(self, name)))

    def part(self, name: str) -> torch.nn.Module:
        """The model called ``name`` (a built-in field or an entry of ``extra``)."""
        if name in self.extra:
            return self.extra[name]
        if name in BUILTIN_PARTS:
            return getattr(self, name)
        raise UserError(f"these weights have no {name} model ({name}.safetensors); the control that needs it "
                        "cannot be embedded")

    @property
    def mask_size(self) -> int:
        return self.mask_ae.config.size

    @property
    def sketch_size(self) -> int:
        return self.sketch_ae.config.size

    # ------------------------------------------------------------------ reading controls off images

    @torch.no_grad()
    def attribute_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> the analyzer's attribute probabilities (B, A) alone."""
        return torch.sigmoid(self.analyzer(resize_images(images.float(), self.analyzer.config.size))[0])

    @torch.no_grad()
    def parse_mask(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> the parser's label map (B, M, M) at the mask autoencoder's size."""
        return resize_labels(self.parser(resize_images(images.float(), self.parser.config.size)).argmax(1), self.mask_size)

    @torch.no_grad()
    def derive(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) in [-1, 1] -> mask (B, M, M) long, sketch (B, 1, K, K), coeffs (B, 13) in
        normalised units, attributes (B, A) probabilities, image_emb (B, D) unit vectors."""
        x = images.float()
        if all(self.has(p) for p in BUILTIN_PARTS[:5]):  # every part there (the weights of training)
            attrs, coeffs = self.analyzer(resize_images(x, self.analyzer.config.size))
            return {
                "mask": self.parse_mask(x),
                "sketch": extract_sketch(resize_images(x, self.sketch_size)),
                "coeffs": coeffs.clamp(-1, 1),
                "attributes": torch.sigmoid(attrs),
                "image_emb": self.encoder.encode_image(x),
            }
        # a pipeline folder with parts missing: what they would read is left out (a photo's own
        # control nobody can read is absent in an edit, on both sides of the delta)
        out: dict[str, torch.Tensor] = {}
        if self.has("parser") and self.has("mask_ae"):
            out["mask"] = self.parse_mask(x)
        if self.has("sketch_ae"):
            out["sketch"] = extract_sketch(resize_images(x, self.sketch_size))
        if self.has("analyzer"):
            attrs, coeffs = self.analyzer(resize_images(x, self.analyzer.config.size))
            out["coeffs"] = coeffs.clamp(-1, 1)
            out["attributes"] = torch.sigmoid(attrs)
        if self.has("encoder"):
            out["image_emb"] = self.encoder.encode_image(x)
        return out

    # ------------------------------------------------------------------ embeddings

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.encode_text(list(texts)).float()

    @torch.no_grad()
    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_image(images.float()).float()

    @torch.no_grad()
    def embed_mask(self, labels: torch.Tensor) -> torch.Tensor:
        return self.mask_ae.encode(resize_labels(labels, self.mask_size))

    @torch.no_grad()
    def embed_sketch(self, sketch: torch.Tensor) -> torch.Tensor:
        return self.sketch_ae.encode(resize_sketch(sketch, self.sketch_size))

    @torch.no_grad()
    def embed_coeffs(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.coeff_ae.encode(coeffs.float())


#: the models of every ControlEncoders (its fields, the weights files ``load_components`` reads)
BUILTIN_PARTS = ("encoder", "parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae")


# ---------------------------------------------------------------------------- reading user values


def sketch_from_image(image: np.ndarray, size: int) -> torch.Tensor:
    """A user's sketch (uint8 RGB or grey, any size) -> (1, size, size) float, 1 = line.

    Black-on-white and white-on-black drawings are both accepted: lines are the
    minority ink, so a mostly dark image is read as white lines on black. The
    image is centre-cropped to a square and area-resized so thin lines survive.
    """
    from PIL import Image

    a = np.asarray(image, dtype=np.float32)
    grey = a if a.ndim == 2 else a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = grey / 255.0
    line = (grey > 0.5) if grey.mean() < 0.5 else (grey < 0.5)
    h, w = line.shape
    s = min(h, w)
    line = line[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].astype(np.float32)
    if s != size:
        im = Image.fromarray(line, mode="F").resize((size, size), Image.BOX)
        line = (np.asarray(im) > (0.2 if s > size else 0.5)).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(line))[None]


def check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise UserError("text must be a string")
    t = " ".join(text.split())
    if not t:
        raise UserError("the text is empty; describe the face (e.g. 'a smiling woman with blond hair') or leave it out")
    return t


def prepare_mask(mask: Any, size: int) -> torch.Tensor:
    """Path / PIL image / (H, W) index array / (H, W, 3) colour array -> (1, size, size) long."""
    from PIL import Image

    from ..common.palette import NUM_CLASSES, color_to_index, load_mask, resize_mask

    if isinstance(mask, (str, os.PathLike)):
        arr = load_mask(mask)
    else:
        a = np.asarray(mask.convert("RGB") if isinstance(mask, Image.Image) and mask.mode not in ("L", "P") else mask)
        if a.ndim == 3 and a.shape[2] >= 3:
            arr = color_to_index(a[..., :3].astype(np.uint8))
        elif a.ndim == 2:
            if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= NUM_CLASSES:
                raise UserError(f"a mask array must hold class indices 0..{NUM_CLASSES - 1}")
            arr = a.astype(np.uint8)
        else:
            raise UserError(f"a mask must be (H, W) indices or (H, W, 3) colours, got shape {a.shape}")
    if min(arr.shape) < 8:
        raise UserError(f"mask is too small ({arr.shape[1]}x{arr.shape[0]}); give at least 8x8")
    if arr.shape != (size, size):
        arr = resize_mask(arr, size)
    return torch.from_numpy(arr.astype(np.int64))[None]


def prepare_sketch(sketch: Any, size: int) -> torch.Tensor:
    """Path / PIL image / array (either polarity) -> (1, 1, size, size), 1 = line."""
    from PIL import Image

    from ..common.imageio import load_image

    if isinstance(sketch, (str, os.PathLike)):
        a = load_image(sketch)
    elif isinstance(sketch, Image.Image):
        a = np.asarray(sketch.convert("RGB"))
    else:
        a = np.asarray(sketch)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).astype(np.uint8) if a.max() <= 1 else np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 8:
        raise UserError("a sketch must be an image of at least 8x8 pixels")
    s = sketch_from_image(a, size)
    if float(s.sum()) == 0:
        raise UserError("the sketch has no lines (a blank page); leave --sketch out instead")
    if float(s.mean()) > 0.5:
        raise UserError("the sketch is mostly lines; give thin lines on a plain background")
    return s[None]


def prepare_coeffs(coeffs: Any) -> torch.Tensor:
    """Dict name -> raw value (degrees for yaw/pitch/roll, [0, 1] otherwise), JSON path, or a
    13-vector -> (1, 13) normalised. Missing names take the neutral value (0 degrees / 0.5);
    out-of-range values are clipped to the world's range; NaN/inf and unknown names are errors."""
    from ..world.dataset import normalise_coeffs
    from ..world.params import COEFF_NAMES, COEFF_RANGES

    if isinstance(coeffs, (str, os.PathLike)):
        coeffs = read_json_file(coeffs, "coefficient file")
    if isinstance(coeffs, dict):
        unknown = [k for k in coeffs if k not in COEFF_RANGES]
        if unknown:
            raise UserError(f"unknown coefficient {unknown[0]!r}; known: {', '.join(COEFF_NAMES)}")
        raw = []
        for k in COEFF_NAMES:
            lo, hi = COEFF_RANGES[k]
            v = coeffs.get(k, 0.0 if lo < 0 else 0.5)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise UserError(f"coefficient {k} must be a number, got {v!r}") from None
            raw.append(v)
    else:
        try:
            raw = [float(v) for v in np.asarray(coeffs, dtype=np.float64).reshape(-1)]
        except (TypeError, ValueError):
            raise UserError("coefficients must be a dict of name -> number or a list of 13 numbers") from None
        if len(raw) != len(COEFF_NAMES):
            raise UserError(f"expected {len(COEFF_NAMES)} coefficients ({', '.join(COEFF_NAMES)}), got {len(raw)}")
    a = np.asarray(raw, np.float64)
    if not np.isfinite(a).all():
        bad = COEFF_NAMES[int(np.argmin(np.isfinite(a)))]
        raise UserError(f"coefficient {bad} must be a finite number")
    lo = np.array([COEFF_RANGES[k][0] for k in COEFF_NAMES])
    hi = np.array([COEFF_RANGES[k][1] for k in COEFF_NAMES])
    a = np.clip(a, lo, hi)
    return torch.from_numpy(normalise_coeffs(a.astype(np.float32)))[None].float()


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """The JSON value in ``path``; a one-line UserError naming ``what`` when it is missing or not JSON."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {p} is not valid JSON ({e})") from None


# ---------------------------------------------------------------------------- controls as plug-ins


@dataclass
class WebWidget:
    """How the web page (mm2latent/app/server.py) shows a control: data only, so that this layer
    needs no gradio. ``kind`` picks one of the page's widget builders: ``textbox`` (a string),
    ``mask_editor`` (a painted label map), ``sketchpad`` (drawn lines) or ``sliders`` (a dict of
    named numbers, ``options["sliders"]`` = ((name, low, high), ...))."""

    kind: str
    label: str
    use_label: str                 # the control's "use ..." checkbox
    use_default: bool = False      # ticked when the page opens
    elem_id: str = ""              # DOM id (browser tests and scripts find the widget by it)
    section: str | None = None     # title of a collapsed section holding it (None: always shown)
    hint: str = ""                 # what to do with it, for the "nothing to generate from" message
    edit_label: str | None = None  # its label in the edit tab (None: ``label``)
    options: dict = field(default_factory=dict)  # kind-specific (examples, slider ranges)


class Control(abc.ABC):
    """One modality of MappingNet's input, everything about it in one class.

    ``name`` is its key in MappingNet's config and inputs, its keyword in ``generate(**controls)``
    and ``edit(**controls)`` and its CLI option (``--name``, underscores as dashes). :meth:`read`
    turns a user value (a path, an array, a PIL image, a dict...) into the model input,
    raising a one-line :class:`UserError` on bad input; :meth:`embed` embeds a batch of model
    inputs with the model ``component`` names (a :class:`ControlEncoders` part; a plug-in's own
    encoder is loaded from ``<component>.safetensors`` when ``component_classes`` gives its
    (module class, config class)). Register an instance (or the class) with :func:`register_control`.
    """

    name: str = ""
    noun: str = ""                        # in messages: "a mask", "coefficients"
    component: str | None = None          # the model that embeds it (None: embedded without one)
    component_classes: tuple[type, type] | None = None  # (module, config) when that model is a new kind
    states_layout: bool = False           # fixes where the face is: text guidance then keeps the coarse layers
    clears: tuple[str, ...] = ()          # in an edit, the photo's own controls it contradicts (left out)
    reads_file: bool = True               # its CLI value is a path (checked before the models load)
    cli_help: str = ""
    cli_metavar: str | None = None
    widget: WebWidget

    @property
    def cli_option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @abc.abstractmethod
    def read(self, value: Any, encoders: ControlEncoders) -> Any:
        """A user value -> the model input, batch of 1 (UserError on bad input)."""

    @abc.abstractmethod
    def embed(self, encoders: ControlEncoders, batch: Any) -> torch.Tensor:
        """A batch of model inputs -> embeddings (B, D)."""

    @property
    def data_key(self) -> str:
        """The array of MappingNet's training data that holds its embeddings (train/mapping_data.py)."""
        return f"{self.name}_emb"

    def training_embedding(self, encoders: ControlEncoders, images: torch.Tensor,
                           derived: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Its embeddings (B, D) for MappingNet's training data: its value read off ``images``
        (generated faces or photos, (B, 3, S, S) in [-1, 1]) and embedded. ``derived`` is
        :meth:`ControlEncoders.derive` of those images (the built-in controls read their values
        there). None: this control cannot be read off images, so the data has no such array."""
        return self.embed(encoders, derived[self.name]) if self.name in derived else None

    def photo_embedding(self, encoders: ControlEncoders, own: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The embedding of a photo's own value of this control, from ``ControlEncoders.derive``'s
        output (None: a photo does not state it, so an edit leaves it absent on both sides)."""
        return self.embed(encoders, own[self.name]) if self.name in own else None


#: the registered controls, in MappingNet's input order
CONTROLS: dict[str, Control] = {}
#: keyword arguments of the pipeline's methods, which a control of the same name could never reach
RESERVED_NAMES = frozenset({"seed", "seeds", "truncation", "variation", "text_guidance", "image", "inv", "strength",
                            "mode", "refine_steps", "inverter", "tune_steps", "own_controls", "embeddings"})


def register_control(control: Control | type[Control]):
    """Add a control (an instance, or a class, which is instantiated) to :data:`CONTROLS`; returns
    its argument, so it also works as a class decorator."""
    c = control() if isinstance(control, type) else control
    if not isinstance(c, Control):
        raise TypeError(f"{c!r} is not a Control")
    if not c.name.isidentifier() or c.name in RESERVED_NAMES:
        raise ValueError(f"a control name must be an identifier other than {sorted(RESERVED_NAMES)}, got {c.name!r}")
    if c.name in CONTROLS:
        raise ValueError(f"a control named {c.name!r} is registered already")
    CONTROLS[c.name] = c
    return control


def unregister_control(name: str) -> Control:
    """Remove a control from :data:`CONTROLS` (a plug-in's tests restore the registry with it)."""
    return CONTROLS.pop(name)


def control_names() -> tuple[str, ...]:
    return tuple(CONTROLS)


def get_control(name: str) -> Control:
    if name not in CONTROLS:
        raise UserError(f"unknown control {name!r}; known: {', '.join(CONTROLS)}")
    return CONTROLS[name]


def one_of(words: Iterable[str], conjunction: str = "or") -> str:
    """'a, b or c': the controls named in a message."""
    w = list(words)
    return w[0] if len(w) == 1 else f"{', '.join(w[:-1])} {conjunction} {w[-1]}"


def embed_controls(encoders: ControlEncoders, modalities: Iterable[str], given: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Embeddings (1, D) of the user values in ``given`` (None values are left out), in registry
    order: the one path from user values to MappingNet inputs, for generation and editing.
    Every name must be a registered control that this MappingNet (``modalities``) takes."""
    mods = set(modalities)
    for name in given:
        get_control(name)
    for name, v in given.items():
        if v is not None and name not in mods:
            raise UserError(f"this MappingNet was trained without the {name} modality")
    out = {}
    for name, control in CONTROLS.items():
        if given.get(name) is not None:
            out[name] = control.embed(encoders, control.read(given[name], encoders))
    return out


def component_classes() -> dict[str, tuple[type, type]]:
    """Model kind -> (module class, config class) of the plug-in controls' own encoders."""
    return {c.component: c.component_classes for c in CONTROLS.values() if c.component and c.component_classes}


# ---------------------------------------------------------------------------- the built-in controls

EXAMPLE_PROMPTS = ("a smiling woman with blond hair", "a man with black hair and a beard",
                   "an old bald man wearing eyeglasses", "a young woman with wavy brown hair and bangs",
                   "This person has gray hair and wears a hat.")


@register_control
class TextControl(Control):
    """A caption, embedded by the encoder's text tower. MappingNet was trained with noisy image
    embeddings in this slot (pseudo-text), so a photo's own "text" is its image embedding."""

    name, noun, component = "text", "text", "encoder"
    reads_file = False
    cli_help = 'caption, e.g. "a smiling woman with blond hair"'
    widget = WebWidget("textbox", "Text", "use text", True, elem_id="prompt", hint="type a prompt",
                       edit_label="Change with text", options={"examples": EXAMPLE_PROMPTS})

    def read(self, value, encoders):
        return [check_text(value)]

    def embed(self, encoders, batch):
        return encoders.embed_text(batch)

    def photo_embedding(self, encoders, own):
        return own.get("image_emb")

    @property
    def data_key(self) -> str:
        return "image_emb"  # pseudo-text: MappingNet trains on noisy image embeddings in this slot

    def training_embedding(self, encoders, images, derived):
        return derived["image_emb"]


@register_control
class MaskControl(Control):
    """A 19-class segmentation mask, embedded by the mask autoencoder. A new mask contradicts the
    photo's own edges, so an edit with a mask leaves the photo's sketch out."""

    name, noun, component = "mask", "a mask", "mask_ae"
    states_layout = True
    clears = ("sketch",)
    cli_help = "segmentation mask PNG (index 0..18 or CelebAMask-HQ colours)"
    widget = WebWidget("mask_editor", "Mask (paint with the class colours)", "use mask", True, elem_id="mask-editor",
                       hint="paint a mask", edit_label="Its mask (paint to change)")

    def read(self, value, encoders):
        return prepare_mask(value, encoders.mask_size)

    def embed(self, encoders, batch):
        return encoders.embed_mask(batch)


@register_control
class SketchControl(Control):
    """An edge sketch (either polarity), embedded by the sketch autoencoder."""

    name, noun, component = "sketch", "a sketch", "sketch_ae"
    states_layout = True
    cli_help = "sketch image (dark lines on light, or light on dark)"
    widget = WebWidget("sketchpad", "Sketch (dark lines)", "use sketch", elem_id="sketchpad", section="Sketch",
                       hint="draw a sketch")

    def read(self, value, encoders):
        return prepare_sketch(value, encoders.sketch_size)

    def embed(self, encoders, batch):
        return encoders.embed_sketch(batch)


def _coeff_sliders() -> tuple[tuple[str, float, float], ...]:
    from ..world.params import COEFF_NAMES, COEFF_RANGES

    return tuple((k, *COEFF_RANGES[k]) for k in COEFF_NAMES)


@register_control
class CoeffsControl(Control):
    """The 13 pose/expression/shape coefficients, embedded by the coefficient autoencoder."""

    name, noun, component = "coeffs", "coefficients", "coeff_ae"
    states_layout = True
    cli_help = "JSON file of pose/expression/shape coefficients"
    widget = WebWidget("sliders", "Pose and expression", "use pose/expression", elem_id="coeff",
                       section="Pose and expression", hint="use the sliders", options={"sliders": _coeff_sliders()})

    @property
    def data_key(self) -> str:
        return "coeff_emb"

    def read(self, value, encoders):
        return prepare_coeffs(value)

    def embed(self, encoders, batch):
        return encoders.embed_coeffs(batch)
