"""Typed config dataclass trees from YAML and the command line, and back to plain dicts.

Both command lines read their config this one way (the caching job's JobConfig, the trainer's
TrainConfig): a YAML file (`--config FILE`), then `--set KEY=VALUE` overrides of dotted keys, in
order; a command line may also name flags as shorthands, `--videos DIR` meaning `--set videos=DIR`.
A value from the command line is read as YAML (`--set run.max_steps=10`, `--set data.datasets=[a, b]`)
unless its key is a string, which takes the text as it is (`--set run.out=1e3` is the folder "1e3").
Every error names the dotted key it is about (`config.loss.ld_weight: cannot read 'x' as float`), and an
unknown key is an error: a typo must not pass silently.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Text:
    """A command-line value, kept as its text until the key's type says how to read it."""

    text: str

    def __repr__(self) -> str:
        return repr(self.text)

    def parsed(self):
        return yaml.safe_load(self.text)


def convert(tp, value, where: str):
    """Turn a YAML or command-line value into the annotated type `tp`, naming the key on error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if (value.parsed() if isinstance(value, Text) else value) is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return convert(args[0], value, where)
    if isinstance(value, Text):
        # A tuple's short form stays text: YAML would read "0x224" as the hex number 548.
        short_form = origin is tuple and not value.text.lstrip().startswith("[")
        value = value.text if tp is str or short_form else value.parsed()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            # "112x160" for sizes, "depth,flow" for names: the command line's short forms.
            value = value.split("x" if inner is int and "x" in value else ",")
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
    """Build dataclass `cls` from `data`; unknown keys are an error."""
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


def to_yaml(cfg) -> str:
    """The resolved config as the YAML file `--config` reads back (saved beside a run's outputs)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _set(data: dict, key: str, value) -> None:
    """data[a][b][c] = value for key "a.b.c"."""
    node = data
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}=...: {'.'.join(parents[:i + 1])} is not a section")
    node[leaf] = value


def _split(item: str) -> tuple[str, Text]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. run.max_steps=10)")
    return key, Text(value)


def _load(cls, path: str | Path | None, overrides: Sequence[tuple[str, object]]):
    data = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    for key, value in overrides:
        _set(data, key, value)
    return from_dict(cls, data)


def load_config(cls, path: str | Path | None = None, overrides: Sequence[str] = ()):
    """`cls` from the YAML file at `path` (optional) with `KEY=VALUE` overrides applied in order."""
    return _load(cls, path, [_split(item) for item in overrides])


@dataclass(frozen=True)
class Shorthand:
    """A flag that means `--set key=VALUE`; `repeat`: each use adds one value to the key's list."""

    flag: str
    key: str
    help: str
    repeat: bool = False
    switch: bool = False  # a bare flag that sets the key to true (`--check` = `--set check=true`)


def add_config_arguments(parser: argparse.ArgumentParser, shorthands: Sequence[Shorthand] = (),
                         config_required: bool = False) -> None:
    """--config FILE, --set KEY=VALUE (repeatable) and the shorthand flags."""
    parser.add_argument("--config", required=config_required, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action=_Override, default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set run.max_steps=20 (repeatable)")
    for s in shorthands:
        value = {"nargs": 0} if s.switch else {"metavar": s.key.rsplit(".", 1)[-1].upper()}
        parser.add_argument(s.flag, dest="overrides", action=_Override, key=s.key, repeat=s.repeat,
                            help=f"{s.help} [{s.key}]", **value)


class _Override(argparse.Action):
    """Collects --set and the shorthand flags into one list of (key, value) in command-line order, so
    that a later one wins."""

    def __init__(self, option_strings, dest, key: str | None = None, repeat: bool = False, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.key, self.repeat = key, repeat

    def __call__(self, parser, namespace, value, option_string=None):
        overrides = list(getattr(namespace, self.dest))
        if self.key is None:
            try:
                overrides.append(_split(value))
            except ValueError as e:
                raise argparse.ArgumentError(self, str(e)) from e
        elif self.repeat:
            done = [i for i, (key, v) in enumerate(overrides) if key == self.key and isinstance(v, list)]
            if done:
                overrides[done[0]] = (self.key, [*overrides[done[0]][1], Text(value)])
            else:
                overrides.append((self.key, [Text(value)]))
        elif self.nargs == 0:  # a switch
            overrides.append((self.key, True))
        else:
            overrides.append((self.key, Text(value)))
        setattr(namespace, self.dest, overrides)


def config_from_args(cls, args: argparse.Namespace):
    """`cls` from the YAML file and overrides add_config_arguments parsed."""
    return _load(cls, args.config, args.overrides)
