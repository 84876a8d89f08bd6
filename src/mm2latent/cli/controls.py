"""The control options of ``mm2latent generate`` and ``mm2latent edit``, one per registered control
(:data:`mm2latent.models.controls.CONTROLS`), so a plug-in control gets its option without a change here."""

from __future__ import annotations

from ..models.controls import CONTROLS, one_of


def add_control_options(parser) -> None:
    for c in CONTROLS.values():
        parser.add_argument(c.cli_option, dest=c.name, default=None, metavar=c.cli_metavar, help=c.cli_help)


def given_controls(args) -> dict[str, str]:
    """Control name -> the value given on the command line, for the options that were given."""
    return {n: getattr(args, n) for n in CONTROLS if getattr(args, n, None) is not None}


def control_files(given: dict[str, str]) -> list[str]:
    """The given values that are paths (checked, and kept from being overwritten, before the models load)."""
    return [v for n, v in given.items() if CONTROLS[n].reads_file]


def option_list(conjunction: str | None = "or") -> str:
    """'--text, --mask, --sketch or --coeffs' (``conjunction`` None: commas only)."""
    names = [c.cli_option for c in CONTROLS.values()]
    return ", ".join(names) if conjunction is None else one_of(names, conjunction)
