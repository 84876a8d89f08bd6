"""``mm2latent`` entry point.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its
parser. User errors become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..common.errors import UserError
from .argtypes import CommandParser

#: command modules, imported lazily so ``mm2latent --help`` stays fast
COMMAND_MODULES = ("generate", "invert_edit", "serve", "world", "sample", "convert", "assemble", "train", "mapping", "perception",
                   "eval")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = CommandParser(prog="mm2latent", description="Multimodal face generation and editing (MM2Latent).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=CommandParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"mm2latent.cli.{name}").register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"mm2latent: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning  # e.g. "1 text(s) longer than 77 tokens were truncated"
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from ..common.version import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except UserError as e:
        print(f"mm2latent: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mm2latent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. ``mm2latent attributes IMG | head``: the reader left, nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
