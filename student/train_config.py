"""Configuration of a training run: the student, the data, the optimizer, the run. One YAML file
(configs/train/*.yaml); the resolved config is saved in the run directory and in every checkpoint."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from configs.dataclass_io import load_config
from shards.local_path import local_path
from student.augment import AugmentConfig
from student.config import StudentConfig
from student.marks import MarkStyle


@dataclass(frozen=True)
class DataConfig:
    cache: str = "data/cache-zarr"
    split: str = "train"
    datasets: tuple[str, ...] = ()  # which datasets of the cache to train on (empty: all)
    allow_evaluation_data: bool = False  # train on split-test rows / benchmarks anyway (cache_index refuses them)
    weights: dict[str, float] = field(default_factory=dict)  # dataset -> repeat factor; absent = 1.0
    teacher_id: str | None = None  # refuse a cache made by another teacher (None: accept the cache's one)
    field_dtypes: dict[str, str] = field(default_factory=dict)  # refuse fields stored otherwise
    batch_size: int = 2  # per rank
    num_workers: int = 1  # DataLoader workers per rank (0: read in the training process)
    shuffle_buffer: int = 64
    clip_cache: int = 8  # clips each loader worker keeps after reading them (~10 MB each at L4P's shapes)
    seed: int = 0
    draw_marks: bool = True  # render region marks (<obj_k>) on the frames at load time
    marks: MarkStyle = field(default_factory=MarkStyle)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # off by default (probabilities 0)

    def __post_init__(self):
        local_path(self.cache, "data.cache")
        if self.batch_size < 1 or self.num_workers < 0 or self.shuffle_buffer < 0 or self.clip_cache < 0:
            raise ValueError("data.batch_size must be >= 1, data.num_workers, data.shuffle_buffer and "
                             "data.clip_cache >= 0")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5  # the paper's
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03  # of max_steps, then cosine to 0 (the paper's schedule)
    grad_clip: float = 1.0


@dataclass(frozen=True)
class RunConfig:
    out: str = "data/runs/student"
    max_steps: int = 100
    checkpoint_every: int = 50  # steps; a checkpoint counts only once its `complete` marker exists
    keep_checkpoints: int = 2
    log_every: int = 1
    deepspeed: str = "configs/deepspeed/zero3_cpu.json"
    seed: int = 0
    export: bool = True  # consolidate and export the final model without the P4D branch

    def __post_init__(self):
        local_path(self.out, "run.out")
        if self.max_steps < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("run.max_steps, run.checkpoint_every and run.keep_checkpoints must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """YAML file + `a.b.c=value` overrides (configs/dataclass_io.py says how values are read)."""
    return load_config(TrainConfig, path, overrides)
