"""Our checkpoint format: ``name.safetensors`` (tensors) + ``name.json`` (config).

Never pickle. Writes are atomic (temporary file, fsync, rename) so a crash
leaves either the old or the new checkpoint, never a torn one. Loading checks
the header size before parsing so absurd headers are refused.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError
from .fileio import atomic_path, write_text_atomic

MAX_HEADER_BYTES = 100 * 1024 * 1024


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    # append, never replace: "model.v2" must become "model.v2.safetensors", not "model.safetensors"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def config_path(path: str | os.PathLike) -> Path:
    """The JSON config that belongs to checkpoint ``path`` (.safetensors, .json or the bare stem)."""
    return _paths(path)[1]


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write tensors and config atomically; returns the .safetensors path."""
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(st) as tmp:
        save_file(clean, str(tmp), metadata={"format": "mm2latent"})
    write_text_atomic(js, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return st


def check_safetensors_header(path: str | os.PathLike) -> None:
    """Refuse files whose header length is absurd or larger than the file."""
    p = Path(path)
    size = p.stat().st_size
    if size < 8:
        raise UserError(f"checkpoint {p} is truncated ({size} bytes)")
    with open(p, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES or n + 8 > size:
        raise UserError(f"checkpoint {p} has an invalid header (claims {n} header bytes in a {size}-byte file)")


def load_checkpoint(path: str | os.PathLike, expect_kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``expect_kind`` compares against ``config["kind"]`` so that a checkpoint of
    another model gives a clear error instead of a shape mismatch.
    """
    st, js = _paths(path)
    if not st.exists():
        raise UserError(f"checkpoint not found: {st}")
    if not js.exists():
        raise UserError(f"checkpoint config not found: {js}")
    check_safetensors_header(st)
    try:
        tensors = load_file(str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {st} is corrupt: {e}") from None
    try:
        config = json.loads(js.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint config {js} is corrupt: {e}") from None
    if expect_kind is not None and config.get("kind") != expect_kind:
        raise UserError(f"checkpoint {st} holds a {config.get('kind', 'unknown')!r} model, expected {expect_kind!r}")
    return tensors, config


def load_state_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str, arch: str) -> torch.nn.Module:
    """Copy ``sd`` into ``module``: every tensor present, none extra, every shape equal.

    Floating tensors are cast to the module's dtype; errors are one
    :class:`UserError` line that names the architecture ``arch``.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"{what} does not match the {arch} architecture: " + "; ".join(parts))
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise UserError(f"{what}: tensor {k} has shape {tuple(sd[k].shape)}, the {arch} architecture "
                            f"expects {tuple(v.shape)}")
    cast = {k: sd[k].detach().to(v.dtype) for k, v in own.items()}
    module.load_state_dict(cast, strict=True)
    return module
