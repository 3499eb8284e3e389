"""Caches on an object store, against a real S3-compatible server (moto's server mode on 127.0.0.1, a
free port), started and stopped here. Endpoint and credentials reach every process (the job's Ray
workers, the trainer's ranks) as the standard AWS environment only: AWS_ENDPOINT_URL & co.

The caching job runs as a user runs it (`python pipeline/cache_teacher.py --out s3://...`, its own
in-process Ray, which inherits that environment): killed mid-run, refused while its lease lives,
rerun once the lease expired; then the clips are read back with their checksums and a 2-rank ZeRO-3
run trains 2 steps from the bucket."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, copy_scenes
from manifests import compaction
from manifests.clips_table import current_clips, duplicate_ok_keys, folded_names, read_clips_table, write_clips_part
from manifests.compaction import compact_clips
from manifests.content_hash import HASHES_FILE
from pipeline.cache_dir import LEASE_FILE, CacheDir, CacheLease, CacheLockedError
from pipeline.compact import main as compact_main
from pipeline.scrub import DAMAGED_EXIT_CODE
from pipeline.sources import find_videos
from shards.cache_reader import ClipReader, read_cached_clip
from shards.integrity import ShardCorruptError
from shards.store import Store, staging_path
from test_compaction import as_view, by_key, make_rows, view
from test_planning import make_videos, requests_of
from test_train import LATENT_DIM, finish, launch, steps_logged, write_config

BUCKET = "bucket"
LEASE_S = 10.0  # the killed job's lease: renewed every 3.3 s while it runs, and the rerun waits it out


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server for this module; the AWS environment points at it. Yields an s3fs filesystem."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(key, value)
        S3FileSystem.clear_instance_cache()  # an instance made for another endpoint must not be reused
        fs = S3FileSystem(use_listings_cache=False)
        fs.mkdir(BUCKET)
        yield fs
        S3FileSystem.clear_instance_cache()
    server.stop()


# -- the lease -------------------------------------------------------------------------------------

def test_the_lease_admits_one_job_names_its_holder_and_is_released(s3):
    url = f"s3://{BUCKET}/leased"
    with CacheDir(url).lock(lease_seconds=30):
        record = json.loads(s3.cat_file(f"{BUCKET}/leased/{LEASE_FILE}"))
        assert record["holder"] == f"pid {os.getpid()} on {socket.gethostname()}"
        assert record["expires_at"] == pytest.approx(time.time() + 30, abs=10)
        with pytest.raises(CacheLockedError, match=f"another caching job \\(pid {os.getpid()} on .*leased/.lease"):
            with CacheDir(url).lock():
                pass
    assert not s3.exists(f"{BUCKET}/leased/{LEASE_FILE}"), "released on exit"
    with CacheDir(url).lock():  # and free again
        pass


def test_of_jobs_racing_for_a_lease_exactly_one_wins(s3):
    """The conditional create (If-None-Match: *) decides: checking for the object first would let
    several racers through."""
    store, racers = Store(f"s3://{BUCKET}/raced"), 6
    start, won, refused = threading.Barrier(racers), [], []

    def race():
        lease = CacheLease(store, 30)
        start.wait()
        try:
            lease.acquire()
            won.append(lease.token)
        except CacheLockedError:
            refused.append(lease.token)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == racers - 1
    assert json.loads(store.read_bytes(LEASE_FILE))["token"] == won[0]


def test_an_expired_lease_is_taken_over_and_its_writers_may_not_commit(s3):
    url = f"s3://{BUCKET}/expired"
    dead = CacheLease(Store(url), 30)
    s3.pipe_file(f"{BUCKET}/expired/{LEASE_FILE}", json.dumps(
        {"holder": "pid 1 on elsewhere", "token": dead.token, "expires_at": time.time() - 1}).encode())
    cache = CacheDir(url)
    with cache.lock(lease_seconds=30):
        assert json.loads(s3.cat_file(f"{BUCKET}/expired/{LEASE_FILE}"))["token"] == cache.lease_token
        cache.check_lease(cache.lease_token)
        with pytest.raises(CacheLockedError, match="expired or was taken over"):
            cache.check_lease(dead.token)  # the killed job's writer, still alive


def test_a_running_job_renews_its_lease(s3):
    lease = CacheLease(Store(f"s3://{BUCKET}/renewed"), seconds=1.5)
    with lease.held():
        first = lease.current()["expires_at"]
        time.sleep(2.0)  # past the first expiry: renewed every 0.5 s meanwhile
        assert lease.current()["token"] == lease.token
        assert lease.current()["expires_at"] > first + 1.0


# -- the clips table's compaction and the remembered content hashes ---------------------------------

def _write_parts(url: str, rows: list[dict], per_part: int, prefix: str) -> list[str]:
    return [write_clips_part(url, f"{prefix}{start:06d}", rows[start:start + per_part]).rsplit("/", 1)[-1]
            for start in range(0, len(rows), per_part)]


def _clips_objects(s3, prefix: str) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in s3.ls(f"{BUCKET}/{prefix}/manifests/clips", detail=False))


def test_a_bucket_s_parts_are_compacted_by_the_command_and_read_back_each_row_once(s3):
    url, prefix = f"s3://{BUCKET}/compacted", "compacted"
    rows = make_rows(120, distinct=90)
    parts = _write_parts(url, rows, per_part=20, prefix="s")
    assert compact_main([url]) == 0  # python -m pipeline.compact URL: under the bucket's lease
    assert _clips_objects(s3, prefix) == ["compacted-00000001.parquet"]
    assert view(url) == as_view(by_key(rows))
    compacted = f"{BUCKET}/{prefix}/manifests/clips/compacted-00000001.parquet"
    assert folded_names(f"s3://{compacted}") == parts
    with s3.open(compacted, "rb") as f:  # a stock reader: the rows, sorted by cache_key
        assert pq.read_table(f)["clip_id"].to_pylist() == [r["clip_id"] for r in by_key(rows)]
    # Parts written since, then a compaction that folds the first compacted file too (120 <= 150 rows).
    more = make_rows(150, distinct=150, start=120)
    _write_parts(url, more, per_part=50, prefix="t")
    result = compact_clips(url)
    assert result.folded == ("compacted-00000001.parquet", "part-t000000.parquet", "part-t000050.parquet",
                             "part-t000100.parquet") and result.rows == 270
    assert _clips_objects(s3, prefix) == ["compacted-00000002.parquet"]
    assert view(url) == as_view(by_key(by_key(rows) + more))


def test_a_compaction_killed_between_its_upload_and_its_deletes_is_finished_by_the_next(s3, monkeypatch):
    url, prefix = f"s3://{BUCKET}/interrupted", "interrupted"
    rows = make_rows(100, distinct=80)
    parts = _write_parts(url, rows, per_part=25, prefix="s")
    saved = {name: s3.cat_file(f"{BUCKET}/{prefix}/manifests/clips/{name}") for name in parts}
    compact_clips(url)
    for name, data in saved.items():  # as if killed after the upload, before deleting what it folds
        s3.pipe_file(f"{BUCKET}/{prefix}/manifests/clips/{name}", data)
    assert view(url) == as_view(by_key(rows)), "the readers skip what the compacted file folds"
    more = make_rows(120, distinct=120, start=100)
    _write_parts(url, more, per_part=60, prefix="t")
    result = compact_clips(url)  # the next one deletes the folded parts, then folds the rest (100 <= 120 rows)
    assert result.removed_leftovers == len(parts) and result.path == f"{url}/manifests/clips/compacted-00000002.parquet"
    assert _clips_objects(s3, prefix) == ["compacted-00000002.parquet"]
    expected = as_view(by_key(by_key(rows) + more))
    assert view(url) == expected

    # Killed before its upload: the bucket is as it was, and the local staging directory is gone.
    last = make_rows(30, distinct=30, start=220)
    _write_parts(url, last, per_part=15, prefix="u")

    def killed(temp, final, **_):
        raise KeyboardInterrupt(f"killed before uploading {final}")

    staged = []
    with monkeypatch.context() as patched:
        patched.setattr(compaction, "publish", killed)
        patched.setattr(compaction, "staging_path", lambda final: staged.append(staging_path(final)) or staged[-1])
        with pytest.raises(KeyboardInterrupt):
            compact_clips(url)
    assert not staged[0].parent.exists(), "the runs and the merged file, staged locally, are removed"
    assert _clips_objects(s3, prefix) == ["compacted-00000002.parquet", "part-u000000.parquet", "part-u000015.parquet"]
    assert view(url) == expected + as_view(last)
    assert compact_clips(url).removed_leftovers == 0
    assert _clips_objects(s3, prefix) == ["compacted-00000002.parquet", "compacted-00000003.parquet"]  # 220 > 30 rows
    assert view(url) == expected + as_view(by_key(last))


def test_an_upload_without_replace_never_replaces_an_object(s3, tmp_path):
    """The conditional create that commits a compacted file (and an additions file of the hashes)."""
    store = Store(f"s3://{BUCKET}/created")
    (tmp_path / "a").write_bytes(b"first")
    (tmp_path / "b").write_bytes(b"second")
    store.upload(tmp_path / "a", "x.parquet", replace=False)
    with pytest.raises(FileExistsError):
        store.upload(tmp_path / "b", "x.parquet", replace=False)
    assert store.read_bytes("x.parquet") == b"first"


def test_a_bucket_remembers_the_videos_content_hashes_and_folds_its_additions(s3, tmp_path):
    videos, url, prefix = tmp_path / "videos", f"s3://{BUCKET}/hashed", "hashed"
    make_videos(videos, 40)
    entries, additions = f"{BUCKET}/{prefix}/{HASHES_FILE.as_posix()}", f"{BUCKET}/{prefix}/manifests/content_hashes"

    def stored() -> dict[str, str]:
        with s3.open(entries, "rb") as f:  # a stock reader
            table = pq.read_table(f)
        assert table["path"].to_pylist() == sorted(table["path"].to_pylist())
        return dict(zip(table["path"].to_pylist(), table["sha256"].to_pylist()))

    def added() -> list[int]:
        return [pq.read_metadata(s3.open(p, "rb")).num_rows for p in sorted(s3.glob(f"{additions}/part-*.parquet"))]

    assert len(requests_of(videos, url)[1]) == 40
    expected = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in find_videos(videos)}
    assert stored() == expected and added() == []
    assert requests_of(videos, url)[1] == [], "a rerun reads no video it hashed before"
    first = s3.cat_file(entries)
    (videos / "new1.mp4").write_bytes(b"new 1")
    (videos / "new2.mp4").write_bytes(b"new 2")
    assert len(requests_of(videos, url)[1]) == 2 and added() == [2]
    assert s3.cat_file(entries) == first, "a rerun uploads what it hashed, not every entry"
    assert requests_of(videos, url)[1] == [], "entries and additions both serve"
    for i in range(3, 7):  # 2 + 4 added > 40 / 8: folded into a new entries object
        (videos / f"new{i}.mp4").write_bytes(f"new {i}".encode())
    assert len(requests_of(videos, url)[1]) == 4 and added() == []
    assert stored() == {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in find_videos(videos)}
    assert requests_of(videos, url)[1] == []


# -- the caching job: killed, refused while its lease lives, rerun -----------------------------------

def _job(videos: Path, url: str, fmt: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "pipeline" / "cache_teacher.py"), "--videos", str(videos), "--out", url,
           "--teacher", "oracle", "--latent-dim", str(LATENT_DIM), "--format", fmt, "--clips-per-shard", "1",
           "--batch-size", "1", "--set", f"lease_seconds={LEASE_S}", "--set", "ray.num_cpus=2"]
    # Ray may not inherit a test session's Ray address: the job starts its own, in-process.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _run(videos: Path, url: str, fmt: str, log: Path) -> dict:
    proc = _job(videos, url, fmt, log)
    assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    return json.loads(Store(url).read_bytes("summary.json"))


def _parts(s3, prefix: str) -> list[str]:
    return s3.glob(f"{BUCKET}/{prefix}/manifests/clips/part-*.parquet")


def _shards_in_store(s3, prefix: str, fmt: str) -> set[str]:
    return {p.split(f"{BUCKET}/{prefix}/", 1)[1] for p in s3.ls(f"{BUCKET}/{prefix}/shards/{fmt}", detail=False)}


def _assert_consistent(s3, prefix: str, fmt: str, expected_ok: int) -> dict[str, dict]:
    """Each clip once, each referenced shard in the bucket, none unreferenced, every clip readable
    with its checksums verified."""
    url = f"s3://{BUCKET}/{prefix}"
    table = read_clips_table(url)
    assert not duplicate_ok_keys(table), "a clip stored twice"
    ok = {k: r for k, r in current_clips(table).items() if r["status"] == "ok"}
    assert len(ok) == len(table) == expected_ok
    assert {r["shard"] for r in ok.values()} == _shards_in_store(s3, prefix, fmt), \
        "every referenced shard present, none orphaned"
    reader = ClipReader(url)
    for row in ok.values():
        arrays = reader.read(row)
        np.testing.assert_array_equal(arrays["timestamps"], row["timestamps"])  # what the manifest recorded
    return ok


def test_a_job_killed_mid_run_is_refused_by_its_lease_then_rerun_once_it_expired(s3, synthetic_set, tmp_path):
    copy_scenes(synthetic_set, tmp_path, ["scene_0000", "scene_0001", "scene_0002"])
    videos, prefix, url = tmp_path / "videos", "killed", f"s3://{BUCKET}/killed"
    proc = _job(videos, url, "zarr", tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while not _parts(s3, prefix):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no manifest part written"
        time.sleep(0.05)
    # The driver: its in-process Ray's workers die with it only a moment later (Ray's reaper), and a
    # writer may still commit meanwhile, under the lease it checks before each manifest part.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(CacheLockedError, match=f"another caching job \\(pid {proc.pid} on "):
        with CacheDir(url).lock():  # a second job, while the killed job's lease lives
            pass
    # A shard whose upload was cut (its manifest part never written): the rerun must remove it.
    s3.pipe_file(f"{BUCKET}/{prefix}/shards/zarr/cut-upload.zarr/zarr.json", b"{}")

    expires = json.loads(s3.cat_file(f"{BUCKET}/{prefix}/{LEASE_FILE}"))["expires_at"]
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    done_before = len(current_clips(read_clips_table(url)))
    assert 1 <= done_before <= 3
    summary = _run(videos, url, "zarr", tmp_path / "rerun.log")
    assert "taking over the expired lease of pid" in (tmp_path / "rerun.log").read_text()
    assert summary["clips"]["already_cached"] == done_before, "committed clips are kept, not redone"
    assert summary["clips"]["computed"] == 3 - done_before
    ok = _assert_consistent(s3, prefix, "zarr", expected_ok=3)
    assert not s3.exists(f"{BUCKET}/{prefix}/{LEASE_FILE}"), "the rerun released its lease"

    # A stock reader opens a shard in the bucket (zarr's fsspec store), and reads what ours reads.
    import zarr

    row = next(iter(ok.values()))
    group = zarr.open_group(f"{url}/{row['shard']}", mode="r", zarr_format=3)
    np.testing.assert_array_equal(group["timestamps"][row["row"]], row["timestamps"])


@pytest.fixture(scope="module")
def wds_cache(s3, synthetic_set, tmp_path_factory) -> str:
    """The synthetic set (4 scenes, its samples) cached to s3://bucket/wds as WebDataset tars."""
    url = f"s3://{BUCKET}/wds"
    summary = _run(synthetic_set, url, "wds", tmp_path_factory.mktemp("wds-job") / "job.log")
    assert summary["clips"]["ok"] == 4 and summary["cache"] == url
    return url


