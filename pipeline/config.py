"""Configuration of the caching job: one dataclass per component, loadable from YAML, overridable
from the command line. The resolved config is saved beside the outputs (CACHE/config.yaml)."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.sampling import SamplingConfig
from shards.formats import FORMATS
from shards.schema import CODECS, STORAGE_DTYPES

TEACHERS = ("oracle", "l4p", "l4p-tiny")
TEACHER_DTYPES = ("float32", "float16", "bfloat16")
TEACHER_FIELDS = ("latents", "depth", "flow", "dyn_mask", "camray")


@dataclass(frozen=True)
class TeacherConfig:
    """Which teacher, and how many of it. Resources are per actor (a GPU cluster: num_gpus=1)."""

    name: str = "oracle"
    checkpoint: str | None = None  # l4p: required; l4p-tiny: optional (else seeded random weights)
    dtype: str = "float32"  # inference precision of the l4p teachers
    seed: int = 0  # random weights (l4p-tiny) and random latent projections (oracle)
    latent_dim: int | None = None  # None: the teacher's own width (L4P: 1408)
    batch_size: int = 2
    num_actors: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0

    def __post_init__(self):
        if self.name not in TEACHERS:
            raise ValueError(f"teacher.name must be one of {TEACHERS}, got {self.name!r}")
        if self.dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher.dtype must be one of {TEACHER_DTYPES}, got {self.dtype!r}")
        if self.name == "l4p" and not self.checkpoint:
            raise ValueError("teacher l4p needs its weights: --teacher-checkpoint PATH (.ckpt or .safetensors)")
        if self.batch_size < 1 or self.num_actors < 1:
            raise ValueError("teacher.batch_size and teacher.num_actors must be >= 1")


@dataclass(frozen=True)
class FieldStorage:
    """How one field is stored: storage dtype and compression (see shards.schema.FieldSpec)."""

    dtype: str = "float16"
    codec: str = "zstd"
    level: int = 3

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, got {self.dtype!r}")
        if self.codec not in CODECS:
            raise ValueError(f"storage codec must be one of {CODECS}, got {self.codec!r}")


def default_storage() -> dict[str, FieldStorage]:
    # Latents barely compress (~1.08x for realistic heavy-tailed tokens, bench/storage.py) while
    # compressing them makes WebDataset writes ~7x slower (gzip), so they are stored raw; depth
    # compresses ~6-9x, flow ~1.5x.
    return {
        "frames": FieldStorage("uint8", "zstd", 3),
        "timestamps": FieldStorage("float64", "none", 0),
        "latents": FieldStorage("float16", "none", 0),
        "depth": FieldStorage("float16", "zstd", 3),
        "flow": FieldStorage("float16", "zstd", 3),
        "dyn_mask": FieldStorage("float16", "zstd", 3),
        "camray": FieldStorage("float16", "none", 0),
    }


@dataclass(frozen=True)
class OutputConfig:
    """What is written: the shard format, which teacher fields, at which precision."""

    format: str = "zarr"
    clips_per_shard: int = 8
    frame_size: tuple[int, int] = (224, 224)  # (height, width) of the stored student frames
    fields: tuple[str, ...] = TEACHER_FIELDS
    storage: dict[str, FieldStorage] = field(default_factory=default_storage)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"output.format must be one of {FORMATS}, got {self.format!r}")
        unknown = set(self.fields) - set(TEACHER_FIELDS)
        if unknown:
            raise ValueError(f"output.fields: unknown {sorted(unknown)}; known {TEACHER_FIELDS}")
        missing = {"frames", "timestamps", *self.fields} - set(self.storage)
        if missing:
            raise ValueError(f"output.storage has no entry for {sorted(missing)}")
        if self.clips_per_shard < 1:
            raise ValueError("output.clips_per_shard must be >= 1")


@dataclass(frozen=True)
class RayConfig:
    """address "local": an in-process Ray started by the job. "auto" or ray://...: a cluster."""

    address: str = "local"
    num_cpus: int | None = None  # local only; None = all cores
    object_store_mb: int = 2048  # local only


