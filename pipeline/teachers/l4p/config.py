"""The L4P architecture as a config: FULL is the released model, TINY the same module tree at small
widths (narrow, few blocks, hooks scaled down) for tests.

Every DPT head is one class (dpt.DPTHead) parameterized by its HeadConfig. The resampling factors are
those of the released code (NVlabs/L4P, l4p/models/task_heads/dense_heads.py, the head classes'
defaults, which configs/model.yaml keeps): the dense heads upsample time x2 in the two finest tap
resamplers and in the two deepest fusion blocks; camray keeps its 16 x 16 token grid in space and has
factors of its own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TASKS = ("depth", "flow_2d_backward", "dyn_mask", "camray")

Factors = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class HeadConfig:
    """One DPT head.

    channels: output channels. size: output side (the output is [channels, num_frames, size, size]).
    resample_log2: per tap (hook order), log2 of the (t, h, w) factors of its resampler
      act_postprocess.i.1: all >= 0 and one > 0, a ConvTranspose3d with kernel = stride = 2**f; all <= 0
      and one < 0, a Conv3d with stride 2**-f, kernel stride // 2 * 2 + 1, padding stride // 2; all 0,
      an Identity (no weights).
    fusion_scale: the trilinear upsampling factors (t, h, w) of refinenet1, 2, 3, 4.
    """

    channels: int
    size: int
    resample_log2: Factors
    fusion_scale: Factors


DENSE_RESAMPLE_LOG2: Factors = ((1, 2, 2), (1, 1, 1), (0, 0, 0), (-1, -1, -1))
DENSE_FUSION_SCALE: Factors = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
CAMRAY_RESAMPLE_LOG2: Factors = ((1, 0, 0), (1, 0, 0), (0, 0, 0), (-1, -1, -1))
CAMRAY_FUSION_SCALE: Factors = ((1, 1, 1), (1, 1, 1), (2, 1, 1), (2, 2, 2))


def dense_head(channels: int) -> HeadConfig:
    return HeadConfig(channels, 224, DENSE_RESAMPLE_LOG2, DENSE_FUSION_SCALE)


@dataclass(frozen=True)
class L4PConfig:
    img_size: int = 224
    patch_size: int = 14
    tubelet: int = 2
    num_frames: int = 16  # frames per window
    embed_dim: int = 1408
    depth: int = 40  # encoder blocks; feature index i = output of block i, index `depth` = final norm
    num_heads: int = 16
    mlp_hidden: int = 6144
    norm_eps: float = 1e-6
    hooks: tuple[int, ...] = (14, 21, 28, 36)  # encoder feature indices tapped by latents and heads
    dpt_channels: tuple[int, ...] = (256, 512, 1024, 1024)  # per tap, after act_postprocess
    dpt_features: int = 256  # scratch / RefineNet width
    head_hidden: int = 128  # head1 output and head2 hidden width
    # camray is predicted per 14 x 14 patch: a 16 x 16 ray grid.
    heads: dict[str, HeadConfig] = field(default_factory=lambda: {
        "depth": dense_head(1), "flow_2d_backward": dense_head(2), "dyn_mask": dense_head(1),
        "camray": HeadConfig(6, 16, CAMRAY_RESAMPLE_LOG2, CAMRAY_FUSION_SCALE),
    })

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid of one window: (t, h, w) = (8, 16, 16) for the full model."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet, side, side

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


def config_from_dict(fields: dict) -> L4PConfig:
    """The inverse of dataclasses.asdict(config) after a trip through JSON (lists back to tuples)."""
    expected = {f.name for f in dataclasses.fields(L4PConfig)}
    if set(fields) != expected:
        raise ValueError(
            f"config does not match L4PConfig: missing {sorted(expected - set(fields))}, "
            f"unknown {sorted(set(fields) - expected)}"
        )

    def tuples(value):
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    values = {k: tuples(v) for k, v in fields.items()}
    values["heads"] = {task: HeadConfig(**{k: tuples(v) for k, v in head.items()})
                       for task, head in fields["heads"].items()}
    return L4PConfig(**values)


FULL = L4PConfig()
TINY = L4PConfig(
    embed_dim=48, depth=4, num_heads=4, mlp_hidden=96, hooks=(1, 2, 3, 4),
    dpt_channels=(8, 16, 32, 32), dpt_features=16, head_hidden=8,
)
