"""Compaction of the clips table: parts folded into large files sorted by cache_key, read together
with the parts written since, each row once whatever point a compaction was killed at; the job's
end compacts; a repair drops rows of given keys."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from conftest import ROOT, copy_scenes
from manifests.clips_table import CLIPS_DIR, current_clips, folded_names, read_clips_table, write_clips_part
from manifests.compaction import compact_clips, drop_clips
from pipeline.cache_dir import CacheDir
from pipeline.compact import main as compact_main
from shards.atomic import is_temporary, temporary_path

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def key(i: int) -> str:
    return hashlib.sha256(f"clip {i}".encode()).hexdigest()


def make_rows(count: int, distinct: int, start: int = 0) -> list[dict]:
    """`count` rows over `distinct` keys (a key's later rows are its history), each row told apart by
    its clip_id and its time; every 5th failed."""
    rows = []
    for n in range(start, start + count):
        failed = n % 5 == 0
        rows.append({"cache_key": key(n % distinct), "clip_id": f"row{n:06d}", "video_uri": f"/videos/v{n % distinct}.mp4",
                     "video_sha256": key(-n), "sampling": '{"num_frames": 16}', "teacher_id": "l4p:test",
                     "status": "failed" if failed else "ok", "stage": "decode" if failed else None,
                     "error": f"decoding failed at frame {n % 16}" if failed else None,
                     "format": None if failed else "zarr", "shard": None if failed else f"shards/zarr/s{n // 8}.zarr",
                     "row": None if failed else n % 8, "timestamps": [k / 30 for k in range(16)],
                     "checksums": None if failed else {"depth": key(n), "frames": key(n + 1)},
                     "created_at": T0 + dt.timedelta(seconds=n)})
    return rows


def write_parts(root: Path, rows: list[dict], per_part: int, prefix: str = "s") -> list[str]:
    names = []
    for start in range(0, len(rows), per_part):
        names.append(write_clips_part(root, f"{prefix}{start:06d}", rows[start:start + per_part]).name)
    return names


def view(root: Path) -> list[tuple]:
    """The table as readers see it: (cache_key, clip_id) per row, in read order."""
    table = read_clips_table(root, ("cache_key", "clip_id"))
    return list(zip(table["cache_key"].to_pylist(), table["clip_id"].to_pylist()))


def as_view(rows: list[dict]) -> list[tuple]:
    return [(r["cache_key"], r["clip_id"]) for r in rows]


def by_key(rows: list[dict]) -> list[dict]:
    """The compacted order, computed independently: Python's sort is stable, so equal keys keep the
    table order."""
    return sorted(rows, key=lambda r: r["cache_key"])


def listing(root: Path) -> list[str]:
    return sorted(os.listdir(root / CLIPS_DIR))


def test_parts_fold_into_one_sorted_file_that_stock_readers_open(tmp_path):
    rows = make_rows(600, distinct=450)
    parts = write_parts(tmp_path, rows, per_part=20)
    before = read_clips_table(tmp_path)
    result = compact_clips(tmp_path)
    assert listing(tmp_path) == ["compacted-00000001.parquet"] == [result.path.name]
    assert sorted(result.folded) == parts and result.rows == 600 and result.dropped == 0
    assert view(tmp_path) == as_view(by_key(rows))
    assert read_clips_table(tmp_path).sort_by("clip_id").equals(before.sort_by("clip_id")), "every value kept"
    assert current_clips(read_clips_table(tmp_path)) == current_clips(before)
    stock = pq.read_table(result.path)  # a stock reader of the file alone
    assert stock["clip_id"].to_pylist() == [r["clip_id"] for r in by_key(rows)]
    assert sorted(folded_names(result.path)) == parts


def test_too_few_parts_or_nothing_new_leave_the_table_as_it_is(tmp_path):
    write_parts(tmp_path, make_rows(90, distinct=90), per_part=30)
    before = listing(tmp_path)
    assert compact_clips(tmp_path, min_parts=4).path is None and listing(tmp_path) == before
    assert compact_clips(tmp_path, min_parts=3).path is not None
    after = listing(tmp_path)
    assert compact_clips(tmp_path).path is None and listing(tmp_path) == after, "no parts: nothing to fold"


def test_parts_written_since_are_read_after_and_compacted_sizes_double_going_back(tmp_path):
    first, second, third = make_rows(100, 100), make_rows(30, 50, start=100), make_rows(70, 60, start=130)
    write_parts(tmp_path, first, per_part=10, prefix="a")
    compact_clips(tmp_path)
    write_parts(tmp_path, second, per_part=10, prefix="b")
    assert view(tmp_path) == as_view(by_key(first) + second), "compacted files first, then the parts since"
    c2 = compact_clips(tmp_path)
    assert c2.folded == tuple(f"part-b{i:06d}.parquet" for i in (0, 10, 20)), "100 rows > 30: the first file stays"
    assert listing(tmp_path) == ["compacted-00000001.parquet", "compacted-00000002.parquet"]
    assert view(tmp_path) == as_view(by_key(first) + by_key(second))
    write_parts(tmp_path, third, per_part=10, prefix="c")
    c3 = compact_clips(tmp_path)
    # 70 new rows take the 30-row file (30 <= 70), then the 100-row one (100 <= 100).
    assert c3.folded[:2] == ("compacted-00000001.parquet", "compacted-00000002.parquet") and c3.rows == 200
    assert listing(tmp_path) == ["compacted-00000003.parquet"]
    assert view(tmp_path) == as_view(by_key(by_key(first) + by_key(second) + third))


def test_a_merge_in_little_memory_keeps_every_row_and_equal_keys_in_table_order(tmp_path):
    """Runs of a few parts, merged 64 rows per input at a time: a key's rows span batches and inputs."""
    rows = make_rows(1500, distinct=40)
    write_parts(tmp_path, rows[:700], per_part=25, prefix="a")
    compact_clips(tmp_path)
    write_parts(tmp_path, rows[700:], per_part=25, prefix="b")
    result = compact_clips(tmp_path, memory_bytes=20_000)
    assert result.rows == 1500 and listing(tmp_path) == ["compacted-00000002.parquet"]
    assert view(tmp_path) == as_view(by_key(by_key(rows[:700]) + rows[700:]))
    assert pq.read_metadata(result.path).num_row_groups == 1


def test_a_compaction_killed_after_its_commit_counts_nothing_twice(tmp_path):
    rows = make_rows(200, distinct=150)
    write_parts(tmp_path, rows, per_part=20)
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / CLIPS_DIR, saved)
    compact_clips(tmp_path)
    for name in os.listdir(saved):  # as if killed before removing what it folded
        shutil.copy(saved / name, tmp_path / CLIPS_DIR / name)
    assert view(tmp_path) == as_view(by_key(rows))
    # ... and a later compaction that folded the first one, killed the same way: its inputs' inputs
    # are still folded away (every compacted file on disk counts for what it holds).
    more = make_rows(300, distinct=300, start=200)
    write_parts(tmp_path, more, per_part=50, prefix="t")
    first = tmp_path / CLIPS_DIR / "compacted-00000001.parquet"
    shutil.copy(first, saved / first.name)
    result = compact_clips(tmp_path)
    assert result.removed_leftovers == 10 and "compacted-00000001.parquet" in result.folded
    shutil.copy(saved / first.name, first)
    for name in os.listdir(saved):
        shutil.copy(saved / name, tmp_path / CLIPS_DIR / name)
    expected = as_view(by_key(by_key(rows) + more))
    assert view(tmp_path) == expected
    assert compact_clips(tmp_path).removed_leftovers == 11
    assert listing(tmp_path) == ["compacted-00000002.parquet"] and view(tmp_path) == expected


