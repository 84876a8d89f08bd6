"""Command-line options generated from a trainer's options dataclass.

``mm2latent train MODEL --recipe configs/MODEL.toml --out RUN`` reads the recipe file into the
dataclass; every field is also an option (``lr_mlp`` -> ``--lr-mlp``, booleans as
``--flag/--no-flag``, lists comma-separated, dicts as JSON, ``none`` for an empty optional) that
overrides the file. The help text is the field's comment in the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import types
import typing
from typing import Callable

from .argtypes import seed_int

#: namespace prefix of generated options (keeps them apart from a command's own arguments)
PREFIX = "recipe__"


def add_trainer(models: argparse._SubParsersAction, verb: str, options: str, run: Callable, *, help: str,
                description: str, recipe_required: bool = False, skip: tuple[str, ...] = (),
                extra: Callable[[argparse.ArgumentParser], None] | None = None, **defaults) -> argparse.ArgumentParser:
    """Register ``train VERB``: options from the dataclass ``options`` ("module:Class"), added on first
    use; ``run(opts, args)`` gets the built dataclass (``args.build_options(args)`` builds it without
    running). ``skip`` fields are fixed by the command (``defaults`` gives their values); ``extra``
    adds options the dataclass does not hold."""
    p = models.add_parser(verb, help=help, description=description)

    def fill(parser: argparse.ArgumentParser) -> None:
        cls = load_class(options)
        parser.add_argument("--recipe", metavar="FILE", required=recipe_required,
                            help="TOML recipe (configs/...); options below override it")
        add_dataclass_options(parser, cls, skip=skip)
        if extra is not None:
            extra(parser)

    def build(args: argparse.Namespace):
        return options_from_args(load_class(options), args, **defaults)

    p.deferred = fill
    p.set_defaults(func=lambda args: run(build(args), args), build_options=build)
    return p


def load_class(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                          prefix: str = PREFIX, title: str = "recipe options (override the file)") -> None:
    """One option per field of ``cls`` (stored under ``prefix + name``, absent unless given)."""
    from ..train.recipe import field_docs, field_types

    docs, types_ = field_docs(cls), field_types(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        text = first_sentence(docs.get(f.name, ""))
        if required:
            text = (text + " " if text else "") + "(required)"
        elif "default" not in text:
            text = (text + " " if text else "") + f"(default {_show(default)})"
        kw: dict = dict(dest=prefix + f.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        tp = types_[f.name]
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            group.add_argument(flag, type=seed_int if f.name == "seed" else converter(tp),
                               metavar=_metavar(tp, f.name), **kw)


def options_from_args(cls, args: argparse.Namespace, prefix: str = PREFIX, recipe: bool = True, **fixed):
    """``cls`` from the ``--recipe`` file (when ``recipe``) and the options given under ``prefix``."""
    from ..train.recipe import build_options

    overrides = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    return build_options(cls, getattr(args, "recipe", None) if recipe else None, overrides, **fixed)


def converter(tp) -> Callable[[str], object]:
    """An argparse ``type`` for a field annotation."""
    from ..train.recipe import split_optional

    base, optional = split_optional(tp)

    def convert(text: str):
        if optional and text.strip().lower() == "none":
            return None
        return _parse(text, base)

    convert.__name__ = getattr(base, "__name__", "value")  # argparse names the type in its error
    return convert


def _parse(text: str, tp):
    origin = typing.get_origin(tp)
    try:
        if origin is list:
            (item,) = typing.get_args(tp)
            return [_parse(v, item) for v in text.replace(" ", "").split(",") if v]
        if isinstance(tp, types.UnionType):  # e.g. str | dict: a JSON object or a name
            options = typing.get_args(tp)
            if dict in options and text.lstrip().startswith("{"):
                return _parse(text, dict)
            return _parse(text, next(o for o in options if o is not dict))
        if tp is dict or origin is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        if tp in (int, float, str):
            return tp(text)
    except (ValueError, StopIteration, json.JSONDecodeError):
        pass
    raise argparse.ArgumentTypeError(f"expected {_WHAT.get(tp, 'a ' + _metavar(tp))}, got {text!r}")


_WHAT = {int: "an integer", float: "a number", dict: "a JSON object", str: "text"}


def _metavar(tp, name: str = "") -> str:
    from ..train.recipe import split_optional

    base, _ = split_optional(tp)
    if base is str and name:
        return name.upper()
    if typing.get_origin(base) is list:
        return _metavar(typing.get_args(base)[0]) + ",..."
    if base is dict or isinstance(base, types.UnionType):
        return "JSON" if base is dict else "NAME|JSON"
    return {int: "N", float: "X", str: "TEXT"}.get(base, "VALUE")


def first_sentence(text: str) -> str:
    """The help line of a field: its comment up to the first full stop (the rest stays in the code)."""
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "empty"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    if value is None:
        return "none"
    return str(value) if value != "" else "empty"
