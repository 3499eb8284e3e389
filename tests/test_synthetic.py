"""The synthetic 4D scene generator: exact ground truth, questions, videos, determinism."""
import json
import re

import decord
import numpy as np
import pyarrow.parquet as pq
import pytest

from manifests.schemas import SAMPLES_SCHEMA
from pipeline import geometry
from pipeline.synthetic import dataset
from pipeline.synthetic.ground_truth import load_ground_truth, sidecar_path
from pipeline.synthetic.questions import DIRECTIONS, QUESTION_TYPES
from pipeline.synthetic.render import render
from pipeline.synthetic.scene import sample_scene

# Slow enough (5 fps) that objects travel far enough in 12 frames for every question type to appear.
CONFIG = dataset.SyntheticConfig(num_scenes=4, seed=7, num_frames=12, fps=5.0, width=96, height=72, split="val")
GT_FIELDS = (
    "timestamps", "K", "cam_to_world", "depth", "flow", "dyn_mask", "object_ids", "object_positions",
    "object_velocities", "object_sizes", "object_yaws", "object_kinds", "object_labels", "object_moving",
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    description = dataset.generate_dataset(root, CONFIG)
    return root, description


def _ground_truths(root, description):
    return {entry["scene"]: load_ground_truth(root / entry["video"]) for entry in description["scenes"]}


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """image [H, W, C] at continuous (u, v) (pixel centres at +0.5)."""
    x, y = u - 0.5, v - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0 = np.clip(x0, 0, image.shape[1] - 2)
    y0 = np.clip(y0, 0, image.shape[0] - 2)
    image = image.astype(np.float64)
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_same_seed_same_data_another_seed_differs(tmp_path, generated):
    root, _ = generated
    small = dataset.SyntheticConfig(**{**CONFIG.__dict__, "num_scenes": 2})
    dataset.generate_dataset(tmp_path / "again", small, workers=2)
    again = pq.read_table(tmp_path / "again" / "samples.parquet")
    first = pq.read_table(root / "samples.parquet")
    names = ("scene_0000", "scene_0001")
    assert again.to_pylist() == [r for r in first.to_pylist() if json.loads(r["meta"])["scene"] in names]
    for name in names:
        a = load_ground_truth(root / "videos" / f"{name}.mp4")
        b = load_ground_truth(tmp_path / "again" / "videos" / f"{name}.mp4")
        assert a.fps == b.fps
        for field in GT_FIELDS:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        # x264 in one thread: the video bytes, hence the cache keys, are reproducible too.
        video = f"videos/{name}.mp4"
        assert (root / video).read_bytes() == (tmp_path / "again" / video).read_bytes()

    other = dataset.SyntheticConfig(**{**small.__dict__, "seed": CONFIG.seed + 1})
    dataset.generate_dataset(tmp_path / "other", other)
    changed = load_ground_truth(tmp_path / "other" / "videos" / "scene_0000.mp4")
    assert not np.array_equal(changed.depth, load_ground_truth(root / "videos" / "scene_0000.mp4").depth)
    assert pq.read_table(tmp_path / "other" / "samples.parquet").to_pylist() != again.to_pylist()


def test_backward_flow_is_the_reprojection_of_the_previous_frame(generated):
    root, description = generated
    moving_pixels = 0
    for gt in _ground_truths(root, description).values():
        np.testing.assert_array_equal(gt.flow[0], 0.0)
        uv = geometry.pixel_centers(gt.image_size)
        for t in range(1, gt.num_frames):
            points = geometry.unproject_pixels(gt.K, gt.cam_to_world[t], uv, gt.depth[t])
            ids = gt.object_ids[t]
            step = gt.object_positions[t] - gt.object_positions[t - 1]
            on_object = ids >= 0
            points[on_object] -= step[ids[on_object]]
            previous, z = geometry.project_points(gt.K, gt.cam_to_world[t - 1], points)
            assert np.all(z > 0)
            np.testing.assert_allclose(uv + np.moveaxis(gt.flow[t], 0, -1), previous, atol=2e-3)
            moving_pixels += int(gt.dyn_mask[t].sum())
    assert moving_pixels > 0


def test_backward_flow_is_photometrically_consistent():
    scene = dataset.make_scene(CONFIG, 0)
    rgb, gt = render(scene)
    height, width = gt.image_size
    uv = geometry.pixel_centers(gt.image_size)
    errors, zero_flow_errors, on_moving = [], [], []
    for t in range(1, gt.num_frames):
        target = uv + np.moveaxis(gt.flow[t], 0, -1)
        u, v = target[..., 0], target[..., 1]
        inside = (u > 1) & (u < width - 1) & (v > 1) & (v < height - 1)
        # Not occluded in t-1 (to first order): the four pixels interpolated in t-1 see the same object
        # (or the background) as the pixel in t.
        col = np.clip(np.floor(u - 0.5).astype(int), 0, width - 2)
        row = np.clip(np.floor(v - 0.5).astype(int), 0, height - 2)
        visible = inside.copy()
        for dy in (0, 1):
            for dx in (0, 1):
                visible &= gt.object_ids[t - 1][row + dy, col + dx] == gt.object_ids[t]
        warped = _bilinear(rgb[t - 1], u, v)
        errors.append(np.abs(warped - rgb[t]).max(axis=-1)[visible])
        zero_flow_errors.append(np.abs(rgb[t - 1].astype(float) - rgb[t]).max(axis=-1)[visible])
        on_moving.append(gt.dyn_mask[t][visible] == 1)
    errors, zero_flow_errors, on_moving = map(np.concatenate, (errors, zero_flow_errors, on_moving))
    assert errors.size > 0.7 * (gt.num_frames - 1) * height * width
    assert np.mean(errors <= 12) > 0.93
    # Moving objects are small at this size and interpolating across their edges and box corners
    # errs, so they are judged by their median; the background dominates the overall fraction.
    assert on_moving.sum() > 100 and np.median(errors[on_moving]) <= 4
    # Not a vacuous match: without the flow, the same pixels disagree far more.
    assert errors.mean() < 0.6 * zero_flow_errors.mean()
    assert errors[on_moving].mean() < 0.4 * zero_flow_errors[on_moving].mean()


def test_dyn_mask_is_the_moving_objects_pixels():
    static_scene = next(
        index for index in range(100)
        if not all(obj.moving for obj in dataset.make_scene(CONFIG, index).objects)
    )
    _, gt = render(dataset.make_scene(CONFIG, static_scene))
    moving = np.flatnonzero(gt.object_moving)
    static = np.flatnonzero(~gt.object_moving)
    assert len(static) == 1 and len(moving) >= 2
    np.testing.assert_array_equal(gt.dyn_mask, np.isin(gt.object_ids, moving).astype(np.uint8))
    assert np.any(gt.object_ids == static[0])
    np.testing.assert_array_equal(gt.object_velocities[:, static[0]], 0.0)


def test_ground_truth_layout_rays_and_missing_sidecar(generated, tmp_path):
    root, description = generated
    gt = load_ground_truth(root / description["scenes"][0]["video"])
    n, h, w = CONFIG.num_frames, CONFIG.height, CONFIG.width
    assert gt.depth.shape == (n, h, w) and gt.depth.dtype == np.float32
    assert gt.flow.shape == (n, 2, h, w) and gt.flow.dtype == np.float32
    assert gt.object_ids.dtype == np.int16 and gt.dyn_mask.dtype == np.uint8
    np.testing.assert_allclose(gt.timestamps, np.arange(n) / CONFIG.fps)
    assert np.all(gt.depth > 0)
    rays = gt.rays()
    assert rays.shape == (6, n, 16, 16)
    np.testing.assert_array_equal(rays, geometry.plucker_rays(gt.K, gt.cam_to_world, (h, w)))
    with pytest.raises(FileNotFoundError, match=re.escape(str(sidecar_path(tmp_path / "nothing.mp4")))):
        load_ground_truth(tmp_path / "nothing.mp4")


def _expected_answer(meta: dict, gt) -> object:
    """Recomputes a question's answer from object positions / velocities and the camera poses."""
    objects = {int(mark): k for mark, k in meta["objects"].items()}
    positions, last = gt.object_positions, gt.num_frames - 1
    if meta["type"] == "closer":
        distance = {m: np.linalg.norm(positions[last, k] - gt.cam_to_world[last, :3, 3]) for m, k in objects.items()}
        winner = f"<obj_{min(distance, key=distance.get)}>"
    elif meta["type"] == "faster":
        speed = {m: np.mean(np.linalg.norm(gt.object_velocities[:, k], axis=1)) for m, k in objects.items()}
        winner = f"<obj_{max(speed, key=speed.get)}>"
    elif meta["type"] == "direction":
        (k,) = objects.values()
        shift = np.linalg.inv(gt.cam_to_world[0, :3, :3]) @ (positions[last, k] - positions[0, k])
        if abs(shift[0]) > abs(shift[2]):
            winner = "right" if shift[0] > 0 else "left"
        else:
            winner = "away from the camera" if shift[2] > 0 else "toward the camera"
    elif meta["type"] == "speed":
        (k,) = objects.values()
        return float(np.mean(np.linalg.norm(gt.object_velocities[:, k], axis=1)))
    else:
        (k,) = objects.values()
        return float(np.linalg.norm(positions[last, k] - positions[0, k]))
    return next(letter for letter, text in meta["options"].items() if text == winner)


def test_question_answers_and_regions_match_ground_truth(generated):
    root, description = generated
    table = pq.read_table(root / "samples.parquet")
    assert table.schema.equals(SAMPLES_SCHEMA)
    ground_truths = _ground_truths(root, description)
    rows = table.to_pylist()
    assert len({row["sample_id"] for row in rows}) == len(rows)
    seen_types = set()
    centre_checks = 0
    for row in rows:
        meta = json.loads(row["meta"])
        gt = ground_truths[meta["scene"]]
        seen_types.add(meta["type"])
        assert row["dataset"] == "synthetic" and row["split"] == "val" and row["cache_key"] is None
        assert row["video"] == f"videos/{meta['scene']}.mp4" and row["images"] is None
        question, answer = row["conversations"]
        assert question["role"] == "user" and question["content"].startswith("<video>\n")
        assert answer["role"] == "assistant"
        expected = _expected_answer(meta, gt)
        if isinstance(expected, float):
            assert meta["answer"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
            assert answer["content"] == f"{expected:.2f} {meta['unit']}"
        else:
            assert meta["answer"] == expected
            assert answer["content"] == f"{expected}. {meta['options'][expected]}"
        if meta["type"] == "direction":
            assert list(meta["options"].values()) == list(DIRECTIONS)
        marks = sorted(int(m) for m in re.findall(r"<obj_(\d+)>", question["content"]))
        assert marks == sorted(region["mark_id"] for region in row["regions"]) == sorted(map(int, meta["objects"]))
        height, width = gt.image_size
        for region in row["regions"]:
            k = meta["objects"][str(region["mark_id"])]
            assert region["label"] == gt.object_labels[k]
            assert {0, gt.num_frames - 1} & set(region["frame_indices"])
            assert len(region["boxes"]) == len(region["frame_indices"])
            for frame, box in zip(region["frame_indices"], region["boxes"]):
                x0, y0, x1, y1 = box
                assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
                rows_k, cols_k = np.nonzero(gt.object_ids[frame] == k)
                tight = [cols_k.min() / width, rows_k.min() / height, (cols_k.max() + 1) / width,
                         (rows_k.max() + 1) / height]
                np.testing.assert_allclose(box, tight, atol=1e-6)
                (u, v), _ = geometry.project_points(gt.K, gt.cam_to_world[frame], gt.object_positions[frame, k])
                if 0 <= u < width and 0 <= v < height and gt.object_ids[frame, int(v), int(u)] == k:
                    assert x0 <= u / width <= x1 and y0 <= v / height <= y1
                    centre_checks += 1
    assert seen_types == set(QUESTION_TYPES)
    assert centre_checks > 0


def test_video_decodes_to_the_rendered_frames_at_exact_times(generated):
    root, description = generated
    vr = decord.VideoReader(str(root / description["scenes"][0]["video"]))
    assert len(vr) == CONFIG.num_frames
    starts = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]
    np.testing.assert_allclose(starts, np.arange(CONFIG.num_frames) / CONFIG.fps, atol=1e-3)
    decoded = vr.get_batch(np.arange(len(vr))).asnumpy().astype(np.float64)
    rendered, _ = render(dataset.make_scene(CONFIG, 0))
    psnr = 10 * np.log10(255.0**2 / np.mean((decoded - rendered) ** 2))
    assert psnr > 30.0


def test_cli_writes_the_data_set_and_says_so(tmp_path, capsys):
    dataset.main(["--out", str(tmp_path), "--scenes", "1", "--seed", "3", "--frames", "8", "--width", "64",
                  "--height", "48", "--workers", "1"])
    printed = capsys.readouterr().out
    assert "scene_0000.mp4" in printed and "samples.parquet" in printed
    described = json.loads((tmp_path / "scenes.json").read_text())
    assert described["config"] == {"num_scenes": 1, "seed": 3, "num_frames": 8, "fps": 10.0, "width": 64,
                                   "height": 48, "split": "train"}
    assert (tmp_path / described["scenes"][0]["ground_truth"]).is_file()
    assert pq.read_table(tmp_path / "samples.parquet").num_rows == described["num_samples"]


def test_invalid_requests_fail_clearly():
    with pytest.raises(ValueError, match="even width and height"):
        dataset.SyntheticConfig(num_scenes=1, width=97)
    with pytest.raises(ValueError, match="at least 2 frames"):
        sample_scene(0, (72, 96), 1, 10.0)
