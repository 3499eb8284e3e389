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
- Plucker rays (d, m): d is the direction, m = o x d / |d| the moment of the unit direction about the
  origin of the frame they are expressed in, with o any point of the ray (the camera centre). Exact
  rays (plucker_rays) have |d| = 1; a network's (L4P's camray head) do not, and are read as L4P reads
  them: the point of the ray nearest the origin is d x m / |d|.

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


def _grid_cell_directions(K: np.ndarray, image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Unit camera-frame directions [gh * gw, 3] through the grid cell centres of plucker_rays."""
    height, width = image_size
    grid_h, grid_w = grid
    v, u = np.meshgrid(
        (np.arange(grid_h) + 0.5) * height / grid_h, (np.arange(grid_w) + 0.5) * width / grid_w, indexing="ij"
    )
    homogeneous = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=-1)
    directions = homogeneous @ np.linalg.inv(K).T
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def _check_rays(rays: np.ndarray) -> np.ndarray:
    rays = np.asarray(rays, dtype=np.float64)
    if rays.ndim != 4 or rays.shape[0] != 6:
        raise ValueError(f"rays must be [6, T, gh, gw], got shape {rays.shape}")
    return rays


def camera_centers_from_rays(rays: np.ndarray) -> np.ndarray:
    """Camera centres [T, 3] of Plucker ray maps [6, T, gh, gw], in the frame the rays are expressed in.

    Each ray passes through p = d x m / |d| (L4P's reading of predicted rays, module docstring: d need
    not be unit, m need not be exactly orthogonal to d); the centre is the point with the least summed
    squared distance to the frame's rays, sum_i (I - u_i u_i^T) c = sum_i p_i with u_i = d_i / |d_i|
    (p_i is orthogonal to d_i).
    """
    rays = _check_rays(rays)
    d = rays[:3].reshape(3, rays.shape[1], -1).transpose(1, 2, 0)  # [T, N, 3]
    m = rays[3:].reshape(3, rays.shape[1], -1).transpose(1, 2, 0)
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    if np.any(norm == 0.0):
        raise ValueError("rays with a zero direction d have no line")
    points = np.cross(d, m) / norm
    units = d / norm
    count = d.shape[1]
    normal = count * np.eye(3) - np.einsum("tni,tnj->tij", units, units)
    # All rays of a frame parallel: every point on their common direction fits equally well.
    smallest = np.linalg.eigvalsh(normal)[:, 0]
    if np.any(smallest <= 1e-9 * count):
        raise ValueError(f"the rays of frame(s) {np.flatnonzero(smallest <= 1e-9 * count).tolist()} are "
                         "parallel: their camera centre is undefined")
    return np.linalg.solve(normal, points.sum(axis=1)[..., None])[..., 0]


def rotations_from_rays(rays: np.ndarray, K: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Camera rotations [T, 3, 3] (camera axes in the rays' frame) of Plucker ray maps [6, T, gh, gw].

    The rotation maps the unit camera-frame directions K^-1 (u, v, 1) of the grid cell centres (same
    cells as plucker_rays, for images of image_size = (H, W); K [3, 3] or [T, 3, 3]) onto the ray
    directions d as given, fitted by Kabsch and forced proper (det +1). As in L4P, d is not normalized
    first: a ray weighs |d| in the fit (exact rays all weigh 1).
    """
    rays = _check_rays(rays)
    num_frames, grid = rays.shape[1], rays.shape[2:]
    intrinsics = np.asarray(K, dtype=np.float64)
    if intrinsics.shape == (3, 3):
        intrinsics = np.broadcast_to(intrinsics, (num_frames, 3, 3))
    if intrinsics.shape != (num_frames, 3, 3):
        raise ValueError(f"K must be [3, 3] or [{num_frames}, 3, 3], got shape {np.shape(K)}")
    targets = rays[:3].reshape(3, num_frames, -1).transpose(1, 2, 0)
    if np.any(np.linalg.norm(targets, axis=-1) == 0.0):
        raise ValueError("rays with a zero direction d have no orientation")
    rotations = np.empty((num_frames, 3, 3))
    for index in range(num_frames):
        sources = _grid_cell_directions(intrinsics[index], image_size, grid)
        u, _, vt = np.linalg.svd(sources.T @ targets[index])
        # Flipping the least significant axis turns a best reflection into the best proper rotation.
        flip = np.diag([1.0, 1.0, 1.0 if np.linalg.det(vt.T @ u.T) > 0 else -1.0])
        rotations[index] = vt.T @ flip @ u.T
    return rotations


def poses_from_rays(rays: np.ndarray, K: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """cam_to_world poses [T, 4, 4] of Plucker ray maps [6, T, gh, gw], "world" being the rays' frame.
    The rays may be a network's, unnormalized (the cached camray): they are normalized here.

    With the module's convention X_ref = R @ X_cam + c, the pose is [R | c]: rotation from
    rotations_from_rays, translation the camera centre from camera_centers_from_rays. (The world_to_cam
    translation is -R^T c; invert_pose gives that matrix.) For L4P's camray the rays' frame is the
    window's first camera, so frame 0 comes out near the identity.
    """
    rotations = rotations_from_rays(rays, K, image_size)
    poses = np.zeros((len(rotations), 4, 4))
    poses[:, :3, :3] = rotations
    poses[:, :3, 3] = camera_centers_from_rays(rays)
    poses[:, 3, 3] = 1.0
    return poses
