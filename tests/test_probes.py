"""The 4D probes (student/probes.py), their ground truth (pipeline/synthetic/region_truth.py) and the
ablation's report (student/ablation.py): values against geometry and formulas worked out here, a probe
on a real exported student that must read depth shown in its frames better than its blind control, and
the report's Welch tests, Holm correction and one-letter flag against numbers computed by hand."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from manifests.region_truth import read_region_truth
from pipeline.config import JobConfig, TeacherConfig
from pipeline.geometry import project_points
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from pipeline.synthetic.benchmark import benchmark_config, generate_benchmark
from pipeline.synthetic.dataset import write_video
from pipeline.synthetic.ground_truth import load_ground_truth
from student.probes import (
    ClipTruth, DIRECTIONS, Ridge, camera_motion, direction_class, probe_student, r2, region_feature, score_probes,
)


# -- the ground truth -------------------------------------------------------------------------------
def test_region_truth_rows_agree_with_the_scene_geometry(synthetic_set):
    table = read_region_truth(synthetic_set).to_pylist()
    truth = load_ground_truth(synthetic_set / "videos" / "scene_0000.mp4")
    rows = [r for r in table if r["video"] == "videos/scene_0000.mp4"]
    assert len(rows) == truth.num_frames * truth.num_objects  # every object at every frame
    height, width = truth.image_size
    visible = 0
    for r in rows:
        t, k = r["frame"], r["object"]
        np.testing.assert_allclose(r["position"], truth.object_positions[t, k])
        np.testing.assert_allclose(np.reshape(r["cam_to_world"], (4, 4)), truth.cam_to_world[t])
        if r["box"] is None:
            assert math.isnan(r["depth"]) and r["visible_pixels"] < 20
            continue
        visible += 1
        # The object's centre projects inside its box, and the median depth of its visible surface lies
        # between the centre's depth minus the object's half diagonal and the centre's depth plus it.
        uv, z = project_points(truth.K, truth.cam_to_world[t], truth.object_positions[t, k][None])
        x0, y0, x1, y1 = r["box"]
        if r["visible_pixels"] > 200:  # not cut by the frame's edge
            assert x0 * width <= uv[0, 0] <= x1 * width and y0 * height <= uv[0, 1] <= y1 * height
        reach = 0.5 * np.linalg.norm(truth.object_sizes[k])
        assert z[0] - reach <= r["depth"] <= z[0] + reach
    assert visible > len(rows) / 2


# -- the probes' pieces -----------------------------------------------------------------------------
def test_region_feature_averages_the_tokens_whose_centres_lie_in_the_box():
    grid = np.arange(4 * 4, dtype=float).reshape(4, 4, 1)  # rows x cols x D
    # Cell centres at 0.125, 0.375, ...: the box [0.3, 0.3, 0.7, 0.7] holds the centre 2 x 2 cells.
    assert region_feature(grid, np.array([0.3, 0.3, 0.7, 0.7]))[0] == np.mean([5, 6, 9, 10])
    # A box between centres: the cell holding the box's centre (x 0.55 -> col 2, y 0.05 -> row 0).
    assert region_feature(grid, np.array([0.52, 0.02, 0.58, 0.08]))[0] == 2


def pose(yaw_deg: float, position) -> np.ndarray:
    """Camera to world: yaw about the camera's own vertical (y, pointing down) axis."""
    a = np.radians(yaw_deg)
    out = np.eye(4)
    out[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    out[:3, 3] = position
    return out


def clip_with(positions: np.ndarray, poses: np.ndarray) -> ClipTruth:
    frames, objects = positions.shape[:2]
    nan = np.full((frames, objects), np.nan)
    return ClipTruth(np.zeros((frames // 2, 2, 2, 1)), 2, np.full((frames, objects, 4), np.nan), nan,
                     positions, np.zeros_like(positions), poses)


def test_camera_motion_is_the_turn_and_move_in_the_first_cameras_frame():
    # Turning right by 10 degrees (forward swings towards +x) while moving 0.5 m forward and 0.2 m right.
    clip = clip_with(np.zeros((2, 1, 3)), np.stack([pose(0, [0, 0, 0]), pose(10, [0.2, 0, 0.5])]))
    np.testing.assert_allclose(camera_motion(clip, 0, 1), [10.0, 0.2, 0.5], atol=1e-9)
    # The same seen from a first camera turned 90 degrees: the move is expressed in that camera's axes.
    clip = clip_with(np.zeros((2, 1, 3)), np.stack([pose(90, [0, 0, 0]), pose(100, [0.5, 0, -0.2])]))
    np.testing.assert_allclose(camera_motion(clip, 0, 1), [10.0, 0.2, 0.5], atol=1e-9)


@pytest.mark.parametrize("move, expected", [
    ([1.0, 0, 0.1], "right"), ([-1.0, 0, 0.3], "left"), ([0.1, 0, 1.0], "away"), ([0, 0, -0.8], "toward"),
    ([0.5, 0, 0.4], None), ([0.1, 0, 0.1], None),  # no dominant axis; too short a move
])
def test_direction_class_follows_the_benchmarks_rule(move, expected):
    # The first camera looks along world +x (turned 90 degrees): its right is world -z.
    first = pose(90, [0, 0, 0])
    world_move = first[:3, :3] @ np.array(move)
    positions = np.stack([np.zeros((1, 3)), world_move[None]])
    got = direction_class(clip_with(positions, np.stack([first, first])), 0)
    assert (None if got is None else DIRECTIONS[got]) == expected


def test_ridge_is_the_closed_form_and_r2_is_one_minus_the_residual_share():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(50, 3)), np.array([1.0, -2.0, 0.5])
    y = x @ w + 3.0
    model = Ridge(alpha=0.0).fit(x, y)
    np.testing.assert_allclose(model.predict(x), y, atol=1e-9)  # exact without a penalty
    # With a penalty: (Z'Z + a I) v = Z'(y - mean y), Z the standardized features, solved here by lstsq
    # on the augmented system [Z; sqrt(a) I] v = [y - mean; 0].
    z = (x - x.mean(0)) / x.std(0)
    v = np.linalg.lstsq(np.vstack([z, np.sqrt(10.0) * np.eye(3)]), np.concatenate([y - y.mean(), np.zeros(3)]),
                        rcond=None)[0]
    np.testing.assert_allclose(Ridge(alpha=10.0).fit(x, y).predict(x), z @ v + y.mean(), atol=1e-9)
    truth, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 4.0, 4.0])
    assert r2(truth, pred) == pytest.approx(1 - 1 / 5)  # SSE 1, SS about the mean 5


