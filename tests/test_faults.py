"""Faults the caching job meets at scale, each produced for real: a teacher actor's process killed
mid-batch, the job's driver SIGKILLed at random points then rerun (and a second job started on the
same cache meanwhile), a flipped byte in a shard, a disk that fills up."""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import ROOT, copy_scenes
from manifests.clips_table import current_clips, duplicate_ok_keys, read_clips_table
from pipeline.cache_dir import CacheDir, CacheLockedError
from pipeline.cache_teacher import main as cache_main
from pipeline.config import JobConfig, OutputConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from shards.atomic import is_temporary
from shards.cache_reader import read_cached_clip
from shards.integrity import ShardCorruptError
from test_scrub import clip_byte_range, flip_byte

SMALL = TeacherConfig(name="oracle", latent_dim=16)


def job(videos: Path, out: Path, fmt: str = "wds", **overrides) -> JobConfig:
    return JobConfig(videos=str(videos), out=str(out), sampling=SamplingConfig(num_frames=16),
                     teacher=overrides.pop("teacher", SMALL),
                     output=OutputConfig(format=fmt, clips_per_shard=overrides.pop("clips_per_shard", 1)),
                     **overrides)


def assert_consistent(cache: Path, expected_ok: int | None = None) -> dict[str, dict]:
    """Each cache_key once, every ok row's shard on disk and its clip readable (checksums verified).
    (Orphan shards and temporaries are the rerun's to remove: checked where a rerun happened.)"""
    table = read_clips_table(cache)
    assert not duplicate_ok_keys(table), "a clip stored twice"
    rows = current_clips(table)
    ok = {k: r for k, r in rows.items() if r["status"] == "ok"}
    if expected_ok is not None:
        assert len(ok) == expected_ok and len(rows) == expected_ok
    referenced = {r["shard"] for r in ok.values()}
    on_disk = {p.relative_to(cache).as_posix() for fmt in ("zarr", "wds")
               for p in (cache / "shards" / fmt).glob("*") if not is_temporary(p)}
    assert referenced <= on_disk, f"manifest rows point at missing shards: {referenced - on_disk}"
    for row in ok.values():
        read_cached_clip(cache, row, ["depth", "timestamps"])
    return ok


def temporaries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if is_temporary(p)]


def copy_videos(synthetic_set: Path, tmp_path: Path, scenes: list[str]) -> Path:
    copy_scenes(synthetic_set, tmp_path, scenes)
    return tmp_path / "videos"


# -- a teacher actor killed mid-batch -------------------------------------------------------------

def _kill_first_predicting_teacher(stop: threading.Event, killed: list) -> None:
    """SIGKILL the first TeacherActor process seen executing predict. Only this test's Ray is
    searched: the session's processes are descendants of this pytest process."""
    me = psutil.Process()
    while not stop.is_set():
        for p in me.children(recursive=True):
            try:
                title = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            # Ray titles a worker process after the method it is executing.
            if title.startswith("ray::TeacherActor.predict"):
                p.send_signal(signal.SIGKILL)
                killed.append((p.pid, title))
                return
        time.sleep(0.005)


def test_killed_teacher_actor_is_restarted_and_its_batch_redone(synthetic_set, ray_session, tmp_path):
    videos = copy_videos(synthetic_set, tmp_path, ["scene_0000", "scene_0001"])
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_predicting_teacher, args=(stop, killed), daemon=True)
    killer.start()
    try:
        # l4p-tiny: a real forward that lasts long enough (~1 s per clip) to be caught mid-batch.
        summary = run_job(job(videos, tmp_path / "cache", teacher=TeacherConfig(name="l4p-tiny", batch_size=2),
                              clips_per_shard=2))
    finally:
        stop.set()
        killer.join()
    assert killed, "no teacher was caught in predict: the fault was not produced"
    assert not psutil.pid_exists(killed[0][0])
    assert summary["clips"] == {"wanted": 2, "already_cached": 0, "computed": 2, "ok": 2, "failed": 0}, \
        "the killed batch's clips were resubmitted and came out ok, once"
    ok = assert_consistent(tmp_path / "cache", expected_ok=2)
    assert len(read_clips_table(tmp_path / "cache")) == 2, "one row per clip: nothing written twice"
    assert len({r["shard"] for r in ok.values()}) == 1


# -- the driver SIGKILLed at random points, then rerun ---------------------------------------------

