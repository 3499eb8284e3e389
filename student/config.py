"""Configuration of the student: the base VLM, TPE, the P4D branch and the loss weights.

Every weight and switch is a value here, so the paper's ablation (baseline, +TPE, +LD, +ED, +LD+ED) is
one config and student.model.ablation. Default weights: alpha = 0.5 for L_LD, beta = 0.1 for L_ED with
per-task 1.0 depth, 0.1 flow, 0.05 motion, 0.05 camray, an earlier reading of the paper for which no
source was found; the released recipe's weights are in docs/distillation.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shards.teacher_fields import L4P_DIM, L4P_HOOKS, MAP_TASKS

ADAPTERS = ("qwen2_5_vl", "llava_onevision")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    adapter: str = "qwen2_5_vl"  # how to reach the VLM's visual features and tokens (student/adapters/)
    path: str = ""  # a Hugging Face model directory (from_pretrained); tiny ones: student/tiny.py
    dtype: str = "float32"
    freeze_vision: bool = True  # the paper trains projector + LLM, the vision encoder stays frozen
    video_size: tuple[int, int] = (224, 224)  # (H, W) the frames are resized to for the vision tower

    def __post_init__(self):
        if self.adapter not in ADAPTERS:
            raise ValueError(f"model.adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass(frozen=True)
class TPEConfig:
    """Timestamp positional encoding: sinusoid of each frame's time in seconds, added to its tokens."""

    enabled: bool = True
    base: float = 10000.0
    scale: float = 1.0  # multiplies the encoding (its entries are in [-1, 1])


@dataclass(frozen=True)
class BranchConfig:
    """The P4D branch (training only): D_4DP onto the teacher's latent grid, D_m onto its maps."""

    enabled: bool = True
    layer: int = -1  # LLM hidden-state layer D_4DP reads (-1: the last, as the released code)
    hooks: int = len(L4P_HOOKS)  # teacher layers hooked
    latent_dim: int = L4P_DIM  # the teacher's latent width C
    head: str = "linear"  # "linear" (released code) or "mlp" (paper: 3 layers, GELU)
    mlp_hidden: int = 2560
    decoders: str = "light"  # D_m: "light" trainable decoders or "teacher" (frozen exported DPT heads)
    teacher_heads: str | None = None  # CACHE/teacher: the exported heads program, for decoders="teacher"
    light_hidden: int = 256
    tasks: tuple[str, ...] = MAP_TASKS

    def __post_init__(self):
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"branch.head must be 'linear' or 'mlp', got {self.head!r}")
        if self.decoders not in ("light", "teacher"):
            raise ValueError(f"branch.decoders must be 'light' or 'teacher', got {self.decoders!r}")
        if self.decoders == "teacher" and not self.teacher_heads:
            raise ValueError("branch.decoders='teacher' needs branch.teacher_heads (CACHE/teacher)")
        unknown = set(self.tasks) - set(MAP_TASKS)
        if unknown:
            raise ValueError(f"branch.tasks: unknown {sorted(unknown)}; known {MAP_TASKS}")


@dataclass(frozen=True)
class LossConfig:
    ce_weight: float = 1.0  # the SFT cross-entropy on answer tokens
    ld_weight: float = 0.5  # alpha
    ld_kind: str = "smooth_l1"  # the paper; the released README says "mse"
    ed_weight: float = 0.1  # beta
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"depth": 1.0, "flow": 0.1, "dyn_mask": 0.05, "camray": 0.05}
    )

    def __post_init__(self):
        negative = {k: v for k, v in [("ce_weight", self.ce_weight), ("ld_weight", self.ld_weight),
                                      ("ed_weight", self.ed_weight), *self.task_weights.items()] if v < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0 (a negative one maximizes its term), got {negative}")
        if self.ld_kind not in ("mse", "smooth_l1"):
            raise ValueError(f"loss.ld_kind must be 'mse' or 'smooth_l1', got {self.ld_kind!r}")
        unknown = set(self.task_weights) - set(MAP_TASKS)
        if unknown:
            raise ValueError(f"loss.task_weights: unknown {sorted(unknown)}; known {MAP_TASKS}")


@dataclass(frozen=True)
class StudentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tpe: TPEConfig = field(default_factory=TPEConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def uses_latents(self) -> bool:
        return self.branch.enabled and self.loss.ld_weight > 0

    def map_tasks(self) -> tuple[str, ...]:
        """Tasks whose L_ED term is on: only these maps need reading from the cache."""
        if not self.branch.enabled or self.loss.ed_weight <= 0:
            return ()
        return tuple(t for t in self.branch.tasks if self.loss.task_weights.get(t, 0.0) > 0)

    def distilled_terms(self) -> tuple[tuple[str, str], ...]:
        """(loss term, cache field) of every enabled distillation term: "ld" reads the latents,
        "ed_<task>" its map. The model's losses, the loader's fields and the trainer's valid-sample
        counts all follow this one list."""
        ld = (("ld", "latents"),) if self.uses_latents() else ()
        return ld + tuple((f"ed_{t}", t) for t in self.map_tasks())

    def needed_fields(self) -> tuple[str, ...]:
        """The teacher fields the enabled losses read from the cache (no other field is decoded)."""
        return tuple(field for _, field in self.distilled_terms())