def test_temporaries_of_a_killed_compaction_are_ignored_then_removed(tmp_path):
    rows = make_rows(100, distinct=100)
    write_parts(tmp_path, rows, per_part=25)
    clips = tmp_path / CLIPS_DIR
    half = temporary_path(clips / "compacted-00000001.parquet")
    pq.write_table(read_clips_table(tmp_path), half)  # a merge's output before its rename
    shutil.copy(half, temporary_path(clips / "run.parquet"))
    assert view(tmp_path) == as_view(rows)
    result = compact_clips(tmp_path)
    assert result.removed_leftovers == 2 and not any(is_temporary(n) for n in listing(tmp_path))
    assert view(tmp_path) == as_view(by_key(rows))


def test_drop_clips_removes_the_rows_of_given_keys_from_compacted_files_and_parts(tmp_path):
    rows = make_rows(200, distinct=120)
    write_parts(tmp_path, rows[:150], per_part=30)
    compact_clips(tmp_path)
    write_parts(tmp_path, rows[150:], per_part=25, prefix="n")
    gone = {key(3), key(7), key(160 % 120)}  # history rows included; key(40) lives in a part too
    assert drop_clips(tmp_path, [key(9999)]).path is None, "no file holds it: nothing rewritten"
    result = drop_clips(tmp_path, sorted(gone))
    table_order = by_key(rows[:150]) + rows[150:]  # the compacted file, then the parts
    assert result.dropped == sum(r["cache_key"] in gone for r in rows) > 3
    assert view(tmp_path) == as_view([r for r in by_key(table_order) if r["cache_key"] not in gone])
    assert listing(tmp_path) == ["compacted-00000002.parquet"]


