"""argparse value types shared by the command modules (errors become one usage line)."""

from __future__ import annotations

import argparse
from typing import Callable


class CommandParser(argparse.ArgumentParser):
    """The parser of every command: errors are one line and exit 2, like a UserError. A parser with
    ``deferred`` set adds those options on first use -- trainer options come from dataclasses in
    modules that import torch, which ``mm2latent --help`` and every other command must not pay for."""

    deferred: Callable[[argparse.ArgumentParser], None] | None = None

    def error(self, message: str):
        self.exit(2, f"mm2latent: error: {message}\n")

    def _add_deferred(self) -> None:
        fill, self.deferred = self.deferred, None
        if fill is not None:
            fill(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_deferred()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_deferred()
        return super().format_help()


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


#: seeds are 64-bit unsigned everywhere (torch.manual_seed's range); larger ones used to wrap silently
SEED_LIMIT = 2**64


def seed_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= v < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seeds lie in 0..2**64-1 (18446744073709551615), got {v}")
    return v
