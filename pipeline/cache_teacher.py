"""Cache a frozen teacher's outputs for a folder of videos, once.

  python pipeline/cache_teacher.py --videos DIR --teacher oracle|l4p-tiny --format zarr|wds --out CACHE
  python pipeline/cache_teacher.py --source robofac=ROOT --source sat=ROOT ... --out CACHE   # datasets as published
  python pipeline/cache_teacher.py --source ... --out CACHE --check   # what it would compute and cost

Runs on an in-process Ray, or under `ray job submit` on the cluster it was submitted to (the default
--ray-address auto follows RAY_ADDRESS, which a submitted job has). Exit code 0 when every clip ended
ok or failed with its reason and every source yielded something (see CACHE/summary.json); 1 when the
job itself could not run (bad config, a malformed annotation row in strict mode, cache locked, disk
full, every teacher actor dead, ...); 2 a command-line usage error; 4 when some clips failed for a
reason of the machine every time they were tried (out of memory, a lost worker: status `transient`,
which a rerun retries); else 3 when a source yielded nothing (every clip of it failed, or every row of
it was left out): the cache is consistent, the log's last lines say which source and why.
--check exits 0, 1 or 3 likewise.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (python pipeline/cache_teacher.py, as `ray job submit` does): import from the project root, and not from pipeline/ itself,
    # whose module names (config, datasets, ...) would shadow installed packages.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipeline.cache_dir import CacheFullError, CacheLockedError  # noqa: E402
from pipeline.config import build_parser, load_config  # noqa: E402
from pipeline.preflight import check_exit_code, format_check, run_check  # noqa: E402
from pipeline.runner import run_job  # noqa: E402
from pipeline.scheduler import TeachersLostError  # noqa: E402
from pipeline.source_report import LOST_EXIT_CODE, lost_sources, report_line  # noqa: E402
from shards.store import join  # noqa: E402

log = logging.getLogger("p4d.cache_teacher")

TRANSIENT_EXIT_CODE = 4


def format_summary(summary: dict) -> str:
    clips = summary["clips"]
    lines = [
        f"cache: {summary['cache']} ({summary['format']}, teacher {summary['teacher_id']})",
        f"clips: {clips['wanted']} wanted, {clips['already_cached']} already cached, "
        f"{clips['computed']} computed: {clips['ok']} ok, {clips['failed']} failed "
        f"({summary['failures_by_kind']['transient']} transient); {summary['retries']['clips']} retries, "
        f"{summary['retries']['teacher_restarts']} teacher restarts",
        f"written: {len(summary['shards_written'])} shards, {summary['bytes_on_disk'] / 1e6:.1f} MB on disk "
        f"({summary['bytes_written'] / 1e6:.1f} MB before compression)",
        "seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds"].items())
        + f"; wall {summary['wall_seconds']:.1f} s, {summary['clips_per_second']:.2f} clips/s",
    ]
    for reason, count in summary["failures_by_reason"].items():
        lines.append(f"failed ({count}): {reason}")
    for reason, count in summary["samples"]["skipped_by_reason"].items():
        lines.append(f"skipped annotation rows ({count}): {reason} (listed in summary.json)")
    lines += [report_line(report) for report in summary["sources"]]
    return "\n".join(lines)


def final_line(summary: dict) -> str:
    clips, kinds = summary["clips"], summary["failures_by_kind"]
    reasons = "; ".join(f"{count} x {reason}" for reason, count in summary["failures_by_reason"].items())
    failed = f"{clips['failed']} failed ({reasons}): {kinds['input']} by their input, {kinds['transient']} " \
             "transient (retried by the next run)" if clips["failed"] else "0 failed"
    return (f"done: {clips['wanted']} clips wanted, {clips['already_cached']} already cached, "
            f"{clips['ok']} ok, {failed}; {join(summary['cache'], 'summary.json')}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser(__doc__.strip().splitlines()[0]).parse_args(argv)
    try:
        config = load_config(args)
        if config.check:
            report = run_check(config)
            print(format_check(report))
            return check_exit_code(report)
        summary = run_job(config)
    except (ValueError, CacheLockedError, CacheFullError, TeachersLostError, FileNotFoundError) as e:
        log.error("%s", e)
        return 1
    print(format_summary(summary))
    print(json.dumps({"summary": str(join(summary["cache"], "summary.json"))}))
    for report in summary["sources"]:
        (log.error if report["lost"] else log.info)("%s", report_line(report))
    log.info("%s", final_line(summary))
    if summary["failures_by_kind"]["transient"]:
        return TRANSIENT_EXIT_CODE
    return LOST_EXIT_CODE if lost_sources(summary["sources"]) else 0


if __name__ == "__main__":
    sys.exit(main())