def test_webdataset_clips_read_back_from_the_bucket_with_checksums_a_repair_drops_a_damaged_one_a_rerun_redoes_it(
        s3, wds_cache, synthetic_set, tmp_path, capsys):
    ok = _assert_consistent(s3, "wds", "wds", expected_ok=4)
    # The same values as the same tar read from a local file (what the rest of the suite checks).
    row = next(iter(ok.values()))
    local = tmp_path / "local"
    s3.get(f"{BUCKET}/wds/{row['shard']}", str(local / row["shard"]))
    from_bucket, from_file = read_cached_clip(wds_cache, row), read_cached_clip(local, row)
    assert set(from_bucket) == set(from_file)
    for name in from_file:
        np.testing.assert_array_equal(from_bucket[name], from_file[name])

    # The cache viewer lists the bucket's clips (every clip once, with its shard and row).
    from student.inspect_cache import main as inspect_main

    assert inspect_main([wds_cache]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[-1] for line in listed) == sorted(f"{r['shard']}#{r['row']}" for r in ok.values())

    # A flipped byte in the bucket's object is caught by the checksum, naming shard and clip.
    key = f"{BUCKET}/wds/{row['shard']}"
    data = bytearray(s3.cat_file(key))
    with (local / row["shard"]).open("rb") as f:
        import tarfile

        member = next(m for m in tarfile.open(fileobj=f) if m.name == f"{row['cache_key']}.timestamps.npy")
    data[member.offset_data + member.size - 1] ^= 0x40
    s3.pipe_file(key, bytes(data))
    try:
        with pytest.raises(ShardCorruptError, match=f"{row['shard']}.*{row['clip_id']}.*timestamps"):
            read_cached_clip(wds_cache, row, ["timestamps"])
        # The scrub finds it (a fresh process: its readers inherit the AWS environment), and its repair
        # drops exactly that clip's rows from the bucket's clips table (by a compaction).
        scrub = subprocess.run([sys.executable, "-m", "pipeline.scrub", wds_cache, "--repair", "--workers", "1"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert scrub.returncode == DAMAGED_EXIT_CODE, scrub.stdout + scrub.stderr
        damaged = [line for line in scrub.stdout.splitlines() if line.startswith("damaged:")]
        assert len(damaged) == 1 and damaged[0].startswith(
            f"damaged: shard {row['shard']}, clip {row['clip_id']} (cache_key {row['cache_key']}), field timestamps: "
            f"checksum expected {dict(row['checksums'])['timestamps']}, got "), scrub.stdout
        assert "scrub: 4 clips in 4 shards" in scrub.stdout and "1 damaged" in scrub.stdout
        left = current_clips(read_clips_table(wds_cache))
        assert set(left) == set(ok) - {row["cache_key"]}
        assert all(left[k] == ok[k] for k in left), "the other clips' rows are kept as they were"
        assert [p.rsplit("/", 1)[-1] for p in s3.ls(f"{BUCKET}/wds/manifests/clips")] == ["compacted-00000001.parquet"]

        # A rerun recomputes that clip alone, and hashes no video: the hashes the first run remembered
        # in the bucket serve (any video hashed would be saved: an additions object or a new entries file).
        hashes = f"{BUCKET}/wds/{HASHES_FILE.as_posix()}"
        remembered = s3.info(hashes)["ETag"]
        summary = _run(synthetic_set, wds_cache, "wds", tmp_path / "rerun.log")
        assert summary["clips"]["computed"] == 1 and summary["clips"]["already_cached"] == 3
        assert s3.info(hashes)["ETag"] == remembered and not s3.exists(hashes.removesuffix(".parquet"))
        _assert_consistent(s3, "wds", "wds", expected_ok=4)
        assert not s3.exists(key), "the damaged shard, unreferenced now, was removed by the rerun"
    finally:
        if s3.exists(key):
            s3.put_file(str(local / row["shard"]), key)


def test_the_rerun_clean_up_deletes_unreferenced_shards_only(s3, wds_cache):
    """What a crash between a shard's upload and its manifest part leaves: objects nothing references."""
    for orphan in ("shards/wds/cut.tar", "shards/zarr/cut.zarr/zarr.json", "shards/zarr/cut.zarr/depth/c/0"):
        s3.pipe_file(f"{BUCKET}/wds/{orphan}", b"partial")
    removed = CacheDir(wds_cache).clean()
    assert sorted(removed) == [f"{wds_cache}/shards/wds/cut.tar", f"{wds_cache}/shards/zarr/cut.zarr"]
    assert not s3.exists(f"{BUCKET}/wds/shards/zarr")
    _assert_consistent(s3, "wds", "wds", expected_ok=4)


def test_a_committed_shard_in_the_bucket_is_never_replaced(s3, wds_cache):
    from shards.formats import open_writer
    from shards.schema import specs_from_json

    row = next(iter(current_clips(read_clips_table(wds_cache)).values()))
    with pytest.raises(FileExistsError, match="committed shards are never replaced"):
        open_writer("wds", f"{wds_cache}/{row['shard']}", specs_from_json(row["fields"]))


def test_teacher_heads_are_looked_for_in_the_bucket(wds_cache):
    """D_m 'teacher' reads CACHE/teacher from the bucket; the oracle exported none, and the error says
    where it looked (the bucket, not the local copy it fetches into)."""
    from student.teacher_heads import FrozenTeacherHeads

    with pytest.raises(FileNotFoundError, match=f"^{wds_cache}/teacher holds no exported L4P heads"):
        FrozenTeacherHeads(f"{wds_cache}/teacher", ("depth",), LATENT_DIM)


def test_zero3_trains_two_steps_from_the_bucket(s3, wds_cache, tmp_path, tmp_path_factory):
    from student.tiny import make_tiny_vlm

    model = make_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen")
    out = tmp_path / "run"
    finish(launch(write_config(tmp_path / "run.json", wds_cache, model, out, steps=2, every=2)))
    samples = {r["sample_id"] for r in current_samples(wds_cache)}
    for rank in (0, 1):
        steps = steps_logged(out, rank)
        assert sorted(steps) == [1, 2]
        for step in steps.values():
            assert step["samples"] and set(step["samples"]) <= samples, "batches come from the bucket's cache"
            assert np.isfinite(step["loss"])


def current_samples(url: str) -> list[dict]:
    from manifests.samples_table import SAMPLES_FILE, read_samples

    return read_samples(Store(url).path(SAMPLES_FILE)).to_pylist()
