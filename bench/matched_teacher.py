"""A stand-in teacher for bench/throughput.py whose compute per output byte approaches full L4P's.

Full L4P per 16-frame clip: ~11.2 TFLOP (bench/l4p_teacher.py, from the config) for ~29.5 MB of raw
fp16 outputs, ~380 GFLOP per output MB. l4p-tiny spends far less per byte, so beside it the caching
job's decode / encode / write side looks heavier than it is with the real model. This teacher
returns outputs of the full model's shapes (latents 4 x 2048 x 1408 heavy-tailed with outlier
channels, as real ViT features have; depth / flow / motion / rays like a network's, see
bench/storage.py), so the job encodes and writes exactly the bytes L4P's outputs would give it, and
spends `gflop_per_clip` GFLOP of real fp32 matmuls per clip on its one CPU: the clip's tubelet
patches (2048 x 1176) embedded to 1408 channels, then 1408 x 1408 blocks, as a ViT-g's tokens go.

At the full ratio a clip costs ~11.2 TFLOP, minutes on one CPU core; a benchmark run picks less
(`matched_teacher_class(gflop)`) and prints the fraction of the full model's ratio it reached:
more compute per byte only makes the job's own work relatively lighter.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from bench.storage import realistic_latents, realistic_maps
from pipeline.config import TeacherConfig
from pipeline.teachers.base import Teacher, TeacherIdentity, TeacherInput, hash_id
from shards.teacher_fields import (
    INPUT_SIZE, L4P_DIM, L4P_HOOKS, MAP_SIZE, PATCH, TOKENS_PER_WINDOW, TUBELET, WINDOW, teacher_shapes,
)

PATCH_DIM = TUBELET * PATCH * PATCH * 3  # 1176 values per token, as L4P's patch embedding sees them


def matmul_flops(blocks: int) -> float:
    """FLOP of one clip: the patch embedding then `blocks` 1408 x 1408 matmuls on 2048 tokens."""
    return 2 * TOKENS_PER_WINDOW * PATCH_DIM * L4P_DIM + blocks * 2 * TOKENS_PER_WINDOW * L4P_DIM * L4P_DIM


def blocks_for(gflop: float) -> int:
    return max(len(L4P_HOOKS), math.ceil((gflop * 1e9 - matmul_flops(0)) / (matmul_flops(1) - matmul_flops(0))))


class MatchedTeacher(Teacher):
    """Full L4P output shapes for ~gflop_per_clip GFLOP per 16-frame clip (set by matched_teacher_class)."""

    gflop_per_clip = 0.0

    @classmethod
    def identity(cls, config: TeacherConfig, num_frames: int) -> TeacherIdentity:
        if num_frames != 16:
            raise ValueError("the matched bench teacher models one 16-frame window per clip")
        return TeacherIdentity(
            teacher_id=hash_id("bench-matched", {"blocks": blocks_for(cls.gflop_per_clip), "seed": config.seed}),
            input_size=INPUT_SIZE,
            shapes=teacher_shapes(num_frames),
        )

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        rng = np.random.default_rng(config.seed)
        self.blocks = blocks_for(self.gflop_per_clip)
        generator = torch.Generator().manual_seed(config.seed)
        self.embed = torch.randn(PATCH_DIM, L4P_DIM, generator=generator) / math.sqrt(PATCH_DIM)
        # He-scaled: activations keep their size through the ReLUs.
        self.weights = [torch.randn(L4P_DIM, L4P_DIM, generator=generator) * math.sqrt(2 / L4P_DIM)
                        for _ in range(min(self.blocks, 8))]  # reused in turn: the FLOPs, not the memory
        self.hook_blocks = set(np.linspace(0, self.blocks - 1, len(L4P_HOOKS)).round().astype(int).tolist())
        # Built once: values whose encoding and compression cost what real outputs cost; each clip's
        # latents add its own hooked activations, so no two clips store the same bytes.
        self.latents = realistic_latents((len(L4P_HOOKS), TOKENS_PER_WINDOW, L4P_DIM), rng)
        self.maps = realistic_maps(WINDOW, MAP_SIZE, rng)

    @torch.inference_mode()
    def predict(self, clips: list[TeacherInput]) -> list[dict[str, np.ndarray]]:
        return [self._predict_clip(c) for c in clips]

    def _predict_clip(self, clip: TeacherInput) -> dict[str, np.ndarray]:
        t, h, w, c = clip.frames.shape
        patches = clip.frames.reshape(t // TUBELET, TUBELET, h // PATCH, PATCH, w // PATCH, PATCH, c)
        tokens = patches.transpose(0, 2, 4, 1, 3, 5, 6).reshape(-1, PATCH_DIM)
        x = (torch.from_numpy(tokens).float() / 255 - 0.5) @ self.embed
        hooks = []
        for block in range(self.blocks):
            x = (x @ self.weights[block % len(self.weights)]).relu_()
            if block in self.hook_blocks:
                hooks.append(x)
        return {"latents": self.latents + 0.05 * torch.stack(hooks).numpy(), **self.maps}


def matched_teacher_class(gflop_per_clip: float) -> type[MatchedTeacher]:
    """MatchedTeacher spending `gflop_per_clip` GFLOP per clip (pickled by value into its Ray actor)."""
    return type("MatchedTeacher", (MatchedTeacher,), {"gflop_per_clip": float(gflop_per_clip), "__module__": __name__})
