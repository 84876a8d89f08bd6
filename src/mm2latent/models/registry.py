"""The model registry: which models a weights directory holds, and how they load and save.

A weights directory (default: the package's shipped ``mm2latent/weights/``, see
:func:`default_weights_dir`) holds one safetensors + JSON pair per model; the
file names are :data:`COMPONENT_FILES`::

    generator      StyleGAN2 generator (kind stylegan2-generator)
    encoder        FaRL/CLIP-style text + image encoder (kind clip)
    parser, analyzer, mask_ae, sketch_ae, coeff_ae   perception stack
    mapping_net    MappingNet (kind mapping_net)
    image_encoder  image -> latent inverter (optional; needed for editing)
    latent_prior, wplus_inverter                     optional
    e4e_encoder    an e4e/pSp image -> W+ encoder (optional, kind e4e_encoder; ``mm2latent assemble``)
    <component>    a plug-in control's own encoder (``Control.component``), optional

The JSON holds ``kind``, the model ``config`` and training notes; tensors may
be stored in float16 (they are loaded as float32). :func:`model_classes` maps
a kind to its module and config classes; :func:`load_module_file` and
:func:`save_module` read and write one file; :func:`load_components` loads
several models of a directory at once, and :func:`load_folder` every part a
pipeline folder holds (the missing ones as :class:`~.parts.MissingPart`). The
parser file may hold our U-Net (kind ``parser``) or a BiSeNet (kind
``bisenet_parser``); :data:`PART_KINDS` lists the kinds each file may hold.

>>> p = load_perception()                     # shipped weights
>>> p = load_perception("runs/weights", names=("parser",))
>>> labels = p.parser(images).argmax(1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..common.checkpoint import load_checkpoint, save_checkpoint
from ..common.errors import UserError
from .controls import BUILTIN_PARTS, ControlEncoders, component_classes, sketch_from_image

NAMES: tuple[str, ...] = ("parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae")
FORMAT_VERSION = 1


COMPONENT_FILES = {
    "generator": "generator.safetensors",
    "encoder": "encoder.safetensors",
    "parser": "parser.safetensors",
    "analyzer": "analyzer.safetensors",
    "mask_ae": "mask_ae.safetensors",
    "sketch_ae": "sketch_ae.safetensors",
    "coeff_ae": "coeff_ae.safetensors",
    "mapping_net": "mapping_net.safetensors",
    "image_encoder": "image_encoder.safetensors",
    "latent_prior": "latent_prior.safetensors",
    "wplus_inverter": "wplus_inverter.safetensors",
    "e4e_encoder": "e4e_encoder.safetensors",
}
CONTROL_PARTS = BUILTIN_PARTS
#: the kinds a component file may hold, when more than its own name (read from its JSON)
PART_KINDS: dict[str, tuple[str, ...]] = {"parser": ("parser", "bisenet_parser")}
#: the optional inversion / sampling parts of a pipeline folder (None when absent)
OPTIONAL_PARTS = ("image_encoder", "latent_prior", "wplus_inverter", "e4e_encoder")


def default_weights_dir() -> Path:
    """The package's shipped weights directory, ``mm2latent/weights/`` (the one place that knows it)."""
    return Path(__file__).resolve().parents[1] / "weights"


def component_file(d: str | os.PathLike, name: str) -> Path:
    """The file of component ``name`` in weights directory ``d``; a UserError when it is not there."""
    f = Path(d) / COMPONENT_FILES.get(name, f"{name}.safetensors")
    if not f.exists():
        raise UserError(f"no {name} weights in {d} (expected {f.name} and {f.with_suffix('.json').name})")
    return f


def model_classes(kind: str):
    """(module class, config class) for a model kind."""
    from . import analyzer, autoencoders, bisenet, e4e, inversion, latent_prior, mapping, parser

    table = {
        "parser": (parser.FaceParser, parser.ParserConfig),
        "analyzer": (analyzer.FaceAnalyzer, analyzer.AnalyzerConfig),
        "mask_ae": (autoencoders.MaskAE, autoencoders.MaskAEConfig),
        "sketch_ae": (autoencoders.SketchAE, autoencoders.SketchAEConfig),
        "coeff_ae": (autoencoders.CoeffAE, autoencoders.CoeffAEConfig),
        "image_encoder": (inversion.ImageEncoder, inversion.ImageEncoderConfig),
        "wplus_inverter": (inversion.WPlusInverter, inversion.WPlusInverterConfig),
        "mapping_net": (mapping.MappingNet, mapping.MappingNetConfig),
        "latent_prior": (latent_prior.GaussianLatentPrior, latent_prior.LatentPriorConfig),
        "e4e_encoder": (e4e.E4EImageEncoder, e4e.E4EImageEncoderConfig),
        "bisenet_parser": (bisenet.StoredBiSeNetParser, bisenet.BiSeNetConfig),
        **component_classes(),
    }
    if kind not in table:
        raise UserError(f"unknown perception model kind {kind!r}; known: {', '.join(table)}")
    return table[kind]


