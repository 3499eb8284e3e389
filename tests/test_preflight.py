"""`--check`: the preflight report on dataset roots with real-world videos (tests/data/videos, whose
README gives their durations, frame counts and sizes), checked against numbers computed here by hand;
it starts neither Ray nor a teacher and writes nothing."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dataset_roots as published
from conftest import TEST_VIDEOS
from manifests.cache_key import compute_cache_key, file_sha256
from manifests.clips_table import write_clips_part
from pipeline.cache_teacher import main as cache_main
from pipeline.config import JobConfig, TeacherConfig
from pipeline.preflight import expected_failure, probe_header, run_check, teacher_tflop_per_clip
from pipeline.runner import field_specs
from pipeline.sampling import SamplingConfig
from pipeline.source_report import LOST_EXIT_CODE
from pipeline.teachers.l4p.config import FULL, TASKS, TINY
from pipeline.teachers.l4p.dpt import dpt_flops
from pipeline.teachers.l4p.encoder import encoder_flops
from pipeline.teachers.registry import teacher_class
from shards.schema import specs_to_json

T = 16


def per_window_tflop(arch) -> float:
    return (encoder_flops(arch, arch.hooks) + sum(dpt_flops(arch, arch.heads[t]) for t in TASKS)) / 1e12


def l4p_tiny_clip_bytes(frames: int) -> int:
    """Stored bytes of one l4p-tiny clip at the default storage (shards/teacher_fields.py default_storage),
    written out field by field: frames uint8, timestamps float64, latents int8 + float32 offset /
    channel_scale / token_scale, depth uint16 + float64 log_min, flow int16, dyn_mask int16 (the logit), camray
    float16; one 16-frame window (8 x 16 x 16 tokens)."""
    hooks, width, tokens = len(TINY.hooks), TINY.embed_dim, 8 * 16 * 16
    maps = frames * 224 * 224
    return (maps * 3 + frames * 8 + hooks * tokens * width + 2 * hooks * width * 4 + hooks * tokens * 4
            + maps * 2 + 8 + 2 * maps * 2 + maps * 2 + 6 * 16 * 16 * 16 * 2)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("check-roots")
    sti = base / "STI-Bench"
    (sti / "videos").mkdir(parents=True)
    shutil.copy(TEST_VIDEOS / "flipping_a_pancake.mkv", sti / "videos" / "pancake.mkv")
    shutil.copy(TEST_VIDEOS / "video_90.mov", sti / "videos" / "phone.mov")
    shutil.copy(TEST_VIDEOS / "corrupted.mp4", sti / "videos" / "corrupted.mp4")
    row = {"Question": "Q?", "Candidates": json.dumps({"A": "x", "B": "y"}), "Answer": "A", "Task": "T",
           "Source": "s"}
    pq.write_table(pa.Table.from_pylist([
        {**row, "Video": "pancake.mkv", "ID": 1, "time_start": 1.0, "time_end": 3.0},
        {**row, "Video": "pancake.mkv", "ID": 2, "time_start": 1.0, "time_end": 3.0},  # same clip
        {**row, "Video": "pancake.mkv", "ID": 3, "time_start": 12.0, "time_end": 13.0},  # after its end (10.3 s)
        {**row, "Video": "phone.mov", "ID": 1, "time_start": 0.0, "time_end": 5.0},  # 3 frames
        {**row, "Video": "gone.mp4", "ID": 1, "time_start": 0.0, "time_end": 5.0},
        {**row, "Video": "corrupted.mp4", "ID": 1, "time_start": 0.0, "time_end": 5.0},  # fails mid-decode
        {**row, "Video": "pancake.mkv", "ID": 4, "time_start": 1.0, "time_end": 3.0, "Answer": "Z"},  # malformed
    ]), sti / "qa.parquet")
    return {"stibench": sti, "sat": published.sat(base / "SAT"),
            "robofac": published.robofac(base / "RoboFAC-dataset", None)}


@pytest.fixture(scope="module")
def report(roots, tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "cache"
    config = JobConfig(sources=(f"stibench={roots['stibench']}", f"sat={roots['sat']}"), out=str(out),
                       sampling=SamplingConfig(num_frames=T), teacher=TeacherConfig(name="l4p-tiny"),
                       check=True, check_gpu_tflops=250.0)
    return run_check(config), out


def test_headers_are_what_the_files_are():
    """Durations, frame counts and sizes as tests/data/videos/README.md states them."""
    pancake = probe_header(TEST_VIDEOS / "flipping_a_pancake.mkv")
    assert pancake.duration == pytest.approx(10.33, abs=0.06) and (pancake.width, pancake.height) == (426, 240)
    assert pancake.frames_estimated and abs(pancake.frames - 310) <= 1, "Matroska stores no frame count"
    corrupted = probe_header(TEST_VIDEOS / "corrupted.mp4")
    assert (corrupted.frames, corrupted.duration, corrupted.width, corrupted.height) == (50, 5.0, 1280, 720)
    unordered = probe_header(TEST_VIDEOS / "unordered.mov")
    assert (unordered.frames, unordered.width, unordered.height) == (4, 50, 50)
    assert unordered.duration == pytest.approx(4 / 32)
    rotated = probe_header(TEST_VIDEOS / "video_90.mov")
    assert (rotated.frames, rotated.width, rotated.height, rotated.error) == (3, 568, 320, None)
    assert probe_header(TEST_VIDEOS / "README.md").error.startswith("not a video or unreadable container")
    assert probe_header(TEST_VIDEOS / "nothing.mp4").error.startswith("file not found")


def test_expected_failures_follow_the_readers_rules():
    pancake = probe_header(TEST_VIDEOS / "flipping_a_pancake.mkv")
    rate = pancake.frames / pancake.duration  # ~30 fps
    assert expected_failure(pancake, (1.0, 1.4), SamplingConfig(num_frames=13)) is None  # 1 + 0.4 x 30 frames
    assert expected_failure(pancake, (1.0, 1.4), SamplingConfig(num_frames=14)).startswith("too short: ~13 frames")
    assert expected_failure(pancake, (1.0, 1.4), SamplingConfig(num_frames=14, pad=True)) is None
    assert expected_failure(pancake, None, SamplingConfig(num_frames=16, fps=2.0)) is None  # 7.5 s of 10.3
    assert expected_failure(pancake, (5.0, 8.0), SamplingConfig(num_frames=16, fps=2.0)).startswith("too short")
    assert expected_failure(pancake, (11.0, 12.0), SamplingConfig()).startswith("no frames in the sampling span")
    assert rate == pytest.approx(30, abs=0.2)
    # The last frame starts at 10.30 s (decord's timestamps) although the container says it lasts 10.38 s.
    assert expected_failure(pancake, (10.35, 10.38), SamplingConfig(num_frames=1)).startswith("no frames in")
    # video_90.mov: 3 frames at 30 fps, lasting 0.1 s.
    rotated = probe_header(TEST_VIDEOS / "video_90.mov")
    assert expected_failure(rotated, None, SamplingConfig(num_frames=3)) is None
    assert expected_failure(rotated, None, SamplingConfig(num_frames=4)).startswith("too short: ~3 frames")


def test_the_report_counts_rows_clips_compute_and_bytes(report):
    result, out = report
    sti, sat = result["sources"]
    assert (sti["rows_ok"], sti["rows_skipped"]) == (6, 1)
    skipped, = sti["skipped_by_reason"]
    assert skipped["reason"] == "field 'Answer'" and "row 6" in skipped["example"]
    # pancake [1, 3] (asked twice), pancake [12, 13], phone, gone, corrupted
    assert (sti["unique_clips"], sti["already_cached"], sti["to_compute"]) == (5, 0, 5)
    reasons = {f["reason"]: f["clips"] for f in sti["expected_failures"]}
    assert reasons == {"hash: file not found": 1, "decode: too short": 1,
                       "decode: no frames in the sampling span [N, N] s": 1}
    # The header cannot see corrupted.mp4 fail mid-decode: it counts as computed (the job will say).
    computing = 2
    tflop = per_window_tflop(TINY)  # 16 frames: one window
    assert result["tflop_per_clip"] == pytest.approx(tflop, rel=1e-12)
    assert sti["tflop"] == pytest.approx(computing * tflop, rel=1e-12)
    assert sti["gpu_hours"] == pytest.approx(computing * tflop / 250.0 / 3600, rel=1e-12)
    assert result["bytes_per_clip"] == l4p_tiny_clip_bytes(T)
    assert sti["bytes"] == computing * l4p_tiny_clip_bytes(T)
    # SAT: image-only; five distinct pictures (seed 0 in three rows) are the bytes it writes.
    assert (sat["rows_ok"], sat["unique_clips"], sat["images"]) == (6, 0, 5)
    assert sat["bytes"] == sum(len(published.png_bytes(seed)) for seed in range(5))
    assert result["total"]["bytes"] == sti["bytes"] + sat["bytes"]
    assert not out.exists(), "the check writes nothing"


def test_tflop_per_clip_scales_with_windows_and_is_zero_for_the_oracle():
    assert teacher_tflop_per_clip(TeacherConfig(name="l4p-tiny"), 32) == pytest.approx(3 * per_window_tflop(TINY))
    assert teacher_tflop_per_clip(TeacherConfig(name="l4p-tiny"), 8) == pytest.approx(per_window_tflop(TINY))
    assert teacher_tflop_per_clip(TeacherConfig(name="oracle"), 16) == 0.0
    # The encoder to hook 36: 4.5777 TFLOP per window (FlopCounterMode on the released modules, NVlabs/L4P
    # commit 8701a4b; the heads' figures are being corrected in issue 13).
    assert encoder_flops(FULL, FULL.hooks) / 1e12 == pytest.approx(4.5777, rel=1e-3)


def test_check_prints_the_report_without_ray_or_a_teacher(roots, tmp_path, monkeypatch, capsys):
    import ray

    from pipeline.teachers.l4p.teacher import L4PTeacher

    def refuse(*args, **kwargs):
        raise AssertionError("--check started Ray or built a teacher")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(L4PTeacher, "__init__", refuse)
    out = tmp_path / "cache"
    code = cache_main(["--source", f"stibench={roots['stibench']}", "--source", f"sat={roots['sat']}",
                       "--out", str(out), "--teacher", "l4p-tiny", "--check", "--check-gpu-tflops", "250"])
    printed = capsys.readouterr()
    assert code == 0
    assert "probe video headers" in printed.err, "a progress bar"
    lines = printed.out.splitlines()
    assert lines[1].startswith("pricing: 250 TFLOP/s sustained per GPU (assumed; --check-gpu-tflops) = ")
    sti = lines.index(f"source stibench={roots['stibench']}")
    assert lines[sti + 1].startswith("  rows: 6 ok, 1 skipped (field 'Answer' x1, e.g. ")
    assert lines[sti + 2].startswith("  clips: 5 unique, 0 already cached, 0 failed before (not retried), 5 to compute "
                                     "of which 3 will fail (")
    assert lines[-1] == "verdict: every source yields samples"
    assert not out.exists()


def test_check_exits_non_zero_for_a_source_that_would_yield_nothing(roots, tmp_path, capsys):
    code = cache_main(["--source", f"robofac={roots['robofac']}", "--out", str(tmp_path / "cache"),
                       "--teacher", "oracle", "--check"])
    printed = capsys.readouterr().out
    assert code == LOST_EXIT_CODE
    assert "  LOST: every clip is expected to fail (2 of 2)" in printed
    assert "hash: file not found x2, e.g. file not found: " in printed
    assert printed.splitlines()[-1] == f"verdict: 1 source(s) would yield nothing: robofac={roots['robofac']}"


def test_check_finds_clips_cached_or_failed_before_by_the_keys_the_job_gives_them(roots, tmp_path):
    """A cache whose clips table holds some of the clips (keys written out here from each file's bytes and
    the span-limited sampling, as one clip at a time): counted as cached, failed before, or to compute."""
    out = tmp_path / "cache"
    config = JobConfig(sources=(f"stibench={roots['stibench']}",), out=str(out), sampling=SamplingConfig(num_frames=T),
                       teacher=TeacherConfig(name="l4p-tiny"), check=True)
    identity = teacher_class("l4p-tiny").identity(config.teacher, T)
    spec_json = specs_to_json(field_specs(config, identity.shapes, T))
    videos = (roots["stibench"] / "videos").resolve()

    def key(name: str, span: tuple[float, float]) -> str:
        video = f"sha256:{file_sha256(videos / name)}" if (videos / name).exists() else f"unreadable:{videos / name}"
        return compute_cache_key(video, {**asdict(config.sampling), "start": span[0], "end": span[1]},
                                 identity.teacher_id, spec_json)

    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    row = {"clip_id": "c", "video_uri": "/v.mp4", "sampling": "{}", "teacher_id": identity.teacher_id,
           "created_at": created}
    write_clips_part(out, "s0", [
        {**row, "cache_key": key("pancake.mkv", (1.0, 3.0)), "status": "ok"},
        {**row, "cache_key": key("pancake.mkv", (1.0, 4.0)), "status": "ok"},  # no question asks this span
        {**row, "cache_key": key("phone.mov", (0.0, 5.0)), "status": "failed"},
        {**row, "cache_key": key("phone.mov", (0.0, 5.0)), "status": "failed"},
        {**row, "cache_key": key("gone.mp4", (0.0, 5.0)), "status": "failed"},
    ])
    report = run_check(config)
    sti, = report["sources"]
    # pancake [1, 3] cached; phone and gone failed before; pancake [12, 13] and corrupted to compute
    assert (sti["unique_clips"], sti["already_cached"], sti["failed_before"], sti["to_compute"]) == (5, 1, 2, 2)
    assert (report["cached_clips"], report["failed_clips"]) == (2, 2)
    retried, = run_check(replace(config, retry_failed=True))["sources"]
    assert (retried["already_cached"], retried["failed_before"], retried["to_compute"]) == (1, 0, 4)
