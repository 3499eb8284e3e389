"""Merging of overlapping L4P window outputs and camera poses recovered from Plucker rays
(pipeline.geometry); the windows themselves are tested with the cache's contract (test_teacher_fields.py)."""
import numpy as np
import pytest

from pipeline import geometry
from pipeline.synthetic.ground_truth import load_ground_truth
from pipeline.teachers.l4p import windows
from shards.teacher_fields import padded_length, window_starts


def released_merge(field: str, windows: list[np.ndarray], starts: list[int]) -> np.ndarray:
    """The released code's merge rules (joint alignment off) written out frame by frame, the fit in
    closed form: an independent merge to check pipeline.teachers.l4p.windows against.
    windows: per window [16, ...] (time first); -> [T_pad, ...]."""
    def inverse(depth):
        return np.where(depth > 0, 1.0 / np.where(depth > 0, depth, 1.0), 0.0)

    frames = {}
    for k, (values, start) in enumerate(zip(windows, starts)):
        values = np.asarray(values, dtype=np.float64)
        if field == "depth" and k > 0:
            overlap = starts[k - 1] + 16 - start
            x = inverse(values[:overlap]).ravel()
            y = inverse(np.stack([frames[start + j] for j in range(overlap)])).ravel()
            scale = np.mean((x - x.mean()) * (y - y.mean())) / np.var(x)
            values = inverse(scale * inverse(values) + (y.mean() - scale * x.mean()))
        for j in range(16):
            if not (field == "flow" and k > 0 and j == 0):  # backward flow: a window's first frame has none
                frames[start + j] = values[j]
    return np.stack([frames[t] for t in range(len(frames))])


def test_merge_flow_later_window_wins_except_its_first_frame():
    starts = window_starts(32)
    parts = [np.full((2, 16, 3, 4), value, dtype=np.float32) for value in (1.0, 2.0, 3.0)]
    merged = windows.merge_flow(parts, starts)
    assert merged.shape == (2, 32, 3, 4) and merged.dtype == np.float32
    expected = np.array([1.0] * 9 + [2.0] * 8 + [3.0] * 15)  # frames 8 and 16 keep the earlier window
    assert np.all(merged == expected[None, :, None, None])


def test_merge_dyn_mask_later_window_wins_all_its_frames():
    starts = window_starts(32)
    parts = [np.full((1, 16, 3, 4), value, dtype=np.float32) for value in (-1.0, 2.0, 3.0)]
    merged = windows.merge_dyn_mask(parts, starts)
    expected = np.array([-1.0] * 8 + [2.0] * 8 + [3.0] * 16)
    assert merged.shape == (1, 32, 3, 4) and np.all(merged == expected[None, :, None, None])


def test_merge_single_window_unchanged_and_crop():
    part = np.random.default_rng(0).normal(size=(1, 16, 5, 6)).astype(np.float32)
    for merge in (windows.merge_flow, windows.merge_dyn_mask):
        np.testing.assert_array_equal(merge([part], [0]), part)
    np.testing.assert_array_equal(windows.crop(part, 11), part[:, :11])
    with pytest.raises(ValueError, match="cannot crop 16"):
        windows.crop(part, 17)
    depth = np.random.default_rng(1).uniform(1.0, 10.0, (16, 6, 7)).astype(np.float32)
    merged = windows.merge_depth([depth], [0])
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(merged, depth)


@pytest.mark.parametrize("num_frames", [32, 24, 20])
def test_merge_depth_recovers_the_first_windows_frame_of_reference(num_frames):
    """Windows that are each an affine distortion of one inverse depth merge back exactly."""
    rng = np.random.default_rng(num_frames)
    padded = padded_length(num_frames)
    depth = rng.uniform(1.0, 10.0, (padded, 6, 7))
    starts = window_starts(padded)
    scales, shifts = rng.uniform(0.5, 2.0, len(starts)), rng.uniform(-0.04, 0.3, len(starts))
    parts = [1.0 / (s / depth[start:start + 16] + b) for start, s, b in zip(starts, scales, shifts)]
    merged = windows.merge_depth(parts, starts)
    np.testing.assert_allclose(merged, 1.0 / (scales[0] / depth + shifts[0]), rtol=1e-9)


@pytest.mark.parametrize("num_frames", [24, 32])
def test_merge_depth_fits_each_window_on_its_overlap_then_overwrites(num_frames):
    """Inconsistent windows (as a network's are): every frame against the independent merge. A later
    window's aligned values replace the overlap, and the next window fits against those."""
    rng = np.random.default_rng(7)
    starts = window_starts(num_frames)
    parts = [rng.uniform(0.5, 9.0, (16, 5, 6)) for _ in starts]
    merged = windows.merge_depth(parts, starts)
    expected = released_merge("depth", parts, starts)
    np.testing.assert_allclose(merged, expected, rtol=1e-9)
    assert not np.allclose(merged[8:16], parts[0][8:]), "the overlap is overwritten by the aligned later window"
    assert not np.allclose(merged[16:24], parts[1][8:]), "the later window is aligned, not copied"


