"""The L4P architecture as a config: FULL is the released model, TINY the same classes small enough
for tests (narrow, few blocks, hooks scaled down)."""
from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("depth", "flow_2d_backward", "dyn_mask", "camray")


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
    # Output channels and spatial size of each task head (camray is predicted per 14x14 patch).
    task_channels: dict[str, int] = field(
        default_factory=lambda: {"depth": 1, "flow_2d_backward": 2, "dyn_mask": 1, "camray": 6}
    )
    task_size: dict[str, int] = field(
        default_factory=lambda: {"depth": 224, "flow_2d_backward": 224, "dyn_mask": 224, "camray": 16}
    )

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid of one window: (t, h, w) = (8, 16, 16) for the full model."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet, side, side

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


FULL = L4PConfig()
TINY = L4PConfig(
    embed_dim=48, depth=4, num_heads=4, mlp_hidden=96, hooks=(1, 2, 3, 4),
    dpt_channels=(8, 16, 32, 32), dpt_features=16, head_hidden=8,
)
