"""What each source of a caching job ended with, so that nothing is lost silently: per `--source`
(and the `--videos` folder) its samples, the rows it left out, its clips ok / failed in the cache and
the top failure reasons with an example file. A source that yields nothing (every clip failed and no
image-only sample, or no sample at all) is LOST, and the job says so and exits with LOST_EXIT_CODE."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from manifests.clips_table import current_clips, read_clips_table
from manifests.schemas import CLIP_OK
from pipeline.datasets.mixture import SourceRead

LOST_EXIT_CODE = 3  # 1: the job could not run; 2: argparse's usage error
TOP_REASONS = 3
REPORT_COLUMNS = ("cache_key", "status", "created_at", "stage", "error", "video_uri")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def failure_reason(stage: str, error: str) -> str:
    """The kind of a failure, for grouping: its stage and its text up to the first colon (reasons are
    written as '<kind>: <details naming the file>'), numbers replaced by N ('decoding failed at
    frame 23' and '... frame 7' are one kind)."""
    kind = _NUMBER.sub("N", error.split(":", 1)[0].strip())
    return f"{stage}: {kind[:100]}"


def folder_source(root: Path, keys: set[str], samples: int) -> SourceRead:
    """The `--videos` folder as a source: every video one clip (its samples table, if any, counted)."""
    return SourceRead(f"videos={root}", samples=samples, keys=keys)


def source_reports(sources: list[SourceRead], cache_root: Path) -> list[dict]:
    """Per source, from the clips table as it stands (clips cached by earlier runs included)."""
    rows = current_clips(read_clips_table(cache_root, REPORT_COLUMNS)) if sources else {}
    reports = []
    for source in sources:
        statuses = [rows.get(key) for key in source.keys]
        failed = [r for r in statuses if r is not None and r["status"] != CLIP_OK]
        reasons = Counter(failure_reason(r["stage"] or "?", r["error"] or "") for r in failed)
        example = {}
        for r in failed:
            example.setdefault(failure_reason(r["stage"] or "?", r["error"] or ""), r["video_uri"])
        ok = sum(r is not None and r["status"] == CLIP_OK for r in statuses)
        report = {
            "source": source.label, "samples": source.samples, "image_only_samples": source.image_only,
            "rows_skipped": len(source.skipped), "clips": len(source.keys), "ok": ok, "failed": len(failed),
            "top_failures": [{"reason": reason, "clips": n, "example": example[reason]}
                             for reason, n in reasons.most_common(TOP_REASONS)],
        }
        report["lost"] = lost_reason(report)
        reports.append(report)
    return reports


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
