"""Source adapters on hand-written fixture files in each dataset's native format (good rows, malformed
rows, escaping paths), and a mixture of the training sets cached by one job whose samples join its clips."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import SCENE_FRAMES
from manifests.cache_key import file_sha256
from manifests.clips_table import current_clips, read_clips_table
from manifests.regions import parse_regions
from manifests.samples_table import read_samples
from manifests.schemas import SAMPLES_SCHEMA
from pipeline.cache_teacher import format_summary, main as cache_main
from pipeline.config import JobConfig, TeacherConfig, build_parser, load_config
from pipeline.datasets.common import RowError
from pipeline.datasets.registry import ADAPTERS, parse_source, read_dataset
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from shards.cache_reader import read_cached_clip

ESCAPES = ("../../etc/passwd", "/etc/passwd")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def copy_video(synthetic_set: Path, scene: str, dst: Path) -> None:
    """A synthetic scene's video under a dataset's own name, with its ground truth beside it (the
    oracle teacher reads it): the same bytes, hence the same clip as the scene's."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(synthetic_set / "videos" / f"{scene}.mp4", dst)
    shutil.copy(synthetic_set / "videos" / f"{scene}.gt.npz", dst.with_name(dst.stem + ".gt.npz"))


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


# Per dataset: the malformed rows of its fixture as (row, field), in file order. Strict mode stops at
# the first; lenient mode skips all of them and keeps the good rows.
MALFORMED = {
    "robofac": [(2, "conversations"), (3, "video"), (4, "video"), (5, "video"), (6, "video"), (7, "<id>")],
    "sat": [(2, "correct_answer"), (3, "image_bytes"), (4, "answers")],
    "vsti": [(2, "question_type"), (3, "mc_answer"), (4, "video_path"), (5, "ground_truth"), (6, "video_path")],
    "wolf": [("tok_empty.mp4", "caption"), ("../../secret.mp4", "video")],  # Interactive sorts first
    "r4d": [(1, "answer"), (2, "som_image"), (3, "question"), (4, "som_image")],
    "stibench": [(1, "Candidates"), (2, "Answer"), (3, "Video"), (4, "time_end"), (5, "Video")],
    "vlm4d": [(1, "answer"), (2, "choices")],
}
GOOD = {"robofac": 2, "sat": 3, "vsti": 2, "wolf": 2, "r4d": 1, "stibench": 1, "vlm4d": 2}


