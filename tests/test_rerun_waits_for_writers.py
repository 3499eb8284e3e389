"""A rerun of the caching job (run_job itself, not only its helper) touches nothing while a shard
writer of a killed job is alive: on a cluster Ray reaps a dead driver's writer actors only later, and
such a writer may still commit a shard that the rerun's clean-up would otherwise delete as an orphan."""
from __future__ import annotations

import subprocess
import sys
import threading

from conftest import ROOT
from pipeline.cache_dir import CacheDir
from pipeline.config import JobConfig
from pipeline.runner import run_job

HELD_SECONDS = 3.0  # how long the rerun is watched while the writer lives; it must not move


def test_run_job_blocks_while_a_killed_jobs_writer_is_alive(tmp_path):
    cache, videos = tmp_path / "cache", tmp_path / "videos"
    videos.mkdir()  # nothing to compute: without the wait, the rerun would finish in well under a second
    CacheDir(cache).create()
    # What the killed job's writer just committed; its manifest part is still to come.
    shard = cache / "shards" / "wds" / "killed-run-w0-00000.tar"
    shard.write_bytes(b"a committed shard whose manifest part is not written yet")
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.cache_dir import CacheDir; "
         "held = CacheDir(sys.argv[1]).hold_as_writer(); print('held', flush=True); time.sleep(120)", str(cache)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    summaries = []
    rerun = threading.Thread(target=lambda: summaries.append(run_job(JobConfig(videos=str(videos), out=str(cache)))))
    try:
        assert writer.stdout.readline().strip() == "held"
        rerun.start()
        rerun.join(timeout=HELD_SECONDS)
        assert rerun.is_alive() and not summaries, "run_job went on while a writer of the killed job was alive"
        assert shard.exists(), "the clean-up ran while the writer could still write the shard's manifest part"
        assert not (cache / "summary.json").exists()
    finally:
        writer.kill()
        writer.wait()
    rerun.join(timeout=60)
    assert not rerun.is_alive() and summaries, "run_job goes on once the writer's process is gone"
    assert summaries[0]["clips"]["wanted"] == 0
    assert not shard.exists(), "then the shard, which no manifest part references, is cleaned"
