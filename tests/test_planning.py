"""Planning at scale: remembered content hashes (re-read only what changed), a new teacher re-plans
everything, and the vectorized clips-table state plans a 20k-clip rerun correctly."""
from __future__ import annotations

import datetime as dt
import os

from manifests.cache_key import file_sha256
from manifests.clips_table import (PLAN_COLUMNS, current_clips, current_status, read_clips_table,
                                   write_clips_part)
from manifests.content_hash import HASHES_FILE, ContentHashes
from manifests.planner import plan_missing
from pipeline.sources import build_requests, find_videos

SAMPLING = {"num_frames": 16}
SPEC = '[{"name": "depth"}]'


class CountingHasher:
    """file_sha256 that remembers which files it read: a cache hit must not appear here."""

    def __init__(self):
        self.read: list[str] = []

    def __call__(self, path) -> str:
        self.read.append(os.fspath(path))
        return file_sha256(path)


def make_videos(root, count: int) -> list:
    (root / "sub").mkdir(parents=True)
    for i in range(count):
        (root / ("sub" if i % 2 else "") / f"v{i}.mp4").write_bytes(f"video {i}".encode() * 10)
    return find_videos(root)


def key(request) -> str:
    return request.cache_key


def requests_of(root, cache, teacher="teacher-a"):
    hasher = CountingHasher()
    hashes = ContentHashes.of_cache(cache, hasher)
    requests = build_requests(find_videos(root), root, SAMPLING, teacher, SPEC, hashes.sha256)
    hashes.save()
    return requests, hasher.read


def ok_rows(requests, teacher="teacher-a") -> list[dict]:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return [{"cache_key": r.cache_key, "clip_id": r.clip_id, "video_uri": r.video_uri, "sampling": "{}",
             "teacher_id": teacher, "status": "ok", "created_at": created} for r in requests]


def test_remembered_hashes_are_not_re_read_and_give_the_same_keys(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 6)
    first, read = requests_of(videos, cache)
    assert len(read) == 6 and (cache / HASHES_FILE).is_file()
    again, read = requests_of(videos, cache)  # a new process: the hashes come from the Parquet file
    assert read == [], "unchanged videos must not be re-read"
    assert [r.cache_key for r in again] == [r.cache_key for r in first]
    assert [r.video_sha256 for r in again] == [file_sha256(r.video_uri) for r in again]


def test_changed_bytes_under_the_same_path_are_re_read(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 4)
    before = {r.video_uri: r for r in requests_of(videos, cache)[0]}
    same_size, longer = videos / "v0.mp4", videos / "sub" / "v1.mp4"
    stat = same_size.stat()
    same_size.write_bytes(same_size.read_bytes().upper())  # same size, new bytes
    os.utime(same_size, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock must not hide it
    longer.write_bytes(longer.read_bytes() + b"!")
    after, read = requests_of(videos, cache)
    changed = {str(same_size), str(longer)}
    assert sorted(read) == sorted(changed)
    for r in after:
        assert (r.cache_key != before[r.video_uri].cache_key) == (r.video_uri in changed)
        assert r.video_sha256 == file_sha256(r.video_uri)
    assert requests_of(videos, cache)[1] == [], "the new hashes are remembered in turn"


def test_a_new_teacher_re_plans_everything_without_re_reading_videos(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 5)
    requests, _ = requests_of(videos, cache, "teacher-a")
    write_clips_part(cache, "s0", ok_rows(requests))
    status = current_status(read_clips_table(cache, PLAN_COLUMNS))
    assert plan_missing(requests, key, status) == []
    other, read = requests_of(videos, cache, "teacher-b")
    assert read == [], "the content hash is the file's, whatever the teacher"
    assert {r.video_sha256 for r in other} == {r.video_sha256 for r in requests}
    assert plan_missing(other, key, status) == other, "no entry of teacher-a serves teacher-b"


def test_an_unreadable_hash_cache_is_rebuilt(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 2)
    (cache / HASHES_FILE).parent.mkdir(parents=True)
    (cache / HASHES_FILE).write_bytes(b"not parquet")
    requests, read = requests_of(videos, cache)
    assert len(read) == 2 and requests_of(videos, cache)[1] == []


def test_missing_video_is_a_failed_request_not_a_crash(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 1)
    (videos / "gone.mp4").symlink_to(videos / "nowhere.mp4")
    requests, _ = requests_of(videos, cache)
    gone = next(r for r in requests if r.video_uri.endswith("gone.mp4"))
    assert gone.video_sha256 is None and "file not found" in gone.read_error


def test_planning_20k_clips_from_the_table_state(tmp_path):
    """The rerun of a 20k-clip cache: done keys skipped, failed not retried unless asked, new ones planned.
    (Timings are bench/planning.py's business; this checks the answer.)"""
    n = 20_000
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    base = {"clip_id": "c", "video_uri": "/v.mp4", "sampling": "{}", "teacher_id": "t"}
    rows = []
    for i in range(n):
        status = "failed" if i % 20 == 0 else "ok"
        rows.append({**base, "cache_key": f"k{i}", "status": status, "created_at": created})
    # History: k1 failed then ok (ok wins), k20 failed twice (latest kept), k40 failed then ok in a later part.
    rows += [{**base, "cache_key": "k1", "status": "failed", "created_at": created + dt.timedelta(hours=1)},
             {**base, "cache_key": "k20", "status": "failed", "error": "later", "created_at": created + dt.timedelta(hours=1)},
             {**base, "cache_key": "k40", "status": "ok", "created_at": created + dt.timedelta(hours=2)}]
    for part, start in enumerate(range(0, len(rows), 1000)):
        write_clips_part(tmp_path, f"s{part:03d}", rows[start:start + 1000])
    status = current_status(read_clips_table(tmp_path, PLAN_COLUMNS))
    assert len(status) == n
    assert status["k1"] == "ok" and status["k20"] == "failed" and status["k40"] == "ok"
    wanted = [f"k{i}" for i in range(n + 500)] + ["k5", "new-dup"] * 2
    todo = plan_missing(wanted, lambda k: k, status)
    assert todo == [f"k{i}" for i in range(n, n + 500)] + ["new-dup"]
    retried = plan_missing(wanted, lambda k: k, status, retry_failed=True)
    failed = [f"k{i}" for i in range(0, n, 20) if i != 40]
    assert retried == failed + todo
    # The vectorized state is the full-row state's.
    full = current_clips(read_clips_table(tmp_path))
    assert {k: r["status"] for k, r in full.items()} == status
    assert full["k20"]["error"] == "later"
