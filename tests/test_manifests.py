"""Cache keys, the clips table's parts and current state, planning, and the samples merge."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.cache_key import cache_key_function, canonical_json, compute_cache_key, file_sha256
from manifests.clips_table import current_clips, duplicate_ok_keys, read_clips_table, write_clips_part
from manifests.planner import missing_clips
from manifests.samples_table import merge_samples, read_samples
from manifests.schemas import CLIP_REQUESTS_SCHEMA, CLIPS_SCHEMA, SAMPLES_SCHEMA

BASE = dict(video_identity="sha256:abc", sampling={"num_frames": 16}, teacher_id="oracle:1", output_spec="[]")


def test_cache_key_changes_with_each_component_and_only_then():
    key = compute_cache_key(**BASE)
    assert key == compute_cache_key(**BASE)
    changed = [
        {"video_identity": "sha256:abd"},
        {"sampling": {"num_frames": 8}},
        {"teacher_id": "oracle:2"},
        {"output_spec": '[{"name": "depth"}]'},
        {"preprocess_version": 99},
    ]
    keys = {compute_cache_key(**{**BASE, **c}) for c in changed}
    assert key not in keys and len(keys) == len(changed)


def test_cache_key_is_the_sha256_of_the_canonical_payload_and_the_batch_form_agrees():
    import hashlib

    # The payload written out here, independently of the code that hashes the fixed part once.
    payload = canonical_json({"video": "sha256:abc", "sampling": {"num_frames": 16}, "teacher": "oracle:1",
                              "preprocess": 1, "output": "[]"})
    assert compute_cache_key(**BASE) == hashlib.sha256(payload.encode()).hexdigest()
    key_of = cache_key_function(BASE["sampling"], BASE["teacher_id"], BASE["output_spec"])
    for video in ("sha256:abc", "unreadable:/v/a \"b\".mp4", "sha256:é"):
        assert key_of(video) == compute_cache_key(**{**BASE, "video_identity": video})


def test_file_sha256_hashes_content_not_name(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"same bytes")
    (tmp_path / "b.mp4").write_bytes(b"same bytes")
    (tmp_path / "c.mp4").write_bytes(b"other bytes")
    assert file_sha256(tmp_path / "a.mp4") == file_sha256(tmp_path / "b.mp4") != file_sha256(tmp_path / "c.mp4")


def row(key: str, status: str, minutes: int, **extra) -> dict:
    return {"cache_key": key, "clip_id": key, "video_uri": f"/v/{key}.mp4", "sampling": "{}",
            "teacher_id": "t", "status": status, "created_at": dt.datetime(2026, 1, 1, 0, minutes, tzinfo=dt.timezone.utc),
            **extra}


def test_parts_read_back_and_current_state_prefers_ok_then_latest(tmp_path):
    write_clips_part(tmp_path, "s0", [row("a", "ok", 0, shard="shards/zarr/s0.zarr", row=0), row("b", "failed", 1, error="x")])
    write_clips_part(tmp_path, "s1", [row("b", "failed", 2, error="y"), row("c", "failed", 3, error="z")])
    write_clips_part(tmp_path, "s2", [row("c", "ok", 4, shard="shards/zarr/s2.zarr", row=0)])
    table = read_clips_table(tmp_path)
    assert table.num_rows == 5 and table.schema.equals(CLIPS_SCHEMA)
    state = current_clips(table)
    assert state["a"]["status"] == "ok"
    assert state["b"]["error"] == "y", "latest failure wins"
    assert state["c"]["status"] == "ok", "an ok row beats any failed row"
    assert duplicate_ok_keys(table) == []
    write_clips_part(tmp_path, "s3", [row("a", "ok", 5, shard="shards/zarr/s3.zarr", row=0)])
    assert duplicate_ok_keys(read_clips_table(tmp_path)) == ["a"]


def test_parts_are_never_overwritten_and_bad_rows_name_the_field(tmp_path):
    write_clips_part(tmp_path, "s0", [row("a", "ok", 0)])
    with pytest.raises(FileExistsError):
        write_clips_part(tmp_path, "s0", [row("b", "ok", 0)])
    bad = row("c", "ok", 0)
    del bad["teacher_id"]
    with pytest.raises(ValueError, match="teacher_id"):
        write_clips_part(tmp_path, "s1", [bad])


def test_planner_returns_only_missing_each_once(tmp_path):
    """Done: an ok row, or a failed row unless retrying failures, when no transient row came after it;
    a transient row never (e: the machine failed it; f: transient, then ok; 1: failed, then transient
    on a retry; 2: transient, then failed; written in a later part than its newer row: 3)."""
    key = {name: name * 64 for name in "abcdef123"}  # cache keys are 64 hex characters
    write_clips_part(tmp_path, "s0", [row(key["a"], "ok", 0), row(key["b"], "failed", 1),
                                      row(key["e"], "transient", 2), row(key["f"], "transient", 3),
                                      row(key["1"], "failed", 5), row(key["2"], "transient", 5),
                                      row(key["3"], "transient", 9)])
    write_clips_part(tmp_path, "s1", [row(key["f"], "ok", 4), row(key["1"], "transient", 6), row(key["2"], "failed", 6),
                                      row(key["3"], "failed", 8)])
    names = ["a", "b", "c", "c", "d", "e", "f", "1", "2", "3"]
    wanted = pa.table([[f"/v/{n}.mp4" for n in names], names, pa.nulls(10, pa.binary(32)), pa.nulls(10, pa.string()),
                       [bytes.fromhex(key[n]) for n in names]], schema=CLIP_REQUESTS_SCHEMA)
    assert missing_clips(wanted, tmp_path)["clip_id"].to_pylist() == ["c", "d", "e", "1", "3"]
    assert missing_clips(wanted, tmp_path, retry_failed=True)["clip_id"].to_pylist() == ["b", "c", "d", "e", "1", "2", "3"]


def sample(sample_id: str, content: str) -> dict:
    return {"sample_id": sample_id, "dataset": "d", "split": "train", "video": "v.mp4", "cache_key": None,
            "images": None, "conversations": [{"role": "user", "content": content}], "regions": None, "meta": None}


def test_samples_merge_replaces_by_sample_id(tmp_path):
    merge_samples(tmp_path, pa.Table.from_pylist([sample("s1", "old"), sample("s2", "keep")], schema=SAMPLES_SCHEMA))
    merged = merge_samples(tmp_path, pa.Table.from_pylist([sample("s1", "new"), sample("s3", "add")], schema=SAMPLES_SCHEMA))
    got = {r["sample_id"]: r["conversations"][0]["content"] for r in merged.to_pylist()}
    assert got == {"s1": "new", "s2": "keep", "s3": "add"}
    assert read_samples(tmp_path / "manifests" / "samples.parquet").num_rows == 3


def test_samples_with_a_null_required_field_name_the_row(tmp_path):
    rows = [sample("s1", "a"), sample("s2", "b")]
    table = pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA.set(2, pa.field("split", pa.string())))
    table = table.set_column(2, "split", pa.array(["train", None]))
    pq.write_table(table, tmp_path / "s.parquet")
    with pytest.raises(ValueError, match=r"row 1: required field 'split'"):
        read_samples(tmp_path / "s.parquet")
