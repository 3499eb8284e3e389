"""Typed config dataclasses from and to the plain dicts YAML and JSON hold.

Both sides of the house read configs this way (the caching job's JobConfig, the student's
StudentConfig and TrainConfig), and both may import manifests/, so the one reader lives here. Every
error names the dotted key it is about (`train.loss.ld_weight: cannot read 'x' as float`).
"""
from __future__ import annotations

import dataclasses
import types
import typing


def convert(tp, value, where: str):
    """Turn a YAML value into the annotated type `tp`, naming the key on error."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else convert(args[0], value, where)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = value.replace("x", ",").split(",") if "x" in value or "," in value else [value]
        inner = typing.get_args(tp)[0]
        return tuple(convert(inner, v, where) for v in value)
    if origin is dict:
        _, inner = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {k: convert(inner, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{where}: expected a boolean, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    try:
        return tp(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from e


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass `cls` from `data`; unknown keys are an error (a typo must not pass silently)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def to_dict(cfg) -> dict:
    """The plain-dict form (tuples as lists) that YAML / JSON write and from_dict reads back."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)
