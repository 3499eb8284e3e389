"""Dataset name -> adapter, and the `--source NAME=ROOT[,KEY=VALUE...]` option that names a dataset
root as published (and the adapter's options, e.g. `vsti=/data/VLM-3R-DATA,videos=/data/scannet`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.datasets import r4d, robofac, sat, stibench, vlm4d, vsti, wolf
from pipeline.datasets.common import AdapterResult

Adapter = Callable[..., AdapterResult]


@dataclass(frozen=True)
class Dataset:
    read: Adapter
    use: str  # "train": feeds the student; "eval": a benchmark, every row split "test"
    options: dict[str, str]  # option -> what it means


DATASETS: dict[str, Dataset] = {
    robofac.NAME: Dataset(robofac.read, "train", robofac.OPTIONS),
    sat.NAME: Dataset(sat.read, "train", sat.OPTIONS),
    vsti.NAME: Dataset(vsti.read, "train", vsti.OPTIONS),
    wolf.NAME: Dataset(wolf.read, "train", wolf.OPTIONS),
    r4d.NAME: Dataset(r4d.read, "eval", r4d.OPTIONS),
    stibench.NAME: Dataset(stibench.read, "eval", stibench.OPTIONS),
    vlm4d.NAME: Dataset(vlm4d.read, "eval", vlm4d.OPTIONS),
    vsti.TEST_NAME: Dataset(vsti.read_test, "eval", vsti.OPTIONS),
}
EVALUATION_DATASETS = tuple(name for name, d in DATASETS.items() if d.use == "eval")


@dataclass(frozen=True)
class Source:
    """One `--source`: a dataset's root folder as published, and its adapter's options."""

    name: str
    root: Path
    options: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}={self.root}"


def parse_source(spec: str) -> Source:
    """'robofac=/data/RoboFAC' -> Source('robofac', Path('/data/RoboFAC')), the root checked to be a
    folder; 'wolf=/data/Wolf,scenes=/data/nuscenes-videos' adds the option scenes."""
    name, sep, rest = spec.partition("=")
    name = name.strip().lower()
    path, *pairs = rest.split(",")
    if not sep or not name or not path:
        raise ValueError(f"--source {spec!r}: expected NAME=ROOT[,KEY=VALUE...] with NAME one of {sorted(DATASETS)}")
    if name not in DATASETS:
        raise ValueError(f"--source {spec!r}: unknown dataset {name!r}; known: {sorted(DATASETS)}")
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or key.strip() not in DATASETS[name].options or not value:
            known = ", ".join(f"{k} ({v})" for k, v in DATASETS[name].options.items()) or "none"
            raise ValueError(f"--source {spec!r}: {pair!r} is not an option of {name}; its options: {known}")
        options[key.strip()] = value
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"--source {spec!r}: {root} is not a directory (give the dataset's root folder)")
    return Source(name, root, options)


def read_dataset(source: Source, lenient: bool, media_dir: Path | None) -> AdapterResult:
    """The source's rows; media_dir None validates images without writing them (--check)."""
    return DATASETS[source.name].read(source.root, lenient=lenient, media_dir=media_dir, **source.options)
