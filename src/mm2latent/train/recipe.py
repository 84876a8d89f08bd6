"""Recipes: a trainer's options dataclass, read from a TOML file in ``configs/``.

A recipe file sets some fields of the dataclass; ``[sections]`` only group keys for the reader
(``[loss] adv_weight = 0.1`` sets ``adv_weight``). What the file does not set keeps the
dataclass default, and the command line may override any field (``mm2latent.cli.recipe_options``
turns the dataclass into options). Unknown keys and values of the wrong type are an error: a typo
must not silently train something else.

Field documentation lives next to the field, as a trailing ``# comment`` or a ``#:`` block above
it; :func:`field_docs` reads it back so that ``--help`` and the code say the same thing.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import tomllib
import types
import typing
from pathlib import Path

from ..common.errors import UserError

_FIELD_LINE = re.compile(r"^(\w+)\s*:")


def field_docs(cls) -> dict[str, str]:
    """Field name -> its comment in the class source (``#:`` block above, else trailing ``#``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in src.splitlines()[1:]:
            text = line.strip()
            if text.startswith("#:"):
                pending.append(text[2:].strip())
                continue
            m = _FIELD_LINE.match(text)
            if m and m.group(1) in names and line[:1].isspace():
                docs[m.group(1)] = " ".join(pending) or _trailing_comment(text)
            if not text.startswith("#"):
                pending = []
    return docs


def _trailing_comment(line: str) -> str:
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.COMMENT:
                return tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return ""


def field_types(cls) -> dict[str, typing.Any]:
    """Field name -> its resolved annotation (the modules use postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def split_optional(tp) -> tuple[typing.Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return tp, False


def check_value(name: str, value, tp, where: str):
    """``value`` as the field's type (ints widen to floats); a UserError naming ``where`` otherwise."""
    base, optional = split_optional(tp)
    if value is None and optional:
        return None
    origin = typing.get_origin(base)
    if origin is list:
        (item,) = typing.get_args(base) or (typing.Any,)
        if isinstance(value, (list, tuple)):
            return [check_value(name, v, item, where) for v in value]
    elif isinstance(base, types.UnionType) or origin is typing.Union:
        for option in typing.get_args(base):
            try:
                return check_value(name, value, option, where)
            except UserError:
                pass
    elif base is typing.Any:
        return value
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif base is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(base, type) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where}: {name} = {value!r} is not a {_type_name(tp)}")


def _type_name(tp) -> str:
    base, optional = split_optional(tp)
    name = getattr(base, "__name__", None) or str(base).replace("typing.", "")
    if typing.get_origin(base) is list:
        name = f"list of {_type_name(typing.get_args(base)[0])}"
    return name + (" or none" if optional else "")


def read_recipe_file(path: str | Path, cls) -> dict:
    """The keys a TOML recipe for ``cls`` sets, with ``[sections]`` flattened (a table named after a
    dict-valued field, such as a model-config override, is that field's value)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise UserError(f"recipe not found: {p}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"recipe {p} is not valid TOML: {e}") from None
    dict_fields = {k for k, tp in field_types(cls).items() if _accepts_dict(tp)}
    flat: dict = {}
    for key, value in raw.items():
        section = value if isinstance(value, dict) and key not in dict_fields else {key: value}
        for k in set(flat) & set(section):
            raise UserError(f"recipe {p}: {k} is set twice")
        flat.update(section)
    return flat


def _accepts_dict(tp) -> bool:
    base, _ = split_optional(tp)
    options = typing.get_args(base) if isinstance(base, types.UnionType) else (base,)
    return any(o is dict or typing.get_origin(o) is dict for o in options)


def build_options(cls, path: str | Path | None = None, overrides: dict | None = None, **fixed):
    """``cls`` from its defaults, then the recipe file's keys, then ``overrides`` (the command line),
    then ``fixed`` (what the command itself decides, e.g. a perception trainer's task)."""
    types_ = field_types(cls)
    values: dict = {}
    for source, where in ((read_recipe_file(path, cls) if path else {}, f"recipe {path}"),
                          (overrides or {}, "command line")):
        unknown = sorted(set(source) - set(types_))
        if unknown:
            raise UserError(f"{where}: unknown keys {', '.join(unknown)}")
        values.update({k: check_value(k, v, types_[k], where) for k, v in source.items()})
    for k, v in fixed.items():
        if k in values and values[k] != v:
            raise UserError(f"recipe {path}: {k} = {values[k]!r}, but this command trains {k} = {v!r}")
        values[k] = v
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError("missing " + ", ".join(f"--{m.replace('_', '-')}" for m in missing)
                        + " (on the command line or in the recipe)")
    return cls(**values)
