"""pipeline.geometry: projection round trips and the Plucker ray maps of L4P's camray layout."""
import numpy as np
import pytest

from pipeline import geometry

IMAGE_SIZE = (72, 96)  # (H, W)


def _poses(rng: np.random.Generator, count: int) -> np.ndarray:
    eyes = rng.uniform(-3.0, 3.0, (count, 3))
    targets = eyes + rng.normal(size=(count, 3)) * np.array([1.0, 1.0, 0.2])
    return np.stack([geometry.look_at(eye, target) for eye, target in zip(eyes, targets)])


def test_look_at_is_opencv_rigid_and_faces_the_target():
    pose = geometry.look_at(np.array([1.0, 2.0, 1.5]), np.array([1.0, 6.0, 1.5]))
    rotation = pose[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(rotation[:, 2], [0, 1, 0], atol=1e-12)  # z forward
    np.testing.assert_allclose(rotation[:, 1], [0, 0, -1], atol=1e-12)  # y down (world z is up)
    np.testing.assert_allclose(geometry.invert_pose(pose) @ pose, np.eye(4), atol=1e-12)


def test_pixel_centre_convention_and_round_trip():
    K = geometry.intrinsics_from_fov(IMAGE_SIZE, 60.0)
    assert K[0, 2] == IMAGE_SIZE[1] / 2 and K[1, 2] == IMAGE_SIZE[0] / 2
    uv = geometry.pixel_centers(IMAGE_SIZE)
    assert uv.shape == (*IMAGE_SIZE, 2)
    np.testing.assert_array_equal(uv[2, 5], [5.5, 2.5])  # row 2, col 5
    pose = _poses(np.random.default_rng(0), 1)[0]
    depth = np.random.default_rng(1).uniform(0.5, 9.0, IMAGE_SIZE)
    points = geometry.unproject_pixels(K, pose, uv, depth)
    projected, z = geometry.project_points(K, pose, points)
    np.testing.assert_allclose(projected, uv, atol=1e-9)
    np.testing.assert_allclose(z, depth, rtol=1e-12)
    # The centre pixel of an even-sized image straddles the optical axis: the ray through (W/2, H/2).
    origin, direction = geometry.pixel_rays(K, pose, np.array([IMAGE_SIZE[1] / 2, IMAGE_SIZE[0] / 2]))
    np.testing.assert_allclose(direction, pose[:3, 2], atol=1e-12)
    np.testing.assert_allclose(origin, pose[:3, 3])


def test_plucker_rays_geometry():
    rng = np.random.default_rng(2)
    poses = _poses(rng, 5)
    K = geometry.intrinsics_from_fov(IMAGE_SIZE, 65.0)
    grid = (4, 6)
    rays = geometry.plucker_rays(K, poses, IMAGE_SIZE, grid=grid)
    assert rays.shape == (6, 5, *grid) and rays.dtype == np.float32
    d = np.moveaxis(rays[:3].astype(np.float64), 0, -1)  # [T, gh, gw, 3]
    m = np.moveaxis(rays[3:].astype(np.float64), 0, -1)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(d * m, axis=-1), 0.0, atol=1e-5)
    # The reference camera's own rays pass through its origin.
    np.testing.assert_allclose(m[0], 0.0, atol=1e-6)

    world_to_ref = geometry.invert_pose(poses[0])
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    expected_uv = np.stack([(cols + 0.5) * IMAGE_SIZE[1] / grid[1], (rows + 0.5) * IMAGE_SIZE[0] / grid[0]], -1)
    for t in range(1, 5):
        centre_ref = world_to_ref[:3, :3] @ poses[t, :3, 3] + world_to_ref[:3, 3]
        assert np.linalg.norm(centre_ref) > 0.1
        np.testing.assert_allclose(np.cross(centre_ref, d[t]), m[t], atol=1e-5)
        # d x m is a point of the ray; further along it, any point projects to the cell centre in camera t.
        on_ray_ref = np.cross(d[t], m[t]) + 2.0 * d[t]
        on_ray_world = on_ray_ref @ poses[0, :3, :3].T + poses[0, :3, 3]
        uv, z = geometry.project_points(K, poses[t], on_ray_world)
        assert np.all(z > 0)
        np.testing.assert_allclose(uv, expected_uv, atol=1e-3)


