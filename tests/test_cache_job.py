"""The caching job end to end: real Ray, real decord on real files, real Zarr v3 / WebDataset /
Parquet outputs, checked against the synthetic scenes' exact ground truth."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import zarr

from conftest import ROOT, SCENE_FRAMES, TEST_VIDEOS, copy_scenes
from manifests.clips_table import current_clips, duplicate_ok_keys, read_clips_table
from pipeline.cache_teacher import main as cache_main
from pipeline.config import JobConfig, OutputConfig, TeacherConfig
from pipeline.geometry import plucker_rays
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from pipeline.synthetic.ground_truth import load_ground_truth
from pipeline.timing import CLIP_STAGES, Seconds
from pipeline.teachers.oracle import MOTION_LOGIT
from shards.atomic import is_temporary
from shards.cache_reader import read_cached_clip
from shards.codecs import decode_field
from shards.schema import specs_from_json


def job(videos: Path, out: Path, **overrides) -> JobConfig:
    teacher = overrides.pop("teacher", TeacherConfig(name="oracle"))
    output = overrides.pop("output", OutputConfig())
    return JobConfig(videos=str(videos), out=str(out), sampling=SamplingConfig(num_frames=SCENE_FRAMES),
                     teacher=teacher, output=output, **overrides)


def ok_rows(cache: Path) -> dict[str, dict]:
    return {k: r for k, r in current_clips(read_clips_table(cache)).items() if r["status"] == "ok"}


def nearest(src: int, dst: int = 224) -> np.ndarray:
    # Written out here, independently of the oracle: the source pixel under each output pixel centre.
    return np.floor((np.arange(dst) + 0.5) * src / dst).astype(int)


@pytest.fixture(scope="module")
def both_caches(synthetic_set, ray_session, tmp_path_factory):
    """The synthetic set cached by the oracle at full L4P shapes, once per format."""
    caches = {}
    for fmt in ("zarr", "wds"):
        out = tmp_path_factory.mktemp(f"cache-{fmt}")
        summary = run_job(job(synthetic_set, out, output=OutputConfig(format=fmt, clips_per_shard=3)))
        assert summary["clips"] == {"wanted": 4, "already_cached": 0, "computed": 4, "ok": 4, "failed": 0}
        caches[fmt] = out
    return caches


def test_round_trip_matches_ground_truth(both_caches):
    """Every cached map equals the scene's exact ground truth within its stored precision (default
    storage, shards/codecs.py), in both formats."""
    for fmt, cache in both_caches.items():
        rows = ok_rows(cache)
        assert len(rows) == 4
        for row in rows.values():
            arrays = read_cached_clip(cache, row)
            gt = load_ground_truth(row["video_uri"])
            idx = np.asarray(row["frame_indices"])
            assert list(idx) == list(range(SCENE_FRAMES)), "16 of 16 frames: every frame, in order"
            h, w = gt.depth.shape[1:]
            r, c = nearest(h), nearest(w)
            np.testing.assert_allclose(arrays["timestamps"], gt.timestamps[idx], atol=1e-4)
            # log-depth with steps of 2**-8: half a step in log, relative error <= exp(2**-9) - 1
            # (+ float32 output rounding)
            np.testing.assert_allclose(arrays["depth"], gt.depth[idx][:, r][:, :, c], rtol=np.expm1(2**-9) + 2**-23)
            # The motion logit, +-MOTION_LOGIT: a whole number of fixed-point steps, stored exactly.
            motion = np.where(gt.dyn_mask[idx][:, r][:, :, c] > 0, MOTION_LOGIT, -MOTION_LOGIT)
            np.testing.assert_array_equal(arrays["dyn_mask"], motion)
            # The renderer's per-frame backward flow (consecutive frames here), scaled to 224 px.
            flow = gt.flow[idx][:, :, r][:, :, :, c].transpose(1, 0, 2, 3)
            flow = flow * np.array([224 / w, 224 / h])[:, None, None, None]
            # fixed point with steps of 1/16 px: absolute error <= 1/32 px (+ float32 rounding)
            np.testing.assert_allclose(arrays["flow"], flow, rtol=0, atol=1 / 32 + 1e-5)
            rays = plucker_rays(gt.K, gt.cam_to_world[idx], (h, w), grid=(16, 16))
            assert row["window_starts"] == [0], "16 frames: one teacher window"
            camray = arrays["camray"][0]
            np.testing.assert_allclose(camray, rays, rtol=2**-10, atol=2e-3)
            # Independently: in the first frame, rays start at the camera (m = 0) and go through the
            # centre of each 16 x 16 cell of the native image.
            gy, gx = np.mgrid[0:16, 0:16] + 0.5
            pixels = np.stack([gx * w / 16, gy * h / 16, np.ones_like(gx)], -1) @ np.linalg.inv(gt.K).T
            directions = pixels / np.linalg.norm(pixels, axis=-1, keepdims=True)
            np.testing.assert_allclose(camray[:3, 0].transpose(1, 2, 0), directions, atol=2e-3)
            np.testing.assert_allclose(camray[3:, 0], 0, atol=1e-3)
            assert arrays["latents"].shape == (4, 2048, 1408) and arrays["latents"].dtype == np.float32, "decoded"
            assert arrays["frames"].shape == (16, 224, 224, 3) and arrays["frames"].dtype == np.uint8


def test_zarr_and_webdataset_hold_identical_arrays(both_caches):
    zarr_rows, wds_rows = ok_rows(both_caches["zarr"]), ok_rows(both_caches["wds"])
    assert zarr_rows.keys() == wds_rows.keys()  # same keys: the format is not part of... the spec is
    for key in zarr_rows:
        a = read_cached_clip(both_caches["zarr"], zarr_rows[key])
        b = read_cached_clip(both_caches["wds"], wds_rows[key])
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_stock_readers_open_the_outputs(both_caches):
    rows = ok_rows(both_caches["zarr"])
    row = next(iter(rows.values()))
    group = zarr.open_group(str(both_caches["zarr"] / row["shard"]), mode="r")
    ours = read_cached_clip(both_caches["zarr"], row, ["depth"])["depth"]
    # depth is stored as log-depth codes + a per-clip log_min side array: decode what the stock reader gives.
    (depth_spec,) = [s for s in specs_from_json(row["fields"]) if s.name == "depth"]
    stock = {name: group[name][row["row"]] for name in ("depth", "depth__log_min")}
    np.testing.assert_array_equal(decode_field(depth_spec, stock), ours)

    wds_rows = ok_rows(both_caches["wds"])
    shards = sorted({r["shard"] for r in wds_rows.values()})
    seen = {}
    for shard in shards:
        for sample in wds.WebDataset(str(both_caches["wds"] / shard), shardshuffle=False).decode():
            stock = {"depth": sample.get("depth.npy", sample.get("depth.npy.gz")),
                     "depth__log_min": sample["depth__log_min.npy"]}
            seen[sample["__key__"]] = decode_field(depth_spec, stock)
    assert seen.keys() == wds_rows.keys()
    for key, depth in seen.items():
        np.testing.assert_array_equal(depth, read_cached_clip(both_caches["wds"], wds_rows[key], ["depth"])["depth"])

    for cache in both_caches.values():
        parts = sorted((cache / "manifests" / "clips").glob("part-*.parquet"))
        assert sum(pq.read_table(p).num_rows for p in parts) == 4
        samples = pq.read_table(cache / "manifests" / "samples.parquet")
        keys = set(samples["cache_key"].to_pylist())
        assert keys == set(ok_rows(cache)), "every sample points at a cached clip"
        summary = json.loads((cache / "summary.json").read_text())
        assert summary["clips"]["ok"] == 4
        stages = {"hash", "decode", "teacher", "teacher_encode", "encode", "write", "startup", "compute_wall"}
        assert set(summary["seconds"]) == stages and all(summary["seconds"][s] > 0 for s in stages), summary["seconds"]
        # CPU seconds of every stage (core-seconds), and per clip written: the totals over the 4 clips.
        core, per_clip = summary["core_seconds"], summary["core_seconds_per_clip"]
        assert set(core) == stages - {"startup"} and set(per_clip) == set(CLIP_STAGES), core
        for stage in CLIP_STAGES:
            assert core[stage] > 0 and per_clip[stage] == pytest.approx(core[stage] / 4, abs=1e-3), stage


def test_a_stage_timing_adds_its_seconds_however_it_ends():
    seconds = Seconds(decode=1.0)
    with seconds.timing("decode"):
        time.sleep(0.01)
    with pytest.raises(ValueError), seconds.timing("decode"):
        time.sleep(0.01)
        raise ValueError("a failed decode still took its time")
    assert 1.02 <= seconds["decode"] < 2.0 and set(seconds) == {"decode", "cpu/decode"}
    assert seconds.cpu()["decode"] < 0.01 and seconds.wall() == {"decode": seconds["decode"]}, "sleeping is no CPU"


def spin(cpu_seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < cpu_seconds:
        pass


def test_a_stage_counts_the_cpu_seconds_of_every_thread_of_its_process():
    """A decoder's own threads (decord's, torch's) are the stage's cores too: a thread spinning 0.2 s
    while the stage's thread waits for it counts 0.2 core-seconds."""
    seconds = Seconds()
    with seconds.timing("decode"):
        worker = threading.Thread(target=spin, args=(0.2,))
        worker.start()
        worker.join()
    assert 0.2 <= seconds.cpu()["decode"] < 0.2 + seconds["decode"]
    assert seconds.share(4).cpu()["decode"] == seconds.cpu()["decode"] / 4


