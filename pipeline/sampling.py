"""Which frames of a video make a clip: the sampling parameters (part of every cache_key)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingConfig:
    """num_frames frames per clip.

    fps None: spread uniformly over [start, end] (default: the whole video).
    fps set:  num_frames frames spaced 1/fps seconds apart, starting at `start` (default: the
              first frame's timestamp).
    pad:      a video with fewer usable frames than asked repeats frames (and their timestamps)
              instead of failing.
    """

    num_frames: int = 16
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    pad: bool = False

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"sampling.num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"sampling.fps must be > 0, got {self.fps}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"sampling span is empty: start={self.start} end={self.end}")