def synthetic_clip(rng: np.random.Generator, encode: bool) -> ClipTruth:
    """A clip of 3 objects over 8 slots whose token features hold log depth in channel 0 at the
    objects' cells (encode=True), or noise only."""
    frames, objects, side = 16, 3, 4
    grid = rng.normal(size=(frames // 2, side, side, 4))
    depth = rng.uniform(1.0, 8.0, size=(objects,))[None].repeat(frames, 0) * rng.uniform(0.9, 1.1, (frames, objects))
    boxes = np.full((frames, objects, 4), np.nan)
    for k in range(objects):
        cell = (k, k)  # object k sits in cell (k, k)
        boxes[:, k] = [(cell[1] + 0.3) / side, (cell[0] + 0.3) / side, (cell[1] + 0.7) / side, (cell[0] + 0.7) / side]
        if encode:
            grid[:, cell[0], cell[1], 0] = np.log(depth[::2, k])
    positions = rng.normal(size=(1, objects, 3)).repeat(frames, 0)
    return ClipTruth(grid, 2, boxes, depth, positions, np.zeros_like(positions), np.stack([np.eye(4)] * frames))


def test_probes_read_what_the_features_hold_and_nothing_from_noise():
    rng = np.random.default_rng(1)
    held = score_probes([synthetic_clip(rng, True) for _ in range(12)], [synthetic_clip(rng, True) for _ in range(6)])
    noise = score_probes([synthetic_clip(rng, False) for _ in range(12)], [synthetic_clip(rng, False) for _ in range(6)])
    assert held["depth_r2"] > 0.95 and held["order_acc"] > 0.95
    assert noise["depth_r2"] < 0.1 and abs(noise["order_acc"] - 0.5) < 0.15
    assert held["direction_acc"] is None  # no object moves: nothing to ask


# -- the probes on a real student -------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe-bench")
    generate_benchmark(root, benchmark_config(2, num_frames=16, width=160, height=120))
    return root


def depth_shaded_cache(scenes: Path, out: Path) -> Path:
    """A copy of synthetic scenes (videos, ground truth, region table) whose frames show their exact
    depth as grey levels (near = bright, one fixed scale for every scene), cached by the oracle."""
    shutil.copytree(scenes, out)
    for video in sorted((out / "videos").glob("*.mp4")):
        truth = load_ground_truth(video)
        grey = np.clip(255 * 2.0 / truth.depth, 0, 255).round().astype(np.uint8)  # depths here: 2 to 12 m
        write_video(video, np.repeat(grey[..., None], 3, axis=-1), 1 / float(truth.timestamps[1] - truth.timestamps[0]))
    run_job(JobConfig(videos=str(out), out=str(out / "cache"), sampling=SamplingConfig(num_frames=16),
                      teacher=TeacherConfig(name="oracle", latent_dim=16)))
    return out / "cache"


def test_the_depth_probe_reads_depth_shown_in_the_frames_better_than_its_blind_control(
        synthetic_set, bench_scenes, ray_session, tmp_path):
    """The frames show depth as grey levels, so a random student's features carry it at each region's
    tokens: the probe fitted on the training scenes reads it on the held-out ones. The control sees
    black frames and knows only where a region is."""
    from student.config import BranchConfig, ModelConfig, StudentConfig
    from student.model import StudentModel, load_tokenizer
    from student.tiny import make_tiny_vlm

    model_dir = make_tiny_vlm("qwen2_5_vl", tmp_path / "vlm")
    config = StudentConfig(model=ModelConfig(adapter="qwen2_5_vl", path=str(model_dir), video_size=(112, 112)),
                           branch=BranchConfig(enabled=False))
    export = StudentModel.from_config(config).export(tmp_path / "export", load_tokenizer(model_dir))
    train = depth_shaded_cache(synthetic_set, tmp_path / "train")
    held_out = depth_shaded_cache(bench_scenes, tmp_path / "held-out")
    seen = probe_student(export, train, train.parent, held_out, held_out.parent)
    blind = probe_student(export, train, train.parent, held_out, held_out.parent, blind=True)
    print(f"held-out depth R^2 {seen['depth_r2']:.3f} seeing the video, {blind['depth_r2']:.3f} blind; "
          f"order accuracy {seen['order_acc']:.3f} / {blind['order_acc']:.3f}")
    assert seen["depth_r2"] > 0.2 and seen["depth_r2"] > blind["depth_r2"] + 0.1


# -- the report -------------------------------------------------------------------------------------
def test_welch_p_values_and_holm_agree_with_the_formulas():
    from student.ablation import holm, welch

    runs = {"baseline": [{"depth_r2": v} for v in (4.0, 5.0, 6.0)], "ld_ed": [{"depth_r2": v} for v in (1.0, 2.0, 3.0)],
            "tpe": [{"depth_r2": v} for v in (4.0, 5.0, 6.0)]}
    p = welch(runs, metrics=("depth_r2",))
    # Equal variances (1) and sizes (3): t = -3 / sqrt(2/3), Welch's df = 4; the t distribution with 4
    # degrees of freedom has F(t) = 1/2 + (3s - s^3) / 4, s = t / sqrt(4 + t^2).
    t = 3 / math.sqrt(2 / 3)
    s = t / math.sqrt(4 + t * t)
    assert p["ld_ed"]["depth_r2"] == pytest.approx(1 - (3 * s - s**3) / 2, rel=1e-6)  # 0.0213
    assert p["tpe"]["depth_r2"] == pytest.approx(1.0)
    # Unequal variances and sizes: Welch's t and Welch-Satterthwaite df, the p of a t with df degrees of
    # freedom as the incomplete beta ratio I_x(k, 1/2), x = df / (df + t^2), k = df / 2, integrated here
    # numerically: int_0^x s^(k-1) (1-s)^(-1/2) ds = (1/k) int_0^(x^k) (1 - u^(1/k))^(-1/2) du.
    a, b = [1.0, 2.0, 3.0, 4.0], [10.0, 14.0]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t, df = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / 3 + vb**2 / 1)
    k = df / 2
    u = np.linspace(0.0, (df / (df + t * t)) ** k, 2_000_001)
    density = (1 - u ** (1 / k)) ** -0.5 / k
    beta = math.gamma(k) * math.gamma(0.5) / math.gamma(k + 0.5)
    expected = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(u))) / beta
    got = welch({"baseline": [{"m": v} for v in b], "x": [{"m": v} for v in a]}, metrics=("m",))["x"]["m"]
    assert got == pytest.approx(expected, rel=1e-4)  # df 1.21, p 0.105; a pooled t-test says 0.0037
    # Holm at 0.05 over 3 tests, the i-th smallest p against 0.05 / (3 - i): 0.01 <= 0.0167, 0.02 <= 0.025,
    # 0.04 <= 0.05: all three rejected. With 0.03 second: 0.03 > 0.025 stops it, 0.01 alone is rejected.
    assert holm({"a": {"x": 0.01, "y": 0.02}, "b": {"x": 0.04}}) == {("a", "x"), ("a", "y"), ("b", "x")}
    assert holm({"a": {"x": 0.01, "y": 0.03}, "b": {"x": 0.04}}) == {("a", "x")}


