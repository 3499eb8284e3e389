"""The synthetic R4D-style benchmark: categories, multiple-choice layout, exact answers recomputed here
from the ground truth, held-out seeds, and the oracle teacher caching it."""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SCENE_FRAMES, SCENE_SIZE
from manifests.regions import check_marks
from manifests.samples_table import read_samples
from pipeline import geometry
from pipeline.synthetic import benchmark, dataset
from pipeline.synthetic.benchmark_questions import (
    COVERED_CATEGORIES, DYNAMIC_CATEGORIES, LADDER_RATIO, LOCATE_MIN_GAP, STATIC_CATEGORIES,
)
from pipeline.synthetic.ground_truth import load_ground_truth
from pipeline.synthetic.scene import sample_scene

WIDTH, HEIGHT = SCENE_SIZE
CONFIG = benchmark.benchmark_config(6, num_frames=SCENE_FRAMES, width=WIDTH, height=HEIGHT)
META_KEYS = {"category", "group", "type", "options", "answer", "answer_text", "value", "unit", "values", "objects",
             "scene", "seed", "scene_index"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    description = benchmark.generate_benchmark(root, CONFIG)
    rows = read_samples(root / "samples.parquet").to_pylist()
    gts = {entry["scene"]: load_ground_truth(root / entry["video"]) for entry in description["scenes"]}
    return root, description, rows, gts


def _meta(row) -> dict:
    return json.loads(row["meta"])


def test_every_covered_category_is_asked_and_described(bench):
    _, description, rows, _ = bench
    counted = {c: sum(_meta(r)["category"] == c for r in rows) for c in description["categories"]}
    assert counted == description["categories"]
    assert set(COVERED_CATEGORIES) == set(STATIC_CATEGORIES) | set(DYNAMIC_CATEGORIES)
    assert all(counted[c] > 0 for c in COVERED_CATEGORIES), counted
    assert description["not_covered"] == []
    assert description["num_samples"] == len(rows)
    assert description["seeds"]["seed"] == benchmark.DEFAULT_SEED
    for row in rows:
        meta = _meta(row)
        assert meta["group"] == ("static" if meta["category"] in STATIC_CATEGORIES else "dynamic")


def test_rows_are_multiple_choice_in_the_training_layout_with_resolvable_marks(bench):
    _, _, rows, gts = bench
    assert len({row["sample_id"] for row in rows}) == len(rows)
    for row in rows:
        meta = _meta(row)
        assert META_KEYS <= set(meta), row["sample_id"]
        assert (row["dataset"], row["split"], row["cache_key"]) == ("synthetic4d", "test", None)
        assert meta["seed"] == CONFIG.seed and row["video"] == f"videos/{meta['scene']}.mp4"
        options = meta["options"]
        assert 2 <= len(options) <= 5 and list(options) == list("ABCDE"[: len(options)])
        assert len(set(options.values())) == len(options), options
        assert meta["answer"] in options and meta["answer_text"] == options[meta["answer"]]
        question, answer = row["conversations"]
        listed = "\n".join(f"{letter}. {text}" for letter, text in options.items())
        assert question["role"] == "user" and question["content"].startswith("<video>\n")
        assert question["content"].endswith(f"?\n{listed}\nAnswer with the option's letter.")
        assert answer == {"role": "assistant", "content": f"{meta['answer']}. {meta['answer_text']}"}
        check_marks(row["conversations"], row["regions"], where=row["sample_id"])
        marks = {int(m) for m in re.findall(r"<obj_(\d+)>", question["content"])}
        assert marks == {r["mark_id"] for r in row["regions"]} == {int(m) for m in meta["objects"]}
        gt = gts[meta["scene"]]
        for region in row["regions"]:
            assert region["label"] == gt.object_labels[meta["objects"][str(region["mark_id"])]]
            assert region["frame_indices"] and len(region["boxes"]) == len(region["frame_indices"])


def _direction(gt, k) -> str:
    shift = np.linalg.inv(gt.cam_to_world[0, :3, :3]) @ (gt.object_positions[-1, k] - gt.object_positions[0, k])
    if not gt.object_moving[k]:
        return "it does not move"
    if abs(shift[0]) > abs(shift[2]):
        return "right" if shift[0] > 0 else "left"
    return "away from the camera" if shift[2] > 0 else "toward the camera"


def _expected(meta: dict, gt, question: str) -> tuple[str | None, float | None]:
    """(answer text, exact value) recomputed from positions, velocities, sizes and poses."""
    objects = {int(m): k for m, k in meta["objects"].items()}
    positions = gt.object_positions
    (k, *_) = objects.values() if objects else (None,)
    kind = meta["type"]
    if kind == "locate":
        centre = geometry.invert_pose(gt.cam_to_world[0]) @ np.append(positions[0, k], 1.0)
        shown = [float(c) for c in re.findall(r"-?\d+\.\d", meta["answer_text"])]
        # The answer shows the centre with 1 decimal; the other options are >= LOCATE_MIN_GAP away.
        np.testing.assert_allclose(shown, centre[:3], atol=0.05 + 1e-9)
        return meta["answer_text"], None
    if kind == "closest":
        distance = {m: np.linalg.norm(positions[0, j] - gt.cam_to_world[0, :3, 3]) for m, j in objects.items()}
        return f"<obj_{min(distance, key=distance.get)}>", None
    if kind == "tallest":
        height = {m: gt.object_sizes[j, 2] for m, j in objects.items()}
        return f"<obj_{max(height, key=height.get)}>", None
    if kind == "fastest":
        speed = {m: np.linalg.norm(gt.object_velocities[:, j], axis=1).mean() for m, j in objects.items()}
        return f"<obj_{max(speed, key=speed.get)}>", None
    if kind == "direction":
        return _direction(gt, k), None
    if kind == "side":
        first, second = (objects[int(m)] for m in re.findall(r"<obj_(\d+)>", question))
        u = {j: geometry.project_points(gt.K, gt.cam_to_world[0], positions[0, j])[0][0] for j in (first, second)}
        return ("to the left" if u[first] < u[second] else "to the right"), None
    if kind == "speed_change":
        speed = np.linalg.norm(gt.object_velocities[:, k], axis=1)
        if not gt.object_moving[k]:
            return "it does not move", None
        if np.ptp(speed) == 0:
            return "it keeps a constant speed", None
        return ("it speeds up" if speed[-1] > speed[0] else "it slows down"), None
    if kind == "count":
        moving = sum(bool(np.any(np.ptp(positions[:, j], axis=0) > 0)) for j in objects.values())
        return str(moving), float(moving)
    if kind == "turn":
        forward = gt.cam_to_world[[0, -1], :2, 2]
        angle = np.degrees(np.arctan2(forward[1, 1], forward[1, 0]) - np.arctan2(forward[0, 1], forward[0, 0]))
        angle = (angle + 180.0) % 360.0 - 180.0
        return ("to its left" if angle > 0 else "to its right"), angle
    if kind == "height":
        return None, gt.object_sizes[k, 2]
    if kind == "speed":
        return None, np.linalg.norm(gt.object_velocities[:, k], axis=1).mean()
    if kind == "displacement":
        return None, np.linalg.norm(positions[-1, k] - positions[0, k])
    if kind == "path_length":
        return None, sum(np.linalg.norm(positions[i + 1, k] - positions[i, k]) for i in range(gt.num_frames - 1))
    if kind == "turn_angle":
        # The same yaw as the scene's "turn" question, unsigned.
        return None, abs(_expected({**meta, "type": "turn"}, gt, question)[1])
    raise AssertionError(f"no independent answer for question type {kind!r}: add one")


def test_answers_match_the_ground_truth_recomputed(bench):
    _, _, rows, gts = bench
    checked = set()
    for row in rows:
        meta = _meta(row)
        question = row["conversations"][0]["content"]
        text, value = _expected(meta, gts[meta["scene"]], question)
        if text is not None:
            assert meta["answer_text"] == text, row["sample_id"]
        if value is not None:
            assert meta["value"] == pytest.approx(value, rel=1e-9), row["sample_id"]
        if meta["unit"] in ("m", "m/s", "degrees") and meta["type"] != "turn":
            numbers = [float(t.split()[0]) for t in meta["options"].values()]
            # 2 significant digits: each shown value within 5 % of the ladder's exact one.
            np.testing.assert_allclose(np.diff(np.log(numbers)), np.log(LADDER_RATIO), atol=0.1)
            truth = float(meta["answer_text"].split()[0])
            assert truth == pytest.approx(meta["value"], rel=0.05)
            checked.add("ladder")
        if meta["type"] == "locate":
            points = np.array([re.findall(r"-?\d+\.\d", t) for t in meta["options"].values()], float)
            gaps = np.linalg.norm(points[:, None] - points[None], axis=2)[np.triu_indices(len(points), 1)]
            # Shown with 1 decimal: each coordinate off by <= 0.05 m.
            assert gaps.min() >= LOCATE_MIN_GAP - 2 * np.sqrt(3) * 0.05, meta["options"]
        checked.add(meta["type"])
    assert {"locate", "closest", "tallest", "fastest", "direction", "count", "turn", "turn_angle", "height", "speed",
            "displacement", "path_length", "side", "speed_change", "ladder"} <= checked


def test_false_premise_questions_ask_about_static_objects_with_the_moving_options(bench):
    _, _, rows, gts = bench
    fp = [_meta(r) for r in rows if _meta(r)["category"] == "FP"]
    motion = [_meta(r) for r in rows if _meta(r)["category"] in ("T", "SA") and _meta(r)["type"] in
              ("direction", "speed_change")]
    for meta in fp:
        (k,) = meta["objects"].values()
        np.testing.assert_array_equal(gts[meta["scene"]].object_velocities[:, k], 0.0)
        assert meta["answer_text"] == "it does not move"
    # The same option is listed (never right) when the object moves: it is not a give-away.
    assert motion and all("it does not move" in m["options"].values() for m in motion)
    assert all(m["answer_text"] != "it does not move" for m in motion)


def test_benchmark_seeds_never_give_training_scenes():
    size = (HEIGHT, WIDTH)
    for seed, index in ((benchmark.DEFAULT_SEED, 0), (0, 0), (7, 1)):
        training = dataset._seeds(dataset.SyntheticConfig(num_scenes=index + 1, seed=seed), index)
        held_out = benchmark.scene_seeds(seed, index)
        for a, b in zip(training, held_out):
            assert not np.array_equal(a.generate_state(8), b.generate_state(8))
        # Even with the training rule for static objects, the same numbers draw another scene.
        train_scene = sample_scene(training[0], size, SCENE_FRAMES, CONFIG.fps)
        assert train_scene != sample_scene(held_out[0], size, SCENE_FRAMES, CONFIG.fps)
    assert benchmark.DEFAULT_SEED != dataset.SyntheticConfig(num_scenes=1).seed


def test_cli_writes_the_benchmark_and_says_so(tmp_path, capsys):
    benchmark.main(["--out", str(tmp_path), "--scenes", "1", "--frames", "12", "--width", "96", "--height", "72",
                    "--workers", "1"])
    printed = capsys.readouterr().out
    described = json.loads((tmp_path / "benchmark.json").read_text())
    assert "benchmark.json" in printed and f"{described['num_samples']} questions" in printed
    assert described["config"]["seed"] == benchmark.DEFAULT_SEED and described["split"] == "test"
    assert (tmp_path / described["scenes"][0]["ground_truth"]).is_file()
    assert pq.read_table(tmp_path / "samples.parquet").num_rows == described["num_samples"]


def test_the_oracle_teacher_reads_the_benchmark_scenes(bench):
    """The sidecars are what the oracle teacher needs: its maps are the scene's ground truth. (The whole
    caching job on this benchmark, Ray included, takes ~1 minute on a loaded 2-core machine, beyond this
    file's budget; the runner's join of samples to clips is tested in test_cache_job.py.)"""
    from pipeline.config import TeacherConfig
    from pipeline.teachers.base import TeacherInput
    from pipeline.teachers.oracle import MOTION_LOGIT, OracleTeacher, nearest_indices

    root, description, _, gts = bench
    scene = description["scenes"][0]
    gt = gts[scene["scene"]]
    frames = np.arange(gt.num_frames)
    blank = np.zeros((gt.num_frames, 224, 224, 3), np.uint8)  # the oracle reads the sidecar, not the pixels
    (out,) = OracleTeacher(TeacherConfig(name="oracle", latent_dim=32)).predict(
        [TeacherInput(str(root / scene["video"]), frames, gt.timestamps, blank)])
    rows, cols = nearest_indices(HEIGHT, 224), nearest_indices(WIDTH, 224)
    np.testing.assert_array_equal(out["depth"], gt.depth[:, rows][:, :, cols])
    np.testing.assert_array_equal(out["dyn_mask"], np.where(gt.dyn_mask[:, rows][:, :, cols] > 0,
                                                            MOTION_LOGIT, -MOTION_LOGIT))
