"""What each source of a caching job ended with, so that nothing is lost silently: per `--source`
(and the `--videos` folder) its samples, the rows it left out, its clips ok / failed in the cache and
the top failure reasons with an example file. A source that yields nothing (every clip failed and no
image-only sample, or no sample at all) is LOST, and the job says so and exits with LOST_EXIT_CODE."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.cache_key import DIGEST, digests_of_hex
from manifests.clips_table import read_clips_table
from manifests.planner import contains, recorded_keys
from manifests.schemas import CLIP_OK
from pipeline.datasets.mixture import SourceRead

LOST_EXIT_CODE = 3  # 1: the job could not run; 2: argparse's usage error
TOP_REASONS = 3
FAILURE_COLUMNS = ("cache_key", "status", "created_at", "stage", "error", "video_uri")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def failure_reason(stage: str, error: str) -> str:
    """The kind of a failure, for grouping: its stage and its text up to the first colon (reasons are
    written as '<kind>: <details naming the file>'), numbers replaced by N ('decoding failed at
    frame 23' and '... frame 7' are one kind)."""
    kind = _NUMBER.sub("N", error.split(":", 1)[0].strip())
    return f"{stage}: {kind[:100]}"


def folder_source(root: Path, keys: pa.Array | pa.ChunkedArray, samples: int) -> SourceRead:
    """The `--videos` folder as a source: every video one clip (its samples table, if any, counted)."""
    return SourceRead(f"videos={root}", samples=samples, keys=keys)


def source_reports(sources: list[SourceRead], cache_root: Path) -> list[dict]:
    """Per source, from the clips table as it stands (clips cached by earlier runs included): in columns,
    so that a cache of ten million clips is counted without a Python object per clip."""
    if not sources:
        return []
    ok_keys = recorded_keys(cache_root, ok_only=True)
    failures = latest_failures(cache_root)
    failed_keys = failures["cache_key"].combine_chunks()
    reports = []
    for source in sources:
        keys = pc.unique(source.keys)  # computed after the job: not beside planning's columns
        ok = contains(ok_keys, keys)
        # A key without an ok row is failed when it has a failed row; index_in finds its first, the latest.
        at = pc.index_in(keys.filter(pa.array(~ok)), value_set=failed_keys).drop_null()
        failed = failures.take(at).to_pylist()
        reasons = Counter(failure_reason(r["stage"] or "?", r["error"] or "") for r in failed)
        example = {}
        for r in failed:
            example.setdefault(failure_reason(r["stage"] or "?", r["error"] or ""), r["video_uri"])
        report = {
            "source": source.label, "samples": source.samples, "image_only_samples": source.image_only,
            "rows_skipped": len(source.skipped), "clips": len(keys), "ok": int(ok.sum()), "failed": len(failed),
            "top_failures": [{"reason": reason, "clips": n, "example": example[reason]}
                             for reason, n in reasons.most_common(TOP_REASONS)],
        }
        report["lost"] = lost_reason(report)
        reports.append(report)
    return reports


def latest_failures(cache_root: Path) -> pa.Table:
    """The clips table's failed rows (FAILURE_COLUMNS, cache_key as binary(32)), latest first (the later
    row of equal times first): a key's first row here is what current_clips picks for a key without an
    ok row. Ok rows are left out as they are read: at 10M clips they are most of the table."""
    def failed_rows(rows: pa.Table, where) -> pa.Table:
        rows = rows.filter(pc.not_equal(rows["status"], CLIP_OK))
        keys = digests_of_hex(rows["cache_key"], lambda row: f"{where(row)}: field 'cache_key'")
        return rows.set_column(0, pa.field("cache_key", DIGEST), keys)

    rows = read_clips_table(cache_root, FAILURE_COLUMNS, convert=failed_rows)
    rows = rows.append_column("order", pa.array(np.arange(rows.num_rows)))
    return rows.sort_by([("created_at", "descending"), ("order", "descending")])


def lost_reason(report: dict) -> str | None:
    if report["samples"] == 0 and report["clips"] == 0:
        return f"no sample: all {report['rows_skipped']} annotation rows were left out" if report["rows_skipped"] \
            else "nothing found"
    if report["clips"] and report["ok"] == 0 and report["image_only_samples"] == 0:
        return f"every clip failed ({report['failed']} of {report['clips']})"
    return None


def report_line(report: dict) -> str:
    """One line per source: `source robofac=/r: 3 samples, 2 clips: 0 ok, 2 failed (hash: file not found
    x2, e.g. /r/simulation_data/...)`."""
    parts = [f"{report['samples']} samples"]
    if report["image_only_samples"]:
        parts.append(f"{report['image_only_samples']} image-only")
    if report["rows_skipped"]:
        parts.append(f"{report['rows_skipped']} rows skipped")
    text = f"source {report['source']}: {', '.join(parts)}; {report['clips']} clips: {report['ok']} ok, " \
           f"{report['failed']} failed"
    if report["top_failures"]:
        text += " (" + "; ".join(f"{f['reason']} x{f['clips']}, e.g. {f['example']}"
                                 for f in report["top_failures"]) + ")"
    if report["lost"]:
        text += f" -- LOST: {report['lost']}"
    return text


def lost_sources(reports: list[dict]) -> list[dict]:
    return [r for r in reports if r["lost"]]