def _job_process(videos: Path, cache: Path, fmt: str, log_path: Path) -> subprocess.Popen:
    """The job as a user runs it, joined to this session's Ray like a job on a shared cluster: killing
    the driver leaves its actors to be reaped by Ray, as on a real cluster."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, str(ROOT / "pipeline" / "cache_teacher.py"), "--videos", str(videos), "--out", str(cache),
           "--teacher", "oracle", "--latent-dim", "16", "--format", fmt, "--clips-per-shard", "1",
           "--batch-size", "1"]
    return subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _second_job_refused(synthetic_set: Path, cache: Path, first: subprocess.Popen, caplog) -> None:
    """A second job on the cache of a running one refuses, naming the holder, and touches nothing."""
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = cache_main(["--videos", str(synthetic_set), "--out", str(cache), "--teacher", "oracle",
                           "--latent-dim", "16", "--format", "wds"])
    assert code == 1
    (message,) = [r.getMessage() for r in caplog.records if r.name == "p4d.cache_teacher"]
    assert f"another caching job (pid {first.pid} on " in message and str(cache) in message


def test_driver_killed_at_random_points_then_rerun(synthetic_set, ray_session, tmp_path, caplog):
    """SIGKILL of the driver alone, as on a cluster: its actors live on until Ray reaps them, and the
    rerun must neither lose nor duplicate a clip. In the first trial a second job is started on the
    cache while the first holds it (the cheapest moment to check the lock: a job is running)."""
    rng = np.random.default_rng(20261127)
    killed_mid_job = 0
    for trial, fmt in enumerate(["wds", "zarr"]):
        cache = tmp_path / f"cache-{trial}"
        parts_dir = cache / "manifests" / "clips"
        # A random point: after 0-2 committed manifest parts (of 4), plus 0-300 ms.
        after_parts, extra = int(rng.integers(0, 3)), float(rng.uniform(0, 0.3))
        proc = _job_process(synthetic_set, cache, fmt, tmp_path / f"job-{trial}.log")
        started = _wait_for(lambda: (cache / "config.yaml").exists(), proc, timeout=120)
        assert started, (tmp_path / f"job-{trial}.log").read_text()[-3000:]
        if trial == 0:
            _second_job_refused(synthetic_set, cache, proc, caplog)
        reached = _wait_for(lambda: len(list(parts_dir.glob("part-*.parquet"))) >= after_parts, proc, timeout=120)
        time.sleep(extra)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(current_clips(read_clips_table(cache)))
        killed_mid_job += reached and done_before < 4

        summary = run_job(job(synthetic_set, cache, fmt))
        assert summary["clips"]["already_cached"] == done_before, "committed clips are kept, not redone"
        assert summary["clips"]["computed"] == 4 - done_before
        ok = assert_consistent(cache, expected_ok=4)
        assert not temporaries(cache), "no orphan temporary"
        on_disk = {p.relative_to(cache).as_posix() for p in (cache / "shards" / fmt).iterdir()}
        assert on_disk == {r["shard"] for r in ok.values()}, "each shard referenced, none orphaned"
    assert killed_mid_job >= 1, "a trial must kill the job in the middle"


def test_rerun_waits_for_the_writers_of_a_killed_job(tmp_path):
    """A writer process of a killed job (alive until Ray reaps it) holds the writers' lock: a rerun
    does not clean or write until that process is gone."""
    cache = CacheDir(tmp_path)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.cache_dir import CacheDir; "
         "held = CacheDir(sys.argv[1]).hold_as_writer(); print('held', flush=True); time.sleep(120)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "held"
        with pytest.raises(CacheLockedError, match="shard writers of an interrupted job still hold"):
            cache.wait_for_writers(timeout=0.5)
    finally:
        writer.kill()
        writer.wait()
    start = time.monotonic()
    cache.wait_for_writers(timeout=10)
    assert time.monotonic() - start < 1, "free as soon as the writer's process is gone"


# -- a flipped byte --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_clip_caches(synthetic_set, ray_session, tmp_path_factory) -> dict[str, Path]:
    """A cache of one clip per format (never modify: copy)."""
    root = tmp_path_factory.mktemp("one-clip")
    videos = copy_videos(synthetic_set, root, ["scene_0000"])
    caches = {fmt: root / fmt for fmt in ("zarr", "wds")}
    for fmt, cache in caches.items():
        run_job(job(videos, cache, fmt))
    return caches


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_flipped_byte_is_reported_with_shard_and_clip(one_clip_caches, tmp_path, fmt):
    cache = tmp_path / "cache"
    shutil.copytree(one_clip_caches[fmt], cache)
    (row,) = current_clips(read_clips_table(cache)).values()
    path, offset, size = clip_byte_range(cache, row, "latents")
    # The middle of the field's bytes: array data, past any header.
    flip_byte(path, offset + size // 2)
    with pytest.raises(ShardCorruptError) as error:
        read_cached_clip(cache, row)
    e = error.value
    assert e.path == str(cache / row["shard"]) and e.clip_id == row["clip_id"] and e.cache_key == row["cache_key"]
    assert e.field == "latents"
    assert str(cache / row["shard"]) in str(e) and row["clip_id"] in str(e)
    # Intact across processes (a loader worker raises it in the trainer): our own object, not foreign data.
    assert str(pickle.loads(pickle.dumps(e))) == str(e)
    # The damage is local: the clip's other fields still read and verify.
    read_cached_clip(cache, row, ["depth", "frames", "timestamps"])


# -- the disk fills up ------------------------------------------------------------------------------

def _mount_tmpfs(directory: Path, size_bytes: int) -> None:
    directory.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a size-limited tmpfs needs CAP_SYS_ADMIN (mount said: {done.stderr.strip()})")


def test_disk_full_ends_the_job_clearly_and_leaves_a_consistent_cache(synthetic_set, one_clip_caches, tmp_path,
                                                                    caplog):
    """A real full disk: a tmpfs of a few clips' size, so writes fail with ENOSPC from the kernel."""
    per_clip = sum(p.stat().st_size for p in one_clip_caches["wds"].rglob("*") if p.is_file())

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, int(2.5 * per_clip))  # room for two of the four clips
    try:
        cache = disk / "cache"
        with caplog.at_level(logging.ERROR):
            code = cache_main(["--videos", str(synthetic_set), "--out", str(cache), "--teacher", "oracle",
                               "--latent-dim", "16", "--format", "wds", "--clips-per-shard", "1",
                               "--batch-size", "1"])
        assert code == 1, "the job ends with an error, not with a success that lost clips"
        (message,) = [r.getMessage() for r in caplog.records if r.name == "p4d.cache_teacher"]
        assert "disk is full" in message and "No space left on device" in message and str(cache) in message
        ok = assert_consistent(cache)
        assert 1 <= len(ok) < 4, "stopped in the middle, what was committed before is intact"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