def write_predictions(path: Path, letters: str) -> Path:
    path.write_text("".join(json.dumps({"parsed": letter, "score": 0.0}) + "\n" for letter in letters))
    return path


def test_the_report_marks_differences_beyond_noise_and_flags_one_letter_students(tmp_path):
    from student.ablation import answer_collapse, summarize, welch, write_report

    assert answer_collapse(write_predictions(tmp_path / "a.jsonl", "A" * 19 + "B")) == ("A", 0.95)
    assert answer_collapse(write_predictions(tmp_path / "b.jsonl", "A" * 17 + "BCD")) is None  # 85 %
    runs = {"baseline": [{"depth_r2": v, "depth_r2_blind": 0.1, "Avg": 30.0} for v in (0.40, 0.50, 0.60)],
            "ld_ed": [{"depth_r2": v, "depth_r2_blind": 0.1, "Avg": 31.0} for v in (0.70, 0.80, 0.90)],
            "tpe": [{"depth_r2": v, "depth_r2_blind": 0.1, "Avg": 29.0} for v in (0.45, 0.50, 0.65)]}
    summary = summarize(runs)
    assert summary["ld_ed"]["depth_r2"] == pytest.approx((0.8, 0.1))  # mean, sample std (ddof 1)
    write_report(tmp_path, summary, [0, 1, 2], 10, welch(runs), {"baseline": [None] * 3, "ld_ed": [None] * 3,
                                                                 "tpe": [("A", 0.97), None, None]})
    text = (tmp_path / "ablation.md").read_text()
    # p = 0.0213 (the formula above, the values scaled by 10); Holm over 2 tests (tpe's p is 0.52): 0.0213 <= 0.025.
    assert "| ld_ed | 0.800 ± 0.100* † |" in text
    assert "| tpe | 0.533 ± 0.104 |" in text
    assert "ld_ed depth_r2 (higher, p = 0.0213)" in text
    assert "**tpe: answers collapse to one letter** in 1 of 3 seeds (A 97 %)" in text
    assert "| baseline | 30.0 ± 0.0 |" in text and "| tpe | 29.0" not in text  # no accuracy for a collapsed row
    assert json.loads((tmp_path / "ablation.json").read_text())["summary"]["ld_ed"]["Avg"] == [31.0, 0.0]
    assert (tmp_path / "ablation.png").stat().st_size > 1000
