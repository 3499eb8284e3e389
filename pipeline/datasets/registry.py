"""Dataset name -> adapter, and the `--source name=PATH` option that names a dataset root."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.datasets import r4d, robofac, sat, stibench, vlm4d, vsti, wolf
from pipeline.datasets.common import AdapterResult

Adapter = Callable[..., AdapterResult]

# name -> (adapter, use): training sets feed the student, evaluation sets carry split "test".
ADAPTERS: dict[str, tuple[Adapter, str]] = {
    robofac.NAME: (robofac.read, "train"),
    sat.NAME: (sat.read, "train"),
    vsti.NAME: (vsti.read, "train"),
    wolf.NAME: (wolf.read, "train"),
    r4d.NAME: (r4d.read, "eval"),
    stibench.NAME: (stibench.read, "eval"),
    vlm4d.NAME: (vlm4d.read, "eval"),
}


def parse_source(spec: str) -> tuple[str, Path]:
    """'robofac=/data/RoboFAC' -> ('robofac', Path('/data/RoboFAC')), the root checked to be a folder."""
    name, sep, path = spec.partition("=")
    name = name.strip().lower()
    if not sep or not name or not path:
        raise ValueError(f"--source {spec!r}: expected NAME=PATH with NAME one of {sorted(ADAPTERS)}")
    if name not in ADAPTERS:
        raise ValueError(f"--source {spec!r}: unknown dataset {name!r}; known: {sorted(ADAPTERS)}")
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"--source {spec!r}: {root} is not a directory (give the dataset's root folder)")
    return name, root


def read_dataset(name: str, root: Path, lenient: bool, media_dir: Path | None) -> AdapterResult:
    adapter, _ = ADAPTERS[name]
    return adapter(root, lenient=lenient, media_dir=media_dir)