def test_plucker_rays_reference_and_per_pose_intrinsics():
    poses = _poses(np.random.default_rng(3), 3)
    K = geometry.intrinsics_from_fov(IMAGE_SIZE, 50.0)
    in_third = geometry.plucker_rays(np.stack([K] * 3), poses, IMAGE_SIZE, reference=poses[2])
    np.testing.assert_allclose(in_third[3:, 2], 0.0, atol=1e-6)
    # Scaling the image and K together leaves the rays unchanged (what resizing to 224 relies on).
    scale = np.diag([2.0, 2.0, 1.0])
    doubled = geometry.plucker_rays(scale @ K, poses, (2 * IMAGE_SIZE[0], 2 * IMAGE_SIZE[1]))
    np.testing.assert_allclose(doubled, geometry.plucker_rays(K, poses, IMAGE_SIZE), atol=1e-6)
    with pytest.raises(ValueError, match="cam_to_world"):
        geometry.plucker_rays(K, poses[0], IMAGE_SIZE)


def test_poses_from_unnormalized_rays_read_as_l4p_reads_them():
    """The cached camray is the head's raw output: d of any length, m the moment of the unit direction
    (L4P's reading, p = d x m / |d|). poses_from_rays normalizes for itself."""
    rng = np.random.default_rng(6)
    poses = _poses(rng, 4)
    K = geometry.intrinsics_from_fov(IMAGE_SIZE, 60.0)
    exact = geometry.plucker_rays(K, poses, IMAGE_SIZE, grid=(6, 8)).astype(np.float64)
    raw = exact.copy()
    raw[:3] *= rng.uniform(0.5, 2.0, exact.shape[1:])  # each ray's d rescaled, m left as it is
    expected = geometry.invert_pose(poses[0]) @ poses
    np.testing.assert_allclose(geometry.poses_from_rays(raw, K, IMAGE_SIZE), expected, atol=1e-5)
    np.testing.assert_allclose(geometry.camera_centers_from_rays(raw), expected[:, :3, 3], atol=1e-5)


def test_rotation_of_noisy_rays_weighs_each_ray_by_its_length_as_l4p_does():
    """Noisy, unnormalized directions: the rotation is the weighted least-squares one (Wahba's problem,
    weights |d|), solved here independently by Davenport's q-method instead of an SVD."""
    rng = np.random.default_rng(7)
    K = geometry.intrinsics_from_fov(IMAGE_SIZE, 60.0)
    grid = (4, 6)
    rays = geometry.plucker_rays(K, _poses(rng, 2), IMAGE_SIZE, grid=grid).astype(np.float64)
    rays[:3] += rng.normal(0, 0.05, rays[:3].shape)
    rays[:3] *= rng.uniform(0.3, 3.0, rays.shape[1:])
    rotations = geometry.rotations_from_rays(rays, K, IMAGE_SIZE)
    v, u = np.meshgrid((np.arange(grid[0]) + 0.5) * IMAGE_SIZE[0] / grid[0],
                       (np.arange(grid[1]) + 0.5) * IMAGE_SIZE[1] / grid[1], indexing="ij")
    sources = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], -1) @ np.linalg.inv(K).T
    sources /= np.linalg.norm(sources, axis=-1, keepdims=True)
    for t in range(2):
        d = rays[:3, t].reshape(3, -1).T
        b = d.T @ sources  # sum_i |d_i| (d_i / |d_i|) s_i^T
        z = np.array([b[1, 2] - b[2, 1], b[2, 0] - b[0, 2], b[0, 1] - b[1, 0]])
        k = np.zeros((4, 4))
        k[:3, :3], k[:3, 3], k[3, :3], k[3, 3] = b + b.T - np.trace(b) * np.eye(3), z, z, np.trace(b)
        q = np.linalg.eigh(k)[1][:, -1]  # the optimal quaternion (vector q[:3], scalar q[3])
        vector, scalar = q[:3], q[3]
        cross = np.array([[0, -vector[2], vector[1]], [vector[2], 0, -vector[0]], [-vector[1], vector[0], 0]])
        # Shuster's attitude matrix of q: d ~ A s.
        expected = (scalar**2 - vector @ vector) * np.eye(3) + 2 * np.outer(vector, vector) - 2 * scalar * cross
        np.testing.assert_allclose(rotations[t], expected, atol=1e-9)