def test_the_cli_refuses_a_locked_cache_and_a_directory_that_is_not_one(tmp_path):
    write_parts(tmp_path, make_rows(10, distinct=10), per_part=5)
    with CacheDir(tmp_path).lock():
        assert compact_main([str(tmp_path)]) == 1
    assert compact_main([str(tmp_path / "nothing")]) == 1 and not (tmp_path / "nothing").exists()
    assert compact_main([str(tmp_path)]) == 0 and listing(tmp_path) == ["compacted-00000001.parquet"]


def test_compaction_killed_at_random_points_loses_and_duplicates_nothing(tmp_path):
    """SIGKILL of `python -m pipeline.compact` (in little memory: runs of 256 parts, merged 64 rows
    per input at a time) at a random moment after one of its steps: a run written, the merge begun,
    the compacted file committed. Readers see either the parts or the compacted file, each row once,
    and a rerun finishes the compaction."""
    rows = make_rows(3600, distinct=3000)
    original = tmp_path / "original"
    write_parts(original, rows, per_part=12)
    before, after = as_view(rows), as_view(by_key(rows))
    steps = {"a run written": lambda names: any(n.startswith("run.parquet.tmp-") for n in names),
             "the merge begun": lambda names: any(n.startswith("compacted-00000001.parquet.tmp-") for n in names),
             "committed": lambda names: "compacted-00000001.parquet" in names}
    rng = np.random.default_rng(20261201)
    interrupted = 0
    for trial in range(6):
        step = list(steps)[trial % 3]
        cache = tmp_path / f"trial-{trial}"
        shutil.copytree(original, cache)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.compact", "--memory-mb", "0", str(cache)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not steps[step](listing(cache)):
            time.sleep(0.001)
        time.sleep(float(rng.uniform(0, 0.05)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = listing(cache)
        interrupted += any(is_temporary(n) for n in left) or ("compacted-00000001.parquet" in left and len(left) > 1)
        assert view(cache) in (before, after), f"killed after {step}: {len(view(cache))} rows seen"
        compact_clips(cache)  # the rerun (the command's code, without starting Python again)
        assert view(cache) == after and listing(cache) == ["compacted-00000001.parquet"]
    assert interrupted >= 3, "trials must kill the compaction in the middle"


def test_the_job_compacts_its_parts_at_its_end(synthetic_set, ray_session, tmp_path, monkeypatch):
    from pipeline import runner
    from pipeline.config import JobConfig, OutputConfig, TeacherConfig
    from pipeline.sampling import SamplingConfig
    from shards.cache_reader import read_cached_clip

    monkeypatch.setattr(runner, "JOB_MIN_PARTS", 2)
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    copy_scenes(synthetic_set, videos, ["scene_0000", "scene_0001"])
    config = JobConfig(videos=str(videos / "videos"), out=str(cache), sampling=SamplingConfig(num_frames=16),
                       teacher=TeacherConfig(name="oracle", latent_dim=16),
                       output=OutputConfig(format="wds", clips_per_shard=1))
    summary = runner.run_job(config)
    assert summary["clips"]["ok"] == 2
    assert summary["manifest_compaction"]["files_folded"] == 2 and summary["manifest_compaction"]["rows"] == 2
    assert listing(cache) == ["compacted-00000001.parquet"]
    again = runner.run_job(config)  # the rerun's clean-up keeps the shards the compacted file names
    assert again["clips"]["computed"] == 0 and again["manifest_compaction"]["file"] is None
    rows = current_clips(read_clips_table(cache))
    assert len(rows) == 2
    for row in rows.values():
        read_cached_clip(cache, row, ["depth"])  # the shard is there and its checksums hold


def test_a_reader_that_listed_the_files_just_before_a_compaction_lists_them_again(tmp_path, monkeypatch):
    """The race of a reader (not under the cache lock: a trainer, the inspect CLI) with a compaction
    that removes the parts it listed: the read starts over and sees the compacted file, each row once."""
    import manifests.clips_table as clips_table

    rows = make_rows(60, distinct=60)
    write_parts(tmp_path, rows, per_part=20)
    stale = clips_table.manifest_files(tmp_path)  # listed ...
    compact_clips(tmp_path)  # ... then the parts were folded and removed
    listings = []

    def listed_before_then_now(root):
        listings.append(root)
        return stale if len(listings) == 1 else real_listing(root)

    real_listing = clips_table.manifest_files
    monkeypatch.setattr(clips_table, "manifest_files", listed_before_then_now)
    assert view(tmp_path) == as_view(by_key(rows)) and len(listings) == 2