def build_model(kind: str, config: dict | None = None, stored: bool = False) -> torch.nn.Module:
    """A fresh model; ``config`` overrides the defaults. ``stored``: the config
    was read from a file, so options it predates take their legacy values."""
    cls, cfg_cls = model_classes(kind)
    try:
        cfg = cfg_cls.from_dict(config or {}, legacy=stored)
        return cls(cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid {kind} config: {e}") from None


def module_state(module: torch.nn.Module, half: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # not needed for inference
        out[k] = v.half() if half and v.is_floating_point() else v
    return out


def save_module(module: torch.nn.Module, path: str | os.PathLike, half: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write a shipped model: ``path`` (.safetensors) + JSON with kind and config."""
    config = {"kind": module.kind, "format_version": FORMAT_VERSION, "config": module.config.to_dict(),
              "dtype": "float16" if half else "float32", **(extra or {})}
    return save_checkpoint(path, module_state(module, half), config)


def load_module_file(path: str | os.PathLike, kind: str) -> torch.nn.Module:
    """Load one shipped model file of the given kind (eval mode, float32)."""
    tensors, cfg = load_checkpoint(path, expect_kind=kind)
    model = build_model(kind, cfg.get("config") or {}, stored=True)
    state = model.state_dict()
    missing = [k for k in state if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in state]
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match its {kind} config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise UserError(f"checkpoint {path}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(state[k].shape)}")
        state[k] = v.to(state[k].dtype)
    model.load_state_dict(state)
    model.eval()
    return model


def stored_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` a model file's JSON names (None when the JSON is missing or unreadable: loading
    then says what is wrong)."""
    import json

    from ..common.checkpoint import config_path

    try:
        kind = json.loads(config_path(path).read_text("utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def load_part_file(path: str | os.PathLike, name: str) -> torch.nn.Module:
    """Load the file of component ``name`` as the kind it holds, when that is one of the kinds the
    component may be (:data:`PART_KINDS`; e.g. a BiSeNet parser), else as kind ``name``."""
    kind = stored_kind(path)
    return load_module_file(path, kind if kind in PART_KINDS.get(name, ()) else name)


def load_module(weights_dir: str | os.PathLike | None, name: str) -> torch.nn.Module:
    """Load ``name`` (one of :data:`NAMES`) from a weights directory."""
    if name not in NAMES:
        raise UserError(f"unknown perception model {name!r}; known: {', '.join(NAMES)}")
    d = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    if not d.exists():
        hint = " (the package ships none yet: train with `mm2latent train ...` and pass --weights)" if weights_dir is None else ""
        raise UserError(f"weights directory {d} does not exist{hint}")
    if not d.is_dir():
        raise UserError(f"weights path {d} is not a directory")
    f = d / f"{name}.safetensors"
    if not f.exists():
        from .parts import PART_HINTS

        raise UserError(f"no {name} weights in {d} (expected {f.name} and {name}.json): {PART_HINTS[name][1]}")
    return load_part_file(f, name)


def load_components(weights: str | os.PathLike | None = None,
                    need: Sequence[str] = ("generator", "controls", "mapping_net")) -> dict[str, Any]:
    """Load models from a weights directory (default: shipped). ``need`` names components;
    ``"controls"`` means the encoder and the perception stack as a :class:`~.controls.ControlEncoders`,
    with the own encoders of the registered plug-in controls that the directory holds."""
    import json

    from .clip import load_clip
    from .stylegan2 import load_generator

    d = Path(weights) if weights is not None else default_weights_dir()
    if not d.is_dir():
        raise UserError(f"weights directory {d} does not exist" if not d.exists() else f"{d} is not a directory")
    out: dict[str, Any] = {}
    for name in need:
        if name == "controls":
            parts = {p: (load_clip(component_file(d, p)) if p == "encoder" else load_part_file(component_file(d, p), p))
                     for p in CONTROL_PARTS}
            extra = {k: load_module_file(d / f"{k}.safetensors", k) for k in component_classes()
                     if (d / f"{k}.safetensors").exists()}
            out["controls"] = ControlEncoders(**parts, extra=extra)
        elif name == "generator":
            f = component_file(d, "generator")
            out["generator"] = load_generator(f)
            out["generator_info"] = json.loads(f.with_suffix(".json").read_text()).get("training", {})
        elif name in ("mapping_net", *OPTIONAL_PARTS):
            f = component_file(d, name)
            out[name] = load_module_file(f, name)
            out[name + "_info"] = json.loads(f.with_suffix(".json").read_text())
        else:
            raise ValueError(f"unknown component {name!r}")
    return out


def load_optional(weights: str | os.PathLike, name: str) -> Any:
    """Component ``name`` from a weights directory, or None when the directory has none
    (image_encoder, wplus_inverter and latent_prior are optional)."""
    d = Path(weights)
    return load_components(d, need=(name,))[name] if (d / COMPONENT_FILES[name]).exists() else None


#: every part a pipeline folder may hold (``mm2latent assemble`` writes any subset of them)
PIPELINE_PARTS = ("generator", *CONTROL_PARTS, "mapping_net", *OPTIONAL_PARTS)


def load_folder(weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """Every part a pipeline folder holds (default: the shipped weights), for
    :meth:`~mm2latent.pipeline.core.GenerationPipeline.from_pretrained`.

    Keys as :func:`load_components` (``generator``, ``generator_info``, ``controls``,
    ``mapping_net``, ``mapping_net_info``) plus the :data:`OPTIONAL_PARTS`. A missing generator,
    control part or MappingNet is a :class:`~.parts.MissingPart` (its first use says which part it is
    and how to get one); a missing optional part is None. A part that is there but damaged is an
    error now. ``pipeline.json`` (written by ``mm2latent assemble``) is informational."""
    import json

    from .clip import load_clip
    from .parts import MissingPart

    d = Path(weights) if weights is not None else default_weights_dir()
    if not d.is_dir():
        raise UserError(f"weights directory {d} does not exist" if not d.exists() else f"{d} is not a directory")

    def has(name: str) -> bool:
        return (d / COMPONENT_FILES[name]).exists()

    if not any(has(n) for n in PIPELINE_PARTS):
        raise UserError(f"no generator weights nor any other pipeline part in {d} (expected e.g. "
                        "generator.safetensors and mapping_net.safetensors); write a pipeline folder with "
                        "'mm2latent assemble'")
    out: dict[str, Any] = {"generator": MissingPart("generator"), "generator_info": {},
                           "mapping_net": MissingPart("mapping_net"), "mapping_net_info": {}}
    if has("generator"):
        out.update(load_components(d, need=("generator",)))
    if has("mapping_net"):
        out.update(load_components(d, need=("mapping_net",)))
    parts = {p: ((load_clip(d / COMPONENT_FILES[p]) if p == "encoder" else load_part_file(d / COMPONENT_FILES[p], p))
                 if has(p) else MissingPart(p)) for p in CONTROL_PARTS}
    extra = {k: load_module_file(d / f"{k}.safetensors", k) for k in component_classes()
             if (d / f"{k}.safetensors").exists()}
    out["controls"] = ControlEncoders(**parts, extra=extra)
    for name in OPTIONAL_PARTS:
        out[name] = load_components(d, need=(name,))[name] if has(name) else None
    manifest = d / "pipeline.json"
    out["manifest"] = {}
    if manifest.exists():
        try:
            out["manifest"] = json.loads(manifest.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"pipeline manifest {manifest} is damaged: {e}") from None
    return out

@dataclass
class Perception:
    parser: torch.nn.Module | None = None
    analyzer: torch.nn.Module | None = None
    mask_ae: torch.nn.Module | None = None
    sketch_ae: torch.nn.Module | None = None
    coeff_ae: torch.nn.Module | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return {n: getattr(self, n) for n in NAMES if getattr(self, n) is not None}

    def to(self, device) -> "Perception":
        for m in self.modules().values():
            m.to(device)
        return self


def load_perception(weights_dir: str | os.PathLike | None = None, names: Iterable[str] = NAMES) -> Perception:
    """Load the perception models ``names`` from ``weights_dir`` (default: shipped)."""
    return Perception(**{n: load_module(weights_dir, n) for n in names})


# --------------------------------------------------------------------------- convenience for one image


def image_batch(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) photo -> (1, 3, size, size) in [-1, 1] (centre crop + Lanczos resize)."""
    from ..common.imageio import image_to_tensor, resize_image

    return image_to_tensor(resize_image(image, size))[None]


@torch.no_grad()
def parse_image(parser: torch.nn.Module, image: np.ndarray, out_size: int | None = None) -> np.ndarray:
    """Label map (uint8 0..18) of a photo, at ``out_size`` (default: the centre-cropped input side)."""
    x = image_batch(image, parser.config.size)
    logits = parser.eval()(x)
    side = out_size or min(image.shape[:2])
    if side != logits.shape[-1]:
        logits = torch.nn.functional.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).numpy()


@torch.no_grad()
def analyze_image(analyzer: torch.nn.Module, image: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """(attribute probabilities by CelebA name, coefficients in raw units) of a photo."""
    from ..world.attributes import ATTRIBUTES
    from ..world.dataset import denormalise_coeffs
    from ..world.params import COEFF_NAMES

    a, c = analyzer.eval()(image_batch(image, analyzer.config.size))
    probs = torch.sigmoid(a)[0].tolist()
    raw = denormalise_coeffs(c.clamp(-1, 1))[0].tolist()
    return dict(zip(ATTRIBUTES, probs)), dict(zip(COEFF_NAMES, raw))


def load_sketch(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read a sketch image file (see :func:`sketch_from_image`)."""
    from ..common.imageio import load_image

    return sketch_from_image(load_image(path), size)