def test_rerun_computes_nothing_and_new_videos_exactly(synthetic_set, ray_session, tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    copy_scenes(synthetic_set, videos, ["scene_0000", "scene_0001"])
    small = job(videos, cache, teacher=TeacherConfig(name="oracle", latent_dim=16))
    assert run_job(small)["clips"]["computed"] == 2
    listing = sorted(p.relative_to(cache) for p in (cache / "shards").rglob("*"))
    parts = sorted((cache / "manifests" / "clips").iterdir())

    again = run_job(small)
    assert again["clips"] == {"wanted": 2, "already_cached": 2, "computed": 0, "ok": 0, "failed": 0}
    assert sorted(p.relative_to(cache) for p in (cache / "shards").rglob("*")) == listing, "no shard written"
    assert sorted((cache / "manifests" / "clips").iterdir()) == parts, "no manifest part written"

    copy_scenes(synthetic_set, videos, ["scene_0002", "scene_0003"])
    more = run_job(small)
    assert more["clips"] == {"wanted": 4, "already_cached": 2, "computed": 2, "ok": 2, "failed": 0}
    assert len(ok_rows(cache)) == 4 and not duplicate_ok_keys(read_clips_table(cache))

    other_teacher = run_job(job(videos, cache, teacher=TeacherConfig(name="oracle", latent_dim=16, seed=1)))
    assert other_teacher["clips"]["computed"] == 4, "a different teacher id never reuses entries"


def test_bad_inputs_become_failed_rows_with_reasons(synthetic_set, ray_session, tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    copy_scenes(synthetic_set, videos, ["scene_0000", "scene_0001"])
    shutil.copy(TEST_VIDEOS / "corrupted.mp4", videos / "corrupted.mp4")
    shutil.copy(TEST_VIDEOS / "unordered.mov", videos / "unordered.mov")
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("this is not a video\n")
    (videos / "missing.mp4").symlink_to(videos / "deleted-long-ago.mp4")
    code = cache_main(["--videos", str(videos), "--out", str(cache), "--teacher", "l4p-tiny",
                       "--num-frames", "16", "--format", "zarr"])
    assert code == 0, "every clip ended ok or failed with its reason"
    rows = {Path(r["video_uri"]).name: r for r in current_clips(read_clips_table(cache)).values()}
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {"scene_0000.mp4", "scene_0001.mp4"}
    expected = {
        "corrupted.mp4": "decoding failed",
        "unordered.mov": "too short",
        "zero.mp4": "empty file",
        "notes.mp4": "not a video",
        "missing.mp4": "file not found",  # a dangling symlink
    }
    for name, reason in expected.items():
        assert rows[name]["status"] == "failed", name
        assert rows[name]["error"].startswith(reason), (name, rows[name]["error"])
        assert name in rows[name]["error"], "the reason names the file"
    summary = json.loads((cache / "summary.json").read_text())
    assert summary["clips"]["failed"] == 5 and sum(summary["failures_by_reason"].values()) == 5
    # Failed clips are not retried by a rerun (most failures are deterministic) ...
    assert run_job(job(videos, cache, teacher=TeacherConfig(name="l4p-tiny")))["clips"]["computed"] == 0
    # ... unless asked.
    retried = run_job(job(videos, cache, teacher=TeacherConfig(name="l4p-tiny"), retry_failed=True))
    assert retried["clips"]["computed"] == 5 and retried["clips"]["failed"] == 5


def test_a_teacher_output_that_does_not_fit_its_storage_fails_its_clip_by_name(synthetic_set, ray_session, tmp_path):
    """The teacher actor quantizes its outputs: a NaN in one clip's depth fails that clip at stage
    encode with the field named, and the other clip of the batch is cached."""
    from pipeline.teachers.oracle import OracleTeacher

    class NaNDepthOracle(OracleTeacher):  # defined here, so Ray ships it to the actor by value
        def predict(self, clips):
            outputs = super().predict(clips)
            for clip, output in zip(clips, outputs):
                if clip.video_path.endswith("scene_0001.mp4"):
                    output["depth"] = output["depth"].copy()
                    output["depth"][3, 10, 20] = np.nan
            return outputs

    videos, cache = tmp_path / "videos", tmp_path / "cache"
    copy_scenes(synthetic_set, videos, ["scene_0000", "scene_0001"])
    summary = run_job(job(videos, cache), NaNDepthOracle)
    assert summary["clips"]["ok"] == 1 and summary["clips"]["failed"] == 1
    rows = {Path(r["video_uri"]).name: r for r in current_clips(read_clips_table(cache)).values()}
    failed = rows["scene_0001.mp4"]
    assert (failed["status"], failed["stage"]) == ("failed", "encode")
    assert failed["error"] == "field 'depth': values expected finite, got 1 NaN and 0 inf values"
    assert rows["scene_0000.mp4"]["status"] == "ok"


def test_oracle_refuses_videos_without_ground_truth(ray_session, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(TEST_VIDEOS / "flipping_a_pancake.mkv", videos)
    summary = run_job(job(videos, tmp_path / "cache"))
    assert summary["clips"]["failed"] == 1
    (reason, examples), = summary["failure_examples"].items()
    assert reason.startswith("teacher: ") and summary["failures_by_reason"] == {reason: 1}
    assert "only knows synthetic scenes" in examples[0]["error"]


def _no_temporaries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if is_temporary(p)]


def test_sigkill_mid_job_then_rerun_finishes_exactly_once(synthetic_set, ray_session, tmp_path):
    """Kill the job (driver and its Ray) after its first commit; the rerun completes every clip
    exactly once and leaves no temporary or unreferenced shard."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(ROOT / "pipeline" / "cache_teacher.py"), "--videos", str(synthetic_set),
           "--out", str(cache), "--teacher", "oracle", "--format", "wds", "--clips-per-shard", "1",
           "--batch-size", "1", "--ray-num-cpus", "2", "--object-store-mb", "512"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    parts_dir = cache / "manifests" / "clips"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if parts_dir.exists() and any(parts_dir.glob("part-*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(ok_rows(cache))
    assert 1 <= committed < 4, "killed in the middle"

    summary = run_job(job(synthetic_set, cache, output=OutputConfig(format="wds", clips_per_shard=1)))
    assert summary["clips"]["already_cached"] == committed
    table = read_clips_table(cache)
    assert table.num_rows == 4 and not duplicate_ok_keys(table), "every clip exactly once"
    assert not _no_temporaries(cache)
    referenced = {r["shard"] for r in ok_rows(cache).values()}
    on_disk = {p.relative_to(cache).as_posix() for p in (cache / "shards" / "wds").iterdir()}
    assert referenced == on_disk, "no orphan shard, no missing shard"
    for row in ok_rows(cache).values():
        read_cached_clip(cache, row, ["depth"])  # verifies the checksum


def test_inspect_lists_and_renders_a_cached_clip(both_caches, tmp_path, capsys):
    from PIL import Image

    from student.inspect_cache import main as inspect_main

    cache = both_caches["wds"]
    rows = ok_rows(cache)
    assert inspect_main([str(cache)]) == 0
    listing = capsys.readouterr().out
    assert all(r["clip_id"] in listing for r in rows.values())
    key = sorted(rows)[0]
    out = tmp_path / "clip.png"
    assert inspect_main([str(cache), "--clip", key[:12], "--png", str(out)]) == 0
    picture = Image.open(out)
    assert picture.width > 5 * 160 and picture.height > 4 * 160, "5 columns (frames, depth, flow, mask, rays) x 4 rows"
    assert inspect_main([str(cache), "--pictures", "2"]) == 0
    assert len(list((cache / "pictures").glob("*.png"))) == 2
