"""Source adapters on dataset roots laid out as each dataset is published (tests/dataset_roots.py, with
each release's quirks), malformed rows in strict and lenient mode, and one caching job of all eight
sources whose samples table holds every row with its split, prompt and answer, joined to ok clips."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import dataset_roots as published
from manifests.cache_key import file_sha256
from manifests.clips_table import current_clips, read_clips_table
from manifests.regions import parse_regions
from manifests.samples_table import read_samples
from manifests.schemas import SAMPLES_SCHEMA
from pipeline.cache_teacher import main as cache_main
from pipeline.config import build_parser, load_config
from pipeline.datasets.common import CLIP, RowError
from pipeline.datasets.registry import DATASETS, Source, parse_source, read_dataset
from pipeline.datasets.robofac import current_path
from pipeline.source_report import LOST_EXIT_CODE
from shards.cache_reader import read_cached_clip

ESCAPES = ("../../etc/passwd", "/etc/passwd")
NUM_FRAMES = 4  # STI-Bench's spans hold 8 frames of the 16-frame scenes
TRAINING = ("robofac", "sat", "vsti", "wolf")
EVALUATION = ("r4d", "stibench", "vlm4d", "vsti_test")


def rows_by_id(source: Source, media_dir=None, lenient=False) -> dict[str, dict]:
    return {r["sample_id"]: r for r in read_dataset(source, lenient, media_dir).rows}


@pytest.fixture(scope="module")
def roots(synthetic_set, tmp_path_factory) -> dict[str, Source]:
    base = tmp_path_factory.mktemp("published")
    return {
        "robofac": Source("robofac", published.robofac(base / "RoboFAC-dataset", synthetic_set)),
        "sat": Source("sat", published.sat(base / "SAT")),
        "vsti": Source("vsti", published.vsti(base / "VLM-3R-DATA", synthetic_set)),
        "wolf": Source("wolf", published.wolf(base / "Wolf", synthetic_set), {"scenes": str(base / "Wolf" / "scenes")}),
        "r4d": Source("r4d", published.r4d(base / "R4D-Bench", synthetic_set)),
        "stibench": Source("stibench", published.stibench(base / "STI-Bench", synthetic_set)),
        "vlm4d": Source("vlm4d", published.vlm4d(base / "VLM4D", synthetic_set)),
        "vsti_test": Source("vsti_test", published.vsti_test(base / "vstibench", synthetic_set)),
    }


def test_robofac_videos_live_under_simulation_data_by_their_current_task_names(roots):
    source = roots["robofac"]
    rows = list(rows_by_id(source).values())
    assert [r["video"] for r in rows] == ["simulation_data/SpinStack-v1/scene_a/0b7c.mp4",
                                          "simulation_data/success_data/PickCube/9f2e.mp4",
                                          "simulation_data/success_data/PickCube/9f2e.mp4"]
    assert all(r[CLIP].path.is_file() and r["split"] == "train" for r in rows)
    # The two identical published rows are both kept, each under its own id.
    assert len({r["sample_id"] for r in rows}) == 3
    assert rows[0]["conversations"] == [{"role": "user", "content": "<video>\nWhy did the stacking fail?"},
                                        {"role": "assistant", "content": "The cube slipped."}]
    assert rows[1]["conversations"][0]["content"] == "<video>\nWhat is the task?", "placeholder added"
    # The confirmed rewrite (MINT-SJTU/RoboFAC issue #2) touches the first path part only.
    assert current_path("Rotation2-gen1/Rotation-v1/x.mp4") == "SpinPullStack-gen1/Rotation-v1/x.mp4"
    assert current_path("Rotation-gen2/a/b.mp4") == "SpinStack-gen2/a/b.mp4"


def test_sat_splits_come_from_file_names_and_identical_rows_stay_apart(roots, tmp_path):
    result = read_dataset(roots["sat"], lenient=False, media_dir=tmp_path)
    rows = {r["sample_id"]: r for r in result.rows}
    assert sorted(rows) == ["sat/static/0", "sat/test/0", "sat/train/0", "sat/train/1", "sat/train/2", "sat/val/0"]
    assert {r["split"] for r in rows.values()} == {"train", "static", "val", "test"}
    assert rows["sat/train/0"]["conversations"] == rows["sat/train/2"]["conversations"], "identical rows, two ids"
    two = rows["sat/train/1"]
    assert two["video"] is None and two[CLIP] is None
    assert two["conversations"][0]["content"].startswith("<image>\n<image>\nDid the camera turn left?")
    assert two["conversations"][1]["content"] == "B. right"
    for path, seed in zip(two["images"], (1, 0)):  # Image structs {bytes, path}
        stored = np.asarray(Image.open(tmp_path / path))
        np.testing.assert_array_equal(stored, np.asarray(Image.open(io.BytesIO(published.png_bytes(seed)))))
    assert (tmp_path / rows["sat/val/0"]["images"][0]).read_bytes() == published.png_bytes(2), "raw bytes"
    # Content-addressed: five pictures (seed 0 in three rows) are five files.
    assert len(list((tmp_path / "images" / "sat").iterdir())) == 5
    assert result.images == {p: (tmp_path / p).stat().st_size for p in result.images}


def test_sat_reads_a_split_of_one_large_row_group_in_record_batches(tmp_path):
    rows = [{"image_bytes": [published.png_bytes(i % 3)], "question": f"q{i}", "answers": ["a", "b"],
             "question_type": "t", "correct_answer": "b"} for i in range(600)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "SAT_train.parquet", row_group_size=len(rows))
    assert pq.ParquetFile(tmp_path / "SAT_train.parquet").metadata.num_row_groups == 1
    result = read_dataset(Source("sat", tmp_path), lenient=False, media_dir=None)
    assert [r["sample_id"] for r in result.rows] == [f"sat/train/{i}" for i in range(600)]
    assert not (tmp_path / "images").exists(), "media_dir None validates and writes nothing"


def test_vsti_training_rows_drop_the_erratum_and_find_scannet_videos(roots, synthetic_set, tmp_path):
    result = read_dataset(roots["vsti"], lenient=False, media_dir=None)
    rows = {r["sample_id"]: r for r in result.rows}
    assert sorted(rows) == ["vsti/5b1e", "vsti/77aa"]
    assert [(s["row"], s["field"]) for s in result.skipped] == [(1, "id")]
    assert "erratum_dropped_items.json" in result.skipped[0]["reason"]
    numeric, choice = rows["vsti/5b1e"], rows["vsti/77aa"]
    assert numeric["split"] == choice["split"] == "train"
    assert numeric["video"] == "scannet/videos/scene0000_00.mp4" and numeric[CLIP].path.is_file()
    assert numeric["conversations"] == [
        {"role": "user", "content": "<video>\nHow far did the camera move from frame 1 to frame 9 (in meters)?"},
        {"role": "assistant", "content": "1.3"}]
    assert choice["conversations"][1]["content"] == "B"
    assert json.loads(choice["meta"])["question_type"] == "camera_movement_direction"
    # Videos under a folder the user names (ScanNet kept elsewhere).
    scannet = tmp_path / "scannet-root"
    root = published.vsti(tmp_path / "VLM-3R-DATA", synthetic_set, videos=scannet)
    assert not (root / "scannet").exists()
    row = rows_by_id(Source("vsti", root, {"videos": str(scannet)}))["vsti/77aa"]
    assert row[CLIP].path == (scannet / "scannet/videos/scene0000_00.mp4").resolve() and row[CLIP].path.is_file()
    assert row["video"] == str(row[CLIP].path), "outside the dataset root: absolute"


def test_vsti_test_rows_are_split_test_of_their_own_dataset(roots):
    rows = list(rows_by_id(roots["vsti_test"]).values())
    assert {(r["dataset"], r["split"]) for r in rows} == {("vsti_test", "test")}
    choice, numeric = rows
    assert choice["conversations"][1]["content"] == "A. left"
    assert json.loads(numeric["meta"]) == {"question_type": "camera_displacement", "answer": 2.5,
                                           "answer_text": "2.5", "metric": "mean_relative_accuracy"}
    assert DATASETS["vsti_test"].use == "eval" and DATASETS["vsti"].use == "train"


def test_wolf_trains_on_the_nuscenes_captions_and_cuts_clips_from_scenes(roots):
    source = roots["wolf"]
    rows = rows_by_id(source)
    assert set(rows) == {"wolf/normal/c36e", "wolf/interactive/fcd3"}, "robotics and Pexels only on request"
    named, cut = rows["wolf/normal/c36e"], rows["wolf/interactive/fcd3"]
    assert named["video"] == "videos/c36e.mp4" and named[CLIP].span is None
    assert named["conversations"][1]["content"] == "A car drives past a parked truck."
    # Index entry ts 1, te 3 (nuScenes keyframes at 2 Hz) -> [0.5, 1.5] s of the scene video.
    assert cut["video"] == "scenes/scene-0001.mp4" and cut[CLIP].span == (0.5, 1.5)
    everything = rows_by_id(Source("wolf", source.root, {**source.options, "captions": "normal+pexels+robotics"}))
    assert set(everything) == {"wolf/normal/c36e", "wolf/pexels/Llo6", "wolf/robotics/57f5"}
    assert everything["wolf/pexels/Llo6"]["conversations"][1]["content"] == "A man drives a blue car."
    # Without scenes=DIR the clip is looked for by name only (and then fails as a missing file).
    by_name = rows_by_id(Source("wolf", source.root))["wolf/interactive/fcd3"]
    assert by_name["video"] == "videos/fcd3.mp4" and not by_name[CLIP].path.exists()


def test_stibench_clips_follow_the_question_span_and_the_official_prompt(roots, tmp_path):
    rows = rows_by_id(roots["stibench"])
    assert sorted(rows) == ["stibench/a.mp4|1|0.0|0.7", "stibench/a.mp4|2|0.8|1.5", "stibench/b.mp4|1|0.0|1.5"]
    first = rows["stibench/a.mp4|1|0.0|0.7"]
    assert first["video"] == "video/a.mp4" and first[CLIP].span == (0.0, 0.7)
    assert first["conversations"] == [
        {"role": "user", "content": "<video>\nFrom 0.0 s to 0.7 s. How far did the car travel?\n(A) 1 m\n(B) 5 m\n"
                                    "(C) 10 m\nPlease output only the option letter!"},
        {"role": "assistant", "content": "B"}]
    meta = json.loads(rows["stibench/a.mp4|2|0.8|1.5"]["meta"])
    assert (meta["answer"], meta["answer_text"], meta["time_start"], meta["time_end"]) == ("C", "10 m", 0.8, 1.5)
    assert {r["split"] for r in rows.values()} == {"test"}
    # Candidates as a struct: every row has every letter, absent options null.
    struct = {"Video": "a.mp4", "ID": 7, "Question": "Q?", "Answer": "A", "Task": "T", "time_start": 1,
              "time_end": 2, "Candidates": {"A": "x", "B": "y", "C": None}}
    (tmp_path / "videos").mkdir()
    pq.write_table(pa.Table.from_pylist([struct]), tmp_path / "qa.parquet")
    row, = rows_by_id(Source("stibench", tmp_path)).values()
    assert json.loads(row["meta"])["options"] == {"A": "x", "B": "y"}
    assert row["conversations"][0]["content"].startswith("<video>\nFrom 1 s to 2 s. Q?\n(A) x\n(B) y\nPlease")


def test_vlm4d_urls_become_paths_under_the_root(roots, tmp_path):
    rows = rows_by_id(roots["vlm4d"])
    assert set(rows) == {"vlm4d/real/validation_1", "vlm4d/real/validation_3", "vlm4d/synthetic/validation_1"}
    real = rows["vlm4d/real/validation_1"]
    assert real["video"] == "videos_real/davis/aerobatics.mp4" and real[CLIP].path.is_file()
    assert real["conversations"][1]["content"] == "C. right"
    integers = json.loads(rows["vlm4d/real/validation_3"]["meta"])
    assert (integers["answer"], integers["options"]) == ("B", {"A": "1", "B": "2", "C": "3", "D": "0"})
    # 4D-RGPT's layout: QA/*_mc_processed.json with paths relative to the root.
    row = {"id": "validation_1", "video": "videos_real/davis/x.mp4", "question": "Q?",
           "choices": {"A": "l", "B": "r"}, "answer": "r"}
    published.write_json(tmp_path / "QA" / "real_mc_processed.json", [row])
    only, = rows_by_id(Source("vlm4d", tmp_path)).values()
    assert (only["sample_id"], only["video"]) == ("vlm4d/real/validation_1", "videos_real/davis/x.mp4")
    published.write_json(tmp_path / "QA" / "real_mc_processed.json",
                         [{**row, "video": "https://huggingface.co/datasets/x/y/blob/main/a.mp4"}])
    with pytest.raises(RowError, match="field 'video': URL .* is not a Hugging Face file URL"):
        read_dataset(Source("vlm4d", tmp_path), lenient=False, media_dir=None)


# Malformed rows, per dataset, as (row, field) in file order: strict mode stops at the first, lenient
# mode skips all of them and keeps the good rows.
def malformed_roots(base, synthetic_set) -> dict[str, tuple[Source, list, int]]:
    out = {}
    r = base / "robofac"
    good = {"video": "Rotation-v1/s/a.mp4", "conversations": published.turns("<video>\nWhy?", "Because.")}
    published.write_json(r / "training_qa.json", [
        good, {**good, "conversations": [{"from": "robot", "value": "?"}]}, {**good, "video": ESCAPES[0]},
        {**good, "video": ESCAPES[1]}, {**good, "video": "link.mp4"}, {"conversations": good["conversations"]},
        "not an object"])
    (r / "simulation_data").mkdir()
    (r / "simulation_data" / "link.mp4").symlink_to("/etc/hostname")
    out["robofac"] = (Source("robofac", r), [(1, "conversations"), (2, "video"), (3, "video"), (4, "video"),
                                             (5, "video"), (6, "<row>")], 1)

    s = base / "sat"
    s.mkdir()
    row = {**published.SAT_ROW, "image_bytes": [published.png_bytes(0)]}
    rows = [row, {**row, "correct_answer": "maybe"}, {**row, "image_bytes": [b"no"]},
            {**row, "answers": ["one"], "correct_answer": "one"}]
    pq.write_table(pa.Table.from_pylist(rows), s / "SAT_train.parquet")
    out["sat"] = (Source("sat", s), [(1, "correct_answer"), (2, "image_bytes"), (3, "answers")], 1)

    v = base / "vsti"
    vrow = {"id": "a", "data_source": "scannet", "scene_name": "s", "video": "scannet/videos/s.mp4",
            "question_type": "camera_movement_direction", "conversations": published.turns("<image>\nQ?", "B")}
    published.write_json(v / "vstibench_train" / "qa_x.json", [
        vrow, {**vrow, "id": "b", "question_type": "camera_mood"},
        {**vrow, "id": "c", "conversations": published.turns("<image>\nQ?", "F")},
        {**vrow, "id": "d", "video": ESCAPES[0]},
        {**vrow, "id": "e", "question_type": "camera_displacement", "conversations": published.turns("Q", "far")}])
    out["vsti"] = (Source("vsti", v), [(1, "question_type"), (2, "conversations"), (3, "video"),
                                       (4, "conversations")], 1)

    t = base / "vsti_test"
    trow = {"video_path": "v.mp4", "question": "Q?", "question_type": "camera_movement_direction",
            "options": ["A. l", "B. r"], "mc_answer": "B", "ground_truth": "r"}
    published.write_json(t / "test.json", [trow, {**trow, "mc_answer": "F"}, {**trow, "video_path": ESCAPES[1]},
                                           {**trow, "question_type": "camera_obj_abs_dist", "ground_truth": "far"}])
    out["vsti_test"] = (Source("vsti_test", t), [(1, "mc_answer"), (2, "video_path"), (3, "ground_truth")], 1)

    w = base / "wolf"
    published.write_json(w / "annotations" / "Normal Nuscenes_annotations.json",
                         {"a.mp4": "A car.", "../../secret.mp4": "escapes", "b.mp4": {"tags": ["no output"]}})
    published.write_json(w / "annotations" / "Interactive Nuscenes_annotations.json", {"c.mp4": "  "})
    out["wolf"] = (Source("wolf", w), [("../../secret.mp4", "video"), ("b.mp4", "output"), ("c.mp4", "caption")], 1)

    q = base / "r4d"
    rrow = {"id": "1", "video": "v.mp4", "som_image": "som.jpg", "question": "Is <obj_1> fast?",
            "options": ["yes", "no"], "answer": "no", "task": "Speed & Acceleration", "benchmark": "vlm4d"}
    published.write_json(q / "test.json", [rrow, {**rrow, "id": "2", "answer": "fast"},
                                           {**rrow, "id": "3", "som_image": ESCAPES[1]},
                                           {**rrow, "id": "4", "question": 42},
                                           {**rrow, "id": "5", "som_image": "missing.jpg"}])
    Image.fromarray(np.full((12, 16, 3), 200, np.uint8)).save(q / "som.jpg", format="JPEG")
    out["r4d"] = (Source("r4d", q), [(1, "answer"), (2, "som_image"), (3, "question"), (4, "som_image")], 1)

    i = base / "stibench"
    i.mkdir()
    srow = {"Video": "v.mp4", "ID": 1, "Question": "Q?", "Candidates": json.dumps({"A": "x", "B": "y"}),
            "Answer": "B", "Task": "T", "time_start": 0.5, "time_end": 4.0, "Source": "s", "Scene": "outdoor"}
    pq.write_table(pa.Table.from_pylist([srow, {**srow, "Candidates": "{not json"}, {**srow, "Answer": "D"},
                                         {**srow, "Video": ESCAPES[0]}, {**srow, "time_start": 4.0, "time_end": 1.0},
                                         {**srow, "Video": ESCAPES[1]}]), i / "qa.parquet")
    out["stibench"] = (Source("stibench", i), [(1, "Candidates"), (2, "Answer"), (3, "Video"), (4, "time_end"),
                                               (5, "Video")], 1)

    m = base / "vlm4d"
    mrow = {"id": "validation_1", "video": published.HF_VLM4D + "videos_real/x.mp4", "question": "Q?",
            "choices": {"A": "l", "B": "r"}, "answer": "r"}
    published.write_json(m / "data" / "real_mc.json", [
        mrow, {**mrow, "id": "validation_2", "answer": "up"}, {**mrow, "id": "validation_3", "choices": {"A": "x"}},
        # Published once (real_mc.json row 632): the answer's text under two letters.
        {**mrow, "id": "validation_633", "choices": {"A": "l", "B": "r", "C": "r"}}])
    out["vlm4d"] = (Source("vlm4d", m), [(1, "answer"), (2, "choices"), (3, "answer")], 1)
    return out


@pytest.fixture(scope="module")
def malformed(synthetic_set, tmp_path_factory):
    return malformed_roots(tmp_path_factory.mktemp("malformed"), synthetic_set)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_strict_mode_names_file_row_and_field(name, malformed, tmp_path):
    source, bad, _ = malformed[name]
    row, field = bad[0]
    with pytest.raises(RowError) as caught:
        read_dataset(source, lenient=False, media_dir=tmp_path)
    assert (caught.value.row, caught.value.field) == (row, field)
    message = str(caught.value)
    assert caught.value.file in message and f"row {row}" in message and repr(field) in message


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_lenient_mode_counts_every_skipped_row(name, malformed, tmp_path):
    source, bad, good = malformed[name]
    result = read_dataset(source, lenient=True, media_dir=tmp_path)
    assert [(s["row"], s["field"]) for s in result.skipped] == bad
    assert all(s["dataset"] == name and s["reason"] for s in result.skipped)
    assert len(result.rows) == good
    escaped = [s for s in result.skipped if "escapes the dataset root" in s["reason"]]
    expected = {"robofac": 3, "vsti": 1, "vsti_test": 1, "wolf": 1, "r4d": 1, "stibench": 2}.get(name, 0)
    assert len(escaped) == expected, "../, absolute paths and symlinks out of the media root are refused"
    assert pa.Table.from_pylist(result.rows, schema=SAMPLES_SCHEMA).num_rows == good, "rows fit the schema"


def test_source_option_in_flags_and_yaml(tmp_path):
    config_file = tmp_path / "job.yaml"
    config_file.write_text("sources: [wolf=/data/wolf]\nlenient: true\ncheck: true\n")
    args = build_parser("x").parse_args(["--source", "robofac=/data/robofac", "--source", "vsti=/data/vsti,videos=/s",
                                         "--videos", "/data/videos", "--check"])
    config = load_config(args)
    assert config.sources == ("robofac=/data/robofac", "vsti=/data/vsti,videos=/s") and config.videos == "/data/videos"
    assert config.check is True
    from_yaml = load_config(build_parser("x").parse_args(["--config", str(config_file)]))
    assert from_yaml.sources == ("wolf=/data/wolf",) and from_yaml.lenient is True and from_yaml.check is True
    assert load_config(build_parser("x").parse_args([])).check is False
    assert parse_source(f"vsti={tmp_path},videos=/scannet") == Source("vsti", tmp_path, {"videos": "/scannet"})
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        parse_source(f"nope={tmp_path}")
    with pytest.raises(ValueError, match="expected NAME=ROOT"):
        parse_source(str(tmp_path))
    with pytest.raises(ValueError, match="'frames=3' is not an option of wolf; its options: captions"):
        parse_source(f"wolf={tmp_path},frames=3")
    with pytest.raises(ValueError, match="is not an option of robofac; its options: none"):
        parse_source(f"robofac={tmp_path},videos=/x")
    with pytest.raises(ValueError, match="captions='normal\\+nope'"):
        read_dataset(Source("wolf", tmp_path, {"captions": "normal+nope"}), lenient=False, media_dir=None)


def test_strict_job_refuses_a_malformed_row_before_any_work(malformed, tmp_path, caplog):
    source = malformed["robofac"][0]
    code = cache_main(["--source", f"robofac={source.root}", "--out", str(tmp_path / "cache"), "--teacher", "oracle"])
    assert code == 1
    assert "training_qa.json: row 1: field 'conversations'" in caplog.text
    assert not (tmp_path / "cache" / "manifests" / "samples.parquet").exists()


@pytest.fixture(scope="module")
def all_sources_job(roots, synthetic_set, ray_session, tmp_path_factory):
    """One strict job: the synthetic set (--videos, whose samples carry regions) and all eight sources."""
    out = tmp_path_factory.mktemp("eight-sources") / "cache"
    specs = [f"{s.name}={s.root}" + "".join(f",{k}={v}" for k, v in s.options.items()) for s in roots.values()]
    argv = ["--videos", str(synthetic_set), *[a for spec in specs for a in ("--source", spec)], "--out", str(out),
            "--teacher", "oracle", "--latent-dim", "16", "--num-frames", str(NUM_FRAMES)]
    code = cache_main(argv)
    return out, code, json.loads((out / "summary.json").read_text())


def test_every_source_caches_with_every_clip_ok(all_sources_job, roots):
    cache, code, summary = all_sources_job
    assert code == 0
    reports = {r["source"].split("=")[0]: r for r in summary["sources"]}
    expected_clips = {"videos": 4, "robofac": 2, "sat": 0, "vsti": 1, "wolf": 2, "r4d": 1, "stibench": 3,
                      "vlm4d": 3, "vsti_test": 1}
    assert {n: (r["clips"], r["ok"], r["failed"], r["lost"]) for n, r in reports.items()} == {
        n: (c, c, 0, None) for n, c in expected_clips.items()}
    assert reports["sat"]["image_only_samples"] == reports["sat"]["samples"] == 6
    assert reports["vsti"]["rows_skipped"] == 1, "the erratum's id"
    assert summary["clips"]["failed"] == 0 and summary["clips"]["ok"] == summary["clips"]["wanted"]


def test_samples_table_holds_split_prompt_and_answer_per_source(all_sources_job, roots):
    cache, _, _ = all_sources_job
    samples = {s["sample_id"]: s for s in read_samples(cache / "manifests" / "samples.parquet").to_pylist()}
    clips = current_clips(read_clips_table(cache))
    split = {s["dataset"]: set() for s in samples.values()}
    for s in samples.values():
        split[s["dataset"]].add(s["split"])
    assert split == {"synthetic": {"train"}, "robofac": {"train"}, "sat": {"train", "static", "val", "test"},
                     "vsti": {"train"}, "wolf": {"train"}, "r4d": {"test"}, "stibench": {"test"}, "vlm4d": {"test"},
                     "vsti_test": {"test"}}
    turns = {i: (s["conversations"][0]["content"], s["conversations"][-1]["content"]) for i, s in samples.items()}
    assert turns["vsti/77aa"][1] == "B" and turns["vsti/5b1e"] == (
        "<video>\nHow far did the camera move from frame 1 to frame 9 (in meters)?", "1.3")
    assert turns["wolf/interactive/fcd3"] == ("<video>\nDescribe the video in detail.",
                                              "The ego car yields to a pedestrian.")
    assert turns["stibench/a.mp4|2|0.8|1.5"][0].startswith("<video>\nFrom 0.8 s to 1.5 s. How far did the car travel")
    assert turns["stibench/a.mp4|2|0.8|1.5"][1] == "C"
    assert turns["vlm4d/real/validation_3"][1] == "B. 2" and turns["r4d/r4d-1"][1] == "B. no"
    assert turns["sat/train/1"][1] == "B. right"
    for sample in samples.values():
        if sample["video"] is None:
            assert sample["cache_key"] is None and sample["images"]
            continue
        clip = clips[sample["cache_key"]]
        assert clip["status"] == "ok"
        assert clip["video_sha256"] == file_sha256(clip["video_uri"]), "joined to its own video"
    # One video, two spans: two clips, each sampled inside its span.
    spans = {}
    for sid in ("stibench/a.mp4|1|0.0|0.7", "stibench/a.mp4|2|0.8|1.5", "wolf/interactive/fcd3"):
        clip = clips[samples[sid]["cache_key"]]
        sampling = json.loads(clip["sampling"])
        spans[sid] = (sampling["start"], sampling["end"])
        assert sampling["start"] <= min(clip["timestamps"]) and max(clip["timestamps"]) <= sampling["end"]
        assert len(clip["timestamps"]) == NUM_FRAMES
    assert spans == {"stibench/a.mp4|1|0.0|0.7": (0.0, 0.7), "stibench/a.mp4|2|0.8|1.5": (0.8, 1.5),
                     "wolf/interactive/fcd3": (0.5, 1.5)}
    arrays = read_cached_clip(cache, clips[samples["stibench/a.mp4|2|0.8|1.5"]["cache_key"]], ["frames", "depth"])
    assert arrays["frames"].shape == (NUM_FRAMES, 224, 224, 3) and arrays["depth"].shape == (NUM_FRAMES, 224, 224)
    for sample in samples.values():
        if sample["regions"]:
            parse_regions(sample["regions"], where=sample["sample_id"])


def test_a_rerun_computes_nothing_and_check_sees_it_cached(all_sources_job, roots, capsys):
    cache, _, summary = all_sources_job
    specs = [f"{s.name}={s.root}" + "".join(f",{k}={v}" for k, v in s.options.items()) for s in roots.values()]
    argv = [a for spec in specs for a in ("--source", spec)] + [
        "--out", str(cache), "--teacher", "oracle", "--latent-dim", "16", "--num-frames", str(NUM_FRAMES)]
    capsys.readouterr()
    assert cache_main([*argv, "--check"]) == 0
    printed = capsys.readouterr().out
    # Each source's clips hashed against the cache: all cached, none to compute.
    for name, clips in {"robofac": 2, "stibench": 3, "wolf": 2, "vlm4d": 3}.items():
        line = printed.split(f"source {name}=")[1].split("\n")[2]
        assert line.startswith(f"  clips: {clips} unique, {clips} already cached, 0 failed before (not retried), "
                               "0 to compute"), line


def test_robofac_root_without_its_videos_exits_non_zero_naming_the_reason(synthetic_set, ray_session, tmp_path,
                                                                          caplog):
    root = published.robofac(tmp_path / "RoboFAC-dataset", None)
    caplog.set_level(logging.INFO)
    code = cache_main(["--source", f"robofac={root}", "--out", str(tmp_path / "cache"), "--teacher", "oracle",
                       "--latent-dim", "16", "--num-frames", str(NUM_FRAMES)])
    assert code == LOST_EXIT_CODE
    last = [r.getMessage() for r in caplog.records if r.name == "p4d.cache_teacher"][-2:]
    assert last[0].startswith(f"source robofac={root}: 3 samples; 2 clips: 0 ok, 2 failed (hash: file not found x2, "
                              "e.g. ")
    assert "LOST: every clip failed (2 of 2)" in last[0] and str(root.resolve() / "simulation_data") in last[0]
    assert last[1].startswith("done: 2 clips wanted, 0 already cached, 0 ok, 2 failed")
    report, = json.loads((tmp_path / "cache" / "summary.json").read_text())["sources"]
    assert report["lost"] == "every clip failed (2 of 2)"
    assert report["top_failures"][0]["reason"] == "hash: file not found" and report["top_failures"][0]["clips"] == 2


def test_a_source_whose_rows_all_drop_exits_non_zero(malformed, ray_session, tmp_path, caplog):
    root = tmp_path / "vlm4d"
    published.write_json(root / "data" / "real_mc.json", [
        {"id": "v1", "video": "a.mp4", "question": "Q?", "choices": {"A": "l", "B": "r"}, "answer": "up"}])
    code = cache_main(["--source", f"vlm4d={root}", "--lenient", "true", "--out", str(tmp_path / "cache"),
                       "--teacher", "oracle", "--latent-dim", "16"])
    assert code == LOST_EXIT_CODE
    assert f"source vlm4d={root}: 0 samples, 1 rows skipped; 0 clips: 0 ok, 0 failed -- LOST: no sample: all 1 " \
           "annotation rows were left out" in caplog.text


def test_inspect_draws_a_samples_marks(all_sources_job, tmp_path):
    from student.inspect_cache import main as inspect_main

    cache, _, _ = all_sources_job
    samples = read_samples(cache / "manifests" / "samples.parquet").to_pylist()
    marked = next(s for s in samples if s["regions"])
    plain, marks = tmp_path / "plain.png", tmp_path / "marks.png"
    assert inspect_main([str(cache), "--clip", marked["cache_key"], "--png", str(plain)]) == 0
    assert inspect_main([str(cache), "--clip", marked["cache_key"], "--marks", "--sample", marked["sample_id"],
                         "--png", str(marks)]) == 0
    a, b = np.asarray(Image.open(plain).convert("RGB")), np.asarray(Image.open(marks).convert("RGB"))
    assert a.shape == b.shape
    assert np.any(a != b), "the marked picture differs from the plain one"


def test_the_student_loader_streams_the_training_mixture(all_sources_job, tmp_path):
    """The training part of the cache through the student's loader: every training dataset's samples come
    out in batches (image-only SAT samples with their pictures and no targets, video samples with
    theirs), and no evaluation row."""
    from transformers import AutoConfig

    from student.adapters import build_adapter
    from student.cache_index import load_cache_index
    from student.loader import StudentLoader
    from student.model import load_tokenizer
    from student.tiny import make_tiny_vlm
    from student.train_config import DataConfig

    cache, _, _ = all_sources_job
    model_dir = make_tiny_vlm("qwen2_5_vl", tmp_path / "vlm")
    adapter = build_adapter("qwen2_5_vl", AutoConfig.from_pretrained(model_dir), model_dir, (56, 56))
    index = load_cache_index(cache, needed=("depth",), training=True)
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
            batch.to("cpu")
            assert batch.targets["depth"].shape == (len(batch.videos), NUM_FRAMES, 224, 224)
    datasets = {r.sample_id: r.dataset for r in index.records}
    kinds = {(datasets[s], kind) for s, kind in seen.items()}
    assert {d for d, _ in kinds} == {"robofac", "sat", "vsti", "wolf", "synthetic"}
    assert ("sat", "image") in kinds and ("sat", "video") not in kinds
    assert {("robofac", "video"), ("vsti", "video"), ("wolf", "video")} <= kinds


def test_a_videos_folder_whose_every_clip_fails_exits_non_zero(ray_session, tmp_path, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "notes.mp4").write_text("this is not a video\n")
    code = cache_main(["--videos", str(videos), "--out", str(tmp_path / "cache"), "--teacher", "oracle",
                       "--latent-dim", "16"])
    assert code == LOST_EXIT_CODE
    assert f"source videos={videos}: 0 samples; 1 clips: 0 ok, 1 failed (decode: not a video or unreadable " \
           f"container x1, e.g. {videos / 'notes.mp4'}) -- LOST: every clip failed (1 of 1)" in caplog.text
