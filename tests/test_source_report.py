"""Per-source reports counted in columns from the clips table: each source's clips ok / failed and its top
failure reasons, checked against the rule as one row at a time states it (clips_table.current_clips: a
key's ok row if it has one, else its latest failed row), before and after a compaction."""
from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from pathlib import Path

import pyarrow as pa

from manifests.cache_key import digests_of_hex
from manifests.clips_table import current_clips, read_clips_table, write_clips_part
from manifests.compaction import compact_clips
from pipeline.datasets.mixture import SourceRead
from pipeline.source_report import failure_reason, folder_source, source_reports

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def key(i: int) -> str:
    return hashlib.sha256(f"clip {i}".encode()).hexdigest()


def row(i: int, status: str, hours: int = 0, stage: str | None = None, error: str | None = None) -> dict:
    return {"cache_key": key(i), "clip_id": f"c{i}", "video_uri": f"/v/{i}-{hours}.mp4", "sampling": "{}",
            "teacher_id": "t", "status": status, "stage": stage, "error": error,
            "created_at": T0 + dt.timedelta(hours=hours)}


def one_at_a_time(source: SourceRead, cache: Path) -> dict:
    """What a report says, from every row as a dict (the rule, not the columns)."""
    rows = current_clips(read_clips_table(cache))
    states = [rows.get(k) for k in dict.fromkeys(digests_as_hex(source.keys))]
    failed = [r for r in states if r is not None and r["status"] != "ok"]
    examples = {}  # a reason's first clip in the source's order
    for r in failed:
        examples.setdefault(failure_reason(r["stage"], r["error"]), r["video_uri"])
    return {"clips": len(states), "ok": sum(r is not None and r["status"] == "ok" for r in states),
            "failed": len(failed), "reasons": Counter(failure_reason(r["stage"], r["error"]) for r in failed),
            "examples": examples}


def digests_as_hex(keys: pa.Array) -> list[str]:
    return [k.hex() for k in keys.to_pylist()]


def test_reports_count_ok_and_each_keys_latest_failure_before_and_after_compaction(tmp_path):
    write_clips_part(tmp_path, "s0", [
        row(0, "ok"),
        row(1, "failed", 0, "decode", "decoding failed at frame 3: /v/1.mp4"),
        row(2, "failed", 0, "decode", "decoding failed at frame 5: /v/2.mp4"),
        row(3, "failed", 2, "teacher", "out of memory: /v/3.mp4"),
        row(3, "failed", 2, "hash", "file not found: /v/3.mp4"),  # the same time: the later row speaks
    ])
    write_clips_part(tmp_path, "s1", [
        row(1, "failed", 1, "hash", "file not found: /v/1.mp4"),  # later: its reason is the key's
        row(2, "ok", 1),  # ok after a failure: ok
        row(4, "failed", 0, "decode", "decoding failed at frame 9: /v/4.mp4"),
    ])
    robofac = SourceRead("robofac=/r", samples=7,
                         keys=digests_of_hex(pa.array([key(i) for i in (0, 1, 2, 3, 5)]), str))
    videos = folder_source(Path("/v"), digests_of_hex(pa.array([key(i) for i in (4, 4, 0)]), str), samples=0)
    for compacted in (False, True):
        if compacted:
            assert compact_clips(tmp_path).rows == 8
        robofac_report, videos_report = source_reports([robofac, videos], tmp_path)
        for report, source in ((robofac_report, robofac), (videos_report, videos)):
            expected = one_at_a_time(source, tmp_path)
            assert (report["clips"], report["ok"], report["failed"]) == (
                expected["clips"], expected["ok"], expected["failed"])
            assert {f["reason"]: f["clips"] for f in report["top_failures"]} == dict(expected["reasons"])
            assert {f["reason"]: f["example"] for f in report["top_failures"]} == expected["examples"]
        # By hand: 0 ok, 1 latest "hash: file not found", 2 ok, 3 the later row of equal times, 5 not cached.
        assert (robofac_report["clips"], robofac_report["ok"], robofac_report["failed"]) == (5, 2, 2)
        assert robofac_report["top_failures"] == [
            {"reason": "hash: file not found", "clips": 2, "example": "/v/1-1.mp4"}]
        assert robofac_report["lost"] is None
        assert (videos_report["clips"], videos_report["ok"], videos_report["failed"]) == (2, 1, 1), "distinct keys"
        assert videos_report["top_failures"][0]["reason"] == "decode: decoding failed at frame N"
    lost = SourceRead("wolf=/w", samples=2, keys=digests_of_hex(pa.array([key(4)]), str))
    assert source_reports([lost], tmp_path)[0]["lost"] == "every clip failed (1 of 1)"
