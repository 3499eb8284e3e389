"""Merging of overlapping L4P window outputs and camera poses recovered from Plucker rays
(pipeline.geometry); the windows themselves are tested with the cache's contract (test_teacher_fields.py)."""
import numpy as np
import pytest

from pipeline import geometry
from pipeline.synthetic.ground_truth import load_ground_truth
from pipeline.teachers.l4p import windows
from shards.teacher_fields import padded_length, window_starts


def test_merge_overwrite_later_window_wins_except_its_first_frame():
    starts = window_starts(32)
    parts = [np.full((2, 16, 3, 4), value, dtype=np.float32) for value in (1.0, 2.0, 3.0)]
    merged = windows.merge_overwrite(parts, starts)
    assert merged.shape == (2, 32, 3, 4) and merged.dtype == np.float32
    expected = np.array([1.0] * 9 + [2.0] * 8 + [3.0] * 15)  # frames 8 and 16 keep the earlier window
    np.testing.assert_array_equal(merged[0, :, 0, 0], expected)
    assert np.all(merged == expected[None, :, None, None])


def test_merge_overwrite_single_window_unchanged_and_crop():
    part = np.random.default_rng(0).normal(size=(1, 16, 5, 6)).astype(np.float32)
    merged = windows.merge_overwrite([part], [0])
    np.testing.assert_array_equal(merged, part)
    np.testing.assert_array_equal(windows.crop(merged, 11), part[:, :11])
    with pytest.raises(ValueError, match="cannot crop 16"):
        windows.crop(merged, 17)


def _true_depth(rng: np.random.Generator, frames: int) -> np.ndarray:
    return rng.uniform(1.0, 10.0, (frames, 6, 7))


def _affine_windows(depth, starts, scales, shifts):
    """Windows of a depth video, each distorted by its own s * inverse depth + b."""
    return [1.0 / (s * (1.0 / depth[start:start + 16]) + b) for start, s, b in zip(starts, scales, shifts)]


@pytest.mark.parametrize("num_frames", [32, 20])
def test_merge_depth_recovers_the_first_windows_frame_of_reference(num_frames):
    rng = np.random.default_rng(num_frames)
    padded = padded_length(num_frames)
    depth = _true_depth(rng, padded)
    starts = window_starts(padded)
    scales, shifts = rng.uniform(0.5, 2.0, len(starts)), rng.uniform(-0.04, 0.3, len(starts))
    merged = windows.merge_depth(_affine_windows(depth, starts, scales, shifts), starts)
    assert merged.shape == depth.shape
    expected = 1.0 / (scales[0] / depth + shifts[0])
    np.testing.assert_allclose(merged, expected, rtol=1e-10)
    np.testing.assert_allclose(windows.crop(merged, num_frames), expected[:num_frames], rtol=1e-10)


def test_merge_depth_single_window_unchanged():
    part = _true_depth(np.random.default_rng(1), 16).astype(np.float32)
    merged = windows.merge_depth([part], [0])
    assert merged.dtype == np.float32
    np.testing.assert_allclose(merged, part, rtol=1e-6)


def test_merge_depth_overlap_keeps_the_earlier_values():
    rng = np.random.default_rng(2)
    depth = _true_depth(rng, 24)
    first, second = depth[:16], depth[8:24] * rng.uniform(0.9, 1.1, (16, 6, 7))  # inconsistent overlap
    merged = windows.merge_depth([first, second], [0, 8])
    np.testing.assert_allclose(merged[:16], first, rtol=1e-12)
    assert not np.allclose(merged[16:], second[8:])  # the later frames were aligned, not copied


def test_merge_depth_falls_back_to_scale_only_when_the_affine_fit_breaks():
    rng = np.random.default_rng(3)
    inverse_first = rng.uniform(0.1, 1.0, (16, 4, 5))
    inverse_second = np.concatenate([rng.uniform(0.5, 1.0, (8, 4, 5)), rng.uniform(0.1, 0.4, (8, 4, 5))])
    # The overlap says target = 2 x - 0.9: applied to the second window's new frames (x <= 0.4) it
    # would give negative inverse depth.
    inverse_first[8:] = 2.0 * inverse_second[:8] - 0.9
    merged = windows.merge_depth([1.0 / inverse_first, 1.0 / inverse_second], [0, 8])
    x, y = inverse_second[:8].ravel(), inverse_first[8:].ravel()
    np.testing.assert_allclose(1.0 / merged[16:], (x @ y) / (x @ x) * inverse_second[8:], rtol=1e-10)
    assert np.all(merged > 0)

    # A constant inverse depth over the overlap leaves the affine fit undetermined.
    inverse_second[:8] = 0.5
    merged = windows.merge_depth([1.0 / inverse_first, 1.0 / inverse_second], [0, 8])
    scale = inverse_first[8:].mean() / 0.5
    np.testing.assert_allclose(1.0 / merged[16:], scale * inverse_second[8:], rtol=1e-10)


