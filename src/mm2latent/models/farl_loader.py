"""Load FaRL ``.pth`` checkpoints and OpenAI CLIP ViT state dicts.

Formats read (all with ``torch.load(weights_only=True)``, so no pickled code
runs):

* **FaRL** (``FaRL-Base-Patch16-LAIONFace20M-ep16.pth`` / ``-ep64.pth``): a
  dict whose ``"state_dict"`` holds the OpenAI CLIP parameter names. FaRL's
  own code loads it with ``clip.load("ViT-B/16")`` +
  ``model.load_state_dict(ckpt["state_dict"], strict=False)``, and strips
  ``"visual."`` for its downstream backbones. Its pre-training also had a
  masked-image-modelling head on the vision tower (``visual.mask_token``,
  ``visual.lm_transformer.*``, ``visual.ln_lm.*``, ``visual.lm_head.*``);
  those keys, if present, are not part of CLIP and are skipped.
* **OpenAI CLIP** state dicts saved with ``torch.save(model.state_dict())``
  (optionally with the ``input_resolution`` / ``context_length`` /
  ``vocab_size`` entries of the released archives, which are skipped), and the
  released TorchScript archives (``ViT-B-16.pt``), whose tensors are read with
  ``torch.jit.load`` (TorchScript, not Python pickle; no model code is run).
* Wrappers: ``{"state_dict": ...}``, ``{"model": ...}``, ``{"module": ...}``,
  ``{"model_state_dict": ...}``, and key prefixes such as ``module.``,
  ``clip.``, ``model.`` (any prefix in front of ``visual.conv1.weight``).

Everything else must match exactly: missing or unexpected keys give a
:class:`UserError` listing them (the one exception: a missing ``logit_scale``,
which only sets the logits' temperature, gets CLIP's initial value and a
logged warning). The shapes decide the configuration
(:func:`config_from_state_dict`), like OpenAI's ``build_model``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..common.errors import UserError
from ..common.fileio import check_input_file
from .clip import CLIP, CLIPConfig, load_state_into, save_clip
from .torch_files import is_torchscript

log = logging.getLogger(__name__)

#: entries of OpenAI's released archives that are not parameters
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
#: FaRL pre-training's masked-image-modelling head (not part of CLIP)
FARL_MIM_PREFIXES = ("visual.mask_token", "visual.lm_transformer.", "visual.ln_lm.", "visual.lm_head.")
_WRAPPERS = ("state_dict", "model", "module", "model_state_dict")
_ANCHOR = "visual.conv1.weight"


def _unpickler_detail(message: str) -> str:
    """The informative part of torch's long weights-only refusal message."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", message, re.S)
    text = m.group(1) if m else (message.strip().splitlines() or ["unpickling refused"])[0]
    return " ".join(text.split())[:300]


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """The object stored in a ``.pth``/``.pt`` file, read without running pickled code."""
    p = check_input_file(path, "checkpoint")
    if is_torchscript(p):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any failure is a bad file
            raise UserError(f"cannot read TorchScript checkpoint {p}: {e}") from None
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(str(e))
        if "global" in detail.lower():
            raise UserError(
                f"checkpoint {p} holds pickled Python objects, not just tensors; refusing to unpickle it ({detail})"
            ) from None
        raise UserError(
            f"checkpoint {p} is corrupt or not a PyTorch tensor file (the restricted unpickler refused it: {detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {p} is corrupt or not a PyTorch file ({msg})") from None


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the CLIP tensors in a loaded checkpoint and strip any key prefix.

    Returns the state dict in CLIP's names. Known non-CLIP entries (OpenAI's
    config scalars, FaRL's MIM head) are dropped; anything else is kept so
    that the strict check reports it.
    """
    sd = obj
    for _ in range(3):  # nested wrappers, e.g. {"state_dict": {"module": ...}}
        if isinstance(sd, Mapping) and not any(isinstance(k, str) and k.endswith(_ANCHOR) for k in sd):
            inner = next((sd[w] for w in _WRAPPERS if isinstance(sd.get(w), Mapping)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping):
        raise UserError(f"{source} does not hold a state dict (found a {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{source}: entries that are not tensors: {', '.join(map(str, bad[:8]))}")
    anchors = [k for k in sd if k.endswith(_ANCHOR)]
    if len(anchors) == 0:
        keys = sorted(sd)
        raise UserError(
            f"{source} is not a CLIP/FaRL ViT state dict: no '{_ANCHOR}' among its {len(keys)} keys "
            f"(first: {', '.join(keys[:6])})"
        )
    if len(anchors) > 1:
        raise UserError(f"{source} holds several CLIP models ({', '.join(sorted(anchors))}); cannot choose")
    prefix = anchors[0][: -len(_ANCHOR)]
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        name = k[len(prefix) :] if prefix and k.startswith(prefix) else k
        if name in OPENAI_EXTRA_KEYS or name.startswith(FARL_MIM_PREFIXES):
            continue
        out[name] = v
    return out


def _count_blocks(keys, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    return (max(ids) + 1) if ids else 0


def config_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> CLIPConfig:
    """Infer a :class:`CLIPConfig` from CLIP parameter shapes (as OpenAI's build_model)."""
    needed = (
        "visual.conv1.weight",
        "visual.positional_embedding",
        "text_projection",
        "positional_embedding",
        "token_embedding.weight",
        "ln_final.weight",
    )
    missing = [k for k in needed if k not in sd]
    if missing:
        raise UserError(f"{source} does not match the CLIP layout: missing {len(missing)} key(s): {', '.join(missing)}")
    conv = sd["visual.conv1.weight"]
    if conv.dim() != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise UserError(f"{source}: visual.conv1.weight has shape {tuple(conv.shape)}, expected (width, 3, p, p)")
    vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = int(sd["visual.positional_embedding"].shape[0])
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid + 1 != n_pos:
        raise UserError(f"{source}: visual.positional_embedding has {n_pos} rows, not a square grid plus one")
    width = int(sd["ln_final.weight"].shape[0])
    if width % 64:
        raise UserError(f"{source}: text width {width} is not a multiple of 64 (heads cannot be inferred)")
    return CLIPConfig(
        embed_dim=int(sd["text_projection"].shape[1]),
        image_resolution=patch * grid,
        vision_layers=_count_blocks(sd, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_patch_size=patch,
        context_length=int(sd["positional_embedding"].shape[0]),
        vocab_size=int(sd["token_embedding.weight"].shape[0]),
        transformer_width=width,
        transformer_heads=width // 64,
        transformer_layers=_count_blocks(sd, "transformer.resblocks."),
    ).validate()


def load_farl(path: str | os.PathLike, device: torch.device | str = "cpu") -> CLIP:
    """A FaRL ``.pth`` or OpenAI CLIP ViT checkpoint as a :class:`CLIP` (float32, eval)."""
    source = f"checkpoint {path}"
    sd = extract_state_dict(read_checkpoint_file(path), source)
    cfg = config_from_state_dict(sd, source)
    if "logit_scale" not in sd:
        # only the logits' temperature; embeddings do not depend on it
        log.warning("%s has no logit_scale; using CLIP's initial value log(1/0.07)", source)
        sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    with torch.device("meta"):
        skeleton = CLIP(cfg)
    model = skeleton.to_empty(device="cpu")
    load_state_into(model, sd, source)
    return model.to(device).eval()


def convert_farl(input_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert a FaRL / OpenAI CLIP checkpoint to our safetensors + JSON format.

    Returns the ``.safetensors`` path; ``mm2latent.models.clip.load_clip``
    reads it back.
    """
    from ..common.fileio import check_writable_dir

    out = Path(out_path)
    target = out if out.suffix in (".safetensors", ".json") else out.with_suffix(".safetensors")
    if target.is_dir() or out.is_dir():
        raise UserError(f"output path {out} is a directory; give a file name such as {out / 'farl.safetensors'}")
    model = load_farl(input_path)
    check_writable_dir(target.parent if str(target.parent) else ".", create=True)
    return save_clip(model, out_path, meta={"converted_from": Path(input_path).name})
