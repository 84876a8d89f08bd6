"""Atomic file writes: a crash or a user error never leaves a half-written
file behind and never clobbers an existing one with garbage."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """An existing, non-empty regular file, or one clear UserError saying what is wrong."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"expected a {what} file but {p} is a directory")
    if p.stat().st_size == 0:
        raise UserError(f"{what} file is empty: {p}")
    return p


def check_writable_dir(directory: str | os.PathLike, create: bool = True) -> Path:
    """Make sure ``directory`` exists (creating it if asked) and is writable."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UserError(f"output path {d} exists and is not a directory")
    if not d.exists():
        if not create:
            raise UserError(f"output directory {d} does not exist")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output directory {d}: {e.strerror or e}") from None
    if not os.access(d, os.W_OK | os.X_OK) or not _can_create_in(d):
        raise UserError(f"output directory {d} is not writable")
    return d


def _can_create_in(d: Path) -> bool:
    """Really try (permission bits say nothing for root or on read-only file systems)."""
    try:
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError:
        return False
    return True


def check_output_file(path: str | os.PathLike) -> Path:
    """Validate an output file path before any work is done."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise UserError(f"output path {p} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        raise UserError(f"output directory {parent} is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise UserError(f"cannot write to {parent}: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes 0600, and writers that replace the file (safetensors) keep that: give the
        # final file the mode of an ordinary new file, after the write
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def emit_json_report(table: dict, path: str | os.PathLike | None = None) -> None:
    """Print a benchmark's table as indented JSON and, given a path, write it there atomically."""
    import json

    text = json.dumps(table, indent=1)
    print(text)
    if path:
        write_text_atomic(path, text + "\n")
