"""Reading other projects' ``torch.save`` files without running code from them.

:func:`read_torch_file` opens a checkpoint with ``torch.load(weights_only=True)``
(tensors, storages and plain containers only; both the zip format and the
legacy pre-1.6 format) and turns every failure into one :class:`UserError`
line: a file that would need a Python global (a pickled object, a function
such as ``posix.system``) is refused before anything from it runs, and a
truncated or corrupt file says so. (The strict copy of a state dict into a
module with one-line errors is :func:`mm2latent.common.checkpoint.load_state_strict`.)
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..common.errors import UserError
from ..common.fileio import check_input_file


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (its network is code inside the file: never loaded)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _refusal_detail(message: str) -> tuple[bool, str]:
    """(is_a_refused_global, short detail) from torch's long weights-only message."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        return True, f"global {m.group(1).rstrip('.')}"
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", message, re.S)
    text = m.group(1) if m else (message.strip().splitlines() or ["unpickling failed"])[0]
    return False, " ".join(text.split())[:200]


def _plain_pickle_refusal(path: Path) -> str | None:
    """For a file torch could not read: the first global a plain pickle would need, if that is why.

    Uses the restricted unpickler of :mod:`.official`, which resolves no global
    outside its whitelist, so nothing from the file runs.
    """
    from .official import RestrictedUnpickler

    try:
        with open(path, "rb") as f:
            RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as e:
        m = re.match(r"refused global (\S+)", str(e))
        return f"global {m.group(1)}" if m else None
    except Exception:  # noqa: BLE001 - only a diagnosis; the caller reports the original failure
        return None
    return None


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """The object in a ``torch.save`` file, read with the weights-only unpickler.

    Raises :class:`UserError` (one line) for a missing/empty file, a
    TorchScript archive, a file holding Python objects beyond tensors and
    plain containers (refused, nothing from it is run) and a damaged file.
    """
    p = check_input_file(path, what)
    is_zip = zipfile.is_zipfile(p)
    if is_zip and is_torchscript(p):
        raise UserError(f"{what} {p} is a TorchScript archive, not a torch.save checkpoint; this loader reads "
                        "only state dicts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError as e:
            is_global, detail = _refusal_detail(str(e))
            refused = None if is_zip else _plain_pickle_refusal(p)  # names the offending global of a plain pickle
            if refused:
                is_global, detail = True, refused
            if is_global:
                raise UserError(f"refusing to load {what} {p}: it holds Python objects beyond tensors and plain "
                                f"containers ({detail}); nothing from it was run") from None
            raise UserError(f"{what} {p} is not a readable torch checkpoint (corrupt: {detail})") from None
        except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError,
                struct.error, zipfile.BadZipFile, MemoryError) as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{what} {p} is not a readable torch checkpoint (truncated or corrupt: {msg})") from None


def tensor_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """``obj`` as a ``{str: Tensor}`` state dict, or one UserError naming what is wrong."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{what} is not a state dict (found a {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{what}: entries that are not named tensors: {', '.join(map(str, bad[:5]))}")
    return dict(obj)
