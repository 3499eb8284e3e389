"""Configuration of the student: the base VLM, TPE, the P4D branch and the losses.

Every default is the released 4D-RGPT recipe (docs/distillation.md; configs/train/4drgpt.yaml spells it
out): TPE before the projector, the vision tower and the projector frozen, D_m through the frozen L4P
heads, Smooth-L1 in the released forms with weights L_LD 0.01 and L_ED depth 0.1, flow 0.001, motion
0.01, camray 1e-5. Every weight, form and switch is a value, so the paper's ablation (baseline, +TPE,
+LD, +ED, +LD+ED) is one config and student.model.ablation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shards.teacher_fields import L4P_DIM, L4P_HOOKS, MAP_TASKS
from student.losses import ED_FORMS, PENALTIES, RELEASED_FORMS

ADAPTERS = ("qwen2_5_vl", "llava_onevision")
DTYPES = ("float32", "bfloat16", "float16")
TPE_PLACEMENTS = ("before_projector", "after_projector")


@dataclass(frozen=True)
class ModelConfig:
    adapter: str = "qwen2_5_vl"  # how to reach the VLM's visual features and tokens (student/adapters/)
    path: str = ""  # a Hugging Face model directory (from_pretrained); tiny ones: student/tiny.py
    dtype: str = "float32"  # the weights as loaded; mixed precision is DeepSpeed's (run.deepspeed)
    freeze_vision: bool = True  # released: the vision tower frozen ...
    freeze_projector: bool = True  # ... and the multimodal projector; the LLM (and the P4D branch) train
    gradient_checkpointing: bool = True  # released; trades the LLM's activation memory for a recompute
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
    # before_projector: on the vision encoder's output, at its width (the method: E_V -> TPE -> E_P);
    # after_projector: on the projected tokens, at the LLM's width.
    placement: str = "before_projector"

    def __post_init__(self):
        if self.placement not in TPE_PLACEMENTS:
            raise ValueError(f"tpe.placement must be one of {TPE_PLACEMENTS}, got {self.placement!r}")


@dataclass(frozen=True)
class BranchConfig:
    """The P4D branch (training only): D_4DP onto the teacher's latent grid, D_m onto its maps."""

    enabled: bool = True
    layer: int = -1  # LLM hidden-state layer D_4DP reads (-1: the last, as the released code)
    hooks: int = len(L4P_HOOKS)  # teacher layers hooked
    latent_dim: int = L4P_DIM  # the teacher's latent width C
    head: str = "linear"  # "linear" (released code) or "mlp" (paper: 3 layers, GELU)
    mlp_hidden: int = 2560
    # D_m: "teacher", the frozen L4P DPT heads the caching job exported (released), or "light", small
    # trainable decoders (a cheap option: bench/train_step.py measures what they save).
    decoders: str = "teacher"
    teacher_heads: str | None = None  # the heads' programs; None: the training cache's teacher/ folder
    light_hidden: int = 256
    tasks: tuple[str, ...] = MAP_TASKS

    def __post_init__(self):
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"branch.head must be 'linear' or 'mlp', got {self.head!r}")
        if self.decoders not in ("light", "teacher"):
            raise ValueError(f"branch.decoders must be 'light' or 'teacher', got {self.decoders!r}")
        unknown = set(self.tasks) - set(MAP_TASKS)
        if unknown:
            raise ValueError(f"branch.tasks: unknown {sorted(unknown)}; known {MAP_TASKS}")


@dataclass(frozen=True)
class LossConfig:
    """Total = ce_weight x CE + ld_weight x L_LD + ed_weight x sum_task task_weights[task] x L_ED[task];
    the forms: student/losses.py."""

    ce_weight: float = 1.0  # the SFT cross-entropy on answer tokens
    ld_weight: float = 0.01  # released
    ld_kind: str = "smooth_l1"  # released (one reading of the code); the release's README says "mse"
    ed_weight: float = 1.0  # one factor on every task weight (the released run has none: 1)
    ed_kind: str = "smooth_l1"  # released: the same penalty as L_LD; "mse", or "l1"
    task_weights: dict[str, float] = field(  # released; a task left out is off
        default_factory=lambda: {"depth": 0.1, "flow": 0.001, "dyn_mask": 0.01, "camray": 1e-5}
    )
    ed_forms: dict[str, str] = field(default_factory=lambda: dict(RELEASED_FORMS))  # a task left out: released

    def __post_init__(self):
        negative = {k: v for k, v in [("ce_weight", self.ce_weight), ("ld_weight", self.ld_weight),
                                      ("ed_weight", self.ed_weight), *self.task_weights.items()] if v < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0 (a negative one maximizes its term), got {negative}")
        if self.ld_kind not in ("mse", "smooth_l1"):
            raise ValueError(f"loss.ld_kind must be 'mse' or 'smooth_l1', got {self.ld_kind!r}")
        if self.ed_kind not in PENALTIES:
            raise ValueError(f"loss.ed_kind must be one of {PENALTIES}, got {self.ed_kind!r}")
        for name, keys in (("task_weights", self.task_weights), ("ed_forms", self.ed_forms)):
            unknown = set(keys) - set(MAP_TASKS)
            if unknown:
                raise ValueError(f"loss.{name}: unknown {sorted(unknown)}; known {MAP_TASKS}")
        wrong = {t: f for t, f in self.ed_forms.items() if f not in ED_FORMS[t]}
        if wrong:
            raise ValueError(f"loss.ed_forms: {wrong} not among {ED_FORMS}")
        object.__setattr__(self, "ed_forms", {**RELEASED_FORMS, **self.ed_forms})


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
