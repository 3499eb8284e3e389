"""Configuration of a training run: the student, the data, the optimizer, the run. One YAML file
(configs/train/*.yaml); the resolved config is saved in the run directory and in every checkpoint.
The defaults are the released 4D-RGPT recipe (docs/distillation.md), as configs/train/4drgpt.yaml."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from configs.dataclass_io import load_config
from shards.local_path import cache_location, local_path
from shards.store import join
from student.augment import AugmentConfig
from student.cache_index import CacheMismatchError
from student.config import StudentConfig
from student.marks import MarkStyle


@dataclass(frozen=True)
class DataConfig:
    cache: str = "data/cache-zarr"
    split: str = "train"
    # Which datasets of the cache to train on (empty: all); released: this mixture, weights unknown (1 each).
    datasets: tuple[str, ...] = ("sat", "vsti", "robofac", "wolf")
    allow_evaluation_data: bool = False  # train on split-test rows / benchmarks anyway (cache_index refuses them)
    weights: dict[str, float] = field(default_factory=dict)  # dataset -> repeat factor; absent = 1.0
    teacher_id: str | None = None  # refuse a cache made by another teacher (None: accept the cache's one)
    field_dtypes: dict[str, str] = field(default_factory=dict)  # refuse fields stored otherwise
    batch_size: int = 2  # per rank and forward pass
    # Samples per optimizer step over all ranks (released 1024), by gradient accumulation:
    # global_batch / (batch_size x ranks) passes per step. None: one pass (batch_size x ranks).
    global_batch: int | None = 1024
    num_frames: int | None = 16  # refuse a cache whose clips have another frame count (None: any); released 16
    num_workers: int = 1  # DataLoader workers per rank (0: read in the training process)
    shuffle_buffer: int = 64
    clip_cache: int = 8  # clips each loader worker keeps after reading them (~10 MB each at L4P's shapes)
    seed: int = 0
    draw_marks: bool = True  # render region marks (<obj_k>) on the frames at load time
    marks: MarkStyle = field(default_factory=MarkStyle)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # off by default (probabilities 0)

    def __post_init__(self):
        cache_location(self.cache, "data.cache")
        if self.batch_size < 1 or self.num_workers < 0 or self.shuffle_buffer < 0 or self.clip_cache < 0:
            raise ValueError("data.batch_size must be >= 1, data.num_workers, data.shuffle_buffer and "
                             "data.clip_cache >= 0")
        if min(self.global_batch or 1, self.num_frames or 1) < 1:
            raise ValueError("data.global_batch and data.num_frames must be >= 1 (or null)")

    def check_frames(self, cache: Path, frames: int) -> None:
        """Refuse a cache whose clips have another frame count than data.num_frames."""
        if self.num_frames not in (None, frames):
            raise CacheMismatchError(f"{cache}: clips of {frames} frames, data.num_frames is {self.num_frames} "
                                     "(null: any)")

    def accumulation(self, world: int) -> int:
        """Forward / backward passes per optimizer step on each of `world` ranks."""
        if self.global_batch is None:
            return 1
        per_pass = self.batch_size * world
        if self.global_batch % per_pass:
            raise ValueError(f"data.global_batch {self.global_batch} is not a multiple of data.batch_size "
                             f"{self.batch_size} x {world} ranks")
        return self.global_batch // per_pass


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5  # released
    weight_decay: float = 0.0  # released
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03  # of the run's steps, then cosine to 0 (released)
    grad_clip: float = 1.0


@dataclass(frozen=True)
class RunConfig:
    out: str = "data/runs/student"
    max_steps: int | None = None  # optimizer steps; None: run.epochs
    epochs: float = 10  # released; over this rank's batches, used when max_steps is None
    checkpoint_every: int = 50  # steps; a checkpoint counts only once its `complete` marker exists
    keep_checkpoints: int = 2
    log_every: int = 1
    deepspeed: str = "configs/deepspeed/zero3_bf16.json"  # released: ZeRO-3, bf16
    seed: int = 0
    export: bool = True  # consolidate and export the final model without the P4D branch
    # Resume a checkpoint although the sample stream would change (another seed, data selection, cache
    # rows or global batch: student/checkpoints.py plan_resume); refused otherwise, naming the change.
    allow_changed_resume: bool = False

    def __post_init__(self):
        local_path(self.out, "run.out")
        if (self.max_steps is not None and self.max_steps < 1) or self.epochs <= 0 or self.checkpoint_every < 1 \
                or self.keep_checkpoints < 1:
            raise ValueError("run.max_steps (or null), run.checkpoint_every and run.keep_checkpoints must be >= 1, "
                             "run.epochs > 0")

    def steps(self, batches_per_epoch: int, accumulation: int) -> int:
        """Optimizer steps of the run: max_steps, else `epochs` epochs of this rank's batches (the
        stream runs on across epoch boundaries, so a step may span two)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * batches_per_epoch / accumulation))


@dataclass(frozen=True)
class TrainConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


    def with_teacher_heads(self) -> TrainConfig:
        """branch.teacher_heads defaults to the training cache's teacher/ folder (where the caching job
        exports the heads)."""
        branch = self.student.branch
        if branch.decoders != "teacher" or branch.teacher_heads:
            return self
        heads = str(join(self.data.cache, "teacher"))
        return replace(self, student=replace(self.student, branch=replace(branch, teacher_heads=heads)))


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """YAML file + `a.b.c=value` overrides (configs/dataclass_io.py says how values are read)."""
    return load_config(TrainConfig, path, overrides)
