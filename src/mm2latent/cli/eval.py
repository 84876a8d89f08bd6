"""``mm2latent eval TARGET``: the evaluation protocols (DESIGN.md section 4)."""

from __future__ import annotations

from ..common.errors import UserError


def register(sub) -> None:
    from .encoder import add_eval_encoder
    from .perception import register_eval_subcommands

    e = sub.add_parser("eval", help="evaluation protocols (encoder, perception)", description="Evaluate models.")
    esub = e.add_subparsers(dest="eval_target", metavar="TARGET", parser_class=type(e))
    add_eval_encoder(esub)
    register_eval_subcommands(esub)
    e.set_defaults(func=_need_target)


def _need_target(args) -> int:
    raise UserError("choose what to evaluate: mm2latent eval {encoder,perception} ... (see --help)")
