"""The teacher interface: frames + timestamps in, latents per hooked layer and maps per task out.

Every teacher returns, per clip, the fields and per-clip shapes of the cache's contract
(shards/teacher_fields.py: windows, layouts, units), as float32 arrays: numpy, or torch tensors on the
teacher's device (the caching job quantizes them there, shards/torch_codecs.py).
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from manifests.cache_key import canonical_json
from pipeline.config import TeacherConfig
from pipeline.failures import Fault, describe, fault_of


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


class TransientTeacherError(TeacherError):
    """A clip the teacher could not process for a reason outside the clip (memory, a lost worker): the
    clip is retried, and recorded as `transient` when its retries are spent (pipeline/failures.py)."""


class DeviceFault(Exception):
    """The device's state can no longer be trusted (a sticky CUDA error, a failed NCCL communicator):
    nothing this process computes from now on can be, so its process must end (TeacherActor exits)."""


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
        """Outputs for a batch of clips with the same frame count (float32 arrays or device tensors)."""

    def predict_each(self, clips: list[TeacherInput]) -> list[dict[str, np.ndarray] | TeacherError]:
        """Like predict, but a clip that fails becomes its TeacherError instead of failing the
        batch: the batch runs once, and only if it raises are the clips retried one by one (so a batch
        out of memory becomes single clips, once). A fault of the device raises DeviceFault."""
        try:
            return self.predict(clips)
        except Exception as batch_error:
            error = as_teacher_error(batch_error)  # a device fault goes no further
            if len(clips) == 1:
                return [error]
        if isinstance(error, TransientTeacherError):
            release_device_memory()
        return [self._predict_one(c) for c in clips]

    def _predict_one(self, clip: TeacherInput) -> dict[str, np.ndarray] | TeacherError:
        try:
            return self.predict([clip])[0]
        except Exception as e:
            return as_teacher_error(e)


def as_teacher_error(e: Exception) -> TeacherError:
    """The clip's error, by the kind of fault (pipeline/failures.py); a device fault is raised."""
    if isinstance(e, TeacherError):
        return e
    fault = fault_of(e)
    if fault is Fault.DEVICE:
        raise DeviceFault(describe(e)) from e
    return (TransientTeacherError if fault.transient else TeacherError)(describe(e))


def release_device_memory() -> None:
    """Give the blocks a failed batch left in torch's CUDA cache back, before its clips run one by one."""
    import torch

    torch.cuda.empty_cache()  # a no-op where CUDA was never initialized
