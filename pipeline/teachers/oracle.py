"""The oracle teacher: exact ground truth of the project's synthetic scenes, in the teacher layout.

Maps: the scene's exact depth, motion mask and camera rays at the sampled frames, resampled to
224 x 224 by nearest neighbour (no blending across depth edges, so values stay exact), and the
exact backward flow between consecutive SAMPLED frames (what a teacher sees as "the previous frame"),
computed from depth, poses and object motion, in 224-pixel units. The motion mask is given as L4P
gives it, a logit: +MOTION_LOGIT where the pixel moves, -MOTION_LOGIT where it does not (a certain
answer needs a finite logit; sigmoid(10) = 1 - 4.5e-5). The rays follow L4P's convention with unit d
(m = o x d).

Latents: not a perception model's features. Each teacher token's ground-truth 4D patch (2 frames x
14 x 14 pixels of log-depth, flow u, flow v and mask = 1568 numbers) times a fixed seeded random
Gaussian projection to C channels, one projection per hook. They are a deterministic function of the
scene, useful to test that latent distillation can learn something real; they are low-rank by
construction, so never use them to judge compression.
"""
from __future__ import annotations

import numpy as np

from pipeline.config import TeacherConfig
from pipeline.geometry import pixel_centers, plucker_rays, project_points, unproject_pixels
from pipeline.synthetic.ground_truth import SceneGroundTruth, load_ground_truth
from pipeline.teachers.base import Teacher, TeacherError, TeacherIdentity, TeacherInput, hash_id
from shards.teacher_fields import (
    GRID, INPUT_SIZE, L4P_DIM, L4P_HOOKS, PATCH, TUBELET, teacher_shapes, window_frame_indices,
)

ORACLE_VERSION = 2  # 2: dyn_mask as a logit
MOTION_LOGIT = 10.0
_PATCH_CHANNELS = 4  # log-depth, flow u, flow v, mask


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel centre under a nearest-neighbour resize."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def backward_flow(gt: SceneGroundTruth, t: int, s: int) -> np.ndarray:
    """[2, H, W] flow from frame t to an earlier frame s in native pixels: where each pixel's
    surface point of frame t was in frame s (moving objects carried back by their own motion)."""
    uv = pixel_centers(gt.image_size)
    world = unproject_pixels(gt.K, gt.cam_to_world[t], uv, gt.depth[t].astype(np.float64))
    ids = gt.object_ids[t]
    for k in np.unique(ids[ids >= 0]):
        world[ids == k] -= gt.object_positions[t, k] - gt.object_positions[s, k]
    previous, _ = project_points(gt.K, gt.cam_to_world[s], world)
    return (previous - uv).transpose(2, 0, 1).astype(np.float32)


class OracleTeacher(Teacher):
    @classmethod
    def identity(cls, config: TeacherConfig, num_frames: int) -> TeacherIdentity:
        dim = config.latent_dim or L4P_DIM
        return TeacherIdentity(
            teacher_id=hash_id("oracle", {"version": ORACLE_VERSION, "seed": config.seed, "dim": dim}),
            input_size=INPUT_SIZE,
            shapes=teacher_shapes(num_frames, len(L4P_HOOKS), dim),
        )

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        dim = config.latent_dim or L4P_DIM
        patch_dim = TUBELET * PATCH * PATCH * _PATCH_CHANNELS
        self.projections = [
            np.random.default_rng([config.seed, hook]).standard_normal((patch_dim, dim), np.float32)
            / np.float32(np.sqrt(patch_dim))
            for hook in range(len(L4P_HOOKS))
        ]

    def predict(self, clips: list[TeacherInput]) -> list[dict[str, np.ndarray]]:
        return [self._predict_clip(c) for c in clips]

    def _predict_clip(self, clip: TeacherInput) -> dict[str, np.ndarray]:
        try:
            gt = load_ground_truth(clip.video_path)
        except FileNotFoundError as e:
            raise TeacherError(f"the oracle teacher only knows synthetic scenes: {e}") from e
        idx = np.asarray(clip.frame_indices)
        if idx.max() >= len(gt.depth):
            raise TeacherError(f"ground truth has {len(gt.depth)} frames, clip asks for frame {idx.max()}")
        depth, flow, mask = self._maps(gt, idx)
        # Like L4P, latents and rays per 16-frame window of the mirror-padded clip.
        windows = [idx[w] for w in window_frame_indices(len(idx))]
        window_maps = [(depth, flow, mask) if np.array_equal(w, idx) else self._maps(gt, w) for w in windows]
        rays = [plucker_rays(gt.K, gt.cam_to_world[w], gt.image_size, grid=(GRID, GRID)) for w in windows]
        return {
            "latents": np.concatenate([self._latents(*m) for m in window_maps], axis=1),
            "depth": depth,
            "flow": flow,
            "dyn_mask": np.where(mask > 0, MOTION_LOGIT, -MOTION_LOGIT).astype(np.float32),
            "camray": np.stack(rays).astype(np.float32),
        }

    @staticmethod
    def _maps(gt: SceneGroundTruth, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth, backward flow (to the previous entry of idx) and mask at 224 x 224 for frames idx."""
        height, width = gt.depth.shape[1:]
        rows, cols = nearest_indices(height, INPUT_SIZE[0]), nearest_indices(width, INPUT_SIZE[1])
        scale = np.array([INPUT_SIZE[1] / width, INPUT_SIZE[0] / height], np.float32)[:, None, None, None]
        flows = [np.zeros((2, height, width), np.float32)]
        flows += [backward_flow(gt, idx[k], idx[k - 1]) for k in range(1, len(idx))]
        flow = np.stack(flows, 1)[:, :, rows][..., cols] * scale
        depth = gt.depth[idx][:, rows][..., cols].astype(np.float32)
        mask = gt.dyn_mask[idx][:, rows][..., cols].astype(np.float32)
        return depth, flow, mask

    def _latents(self, depth: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> np.ndarray:
        t, h, w = depth.shape
        maps = np.stack([np.log(depth), flow[0], flow[1], mask], 1)  # [T, 4, H, W]
        gh, gw = h // PATCH, w // PATCH
        patches = maps.reshape(t // TUBELET, TUBELET, _PATCH_CHANNELS, gh, PATCH, gw, PATCH)
        tokens = patches.transpose(0, 3, 5, 1, 2, 4, 6).reshape(t // TUBELET * gh * gw, -1)
        return np.stack([tokens @ p for p in self.projections])
