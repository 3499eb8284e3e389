"""The exact ground truth of one rendered synthetic video, and its sidecar file.

The sidecar sits next to the video: `<dir>/<stem>.mp4` -> `<dir>/<stem>.gt.npz` (np.savez_compressed,
numeric and fixed-width string arrays only, so it loads with allow_pickle=False).

Layout (N frames of H x W pixels, K objects; geometry conventions in pipeline.geometry):
  fps                scalar float64
  timestamps         [N] float64      i / fps, seconds
  K                  [3, 3] float64   intrinsics at the native resolution
  cam_to_world       [N, 4, 4] float64
  depth              [N, H, W] float32  metric z-depth
  flow               [N, 2, H, W] float32  BACKWARD flow in native pixels, channel 0 = u (x), 1 = v (y):
                     flow[t] at pixel p = (position of the same surface point in frame t-1) - p, moving
                     objects carried back by their own motion; flow[0] = 0
  dyn_mask           [N, H, W] uint8    1 where the pixel sees a moving object
  object_ids         [N, H, W] int16    -1 static background, k = object k
  object_positions   [N, K, 3] float64  world centres (m)
  object_velocities  [N, K, 3] float64  world velocities (m/s)
  object_sizes       [K, 3] float64     full extents along the object's axes (m); a sphere: its diameter
  object_yaws        [K] float64        rotation of the object's axes about world z (rad)
  object_kinds       [K] str            "sphere" | "box"
  object_labels      [K] str            e.g. "red sphere"
  object_moving      [K] bool
Camera rays (L4P camray layout) are derived, not stored: SceneGroundTruth.rays().
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline import geometry

SIDECAR_SUFFIX = ".gt.npz"


@dataclass(frozen=True, eq=False)
class SceneGroundTruth:
    fps: float
    timestamps: np.ndarray
    K: np.ndarray
    cam_to_world: np.ndarray
    depth: np.ndarray
    flow: np.ndarray
    dyn_mask: np.ndarray
    object_ids: np.ndarray
    object_positions: np.ndarray
    object_velocities: np.ndarray
    object_sizes: np.ndarray
    object_yaws: np.ndarray
    object_kinds: np.ndarray
    object_labels: np.ndarray
    object_moving: np.ndarray

    def __post_init__(self):
        if self.depth.ndim != 3:
            raise ValueError(f"ground truth depth must be [N, H, W], got shape {self.depth.shape}")
        n, h, w = self.depth.shape
        k = self.object_sizes.shape[0]
        expected = {
            "timestamps": ((n,), "float64"),
            "K": ((3, 3), "float64"),
            "cam_to_world": ((n, 4, 4), "float64"),
            "depth": ((n, h, w), "float32"),
            "flow": ((n, 2, h, w), "float32"),
            "dyn_mask": ((n, h, w), "uint8"),
            "object_ids": ((n, h, w), "int16"),
            "object_positions": ((n, k, 3), "float64"),
            "object_velocities": ((n, k, 3), "float64"),
            "object_sizes": ((k, 3), "float64"),
            "object_yaws": ((k,), "float64"),
            "object_kinds": ((k,), "U"),
            "object_labels": ((k,), "U"),
            "object_moving": ((k,), "bool"),
        }
        for name, (shape, dtype) in expected.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.shape != shape:
                raise ValueError(f"ground truth {name}: expected shape {shape}, got {np.shape(array)}")
            kind_matches = array.dtype.kind == "U" if dtype == "U" else array.dtype == np.dtype(dtype)
            if not kind_matches:
                raise ValueError(f"ground truth {name}: expected dtype {dtype}, got {array.dtype}")
        if not self.fps > 0:
            raise ValueError(f"ground truth fps must be > 0, got {self.fps}")

    @property
    def num_frames(self) -> int:
        return self.depth.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)"""
        return self.depth.shape[1], self.depth.shape[2]

    @property
    def num_objects(self) -> int:
        return self.object_sizes.shape[0]

    def rays(self, grid: tuple[int, int] = (16, 16), reference: np.ndarray | None = None) -> np.ndarray:
        """Plucker rays [6, N, gh, gw] in the camera frame of `reference` (default: the first frame)."""
        return geometry.plucker_rays(self.K, self.cam_to_world, self.image_size, grid=grid, reference=reference)


def sidecar_path(video_path: str | Path) -> Path:
    video_path = Path(video_path)
    return video_path.with_name(video_path.stem + SIDECAR_SUFFIX)


def save_ground_truth(ground_truth: SceneGroundTruth, video_path: str | Path) -> Path:
    """Write the sidecar of video_path; returns its path."""
    path = sidecar_path(video_path)
    arrays = {f.name: getattr(ground_truth, f.name) for f in fields(SceneGroundTruth)}
    arrays["fps"] = np.float64(ground_truth.fps)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_ground_truth(video_path: str | Path) -> SceneGroundTruth:
    path = sidecar_path(video_path)
    if not path.is_file():
        raise FileNotFoundError(f"no ground truth for {video_path}: expected the sidecar file {path}")
    with np.load(path, allow_pickle=False) as stored:
        names = [f.name for f in fields(SceneGroundTruth)]
        missing = sorted(set(names) - set(stored.files))
        if missing:
            raise ValueError(f"ground truth file {path} lacks {missing}")
        arrays = {name: stored[name] for name in names}
    arrays["fps"] = float(arrays["fps"])
    return SceneGroundTruth(**arrays)
