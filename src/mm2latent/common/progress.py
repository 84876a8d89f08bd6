"""Progress bars: tqdm on stderr, silenced with ``MM2LATENT_NO_PROGRESS=1``."""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", disable: bool | None = None, **kw) -> tqdm:
    if disable is None:
        disable = os.environ.get("MM2LATENT_NO_PROGRESS", "") not in ("", "0")
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, **kw)
