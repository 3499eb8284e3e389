"""Planning at scale, in columns: remembered content hashes (re-read only what changed), keys computed
for many videos at once, annotation paths resolved a folder at a time, and the plan (what is missing)
matched against the clips table, compacted or not."""
from __future__ import annotations

import datetime as dt
import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.cache_key import DIGEST, cache_keys, compute_cache_key, digests_of_hex, file_sha256, hex_digests
from manifests.clips_table import current_clips, read_clips_table, write_clips_part
from manifests.compaction import compact_clips
from manifests.content_hash import HASHES_FILE, HASHES_SCHEMA, IDENTITIES_SCHEMA, ContentHashes, file_stats
from manifests.planner import contains, missing_clips, unique_clips
from manifests.schemas import CLIP_REQUESTS_SCHEMA, SPANNED_REQUESTS_SCHEMA
from pipeline.sources import (build_requests, clip_requests, concat_requests, distinct_spans, find_videos,
                              keyed_requests, resolve_all_inside, resolve_inside)

SAMPLING = {"num_frames": 16}
SPEC = '[{"name": "depth"}]'


class CountingHasher:
    """file_sha256 that remembers which files it read: a cache hit must not appear here."""

    def __init__(self):
        self.read: list[str] = []

    def __call__(self, path) -> str:
        self.read.append(os.fspath(path))
        return file_sha256(path)


def make_videos(root, count: int) -> list[str]:
    (root / "sub").mkdir(parents=True)
    for i in range(count):
        (root / ("sub" if i % 2 else "") / f"v{i}.mp4").write_bytes(f"video {i}".encode() * 10)
    return find_videos(root)


def requests_of(root, cache, teacher="teacher-a"):
    hasher = CountingHasher()
    hashes = ContentHashes.of_cache(cache, hasher)
    requests = clip_requests(build_requests(find_videos(root), root, SAMPLING, teacher, SPEC, hashes))
    hashes.save()
    return requests, hasher.read


def ok_rows(requests, teacher="teacher-a") -> list[dict]:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return [{"cache_key": r.cache_key, "clip_id": r.clip_id, "video_uri": r.video_uri, "sampling": "{}",
             "teacher_id": teacher, "status": "ok", "created_at": created} for r in requests]


def wanted(keys: list[str]) -> pa.Table:
    """A requests table of the given hex cache keys (the other columns name the key)."""
    return pa.table([pa.array([f"/v/{k}.mp4" for k in keys]), pa.array(keys), pa.nulls(len(keys), pa.binary(32)),
                     pa.nulls(len(keys), pa.string()), digests_of_hex(pa.array(keys), str)],
                    schema=CLIP_REQUESTS_SCHEMA)


def hex_key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_remembered_hashes_are_not_re_read_and_give_the_same_keys(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 6)
    first, read = requests_of(videos, cache)
    assert len(read) == 6 and (cache / HASHES_FILE).is_file()
    again, read = requests_of(videos, cache)  # a new process: the hashes come from the Parquet file
    assert read == [], "unchanged videos must not be re-read"
    assert again == first
    for r in again:  # the columns' keys are the single-video function's, on the file's own bytes
        assert r.video_sha256 == file_sha256(r.video_uri)
        assert r.cache_key == compute_cache_key(f"sha256:{r.video_sha256}", SAMPLING, "teacher-a", SPEC)
    assert {r.clip_id for r in again} == {f"{n}-{k}" for n, k in
                                          ((os.path.relpath(r.video_uri, videos)[:-4], r.cache_key[:8]) for r in again)}
    stored = pq.read_table(cache / HASHES_FILE)  # a stock reader; sorted by path, hex as before
    assert stored["path"].to_pylist() == sorted(r.video_uri for r in again)
    assert dict(zip(stored["path"].to_pylist(), stored["sha256"].to_pylist())) == {
        r.video_uri: r.video_sha256 for r in again}