def test_merge_depth_maps_non_positive_inverse_depth_to_zero():
    rng = np.random.default_rng(3)
    inverse_first = rng.uniform(0.1, 1.0, (16, 4, 5))
    inverse_second = np.concatenate([rng.uniform(0.5, 1.0, (8, 4, 5)), rng.uniform(0.1, 0.4, (8, 4, 5))])
    # The overlap says target = 2 x - 0.9: the second window's new frames (x <= 0.4) get inverse
    # depth < 0, which is depth 0, as the released code's safe inverse gives.
    inverse_first[8:] = 2.0 * inverse_second[:8] - 0.9
    merged = windows.merge_depth([1.0 / inverse_first, 1.0 / inverse_second], [0, 8])
    np.testing.assert_allclose(merged[8:16], 1.0 / inverse_first[8:], rtol=1e-9)
    np.testing.assert_array_equal(merged[16:], 0.0)
    # Depth 0 counts as inverse depth 0 in the next fit: a window fitted to zeros gets s = b = 0.
    third = rng.uniform(1.0, 2.0, (16, 4, 5))
    chained = windows.merge_depth([1.0 / inverse_first, 1.0 / inverse_second, third], [0, 8, 16])
    np.testing.assert_allclose(chained[:16], merged[:16], rtol=1e-12)
    np.testing.assert_array_equal(chained[16:], 0.0)


def test_merge_depth_constant_overlap_takes_the_minimum_norm_fit():
    rng = np.random.default_rng(4)
    first, second = rng.uniform(1.0, 3.0, (16, 4, 5)), rng.uniform(1.0, 3.0, (16, 4, 5))
    second[:8] = 2.0  # inverse depth 0.5 over the whole overlap: only 0.5 s + b is determined
    merged = windows.merge_depth([first, second], [0, 8])
    target = np.mean(1.0 / first[8:])
    scale, shift = target * np.array([0.5, 1.0]) / (0.5**2 + 1.0)  # the least-norm (s, b) on that line
    np.testing.assert_allclose(merged[8:], 1.0 / (scale / second + shift), rtol=1e-9)


def test_merging_rejects_inconsistent_windows():
    part = np.ones((16, 2, 2))
    with pytest.raises(ValueError, match="finite"):
        windows.merge_depth([part, part * np.inf], [0, 8])
    with pytest.raises(ValueError, match="shares no frame"):
        windows.merge_depth([part, part], [0, 16])
    with pytest.raises(ValueError, match="no gap"):
        windows.merge_flow([part[None], part[None]], [0, 17])
    with pytest.raises(ValueError, match="same shape"):
        windows.merge_dyn_mask([part[None], part[None, :, :1]], [0, 8])
    with pytest.raises(ValueError, match="one start per window"):
        windows.merge_flow([part[None]], [0, 8])


def test_merging_refuses_bad_layouts_naming_what_is_wrong():
    part = np.ones((16, 2, 2))
    with pytest.raises(ValueError, match=r"expected windows of 4 dims \(time third from last\), got shape \(16, 2, 2\)"):
        windows.merge_flow([part, part], [0, 8])
    with pytest.raises(ValueError, match="the first window must start at frame 0, got 8"):
        windows.merge_depth([part, part], [8, 16])
    with pytest.raises(ValueError, match="must increase"):
        windows.merge_dyn_mask([part[None], part[None]], [0, 0])


def test_a_one_frame_overlap_is_enough_to_align_depth():
    rng = np.random.default_rng(5)
    parts = [rng.uniform(0.5, 9.0, (16, 5, 6)) for _ in range(2)]
    np.testing.assert_allclose(windows.merge_depth(parts, [0, 15]), released_merge("depth", parts, [0, 15]), rtol=1e-9)


def test_merged_depth_is_at_least_float32():
    depth = np.random.default_rng(6).uniform(1.0, 10.0, (16, 3, 4)).astype(np.float16)
    assert windows.merge_depth([depth, depth], [0, 8]).dtype == np.float32


def test_safe_inverse_maps_zero_and_negative_to_zero():
    np.testing.assert_array_equal(windows.safe_inverse(np.array([0.0, -2.0, 4.0])), [0.0, 0.0, 0.25])


def test_crop_keeps_one_to_all_frames_of_any_leading_shape():
    merged = np.arange(16 * 2 * 3, dtype=np.float32).reshape(16, 2, 3)  # [T, H, W]: depth's layout
    np.testing.assert_array_equal(windows.crop(merged, 16), merged)
    np.testing.assert_array_equal(windows.crop(merged, 1), merged[:1])
    with pytest.raises(ValueError, match="cannot crop 16 merged frames to 0"):
        windows.crop(merged, 0)
    with pytest.raises(ValueError, match=r"expected \[\.\.\., T, H, W\], got shape \(2, 3\)"):
        windows.crop(merged[0], 1)


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