@pytest.fixture(scope="module")
def roots(synthetic_set, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("native")
    roots = {name: base / name for name in ADAPTERS}

    r = roots["robofac"]
    copy_video(synthetic_set, "scene_0000", r / "videos" / "ep0.mp4")
    (r / "videos" / "outside.mp4").symlink_to("/etc/hostname")
    write_json(r / "training_qa.json", [
        {"id": "ep0-why", "video": "videos/ep0.mp4",
         "conversations": turns("<video>\nWhy did the grasp fail?", "The gripper closed early.")},
        {"video": "videos/ep0.mp4", "conversations": turns("What was the task?", "Pick up the cup.")},
        {"id": "bad-role", "video": "videos/ep0.mp4", "conversations": [{"from": "robot", "value": "?"}]},
        {"id": "up", "video": ESCAPES[0], "conversations": turns("<video>\nx", "y")},
        {"id": "abs", "video": ESCAPES[1], "conversations": turns("<video>\nx", "y")},
        {"id": "link", "video": "videos/outside.mp4", "conversations": turns("<video>\nx", "y")},
        {"id": "novideo", "conversations": turns("<video>\nx", "y")},
        {"id": "ep0-why", "video": "videos/ep0.mp4", "conversations": turns("<video>\nagain", "a repeated id")},
    ])

    s = roots["sat"] / "data"
    s.mkdir(parents=True)
    good = {"image_bytes": [png_bytes(0)], "question": "Is the chair left of the table?", "answers": ["yes", "no"],
            "question_type": "obj_rel", "correct_answer": "no"}
    pq.write_table(pa.Table.from_pylist([
        good,
        {**good, "image_bytes": [png_bytes(1), png_bytes(0)], "question": "Did the camera turn left?",
         "answers": ["left", "right", "no turn"], "correct_answer": "right", "question_type": "ego_movement"},
        {**good, "correct_answer": "maybe"},
        {**good, "image_bytes": [b"not an image"]},
        {**good, "answers": ["only one"], "correct_answer": "only one"},
    ]), s / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([good]), s / "val-00000-of-00001.parquet")

    v = roots["vsti"]
    copy_video(synthetic_set, "scene_0001", v / "scannet" / "s1.mp4")
    mc = {"video_path": "scannet/s1.mp4", "question": "Which way does the camera move?",
          "question_type": "camera_movement_direction", "options": ["A. left", "B. right", "C. forward"],
          "mc_answer": "B", "ground_truth": "right"}
    write_json(v / "vsti_bench.json", [
        mc,
        {"video_path": "scannet/s1.mp4", "question": "How far does the camera move (m)?",
         "question_type": "camera_displacement", "options": None, "mc_answer": None, "ground_truth": 1.25},
        {**mc, "question_type": "camera_mood"},
        {**mc, "mc_answer": "F"},
        {**mc, "video_path": ESCAPES[0]},
        {**mc, "question_type": "camera_obj_abs_dist", "ground_truth": "far"},
        {**mc, "video_path": ESCAPES[1]},
    ])

    w = roots["wolf"]
    copy_video(synthetic_set, "scene_0002", w / "videos" / "tok_a.mp4")
    write_json(w / "annotations" / "Normal Nuscenes_annotations.json",
               {"tok_a.mp4": "A car drives past a parked truck.", "../../secret.mp4": "escapes"})
    write_json(w / "annotations" / "Interactive Nuscenes_annotations.json",
               {"tok_a.mp4": "The ego car yields to a pedestrian.", "tok_empty.mp4": "  "})

    q = roots["r4d"]
    r4d_good = {"id": "r4d-1", "video": "videos/r1.mp4", "som_image": "som/r1.jpg",
                "question": "Is <obj_1> moving faster than <obj_2>?", "options": ["yes", "no", "same", "unknown"],
                "answer": "no", "task": "Speed & Acceleration", "benchmark": "vlm4d"}
    write_json(q / "test.json", [
        r4d_good,
        {**r4d_good, "id": "r4d-2", "answer": "faster"},
        {**r4d_good, "id": "r4d-3", "som_image": ESCAPES[1]},
        {**r4d_good, "id": "r4d-4", "question": 42},
        {**r4d_good, "id": "r4d-5", "som_image": "som/missing.jpg"},
    ])
    (q / "som").mkdir()
    Image.fromarray(np.full((12, 16, 3), 200, np.uint8)).save(q / "som" / "r1.jpg", format="JPEG")

    t = roots["stibench"]
    t.mkdir()
    sti_good = {"Video": "v1.mp4", "ID": 11, "Question": "How far did the car travel?",
                "Candidates": json.dumps({"A": "1 m", "B": "5 m", "C": "10 m"}), "Answer": "B",
                "Task": "Displacement & Path Length", "time_start": 0.5, "time_end": 4.0, "Scene": "street"}
    pq.write_table(pa.Table.from_pylist([
        sti_good,
        {**sti_good, "ID": 12, "Candidates": "{not json"},
        {**sti_good, "ID": 13, "Answer": "D"},
        {**sti_good, "ID": 14, "Video": ESCAPES[0]},
        {**sti_good, "ID": 15, "time_start": 4.0, "time_end": 1.0},
        {**sti_good, "ID": 16, "Video": ESCAPES[1]},  # absolute, under a videos/ prefix
    ]), t / "qa.parquet")

    m = roots["vlm4d"]
    vlm_good = {"id": "real-1", "video": "videos/real/a.mp4", "question": "Which way does the dog turn?",
                "choices": {"A": "left", "B": "right", "C": "no turn", "D": "backwards"}, "answer": "right"}
    write_json(m / "QA" / "real_mc.json", [
        vlm_good, {**vlm_good, "id": "real-2", "answer": "up"}, {**vlm_good, "id": "real-3", "choices": {"A": "x"}},
    ])
    write_json(m / "QA" / "synthetic_mc.json", [{**vlm_good, "id": "syn-1", "video": "videos/syn/b.mp4"}])
    return roots


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_strict_mode_names_file_row_and_field(name, roots, tmp_path):
    row, field = MALFORMED[name][0]
    with pytest.raises(RowError) as caught:
        read_dataset(name, roots[name], lenient=False, media_dir=tmp_path)
    assert (caught.value.row, caught.value.field) == (row, field)
    message = str(caught.value)
    assert Path(caught.value.file).is_file() and caught.value.file in message
    assert f"row {row}" in message and repr(field) in message


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_lenient_mode_counts_every_skipped_row(name, roots, tmp_path):
    result = read_dataset(name, roots[name], lenient=True, media_dir=tmp_path)
    assert [(s["row"], s["field"]) for s in result.skipped] == MALFORMED[name]
    assert all(s["dataset"] == name and s["reason"] and Path(s["file"]).is_file() for s in result.skipped)
    assert len(result.rows) == GOOD[name]
    escaped = [s for s in result.skipped if "escapes the dataset root" in s["reason"]]
    expected_escapes = {"robofac": 3, "vsti": 2, "wolf": 1, "r4d": 1, "stibench": 2}.get(name, 0)
    assert len(escaped) == expected_escapes, "../, absolute paths and symlinks out of the root are refused"
    assert pa.Table.from_pylist(result.rows, schema=SAMPLES_SCHEMA).num_rows == GOOD[name], "rows fit the schema"


def rows_by_id(name: str, roots: dict, media_dir: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in read_dataset(name, roots[name], lenient=True, media_dir=media_dir).rows}


def test_training_rows_land_with_the_right_fields(roots, tmp_path):
    robofac = rows_by_id("robofac", roots, tmp_path)
    first = robofac["robofac/ep0-why"]
    assert first["video"] == "videos/ep0.mp4" and first["split"] == "train" and first["dataset"] == "robofac"
    assert first["conversations"] == [{"role": "user", "content": "<video>\nWhy did the grasp fail?"},
                                      {"role": "assistant", "content": "The gripper closed early."}]
    unnamed = next(r for i, r in robofac.items() if i != "robofac/ep0-why")
    assert unnamed["conversations"][0]["content"] == "<video>\nWhat was the task?", "placeholder added"

    vsti = list(rows_by_id("vsti", roots, tmp_path).values())
    choice, numeric = vsti
    assert choice["conversations"][0]["content"] == ("<video>\nWhich way does the camera move?\nA. left\nB. right\n"
                                                     "C. forward\nAnswer with the option's letter.")
    assert choice["conversations"][1]["content"] == "B. right"
    assert json.loads(choice["meta"])["options"] == {"A": "left", "B": "right", "C": "forward"}
    assert json.loads(numeric["meta"]) == {"question_type": "camera_displacement", "answer": 1.25,
                                           "answer_text": "1.25", "metric": "mean_relative_accuracy"}

    wolf = rows_by_id("wolf", roots, tmp_path)
    assert set(wolf) == {"wolf/Normal_Nuscenes/tok_a", "wolf/Interactive_Nuscenes/tok_a"}
    assert wolf["wolf/Normal_Nuscenes/tok_a"]["video"] == "videos/tok_a.mp4"
    assert wolf["wolf/Normal_Nuscenes/tok_a"]["conversations"][1]["content"] == "A car drives past a parked truck."

    sat = list(rows_by_id("sat", roots, tmp_path).values())
    assert sorted(r["split"] for r in sat) == ["train", "train", "val"]
    two = next(r for r in sat if len(r["images"]) == 2)
    assert two["video"] is None and two["cache_key"] is None
    assert two["conversations"][0]["content"].startswith("<image>\n<image>\nDid the camera turn left?")
    assert two["conversations"][1]["content"] == "B. right"
    for path, seed in zip(two["images"], (1, 0)):
        assert path.startswith("images/sat/")
        stored = np.asarray(Image.open(tmp_path / path))
        expected = np.asarray(Image.open(io.BytesIO(png_bytes(seed))))
        np.testing.assert_array_equal(stored, expected)
    # Content-addressed: the picture of seed 0 appears in three rows and is stored once.
    assert len(list((tmp_path / "images" / "sat").iterdir())) == 2


def test_evaluation_rows_carry_split_test_and_scorable_answers(roots, tmp_path):
    r4d = rows_by_id("r4d", roots, tmp_path)["r4d/r4d-1"]
    meta = json.loads(r4d["meta"])
    assert r4d["split"] == "test" and r4d["video"] == "videos/r1.mp4"
    assert meta["answer"] == "B" and meta["answer_text"] == "no" and meta["premarked"] is True
    # The Set-of-Marks picture is copied under the cache root like every source image.
    assert meta["som_image"] == "som/r1.jpg" and r4d["images"][0].startswith("images/r4d/")
    assert (tmp_path / r4d["images"][0]).read_bytes() == (roots["r4d"] / "som" / "r1.jpg").read_bytes()
    assert meta["options"] == {"A": "yes", "B": "no", "C": "same", "D": "unknown"}
    assert meta["task"] == "Speed & Acceleration" and meta["benchmark"] == "vlm4d"
    assert "<obj_1>" in r4d["conversations"][0]["content"] and r4d["conversations"][1]["content"] == "B. no"

    sti = rows_by_id("stibench", roots, tmp_path)["stibench/11"]
    meta = json.loads(sti["meta"])
    assert sti["split"] == "test" and sti["video"] == "videos/v1.mp4"
    assert (meta["answer"], meta["answer_text"], meta["time_start"], meta["time_end"]) == ("B", "5 m", 0.5, 4.0)

    vlm = rows_by_id("vlm4d", roots, tmp_path)
    assert set(vlm) == {"vlm4d/real/real-1", "vlm4d/synthetic/syn-1"}
    meta = json.loads(vlm["vlm4d/real/real-1"]["meta"])
    assert (meta["answer"], meta["answer_text"], meta["subset"]) == ("B", "right", "real")
    assert all(r["split"] == "test" for r in vlm.values())


def test_obj_tokens_without_regions_are_refused(tmp_path):
    """A training question naming <obj_3> with no region of mark 3 names its row (RoboFAC rows carry
    no regions, so any <obj_k> in them is unresolvable)."""
    write_json(tmp_path / "training_qa.json",
               [{"video": "v.mp4", "conversations": turns("<video>\nIs <obj_3> red?", "yes")}])
    with pytest.raises(RowError, match=r"training_qa.json: row 0: field 'conversations': <obj_3> has no region"):
        read_dataset("robofac", tmp_path, lenient=False, media_dir=None)


def test_source_option_in_flags_and_yaml(tmp_path):
    config_file = tmp_path / "job.yaml"
    config_file.write_text("sources: [wolf=/data/wolf]\nlenient: true\n")
    args = build_parser("x").parse_args(["--source", "robofac=/data/robofac", "--source", "vsti=/data/vsti",
                                         "--videos", "/data/videos"])
    config = load_config(args)
    assert config.sources == ("robofac=/data/robofac", "vsti=/data/vsti") and config.videos == "/data/videos"
    from_yaml = load_config(build_parser("x").parse_args(["--config", str(config_file)]))
    assert from_yaml.sources == ("wolf=/data/wolf",) and from_yaml.lenient is True
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        parse_source(f"nope={tmp_path}")
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        parse_source(str(tmp_path))


def test_strict_job_refuses_a_malformed_row_before_any_work(roots, tmp_path, caplog):
    code = cache_main(["--source", f"robofac={roots['robofac']}", "--out", str(tmp_path / "cache"),
                       "--teacher", "oracle"])
    assert code == 1
    assert "training_qa.json: row 2: field 'conversations'" in caplog.text
    assert not (tmp_path / "cache" / "manifests" / "samples.parquet").exists()


@pytest.fixture(scope="module")
def mixture_cache(roots, synthetic_set, ray_session, tmp_path_factory):
    """One job: the synthetic set (--videos, whose samples carry regions) plus every training source."""
    out = tmp_path_factory.mktemp("mixture")
    sources = tuple(f"{name}={roots[name]}" for name in ("robofac", "sat", "vsti", "wolf"))
    summary = run_job(JobConfig(videos=str(synthetic_set), sources=sources, lenient=True, out=str(out),
                                sampling=SamplingConfig(num_frames=SCENE_FRAMES),
                                teacher=TeacherConfig(name="oracle", latent_dim=16)))
    return out, summary


def test_mixture_is_cached_by_one_job_and_samples_join_clips(mixture_cache, roots):
    cache, summary = mixture_cache
    # The sources' videos are byte copies of three synthetic scenes: one clip each, shared.
    assert summary["clips"] == {"wanted": 4, "already_cached": 0, "computed": 4, "ok": 4, "failed": 0}
    skipped = summary["samples"]
    assert skipped["skipped"] == sum(len(MALFORMED[n]) for n in ("robofac", "sat", "vsti", "wolf"))
    assert sum(skipped["skipped_by_reason"].values()) == skipped["skipped"]
    assert {(s["dataset"], s["row"], s["field"]) for s in skipped["skipped_rows"]} == {
        (n, row, field) for n in ("robofac", "sat", "vsti", "wolf") for row, field in MALFORMED[n]}
    assert skipped["rows"] == {n: GOOD[n] for n in ("robofac", "sat", "vsti", "wolf")}
    assert "skipped annotation rows (1): robofac: field '<id>'" in format_summary(summary)

    clips = {k: r for k, r in current_clips(read_clips_table(cache)).items() if r["status"] == "ok"}
    samples = read_samples(cache / "manifests" / "samples.parquet").to_pylist()
    by_dataset = {}
    for sample in samples:
        by_dataset.setdefault(sample["dataset"], []).append(sample)
    assert {n: len(v) for n, v in by_dataset.items() if n != "synthetic"} == {
        n: GOOD[n] for n in ("robofac", "sat", "vsti", "wolf")}
    for name in ("robofac", "vsti", "wolf"):
        for sample in by_dataset[name]:
            clip = clips[sample["cache_key"]]
            assert clip["video_sha256"] == file_sha256(roots[name] / sample["video"]), "joined to its own video"
            arrays = read_cached_clip(cache, clip, ["frames", "depth"])
            assert arrays["frames"].shape == (SCENE_FRAMES, 224, 224, 3)
            assert arrays["depth"].shape == (SCENE_FRAMES, 224, 224)
    for sample in by_dataset["sat"]:
        assert sample["cache_key"] is None and sample["video"] is None
        assert all(Image.open(cache / p).size == (16, 12) for p in sample["images"])
    for sample in by_dataset["synthetic"]:
        assert sample["cache_key"] in clips
        parse_regions(sample["regions"], where=sample["sample_id"])


def test_inspect_draws_a_samples_marks(mixture_cache, tmp_path):
    from student.inspect_cache import main as inspect_main

    cache, _ = mixture_cache
    samples = read_samples(cache / "manifests" / "samples.parquet").to_pylist()
    marked = next(s for s in samples if s["regions"])
    plain, marks = tmp_path / "plain.png", tmp_path / "marks.png"
    assert inspect_main([str(cache), "--clip", marked["cache_key"], "--png", str(plain)]) == 0
    assert inspect_main([str(cache), "--clip", marked["cache_key"], "--marks", "--sample", marked["sample_id"],
                         "--png", str(marks)]) == 0
    a, b = np.asarray(Image.open(plain).convert("RGB")), np.asarray(Image.open(marks).convert("RGB"))
    assert a.shape == b.shape
    assert np.any(a != b), "the marked picture differs from the plain one"


def test_the_student_loader_streams_the_mixture(mixture_cache, tmp_path):
    """The whole mixture through the student's loader: every training dataset's samples come out in
    batches (image-only SAT samples with their pictures and no targets, video samples with theirs)."""
    from transformers import AutoConfig

    from student.adapters import build_adapter
    from student.cache_index import load_cache_index
    from student.loader import StudentLoader
    from student.model import load_tokenizer
    from student.tiny import make_tiny_vlm
    from student.train_config import DataConfig

    cache, _ = mixture_cache
    model_dir = make_tiny_vlm("qwen2_5_vl", tmp_path / "vlm")
    adapter = build_adapter("qwen2_5_vl", AutoConfig.from_pretrained(model_dir), model_dir, (56, 56))
    index = load_cache_index(cache, needed=("depth",))
    loader = StudentLoader(index, DataConfig(cache=str(cache), batch_size=4, num_workers=0), 0, 1, adapter,
                           load_tokenizer(model_dir), ("depth",))
    per_epoch = len(loader.epoch_batches(0))
    seen = {}
    stream = iter(loader)
    for _ in range(per_epoch):
        batch = next(stream)
        video_ids = {batch.sample_ids[int(r)] for r in batch.video_rows}
        for sid in batch.sample_ids:
            seen[sid] = "video" if sid in video_ids else "image"
        if batch.videos:
            assert batch.targets["depth"].shape == (len(batch.videos), SCENE_FRAMES, 224, 224)
    datasets = {r.sample_id: r.dataset for r in index.records}
    kinds = {(datasets[s], kind) for s, kind in seen.items()}
    assert {"robofac", "sat", "vsti", "wolf", "synthetic"} <= {d for d, _ in kinds}
    assert ("sat", "image") in kinds and ("sat", "video") not in kinds
    assert {("robofac", "video"), ("vsti", "video"), ("wolf", "video")} <= kinds
