"""The teacher interface: frames + timestamps in, latents per hooked layer and maps per task out.

A clip of T frames is seen as W windows of 16 frames (mirror-padded, stride 8: W = 1 for T <= 16,
see l4p/windows.py). Every teacher returns, per clip (layouts follow L4P's heads, what 4D-RGPT distills):
  latents  [hooks, W * 2048, C]       per window (window-major) 8 x 16 x 16 tokens, (t, h, w) row-major
  depth    [T, 224, 224]              metric depth (after the head's exp), merged over windows
  flow     [2, T, 224, 224]           backward flow (u, v) to the previous clip frame, 224-px units
  dyn_mask [T, 224, 224]              the motion LOGIT (> 0: the pixel moves; sigmoid gives the probability)
  camray   [W, 6, 16, 16, 16]         Plucker rays (d, m) in each window's first camera frame, as the head
                                      gives them: d not normalized, m the moment of the unit direction
                                      (m = o x d / |d|, o the camera centre); exact rays have |d| = 1.
                                      pipeline.geometry.poses_from_rays reads either.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from manifests.cache_key import canonical_json
from pipeline.config import TeacherConfig
from pipeline.teachers.l4p.windows import padded_length, window_starts

INPUT_SIZE = (224, 224)  # (height, width) the teacher sees
PATCH = 14
TUBELET = 2
WINDOW = 16
RAY_GRID = 16
L4P_HOOKS = (14, 21, 28, 36)
L4P_DIM = 1408


@dataclass(frozen=True)
class TeacherInput:
    video_path: str
    frame_indices: np.ndarray  # [T] native frame indices
    timestamps: np.ndarray  # [T] seconds
    frames: np.ndarray  # [T, 224, 224, 3] uint8, RGB


@dataclass(frozen=True)
class TeacherIdentity:
    """What the driver needs before any teacher loads: the id that enters every cache_key, the
    input size to decode at, and the per-clip output shapes (they fix the shard schema)."""

    teacher_id: str
    input_size: tuple[int, int]
    shapes: dict[str, tuple[int, ...]]


class TeacherError(Exception):
    """A clip the teacher cannot process; becomes a failed row with this reason."""


def clip_windows(num_frames: int) -> list[int]:
    """Start frame of each 16-frame teacher window of a clip (of its mirror-padded frames)."""
    return window_starts(padded_length(num_frames, WINDOW), WINDOW)


def output_shapes(num_frames: int, hooks: int, latent_dim: int) -> dict[str, tuple[int, ...]]:
    h, w = INPUT_SIZE
    windows = len(clip_windows(num_frames))
    tokens = WINDOW // TUBELET * (h // PATCH) * (w // PATCH)
    return {
        "latents": (hooks, windows * tokens, latent_dim),
        "depth": (num_frames, h, w),
        "flow": (2, num_frames, h, w),
        "dyn_mask": (num_frames, h, w),
        "camray": (windows, 6, WINDOW, RAY_GRID, RAY_GRID),
    }


def hash_id(name: str, *parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else canonical_json(p).encode())
    return f"{name}:{h.hexdigest()[:20]}"


class Teacher(ABC):
    """Built inside its Ray actor from its config (never in the driver), frozen, no grad."""

    def __init__(self, config: TeacherConfig):
        self.config = config

    @classmethod
    @abstractmethod
    def identity(cls, config: TeacherConfig, num_frames: int) -> TeacherIdentity: ...

    def export(self, directory) -> None:
        """Write what a student may reuse without this teacher (L4P: its frozen DPT heads)."""

    @abstractmethod
    def predict(self, clips: list[TeacherInput]) -> list[dict[str, np.ndarray]]:
        """Outputs for a batch of clips with the same frame count (float32 arrays)."""

    def predict_each(self, clips: list[TeacherInput]) -> list[dict[str, np.ndarray] | TeacherError]:
        """Like predict, but a clip that fails becomes its TeacherError instead of failing the
        batch: the batch runs once, and only if it raises are the clips retried one by one."""
        try:
            return self.predict(clips)
        except Exception as batch_error:
            if len(clips) == 1:
                return [as_teacher_error(batch_error)]
        return [self._predict_one(c) for c in clips]

    def _predict_one(self, clip: TeacherInput) -> dict[str, np.ndarray] | TeacherError:
        try:
            return self.predict([clip])[0]
        except Exception as e:
            return as_teacher_error(e)


def as_teacher_error(e: Exception) -> TeacherError:
    return e if isinstance(e, TeacherError) else TeacherError(f"{type(e).__name__}: {e}")