def test_merging_rejects_inconsistent_windows():
    part = np.ones((16, 2, 2))
    with pytest.raises(ValueError, match="finite and positive"):
        windows.merge_depth([part, -part], [0, 8])
    with pytest.raises(ValueError, match="shares no frame"):
        windows.merge_depth([part, part], [0, 16])
    with pytest.raises(ValueError, match="no gap"):
        windows.merge_overwrite([part[None], part[None]], [0, 17])
    with pytest.raises(ValueError, match="same shape"):
        windows.merge_overwrite([part[None], part[None, :, :1]], [0, 8])
    with pytest.raises(ValueError, match="one start per window"):
        windows.merge_overwrite([part[None]], [0, 8])


def _random_poses(rng: np.random.Generator, count: int) -> np.ndarray:
    poses = np.tile(np.eye(4), (count, 1, 1))
    for pose in poses:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        pose[:3, :3] = q * np.linalg.det(q)  # proper rotation
        pose[:3, 3] = rng.uniform(-3.0, 3.0, 3)
    return poses


@pytest.mark.parametrize(
    "image_size, grid, K",
    [
        ((224, 224), (16, 16), np.array([[224.0, 0, 112.0], [0, 224.0, 112.0], [0, 0, 1]])),
        ((120, 200), (12, 20), np.array([[150.0, 0, 93.0], [0, 170.0, 64.0], [0, 0, 1]])),
    ],
)
def test_poses_from_exact_rays(image_size, grid, K):
    rng = np.random.default_rng(4)
    poses = _random_poses(rng, 5)
    reference = _random_poses(rng, 1)[0]
    for ref in (None, reference):
        rays = geometry.plucker_rays(K, poses, image_size, grid=grid, reference=ref)
        expected = geometry.invert_pose(poses[0] if ref is None else ref) @ poses
        centres = geometry.camera_centers_from_rays(rays)
        rotations = geometry.rotations_from_rays(rays, K, image_size)
        recovered = geometry.poses_from_rays(rays, K, image_size)
        np.testing.assert_allclose(centres, expected[:, :3, 3], atol=1e-5)
        np.testing.assert_allclose(rotations, expected[:, :3, :3], atol=1e-5)
        np.testing.assert_allclose(recovered, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)
        if ref is None:
            np.testing.assert_allclose(recovered[0], np.eye(4), atol=1e-5)


def test_rotation_from_mirrored_rays_is_proper():
    K = np.array([[224.0, 0, 112.0], [0, 224.0, 112.0], [0, 0, 1]])
    rays = geometry.plucker_rays(K, _random_poses(np.random.default_rng(5), 3), (224, 224))
    rays[0] *= -1.0  # mirror d_x: the best orthogonal fit is a reflection
    rotations = geometry.rotations_from_rays(rays, K, (224, 224))
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, 1, 2), np.broadcast_to(np.eye(3), (3, 3, 3)),
                               atol=1e-9)


def test_pose_from_rays_rejects_parallel_rays():
    rays = np.zeros((6, 1, 4, 4))
    rays[2] = 1.0  # every ray along z: no single centre
    with pytest.raises(ValueError, match="parallel"):
        geometry.camera_centers_from_rays(rays)


def test_poses_from_synthetic_scene_rays(synthetic_set):
    videos = sorted((synthetic_set / "videos").glob("*.mp4"))
    assert videos
    for video in videos:
        truth = load_ground_truth(video)
        recovered = geometry.poses_from_rays(truth.rays(), truth.K, truth.image_size)
        expected = geometry.invert_pose(truth.cam_to_world[0]) @ truth.cam_to_world
        np.testing.assert_allclose(recovered, expected, atol=1e-5)
