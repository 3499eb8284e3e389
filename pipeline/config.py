"""Configuration of the caching job: one dataclass per component, loadable from YAML, overridable
from the command line. The resolved config is saved beside the outputs (CACHE/config.yaml)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from configs.dataclass_io import Shorthand, add_config_arguments, config_from_args
from pipeline.sampling import SamplingConfig
from shards.formats import FORMATS
from shards.local_path import VIDEOS_STAY_LOCAL, cache_location, local_path
from shards.schema import FieldStorage
from shards.teacher_fields import TEACHER_FIELDS, default_storage

TEACHERS = ("oracle", "l4p", "l4p-tiny")
TEACHER_DTYPES = ("float32", "float16", "bfloat16")


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
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError(f"teacher.num_gpus and teacher.num_cpus must be >= 0, got {self.num_gpus} and {self.num_cpus}")


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
        # A YAML file (or a caller) names only the fields whose storage it changes; the others keep
        # their defaults.
        object.__setattr__(self, "storage", {**default_storage(), **self.storage})
        if self.clips_per_shard < 1:
            raise ValueError("output.clips_per_shard must be >= 1")
        if len(self.frame_size) != 2 or min(self.frame_size) < 1:
            raise ValueError(f"output.frame_size must be HxW with both >= 1, got {self.frame_size}")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"output.fields: each field once, got {list(self.fields)}")


@dataclass(frozen=True)
class RayConfig:
    """Where the job's tasks and actors run.

    address "auto" (default): the cluster named by RAY_ADDRESS if it is set (`ray job submit` sets it
    for its jobs, so a submitted job joins the cluster it was submitted to), else an in-process Ray
    started by the job. Unlike ray.init("auto"), it never follows /tmp/ray/ray_current_cluster, which
    a stopped cluster leaves behind. "local": always an in-process Ray. Anything else (host:port,
    ray://host:port): that cluster.
    """

    address: str = "auto"
    num_cpus: int | None = None  # local only; None = all cores
    object_store_mb: int = 2048  # local only


@dataclass(frozen=True)
class JobConfig:
    out: str = "data/cache"
    videos: str | None = None  # a folder of videos, searched recursively
    samples: str | None = None  # a samples Parquet whose `video` paths are relative to `videos`
    # Datasets in their native formats, "name=ROOT" (pipeline/datasets/registry.py), cached as one mixture.
    sources: tuple[str, ...] = ()
    lenient: bool = False  # skip malformed annotation rows (counted in summary.json) instead of failing
    # Preflight (pipeline/preflight.py): validate every source and report what the job would compute,
    # without Ray or a teacher; hours are priced at check_gpu_tflops sustained per GPU (an assumption).
    check: bool = False
    check_gpu_tflops: float = 400.0
    retry_failed: bool = False
    max_inflight: int | None = None  # clips between decode and write; None = from batch size
    num_writers: int = 1
    # A cache on an object store: how long the job's lease (its lock) outlives a killed job, seconds. It must
    # exceed the time a killed job's writer actors live on (Ray reaps them within seconds to a minute).
    lease_seconds: float = 600.0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        # 0 would crash mid-job (no writer) or silently mean the default (max_inflight).
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if self.num_writers < 1 or (self.max_inflight is not None and self.max_inflight < 1):
            raise ValueError(f"num_writers and max_inflight must be >= 1, got {self.num_writers} and {self.max_inflight}")
        # Fewer clips in flight than a teacher batch would never fill a batch while videos remain.
        if self.max_inflight is not None and self.max_inflight < self.teacher.batch_size:
            raise ValueError(f"max_inflight ({self.max_inflight}) must be >= teacher.batch_size "
                             f"({self.teacher.batch_size})")
        cache_location(self.out, "out")
        for name in ("videos", "samples"):
            if getattr(self, name) is not None:
                local_path(getattr(self, name), name, VIDEOS_STAY_LOCAL)
        for source in self.sources:
            name, _, root = source.partition("=")
            local_path(root, f"source {name!r}", VIDEOS_STAY_LOCAL)


# The command line's flags: each is a shorthand for `--set <dotted key>=VALUE`, and every key of the
# YAML file can be set with --set.
FLAGS = [Shorthand(*flag) for flag in [
    ("--videos", "videos", "folder of videos to cache (searched recursively)"),
    ("--samples", "samples", "samples Parquet (default: VIDEOS/samples.parquet if present)"),
    ("--source", "sources", "a dataset as published, NAME=ROOT[,KEY=VALUE...] (repeatable): training robofac, "
     "sat, vsti, wolf; evaluation r4d, stibench, vlm4d, vsti_test", True),
    ("--lenient", "lenient", "skip malformed annotation rows, counted in summary.json (true/false)"),
    ("--check", "check", "validate every source, probe its videos and print what the job would compute and "
     "cost, then exit (no Ray, no teacher)", False, True),
    ("--check-gpu-tflops", "check_gpu_tflops", "sustained teacher TFLOP/s per GPU that --check prices hours at"),
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
    ("--ray-address", "ray.address", "'auto' (RAY_ADDRESS's cluster if set, as under `ray job submit`, "
     "else in-process), 'local' (in-process) or a cluster address host:port"),
    ("--ray-num-cpus", "ray.num_cpus", "CPUs of the local Ray (default: all)"),
    ("--object-store-mb", "ray.object_store_mb", "object store size of the local Ray"),
]]


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description,
        epilog="A YAML file given by --config holds the same options nested as in the dotted names "
        "(e.g. teacher: {name: oracle}); --set and the flags override it, the later winning. Per-field "
        "storage: output.storage.<field>: {dtype, codec, level, encoding, step}.",
    )
    add_config_arguments(p, FLAGS)
    return p


def load_config(args: argparse.Namespace) -> JobConfig:
    return config_from_args(JobConfig, args)
