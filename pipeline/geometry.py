"""Pinhole camera geometry shared by the whole project.

Conventions (every function here and every array in the project follows them):
- Camera frame: OpenCV. x right, y down, z forward (the viewing direction). Right-handed.
- Intrinsics K (3x3) belong to an image of W x H pixels. Pixel (row i, col j) covers
  [j, j+1] x [i, i+1] in continuous image coordinates, so its centre is (u, v) = (j + 0.5, i + 0.5).
  A principal point at the image centre is therefore (cx, cy) = (W / 2, H / 2).
- Image sizes are (H, W) and grids (gh, gw): row-major, like the arrays they describe.
- Poses are cam_to_world 4x4 matrices: X_world = R @ X_cam + t, with t the camera centre in the world.
- depth is the z coordinate of the surface point in the camera frame (metres), not the distance
  along the ray.
- Plucker rays (d, m): d is the unit direction, m = o x d the moment about the origin of the frame
  they are expressed in, with o any point of the ray (the camera centre). The point of the ray
  nearest that origin is d x m (for unit d).

Arrays are float64 inside; functions broadcast over leading batch dimensions where documented.
"""
from __future__ import annotations

import numpy as np


def intrinsics_from_fov(image_size: tuple[int, int], fov_x_deg: float) -> np.ndarray:
    """K for square pixels, principal point at the image centre, horizontal field of view fov_x."""
    height, width = image_size
    if not 0.0 < fov_x_deg < 180.0:
        raise ValueError(f"fov_x_deg must lie in (0, 180), got {fov_x_deg}")
    focal = 0.5 * width / np.tan(np.radians(fov_x_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """cam_to_world of a camera at `eye` looking at `target`, image "up" (-y) towards world `up`."""
    eye = np.asarray(eye, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    if np.linalg.norm(forward) == 0.0:
        raise ValueError("look_at: eye and target coincide")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to `up`")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 transforms [..., 4, 4] (world_to_cam from cam_to_world and back)."""
    pose = np.asarray(pose, dtype=np.float64)
    rot_t = np.swapaxes(pose[..., :3, :3], -1, -2)
    inverse = np.zeros_like(pose)
    inverse[..., :3, :3] = rot_t
    inverse[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, pose[..., :3, 3])
    inverse[..., 3, 3] = 1.0
    return inverse


def pixel_centers(image_size: tuple[int, int]) -> np.ndarray:
    """[H, W, 2] continuous (u, v) of every pixel centre."""
    height, width = image_size
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return np.stack([u, v], axis=-1)


def project_points(K: np.ndarray, cam_to_world: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [..., 3] into one camera: (uv [..., 2], z [...]). Points behind it get z <= 0."""
    world_to_cam = invert_pose(cam_to_world)
    cam = np.asarray(points, dtype=np.float64) @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[..., 2]
    pix = cam @ np.asarray(K, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[..., :2] / z[..., None]
    return uv, z


def unproject_pixels(K: np.ndarray, cam_to_world: np.ndarray, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Pixels uv [..., 2] with z-depth [...] of one camera -> world points [..., 3]."""
    uv = np.asarray(uv, dtype=np.float64)
    homogeneous = np.concatenate([uv, np.ones_like(uv[..., :1])], axis=-1)
    cam = (homogeneous @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T) * np.asarray(depth)[..., None]
    pose = np.asarray(cam_to_world, dtype=np.float64)
    return cam @ pose[:3, :3].T + pose[:3, 3]


def pixel_rays(K: np.ndarray, cam_to_world: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixels uv [..., 2] of one camera: (origin [3], unit world directions [..., 3])."""
    pose = np.asarray(cam_to_world, dtype=np.float64)
    directions = unproject_pixels(K, pose, uv, np.ones(np.shape(uv)[:-1])) - pose[:3, 3]
    return pose[:3, 3].copy(), directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def plucker_rays(
    K: np.ndarray,
    cam_to_world: np.ndarray,
    image_size: tuple[int, int],
    grid: tuple[int, int] = (16, 16),
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Plucker ray maps [6, T, gh, gw] float32, the layout of L4P's camray head.

    K: [3, 3] shared, or [T, 3, 3] per pose, for images of image_size = (H, W).
    cam_to_world: [T, 4, 4]. One ray per grid cell through the cell centre
    u = (gx + 0.5) * W / gw, v = (gy + 0.5) * H / gh. Channels (d_x, d_y, d_z, m_x, m_y, m_z) with d
    the unit direction and m = o x d (o = camera centre), both in the camera frame of `reference`
    (a cam_to_world 4x4; default the first pose; L4P uses each window's first frame).
    """
    poses = np.asarray(cam_to_world, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"cam_to_world must be [T, 4, 4], got shape {poses.shape}")
    num_poses = poses.shape[0]
    intrinsics = np.asarray(K, dtype=np.float64)
    if intrinsics.shape == (3, 3):
        intrinsics = np.broadcast_to(intrinsics, (num_poses, 3, 3))
    if intrinsics.shape != (num_poses, 3, 3):
        raise ValueError(f"K must be [3, 3] or [{num_poses}, 3, 3], got shape {np.shape(K)}")
    height, width = image_size
    grid_h, grid_w = grid
    v, u = np.meshgrid(
        (np.arange(grid_h) + 0.5) * height / grid_h, (np.arange(grid_w) + 0.5) * width / grid_w, indexing="ij"
    )
    uv = np.stack([u, v], axis=-1)
    ref_to_world = poses[0] if reference is None else np.asarray(reference, dtype=np.float64)
    world_to_ref = invert_pose(ref_to_world)
    rays = np.empty((6, num_poses, grid_h, grid_w))
    for index in range(num_poses):
        origin, directions = pixel_rays(intrinsics[index], poses[index], uv)
        origin_ref = world_to_ref[:3, :3] @ origin + world_to_ref[:3, 3]
        directions_ref = directions @ world_to_ref[:3, :3].T
        rays[:3, index] = np.moveaxis(directions_ref, -1, 0)
        rays[3:, index] = np.moveaxis(np.cross(origin_ref, directions_ref), -1, 0)
    return rays.astype(np.float32)