def test_changed_bytes_under_the_same_path_are_re_read(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 4)
    before = {r.video_uri: r for r in requests_of(videos, cache)[0]}
    same_size, longer = videos / "v0.mp4", videos / "sub" / "v1.mp4"
    stat = same_size.stat()
    same_size.write_bytes(same_size.read_bytes().upper())  # same size, new bytes
    os.utime(same_size, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock must not hide it
    longer.write_bytes(longer.read_bytes() + b"!")
    same_time = videos / "v2.mp4"  # new size, mtime put back: the size alone must tell
    stat = same_time.stat()
    same_time.write_bytes(same_time.read_bytes() * 2)
    os.utime(same_time, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after, read = requests_of(videos, cache)
    changed = {str(same_size), str(longer), str(same_time)}
    assert sorted(read) == sorted(changed)
    for r in after:
        assert (r.cache_key != before[r.video_uri].cache_key) == (r.video_uri in changed)
        assert r.video_sha256 == file_sha256(r.video_uri)
    assert requests_of(videos, cache)[1] == [], "the new hashes are remembered in turn"
    assert pq.read_table(cache / HASHES_FILE).num_rows == 4, "a re-read path replaces its entry"


def test_new_entries_merge_into_the_sorted_hash_file_before_among_and_after_the_old(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    videos.mkdir()
    for name in ("c.mp4", "e.mp4", "g.mp4"):
        (videos / name).write_bytes(name.encode())
    requests_of(videos, cache)
    for name in ("a.mp4", "d.mp4", "f.mp4", "h.mp4", "i.mp4"):
        (videos / name).write_bytes(name.encode())
    (videos / "e.mp4").write_bytes(b"changed")  # replaced in place
    _, read = requests_of(videos, cache)
    assert sorted(os.path.basename(p) for p in read) == ["a.mp4", "d.mp4", "e.mp4", "f.mp4", "h.mp4", "i.mp4"]
    stored = pq.read_table(cache / HASHES_FILE)
    on_disk = sorted(str(p) for p in videos.iterdir())
    assert stored["path"].to_pylist() == on_disk
    assert stored["sha256"].to_pylist() == [file_sha256(p) for p in on_disk]
    assert stored["size"].to_pylist() == [os.stat(p).st_size for p in on_disk]


def test_reruns_add_what_they_hashed_and_fold_it_in_later(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 40)
    additions = cache / HASHES_FILE.with_suffix("")

    def added() -> list[int]:
        return [pq.read_metadata(p).num_rows for p in sorted(additions.glob("part-*.parquet"))]

    assert len(requests_of(videos, cache)[1]) == 40 and added() == []
    first_file = (cache / HASHES_FILE).read_bytes()
    (videos / "new1.mp4").write_bytes(b"new 1")
    (videos / "new2.mp4").write_bytes(b"new 2")
    assert len(requests_of(videos, cache)[1]) == 2 and added() == [2]
    assert (cache / HASHES_FILE).read_bytes() == first_file, "a rerun writes what it hashed, not every entry"
    (videos / "v0.mp4").write_bytes(b"changed v0")
    assert requests_of(videos, cache)[1] == [str(videos / "v0.mp4")] and added() == [2, 1]
    again, read = requests_of(videos, cache)
    assert read == [], "entries and additions both serve; v0's newer entry matches its file"
    assert {r.video_uri: r.video_sha256 for r in again} == {p: file_sha256(p) for p in find_videos(videos)}
    for i in range(3, 7):  # 2 + 1 + 4 added > 40 / 8: folded in
        (videos / f"new{i}.mp4").write_bytes(f"new {i}".encode())
    assert len(requests_of(videos, cache)[1]) == 4 and added() == []
    stored = pq.read_table(cache / HASHES_FILE)
    assert stored["path"].to_pylist() == find_videos(videos), "one entry per path, sorted"
    assert stored["sha256"].to_pylist() == [file_sha256(p) for p in find_videos(videos)], "the newest entry won"
    assert requests_of(videos, cache)[1] == []


def test_identify_answers_in_the_order_asked_and_an_old_unsorted_hash_file_still_serves(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    paths = make_videos(videos, 5)
    shuffled = pa.array([paths[i] for i in (3, 0, 4, 1, 2)])
    # An older version wrote the file in no particular order.
    entries = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns, file_sha256(p)) for p in reversed(paths)]
    (cache / HASHES_FILE).parent.mkdir(parents=True)
    pq.write_table(pa.table(list(map(list, zip(*entries))), schema=HASHES_SCHEMA), cache / HASHES_FILE)
    hasher = CountingHasher()
    got = ContentHashes.of_cache(cache, hasher).identify(shuffled, file_stats(shuffled))
    assert hasher.read == []
    assert hex_digests(got["video_sha256"].combine_chunks()).to_pylist() == [file_sha256(p) for p in shuffled.to_pylist()]


def test_a_new_teacher_re_plans_everything_without_re_reading_videos(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 5)
    hashes = ContentHashes.of_cache(cache)
    table = build_requests(find_videos(videos), videos, SAMPLING, "teacher-a", SPEC, hashes)
    hashes.save()
    write_clips_part(cache, "s0", ok_rows(clip_requests(table)))
    assert missing_clips(table, cache).num_rows == 0
    hasher = CountingHasher()
    other = build_requests(find_videos(videos), videos, SAMPLING, "teacher-b", SPEC,
                           ContentHashes.of_cache(cache, hasher))
    assert hasher.read == [], "the content hash is the file's, whatever the teacher"
    assert other["video_sha256"].equals(table["video_sha256"])
    assert missing_clips(other, cache).equals(other), "no entry of teacher-a serves teacher-b"


def test_an_unreadable_hash_cache_is_rebuilt(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 2)
    (cache / HASHES_FILE).parent.mkdir(parents=True)
    (cache / HASHES_FILE).write_bytes(b"not parquet")
    requests, read = requests_of(videos, cache)
    assert len(read) == 2 and requests_of(videos, cache)[1] == []


def test_unreadable_videos_are_failed_requests_with_their_reason_and_a_stable_key(tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    make_videos(videos, 1)
    (videos / "gone.mp4").symlink_to(videos / "nowhere.mp4")
    (videos / "folder.mp4").mkdir()  # a walk descends into it; a samples table may name it
    named = [str(videos / n) for n in ("folder.mp4", "gone.mp4", "v0.mp4")]
    requests = clip_requests(build_requests(named, videos, SAMPLING, "teacher-a", SPEC, ContentHashes.of_cache(cache)))
    by_name = {os.path.basename(r.video_uri): r for r in requests}
    assert by_name["gone.mp4"].read_error == f"file not found: {videos / 'gone.mp4'}"
    assert by_name["folder.mp4"].read_error == f"not a file but a directory: {videos / 'folder.mp4'}"
    for name in ("gone.mp4", "folder.mp4"):
        r = by_name[name]
        assert r.video_sha256 is None
        assert r.cache_key == compute_cache_key(f"unreadable:{r.video_uri}", SAMPLING, "teacher-a", SPEC)
    assert by_name["v0.mp4"].read_error is None


def test_batch_keys_equal_the_single_video_function():
    shas = [hex_key(i) for i in range(50)]
    uris = [f'/v/é "{i}".mp4' for i in range(50)]  # JSON escapes and non-ASCII in the unreadable identity
    digests = pa.array([None if i % 7 == 0 else bytes.fromhex(s) for i, s in enumerate(shas)], DIGEST)
    other = {"num_frames": 8}
    identities = [f"unreadable:{u}" if i % 7 == 0 else f"sha256:{s}" for i, (s, u) in enumerate(zip(shas, uris))]
    got = hex_digests(cache_keys(digests, pa.array(uris), [SAMPLING, other], "t", SPEC)).to_pylist()
    assert got == [compute_cache_key(identity, SAMPLING, "t", SPEC) for identity in identities]
    which = np.arange(50) % 3 % 2  # 0, 1, 0, 0, 1, 0, ...
    got = hex_digests(cache_keys(digests, pa.array(uris), [SAMPLING, other], "t", SPEC, which)).to_pylist()
    assert got == [compute_cache_key(identity, [SAMPLING, other][w], "t", SPEC) for identity, w in zip(identities, which)]
    assert hex_digests(digests.slice(3, 5)).to_pylist() == [None if i % 7 == 0 else shas[i] for i in range(3, 8)]
    assert hex_digests(digests, 4).to_pylist()[1] == shas[1][:8]
    with pytest.raises(ValueError, match=r"X row 1: 'ABC' is not a 64-character"):
        digests_of_hex(pa.array([shas[0], "ABC"]), lambda row: f"X row {row}")
    with pytest.raises(ValueError, match=r"X row 0: '.*' is not"):
        digests_of_hex(pa.array([shas[0].upper()]), lambda row: f"X row {row}")


def test_the_same_bytes_twice_are_one_clip_and_shared_key_prefixes_are_compared_whole(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (videos / name).write_bytes(b"same bytes" if name != "c.mp4" else b"other")
    table = build_requests(find_videos(videos), videos, SAMPLING, "t", SPEC)
    assert [os.path.basename(u) for u in unique_clips(table)["video_uri"].to_pylist()] == ["a.mp4", "c.mp4"]
    # Keys that share their first 8 bytes but differ after: distinct clips, each kept; repeats dropped.
    same_prefix = ["ab" * 8 + hex_key(i)[16:] for i in range(3)]
    keys = [same_prefix[0], hex_key(9), same_prefix[1], same_prefix[0], same_prefix[2], same_prefix[1]]
    assert unique_clips(wanted(keys))["clip_id"].to_pylist() == [same_prefix[0], hex_key(9), same_prefix[1],
                                                                 same_prefix[2]]


def test_keys_sharing_their_first_8_bytes_are_told_apart_by_the_rest():
    shared = "ab" * 8
    done = [shared + hex_key(0)[16:], shared + hex_key(1)[16:], hex_key(2)]
    asked = [shared + hex_key(1)[16:], shared + hex_key(3)[16:], hex_key(2), hex_key(4), shared + hex_key(0)[16:]]
    found = contains(digests_of_hex(pa.array(done), str), digests_of_hex(pa.array(asked), str))
    assert found.tolist() == [True, False, True, False, True]


def test_planning_20k_clips_from_the_table_state_compacted_or_not(tmp_path):
    """The rerun of a 20k-clip cache: done keys skipped, failed not retried unless asked, new ones planned,
    the same answer before and after compaction. (Timings are bench/planning.py's business.)"""
    n = 20_000
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    base = {"clip_id": "c", "video_uri": "/v.mp4", "sampling": "{}", "teacher_id": "t"}
    rows = [{**base, "cache_key": hex_key(i), "status": "failed" if i % 20 == 0 else "ok", "created_at": created}
            for i in range(n)]
    # History: 1 failed then ok (ok wins), 20 failed twice, 40 failed then ok in a later part.
    rows += [{**base, "cache_key": hex_key(1), "status": "failed", "created_at": created + dt.timedelta(hours=1)},
             {**base, "cache_key": hex_key(20), "status": "failed", "error": "later",
              "created_at": created + dt.timedelta(hours=1)},
             {**base, "cache_key": hex_key(40), "status": "ok", "created_at": created + dt.timedelta(hours=2)}]
    for part, start in enumerate(range(0, len(rows), 1000)):
        write_clips_part(tmp_path, f"s{part:03d}", rows[start:start + 1000])
    # An independent model of the rule: done = any row (or, retrying, an ok row).
    any_row = {r["cache_key"] for r in rows}
    ok_row = {r["cache_key"] for r in rows if r["status"] == "ok"}
    asked = [hex_key(i) for i in range(n + 500)] + [hex_key(5), "f" * 64] * 2
    expected = list(dict.fromkeys(k for k in asked if k not in any_row))
    expected_retry = list(dict.fromkeys(k for k in asked if k not in ok_row))
    assert expected == [hex_key(i) for i in range(n, n + 500)] + ["f" * 64]
    assert len(expected_retry) == len(expected) + n // 20 - 1  # every failed key but 40
    for compacted in (False, True):
        if compacted:
            assert compact_clips(tmp_path).rows == len(rows)
        assert missing_clips(wanted(asked), tmp_path)["clip_id"].to_pylist() == expected
        assert missing_clips(wanted(asked), tmp_path, retry_failed=True)["clip_id"].to_pylist() == expected_retry
        full = current_clips(read_clips_table(tmp_path))
        assert len(full) == n and full[hex_key(20)]["error"] == "later" and full[hex_key(40)]["status"] == "ok"
        assert full[hex_key(1)]["status"] == "ok"


def test_a_cache_key_that_is_not_one_is_named_with_its_file_and_row(tmp_path):
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    row = {"clip_id": "c", "video_uri": "/v.mp4", "sampling": "{}", "teacher_id": "t", "status": "ok",
           "created_at": created}
    write_clips_part(tmp_path, "s0", [{**row, "cache_key": hex_key(0)}])
    write_clips_part(tmp_path, "s1", [{**row, "cache_key": hex_key(1)}, {**row, "cache_key": "oops"}])
    with pytest.raises(ValueError, match=r"part-s1.parquet: row 1: field 'cache_key': 'oops' is not"):
        missing_clips(wanted([hex_key(2)]), tmp_path)


def test_annotation_paths_resolve_a_folder_at_a_time_as_one_at_a_time(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "x.mp4").write_bytes(b"x")
    (root / "a" / "v.mp4").write_bytes(b"v")
    (root / "a" / "inner.mp4").symlink_to(root / "a" / "v.mp4")  # a link inside: resolves to its target
    (root / "linked").symlink_to(root / "a")  # a linked folder inside
    (root / "a" / "out.mp4").symlink_to(outside / "x.mp4")
    (root / "away").symlink_to(outside)
    good = ["a/v.mp4", "a/inner.mp4", "linked/v.mp4", "a//v.mp4", "./a/v.mp4",
            "a/missing.mp4", "top.mp4", "linked/inner.mp4"]
    got = resolve_all_inside(root, pa.array(good), str).to_pylist()
    assert got == [str(resolve_inside(root, p, "")) for p in good]
    assert got[1] == str(root / "a" / "v.mp4") and got[7] == str(root / "a" / "v.mp4")
    once = resolve_all_inside(root, pa.array(good + good[::-1]), str, unique=True).to_pylist()
    # One per real folder and name: the four spellings of a/v.mp4 are one; a/inner.mp4 (one, by two
    # spellings) is a link to it, and stays an alias (its key will be the same: one clip).
    assert sorted(once) == sorted([str(root / "a" / "v.mp4")] * 2 + [str(root / "a" / "missing.mp4"),
                                                                   str(root / "top.mp4")])
    flat = ["linked/v.mp4", "c/b/w.mp4", "a/v.mp4", "a.b/x.mp4", "a/v.mp4", "c/b/w.mp4"]  # no file beside a subfolder
    assert resolve_all_inside(root, pa.array(flat), str, unique=True).to_pylist() == sorted(
        {str(resolve_inside(root, p, "")) for p in flat}), "sorted as whole paths"
    with pytest.raises(ValueError, match=r"^row 2: path 'a/out.mp4' escapes"):
        resolve_all_inside(root, pa.array(["a/v.mp4", "top.mp4", "a/out.mp4"]), lambda i: f"row {i}", unique=True)
    for bad in ("a/out.mp4", "a//out.mp4", "linked/out.mp4", "away/x.mp4", "../outside/x.mp4", "a/../../x.mp4",
                str(outside / "x.mp4")):
        with pytest.raises(ValueError, match="escapes the dataset root"):
            resolve_inside(root, bad, "")
        with pytest.raises(ValueError, match=rf"^row 1: path {bad!r} escapes the dataset root"):
            resolve_all_inside(root, pa.array(["a/v.mp4", bad]), lambda i: f"row {i}")


def test_requests_round_trip_to_objects(tmp_path):
    keys = [hex_key(i) for i in range(3)]
    table = wanted(keys).set_column(2, "video_sha256", digests_of_hex(pa.array(keys[::-1]), str))
    objects = clip_requests(table)
    assert [(o.cache_key, o.video_sha256, o.clip_id) for o in objects] == list(zip(keys, keys[::-1], keys))
    assert np.all([o.read_error is None for o in objects])


def test_clip_ids_cut_the_extension_as_splitext_does(tmp_path):
    names = ["a.mp4", "d/b.c.mkv", "d/.hidden.mp4", "d/..x", "e.f/noext", "g/name.", "h/.mp4", "x/y/z.webm"]
    paths = pa.array([str(tmp_path / n) for n in names] + ["/elsewhere/w.mp4"])
    identities = pa.table([pa.nulls(len(paths), DIGEST), pa.array(["e"] * len(paths))],
                          schema=IDENTITIES_SCHEMA)
    table = keyed_requests(paths, identities, tmp_path, SAMPLING, "t", SPEC)
    keys = hex_digests(table["cache_key"].combine_chunks()).to_pylist()
    expected = [f"{os.path.splitext(n)[0]}-{k[:8]}" for n, k in zip(names + ["w.mp4"], keys)]
    assert table["clip_id"].to_pylist() == expected


def test_spans_are_keyed_in_columns_as_one_clip_at_a_time(tmp_path):
    """One video, several spans (STI-Bench): one clip each, keyed with its span in its sampling, named with
    the span; the video read once. Each key against the one-clip function on a hand-made sampling."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"bytes of a")
    (videos / "b.mkv").write_bytes(b"bytes of b")
    a, b, gone = (str(videos / n) for n in ("a.mp4", "b.mkv", "gone.mp4"))
    paths = [a, a, b, a, gone, a, a]
    # (0.0, 1.0) and (-0.0, 1.0) differ in the key's JSON ("-0.0"): two clips, as one at a time.
    spans = [(0.0, 0.7), (0.8, 1.5), None, (0.0, 0.7), (1.0, 2.5), (0.0, 1.0), (-0.0, 1.0)]
    hasher = CountingHasher()
    table = build_requests(paths, videos, SAMPLING, "t", SPEC, ContentHashes(hasher=hasher), spans=spans)
    assert sorted(hasher.read) == [a, b], "each file read once, whatever its spans"
    assert table["span_start"].to_pylist() == [None if s is None else s[0] for s in spans]
    requests = clip_requests(table)
    for request, path, span in zip(requests, paths, spans):
        sampling = SAMPLING if span is None else {"num_frames": 16, "start": span[0], "end": span[1]}
        identity = f"unreadable:{path}" if path == gone else f"sha256:{file_sha256(path)}"
        assert request.cache_key == compute_cache_key(identity, sampling, "t", SPEC)
        assert request.span == span
        stem = os.path.splitext(os.path.basename(path))[0]
        assert request.clip_id == (f"{stem}-{request.cache_key[:8]}" if span is None else
                                   f"{stem}@{span[0]:g}-{span[1]:g}s-{request.cache_key[:8]}")
    assert requests[0].clip_id.startswith("a@0-0.7s-") and requests[6].clip_id.startswith("a@-0-1s-")
    assert requests[0].cache_key == requests[3].cache_key and requests[5].cache_key != requests[6].cache_key
    assert len({r.cache_key for r in requests}) == 6
    assert [r.span for r in clip_requests(unique_clips(table))] == [s for i, s in enumerate(spans) if i != 3]


def test_a_table_without_spans_has_no_span_columns_and_joins_one_that_has(tmp_path):
    videos = tmp_path / "videos"
    make_videos(videos, 2)
    plain = build_requests(find_videos(videos), videos, SAMPLING, "t", SPEC)
    assert plain.schema.equals(CLIP_REQUESTS_SCHEMA)
    no_span = build_requests(find_videos(videos), videos, SAMPLING, "t", SPEC, spans=[None, None])
    assert no_span.equals(plain), "spans that are all None are no spans"
    spanned = build_requests(find_videos(videos)[:1], videos, SAMPLING, "t", SPEC, spans=[(1.0, 2.0)])
    both = unique_clips(concat_requests([plain, spanned]))
    assert both.schema.equals(SPANNED_REQUESTS_SCHEMA) and both.num_rows == 3
    assert [r.span for r in clip_requests(both)] == [None, None, (1.0, 2.0)]
    with pytest.raises(ValueError, match="span of row 1: a start without an end"):
        distinct_spans(pa.table({"span_start": [1.0, 2.0], "span_end": [3.0, None]}))
