"""Config dataclasses from dicts (JSON beside a weights file), shared by the model files."""

from __future__ import annotations

from dataclasses import fields

from ..common.errors import UserError


def config_from_dict(cls, d: dict, legacy: bool = False):
    """Build a config dataclass from a dict, refusing unknown keys (clear error).

    With ``legacy`` (a config read from a file), keys missing from ``d`` take
    the class's ``LEGACY_DEFAULTS`` (what files written before the option
    existed were built with) before the dataclass defaults.
    """
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise UserError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    kw = {k: v for k, v in getattr(cls, "LEGACY_DEFAULTS", {}).items() if k not in d} if legacy else {}
    kw.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})
    return cls(**kw)
