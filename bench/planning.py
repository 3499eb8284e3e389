"""Planning a rerun at scale: seconds and peak memory to decide what is missing, for 10k and 100k clips.

    .venv/bin/python bench/planning.py [--sizes 10000,100000] [--rows-per-part 64] [--workdir DIR]

For each size N, in its own fresh process (so the peak RSS is the plan's alone):
  setup (not timed)  N small video files (256 random bytes, 1000 per folder), a first planning pass
                     that hashes them all (its seconds are printed: "cold hash"), then the clips table
                     of a finished run: N rows with the job's real cache keys, field specs (the default
                     storage's JSON), checksums of every stored array, 16 timestamps, 5 % failed rows,
                     in parts of --rows-per-part rows (one part per committed shard). Then 1 % new videos.
  rerun plan         what pipeline/runner.py does before any Ray work, in a new process: find the
                     videos (pipeline.sources.load_sources), key them with the content-hash cache
                     (build_requests + manifests.content_hash, every unchanged video a hit), read the
                     clips table's planning columns (read_clips_table(PLAN_COLUMNS)), current_status,
                     plan_missing. Printed per stage, plus the process's peak RSS and its RSS after the
                     imports (the part that does not grow with N).
The limit beside it: the cold hash of the same files (the bytes re-read without the cache; real
videos are MBs, so on real data that column grows with the bytes, not only the count).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.conditions import print_conditions  # noqa: E402

TEACHER_ID = "l4p:bench"
FAILED_FRACTION = 0.05
NEW_FRACTION = 0.01
PER_FOLDER = 1000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def job_inputs():
    from pipeline.config import JobConfig, TeacherConfig
    from pipeline.runner import field_specs
    from pipeline.sampling import SamplingConfig
    from pipeline.teachers.oracle import OracleTeacher
    from shards.schema import specs_to_json

    shapes = OracleTeacher.identity(TeacherConfig(name="oracle"), 16).shapes
    specs = field_specs(JobConfig(), shapes, 16)
    return asdict(SamplingConfig(num_frames=16)), specs, specs_to_json(specs)


def write_videos(videos: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        folder = videos / f"d{i // PER_FOLDER:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"v{i:07d}.mp4").write_bytes(os.urandom(256))


def setup(workdir: Path, n: int, rows_per_part: int) -> dict:
    """Videos, a first (cold) keying pass, and the clips table of a finished run."""
    from manifests.clips_table import write_clips_part
    from manifests.content_hash import ContentHashes
    from pipeline.sources import build_requests, load_sources
    from shards.codecs import stored_specs

    sampling, specs, spec_json = job_inputs()
    videos, cache = workdir / "videos", workdir / "cache"
    write_videos(videos, 0, n)
    root, found, _, _ = load_sources(str(videos), None)
    t = time.perf_counter()
    hashes = ContentHashes.of_cache(cache)
    requests = build_requests(found, root, sampling, TEACHER_ID, spec_json, hashes.sha256)
    hashes.save()
    cold = time.perf_counter() - t
    stored = [s.name for s in stored_specs(specs)]
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    failed_every = round(1 / FAILED_FRACTION)
    for part, start in enumerate(range(0, n, rows_per_part)):
        rows = []
        for i, r in enumerate(requests[start:start + rows_per_part], start):
            row = {"cache_key": r.cache_key, "clip_id": r.clip_id, "video_uri": r.video_uri,
                   "video_sha256": r.video_sha256, "sampling": json.dumps(sampling), "teacher_id": TEACHER_ID,
                   "created_at": created, "frame_indices": list(range(16)),
                   "timestamps": [k / 30 for k in range(16)], "window_starts": [0]}
            if i % failed_every == 0:
                row.update(status="failed", stage="decode", error=f"decoding failed at frame {i % 16}: {r.video_uri}")
            else:
                row.update(status="ok", format="zarr", shard=f"shards/zarr/s{part:06d}.zarr", row=i - start,
                           nbytes=30_000_000, fields=spec_json,
                           checksums={name: f"{i:064x}" for name in stored})
            rows.append(row)
        write_clips_part(cache, f"s{part:06d}", rows)
    write_videos(videos, n, max(1, round(n * NEW_FRACTION)))
    return {"cold_hash_s": cold, "parts": -(-n // rows_per_part)}


def plan(workdir: Path) -> dict:
    """A rerun's plan, timed per stage, as pipeline/runner.py makes it."""
    baseline = rss_mb()
    from manifests.clips_table import PLAN_COLUMNS, current_status, read_clips_table
    from manifests.content_hash import ContentHashes
    from manifests.planner import plan_missing
    from pipeline.sources import build_requests, load_sources

    sampling, _, spec_json = job_inputs()
    imported = rss_mb()
    seconds = {}
    t = time.perf_counter()
    root, found, _, _ = load_sources(str(workdir / "videos"), None)
    seconds["find videos"] = time.perf_counter() - t
    t = time.perf_counter()
    hashed = []

    def counting(path):
        hashed.append(path)
        from manifests.cache_key import file_sha256

        return file_sha256(path)

    hashes = ContentHashes.of_cache(workdir / "cache", counting)
    requests = build_requests(found, root, sampling, TEACHER_ID, spec_json, hashes.sha256)
    hashes.save()
    seconds["hash + keys"] = time.perf_counter() - t
    t = time.perf_counter()
    table = read_clips_table(workdir / "cache", PLAN_COLUMNS)
    status = current_status(table)
    seconds["read manifest"] = time.perf_counter() - t
    t = time.perf_counter()
    todo = plan_missing(requests, lambda r: r.cache_key, status)
    seconds["plan_missing"] = time.perf_counter() - t
    return {"seconds": seconds, "total_s": sum(seconds.values()), "wanted": len(requests), "rows": table.num_rows,
            "todo": len(todo), "rehashed": len(hashed), "rss_baseline_mb": baseline, "rss_imports_mb": imported,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(args) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    workdir = Path(args.child_dir)
    result = setup(workdir, args.child_size, args.rows_per_part) if args.child == "setup" else plan(workdir)
    print(json.dumps(result))


def run_child(stage: str, workdir: Path, n: int, rows_per_part: int) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--child-dir", str(workdir), "--child-size", str(n),
           "--rows-per-part", str(rows_per_part)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--sizes", default="10000,100000", help="clips per manifest, comma-separated")
    parser.add_argument("--rows-per-part", type=int, default=64, help="clips per manifest part (= per shard)")
    parser.add_argument("--workdir", type=Path, default=None, help="where files go (default: a temporary dir)")
    parser.add_argument("--child", choices=["setup", "plan"], help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    parser.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="p4d-bench-planning-", dir=args.workdir))
    try:
        print_conditions("bench/planning.py: planning a rerun (what is missing) at 10k-100k clips",
                         ["pyarrow", "numpy"], base)
        print(f"sizes: {sizes} clips, {args.rows_per_part} rows per manifest part, {FAILED_FRACTION:.0%} failed rows, "
              f"{NEW_FRACTION:.0%} new videos added after the run; each plan in a fresh process")
        header = (f"{'clips':>8}{'parts':>7}{'find s':>8}{'hash+keys s':>12}{'manifest s':>11}{'plan s':>8}"
                  f"{'TOTAL s':>9}{'re-read':>8}{'to do':>7}{'peak RSS MB':>12}{'after imports MB':>17}{'cold hash s':>12}")
        results = []
        for n in sizes:
            workdir = base / f"n{n}"
            workdir.mkdir()
            prepared = run_child("setup", workdir, n, args.rows_per_part)
            got = run_child("plan", workdir, n, args.rows_per_part)
            expected_todo = max(1, round(n * NEW_FRACTION))
            if got["todo"] != expected_todo or got["rehashed"] != expected_todo:
                raise RuntimeError(f"{n} clips: planned {got['todo']} / re-read {got['rehashed']}, expected {expected_todo}")
            results.append((n, prepared, got))
            shutil.rmtree(workdir)
        print(header)
        for n, prepared, got in results:
            s = got["seconds"]
            print(f"{n:>8}{prepared['parts']:>7}{s['find videos']:>8.2f}{s['hash + keys']:>12.2f}{s['read manifest']:>11.2f}"
                  f"{s['plan_missing']:>8.3f}{got['total_s']:>9.2f}{got['rehashed']:>8}{got['todo']:>7}"
                  f"{got['peak_rss_mb']:>12.0f}{got['rss_imports_mb']:>17.0f}{prepared['cold_hash_s']:>12.2f}")
        if len(results) > 1:
            (n0, _, a), (n1, _, b) = results[0], results[-1]
            print(f"growth {n0} -> {n1} clips ({n1 / n0:.0f}x): time {b['total_s'] / a['total_s']:.1f}x, "
                  f"peak RSS above imports {(b['peak_rss_mb'] - b['rss_imports_mb']) / max(a['peak_rss_mb'] - a['rss_imports_mb'], 1):.1f}x")
        print("(re-read = videos whose bytes were hashed: only the new ones; to do = clips planned: the new videos,\n"
              " failed rows are not retried. cold hash = the first run's hashing + keying of the same files, 256 B each.)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
