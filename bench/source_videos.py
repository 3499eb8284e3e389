"""Source videos of a chosen size and length for the caching benchmarks: what a decoder meets in real
data sets (720p, 10 s, 30 fps, ~4 Mbit/s H.264), which the synthetic scenes (320 x 240, 16 frames)
are not. Content: a fine random texture panning under a moving disc, so every frame has detail and
motion to code; each video its own seed (distinct bytes, so distinct cache keys). No ground truth:
for the l4p / stand-in teachers, not the oracle.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

FPS = 30
TEXTURE_CELL = 4  # pixels per texture cell: ~4 Mbit/s at 720p with the synthetic set's x264 settings


def texture_frames(seed: int, size: tuple[int, int], num_frames: int) -> np.ndarray:
    """[num_frames, height, width, 3] uint8; size = (width, height)."""
    width, height = size
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // TEXTURE_CELL + 64, width // TEXTURE_CELL + 64, 3), dtype=np.uint8)
    texture = cells.repeat(TEXTURE_CELL, 0).repeat(TEXTURE_CELL, 1)
    rows, cols = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frame = texture[i % 64: i % 64 + height, (2 * i) % 64: (2 * i) % 64 + width]
        centre = (width * (0.15 + 0.7 * i / max(num_frames - 1, 1)), height * (0.5 + 0.15 * np.sin(i / 20)))
        frames[i] = np.where(((cols - centre[0]) ** 2 + (rows - centre[1]) ** 2 < (height / 9) ** 2)[..., None],
                             np.array([255, 60, 20], np.uint8), frame)
    return frames


def _write(args: tuple[Path, int, tuple[int, int], float]) -> None:
    from pipeline.synthetic.dataset import write_video

    path, seed, size, seconds = args
    partial = path.with_name(f".{path.name}")  # renamed when complete: a killed run leaves no short video
    write_video(partial, texture_frames(seed, size, round(seconds * FPS)), FPS)
    partial.rename(path)


def ensure_videos(directory: Path, count: int, size: tuple[int, int], seconds: float) -> Path:
    """`count` videos video_<i>.mp4 of `size` (width, height) and `seconds` in `directory`, written once
    (in parallel); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    todo = [(directory / f"video_{i:04d}.mp4", i, size, seconds) for i in range(count)]
    todo = [t for t in todo if not t[0].exists()]
    with ProcessPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1) or 1) as pool:
        list(pool.map(_write, todo))
    return directory