@dataclass(frozen=True)
class JobConfig:
    out: str = "data/cache"
    videos: str | None = None  # a folder of videos, searched recursively
    samples: str | None = None  # a samples Parquet whose `video` paths are relative to `videos`
    retry_failed: bool = False
    max_inflight: int | None = None  # clips between decode and write; None = from batch size
    num_writers: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def _convert(tp, value, where: str):
    """Turn a YAML value into the annotated type, naming the key on error."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = value.replace("x", ",").split(",") if "x" in value or "," in value else [value]
        inner = typing.get_args(tp)[0]
        return tuple(_convert(inner, v, where) for v in value)
    if origin is dict:
        _, inner = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(inner, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{where}: expected a boolean, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    try:
        return tp(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot read {value!r} as {tp.__name__}") from e


def from_dict(cls, data: dict, where: str = "config"):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    if cls is OutputConfig and "storage" in kwargs:
        # A YAML file names only the fields it changes; the others keep their defaults.
        kwargs["storage"] = {**default_storage(), **kwargs["storage"]}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


# (flag, dotted config path, help). Every option of the YAML file has a flag.
FLAGS: list[tuple[str, str, str]] = [
    ("--videos", "videos", "folder of videos to cache (searched recursively)"),
    ("--samples", "samples", "samples Parquet (default: VIDEOS/samples.parquet if present)"),
    ("--out", "out", "cache directory (created if missing)"),
    ("--retry-failed", "retry_failed", "recompute clips whose earlier attempt failed (true/false)"),
    ("--max-inflight", "max_inflight", "clips in flight between decode and write"),
    ("--num-writers", "num_writers", "shard writer actors (each writes its own shards)"),
    ("--num-frames", "sampling.num_frames", "frames per clip"),
    ("--fps", "sampling.fps", "sample at this rate instead of spreading over the span"),
    ("--start", "sampling.start", "span start in seconds"),
    ("--end", "sampling.end", "span end in seconds"),
    ("--pad", "sampling.pad", "repeat frames of too-short videos instead of failing (true/false)"),
    ("--teacher", "teacher.name", f"teacher: {' | '.join(TEACHERS)} (oracle: synthetic scenes only)"),
    ("--teacher-checkpoint", "teacher.checkpoint", "teacher weights: a Lightning .ckpt or a .safetensors"),
    ("--teacher-dtype", "teacher.dtype", f"teacher inference precision: {' | '.join(TEACHER_DTYPES)}"),
    ("--teacher-seed", "teacher.seed", "seed of random teacher weights / oracle projections"),
    ("--latent-dim", "teacher.latent_dim", "teacher latent width (default: the teacher's own)"),
    ("--batch-size", "teacher.batch_size", "clips per teacher call (l4p: 16-frame windows per forward)"),
    ("--num-teacher-actors", "teacher.num_actors", "teacher actors (one model each)"),
    ("--num-gpus", "teacher.num_gpus", "GPUs per teacher actor"),
    ("--teacher-cpus", "teacher.num_cpus", "CPUs per teacher actor"),
    ("--format", "output.format", f"shard format: {' | '.join(FORMATS)}"),
    ("--clips-per-shard", "output.clips_per_shard", "clips per shard (one commit unit)"),
    ("--frame-size", "output.frame_size", "stored student frame size HxW, e.g. 224x224"),
    ("--fields", "output.fields", f"teacher fields to store, comma-separated: {','.join(TEACHER_FIELDS)}"),
    ("--ray-address", "ray.address", "'local' (in-process Ray), 'auto' or a cluster address"),
    ("--ray-num-cpus", "ray.num_cpus", "CPUs of the local Ray (default: all)"),
    ("--object-store-mb", "ray.object_store_mb", "object store size of the local Ray"),
]


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description,
        epilog="A YAML file given by --config holds the same options nested as in the dotted names "
        "(e.g. teacher: {name: oracle}); command-line flags override it. "
        "Per-field storage (output.storage.<field>: {dtype, codec, level}) is YAML-only.",
    )
    p.add_argument("--config", help="YAML config file")
    for flag, path, help_text in FLAGS:
        p.add_argument(flag, dest=path, default=None, help=f"{help_text} [{path}]")
    return p


def load_config(args: argparse.Namespace) -> JobConfig:
    data: dict = {}
    if args.config:
        text = Path(args.config).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping at the top level")
        data = loaded
    for _, path, _ in FLAGS:
        value = getattr(args, path)
        if value is None:
            continue
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value.split(",") if path == "output.fields" else value
    return from_dict(JobConfig, data)
