"""Command-line flags made from a config dataclass's fields: name, type, choices, default and help.

One source of truth: a flag's default is the field's, shown in --help but never passed on, so an
unset flag leaves the dataclass (and its environment-variable default, where it has one) in charge.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields


def _kind(annotation: str):
    a = annotation.replace(" ", "")
    if a.startswith("bool"):
        return bool
    if a.startswith("int"):
        return int
    if a.startswith("float"):
        return float
    return str


def _default_text(f) -> str:
    meta = f.metadata
    default = meta.get("default", f.default if f.default is not MISSING else None)
    shown = "none" if default is None else (str(default).lower() if isinstance(default, bool) else str(default))
    return f"default {shown}" + (f", or ${meta['env']}" if meta.get("env") else "")


def add_config_args(parser: argparse.ArgumentParser, cls, exclude: tuple[str, ...] = ()) -> None:
    """One --flag per field of cls (underscores become dashes); bools get --flag / --no-flag."""
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata.get('help', '')} ({_default_text(f)})".strip()
        kind = _kind(str(f.type))
        if kind is bool:
            group.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_)
        else:
            group.add_argument(flag, dest=f.name, default=None, type=kind, choices=f.metadata.get("choices"),
                               help=help_)


def config_kwargs(args: argparse.Namespace, cls, exclude: tuple[str, ...] = ()) -> dict:
    """The fields of cls that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls)
            if f.name not in exclude and getattr(args, f.name, None) is not None}
