"""Planning a rerun at scale: seconds and peak memory per stage to decide what is missing, for a folder
of videos (up to 1M real files) and for videos named by an annotation table (to 10M rows), and what
compacting the clips table costs.

    .venv/bin/python bench/planning.py [--folder-sizes 100000] [--table-sizes 1000000,10000000]
                                       [--span-sizes 1000000] [--rows-per-part 64] [--workdir DIR]

Each step runs in its own fresh process, so each peak RSS is that step's alone; a stage's peak is the
process's high-water mark during that stage (reset before it through /proc/self/clear_refs).

folder N  setup (not timed): N small video files (256 random bytes, 1000 per folder), a first keying
          that reads them all (its seconds: "cold hash"), the clips table of a finished run (realistic
          rows: the job's cache keys, field specs, checksums of every stored array, 16 timestamps, 5 %
          failed) in parts of --rows-per-part rows, then 1 % new videos. Timed: the rerun's plan on the
          parts, `compact` (manifests.compaction, as `python -m pipeline.compact` runs it), the plan
          again on the compacted table.
table N   an annotation table (sample_id, video) naming N videos in shuffled order, + 1 % new ones, as
          a samples table names them. Written, not walked: the N folders exist (one per 1000 videos)
          but only the new videos are files; the old ones' size and mtime come from a listing (a stand-
          in for their stat, whose per-file cost the folder case measures), their remembered hashes
          and the clips table (one compacted file, as compaction leaves it) come from a finished run.
spans N   the keys stage alone (pipeline.sources.keyed_requests) for N clips of N/2 videos, without spans
          and with each clip its own span of the video (STI-Bench's kind: SPAN_KINDS distinct spans),
          alternated, medians of --repeats, in one process; the requests table's bytes of each.
Stages, what pipeline/runner.py does before any Ray work: inputs (walk the folder / read the table's
video column and resolve its paths inside the root), stat, hashes (remembered-hash lookup + reading
the new files), keys (cache keys and clip ids), save (the remembered hashes rewritten), plan (the clips
table's keys read, matched, the missing clips as objects).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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
FAILED_EVERY = 20  # 5 % failed rows
NEW_FRACTION = 0.01
PER_FOLDER = 1000
CHUNK = 1 << 16  # rows generated at a time in setups
STAGES = ("inputs", "stat", "hashes", "keys", "save", "plan")
GOAL = {1_000_000: 6.0, 10_000_000: 60.0}  # seconds, from the issue; and 4 GB peak at 10M
GOAL_PEAK_MB = 4096
SPAN_KINDS = 1000


def high_water_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_high_water() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Stages:
    """Seconds (wall, and CPU of all the process's threads), peak RSS (MB) of each stage, in order."""

    def __init__(self):
        self.seconds, self.cpu_seconds, self.peak_mb = {}, {}, {}

    def run(self, name: str, step):
        reset_high_water()
        start, cpu = time.perf_counter(), time.process_time()
        result = step()
        self.seconds[name] = time.perf_counter() - start
        self.cpu_seconds[name] = time.process_time() - cpu
        self.peak_mb[name] = high_water_mb()
        return result

    def summary(self) -> dict:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "peak_mb": self.peak_mb}


def job_inputs():
    from pipeline.config import JobConfig, TeacherConfig
    from pipeline.runner import field_specs
    from pipeline.sampling import SamplingConfig
    from pipeline.teachers.oracle import OracleTeacher
    from shards.codecs import stored_specs
    from shards.schema import specs_to_json

    shapes = OracleTeacher.identity(TeacherConfig(name="oracle"), 16).shapes
    specs = field_specs(JobConfig(), shapes, 16)
    return asdict(SamplingConfig(num_frames=16)), specs_to_json(specs), [s.name for s in stored_specs(specs)]


# -- setup ----------------------------------------------------------------------------------------

def write_videos(videos: Path, names: list[str]) -> None:
    for name in names:
        path = videos / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(256))


def video_names(start: int, count: int, folder: str = "d") -> list[str]:
    return [f"{folder}{i // PER_FOLDER:05d}/v{i:08d}.mp4" for i in range(start, start + count)]


def clips_rows(requests, spec_json: str, stored: list[str], sampling: dict, shard_rows: int):
    """The clips table of a finished run for `requests` (CLIP_REQUESTS_SCHEMA, in table order), as
    tables of up to CHUNK rows: what the shard writers wrote, with random checksums."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from manifests.cache_key import hex_digests
    from manifests.schemas import CLIPS_SCHEMA

    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    hex_table = np.frombuffer(b"0123456789abcdef", np.uint8)
    for start in range(0, requests.num_rows, CHUNK):
        chunk = requests.slice(start, CHUNK)
        n = chunk.num_rows
        index = np.arange(start, start + n)
        failed = index % FAILED_EVERY == 0
        ok = ~failed

        def const(value, dtype=pa.string()):
            return pa.array([value], dtype).take(pa.array(np.zeros(n, np.int64)))

        def lists(values, dtype, width):
            return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)),
                                            pa.array(np.tile(values, n), dtype))

        entries = n * len(stored)
        sums = hex_table[np.random.randint(0, 16, (entries, 64), dtype=np.uint8)]
        checksums = pa.MapArray.from_arrays(
            pa.array(np.arange(0, entries + 1, len(stored), dtype=np.int32)),
            pa.array(np.tile(np.array(stored, object), n), pa.string()),
            pa.Array.from_buffers(pa.string(), entries, [None, pa.py_buffer(np.arange(0, (entries + 1) * 64, 64,
                                                                                       dtype=np.int32)),
                                                         pa.py_buffer(sums)]),
            mask=pa.array(failed))
        shard = pc.binary_join_element_wise("shards/zarr/s", pc.cast(pa.array(index // shard_rows), pa.string()),
                                            ".zarr", "")
        decode = pc.binary_join_element_wise("decoding failed at frame ", pc.cast(pa.array(index % 16), pa.string()),
                                             ": ", chunk["video_uri"], "")
        columns = {
            "cache_key": hex_digests(chunk["cache_key"].combine_chunks()),
            "clip_id": chunk["clip_id"], "video_uri": chunk["video_uri"],
            "video_sha256": hex_digests(chunk["video_sha256"].combine_chunks()),
            "sampling": const(json.dumps(sampling, sort_keys=True)),
            "frame_indices": lists(np.arange(16), pa.int32(), 16),
            "timestamps": lists(np.arange(16) / 30, pa.float64(), 16),
            "window_starts": lists(np.zeros(1), pa.int32(), 1),
            "teacher_id": const(TEACHER_ID),
            "status": pa.array(np.where(failed, "failed", "ok")),
            "stage": pa.array(np.where(failed, "decode", None)),
            "error": pc.if_else(pa.array(failed), decode, pa.scalar(None, pa.string())),
            "format": pa.array(np.where(failed, None, "zarr")),
            "shard": pc.if_else(pa.array(ok), shard, pa.scalar(None, pa.string())),
            "row": pa.array(index % shard_rows, pa.int32(), mask=failed),
            "nbytes": pa.array(np.full(n, 30_000_000), pa.int64(), mask=failed),
            "checksums": checksums,
            "fields": const(spec_json),
            "created_at": const(created, CLIPS_SCHEMA.field("created_at").type),
        }
        yield pa.table(list(columns.values()), schema=CLIPS_SCHEMA)


def setup_folder(workdir: Path, n: int, rows_per_part: int) -> dict:
    import pyarrow.parquet as pq

    from manifests.clips_table import CLIPS_DIR
    from manifests.content_hash import ContentHashes
    from pipeline.sources import build_requests, load_sources

    sampling, spec_json, stored = job_inputs()
    videos, cache = workdir / "videos", workdir / "cache"
    write_videos(videos, video_names(0, n))
    root, found, _, _ = load_sources(str(videos), None)
    start = time.perf_counter()
    hashes = ContentHashes.of_cache(cache)
    requests = build_requests(found, root, sampling, TEACHER_ID, spec_json, hashes)
    hashes.save()
    cold = time.perf_counter() - start
    parts = cache / CLIPS_DIR
    parts.mkdir(parents=True)
    count = 0
    for table in clips_rows(requests, spec_json, stored, sampling, rows_per_part):
        for offset in range(0, table.num_rows, rows_per_part):
            pq.write_table(table.slice(offset, rows_per_part), parts / f"part-s{count:07d}.parquet")
            count += 1
    write_videos(videos, video_names(n, new_count(n), folder="n"))
    return {"cold_hash_s": cold, "parts": count, "manifest_mb": dir_mb(parts)}


def setup_table(workdir: Path, n: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from manifests.cache_key import DIGEST, hex_digests
    from manifests.clips_table import CLIPS_DIR, folds_metadata
    from manifests.compaction import ROW_GROUP_ROWS
    from manifests.content_hash import HASHES_FILE, HASHES_SCHEMA, IDENTITIES_SCHEMA
    from manifests.schemas import CLIPS_SCHEMA
    from pipeline.sources import keyed_requests

    sampling, spec_json, stored = job_inputs()
    videos, cache = workdir / "videos", workdir / "cache"
    old, new = video_names(0, n), video_names(n, new_count(n), folder="n")
    for folder in sorted({name.split("/")[0] for name in old}):
        (videos / folder).mkdir(parents=True)
    write_videos(videos, new)
    names = pa.array(old + new)
    order = np.random.default_rng(0).permutation(len(names))
    pq.write_table(pa.table({"sample_id": pa.array(np.arange(len(names)).astype(str)), "video": names.take(order)}),
                   workdir / "annotations.parquet")
    # What a finished run left for the old videos: their listing, remembered hashes and clips table.
    paths = pc.binary_join_element_wise(str(videos.resolve()), pa.array(old), "/")
    sizes, mtimes = np.full(n, 256, np.int64), 1_767_225_600_000_000_000 + np.arange(n, dtype=np.int64)
    pq.write_table(pa.table({"size": sizes, "mtime_ns": mtimes, "regular": np.ones(n, bool),
                             "error": pa.nulls(n, pa.string())}), workdir / "listing.parquet")
    sha = pa.FixedSizeBinaryArray.from_buffers(DIGEST, n, [None, pa.py_buffer(np.random.bytes(32 * n))])
    (cache / HASHES_FILE).parent.mkdir(parents=True)
    pq.write_table(pa.table([paths, sizes, mtimes, hex_digests(sha)], schema=HASHES_SCHEMA), cache / HASHES_FILE)
    requests = keyed_requests(paths, pa.table([sha, pa.nulls(n, pa.string())], schema=IDENTITIES_SCHEMA), videos,
                              sampling, TEACHER_ID, spec_json)
    requests = requests.take(pc.sort_indices(hex_digests(requests["cache_key"].combine_chunks())))
    compacted = cache / CLIPS_DIR / "compacted-00000001.parquet"
    compacted.parent.mkdir(parents=True)
    with pq.ParquetWriter(compacted, CLIPS_SCHEMA) as writer:
        for table in clips_rows(requests, spec_json, stored, sampling, 8):
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        writer.add_key_value_metadata(folds_metadata([]))
    return {"cold_hash_s": float("nan"), "parts": 0, "manifest_mb": dir_mb(compacted.parent)}


def new_count(n: int) -> int:
    return max(1, round(n * NEW_FRACTION))


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 1e6


# -- timed ----------------------------------------------------------------------------------------

def plan(workdir: Path, case: str) -> dict:
    """A rerun's plan, stage by stage, as pipeline/runner.py makes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from manifests.content_hash import ContentHashes, file_stats
    from manifests.planner import missing_clips
    from pipeline.sources import clip_requests, keyed_requests, load_sources, sample_videos

    sampling, spec_json, _ = job_inputs()
    imported = high_water_mb()
    videos, cache, stages = workdir / "videos", workdir / "cache", Stages()
    hashed = []

    def counting(path):
        from manifests.cache_key import file_sha256

        hashed.append(path)
        return file_sha256(path)

    if case == "folder":
        paths = stages.run("inputs", lambda: load_sources(str(videos), None)[1])
        stats = stages.run("stat", lambda: file_stats(paths))
    else:
        annotations = workdir / "annotations.parquet"
        paths = stages.run("inputs", lambda: sample_videos(pq.read_table(annotations, columns=["video"]), annotations,
                                                           videos))

        def listed_then_new():
            listing = pq.read_table(workdir / "listing.parquet")
            fresh = paths.slice(listing.num_rows)
            return pa.concat_tables([listing, file_stats(fresh)]).combine_chunks()

        stats = stages.run("stat", listed_then_new)
    hashes = ContentHashes.of_cache(cache, counting)
    identities = stages.run("hashes", lambda: hashes.identify(paths, stats))
    del stats
    requests = stages.run("keys", lambda: keyed_requests(paths, identities, videos, sampling, TEACHER_ID, spec_json))
    del identities
    stages.run("save", hashes.save)
    todo = stages.run("plan", lambda: clip_requests(missing_clips(requests, cache)))
    result = {**stages.summary(), "wanted": requests.num_rows, "todo": len(todo), "rehashed": len(hashed),
              "rss_imports_mb": imported}
    if case == "folder":
        result["limits"] = filesystem_limits(videos, paths)
    return result


def filesystem_limits(videos: Path, paths) -> dict:
    """The same walk and stats as bare loops: what the filesystem costs whatever the code around it."""
    start = time.perf_counter()
    pending, entries = [str(videos)], 0
    while pending:
        for entry in os.scandir(pending.pop()):
            entries += 1
            if entry.is_dir():
                pending.append(entry.path)
    walk = time.perf_counter() - start
    names = paths.to_pylist()
    start = time.perf_counter()
    for name in names:
        os.stat(name)
    return {"walk_s": walk, "stat_s": time.perf_counter() - start}


def compact(workdir: Path) -> dict:
    from manifests.compaction import compact_clips

    before = dir_mb(workdir / "cache" / "manifests" / "clips")
    imported = high_water_mb()
    stages = Stages()
    result = stages.run("compact", lambda: compact_clips(workdir / "cache"))
    return {"seconds": stages.seconds["compact"], "cpu_seconds": stages.cpu_seconds["compact"],
            "peak_mb": stages.peak_mb["compact"], "rss_imports_mb": imported,
            "files_folded": len(result.folded), "rows": result.rows, "mb_before": before,
            "mb_after": dir_mb(workdir / "cache" / "manifests" / "clips")}


def spans(n: int, repeats: int) -> dict:
    """Keys and clip ids of n clips (n/2 videos, two clips each) without spans, then with a span each."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from manifests.cache_key import DIGEST
    from manifests.content_hash import IDENTITIES_SCHEMA
    from pipeline.sources import keyed_requests, span_table

    sampling, spec_json, _ = job_inputs()
    root = Path("/data/videos")
    names = pa.array(video_names(0, n // 2) * 2)
    paths = pc.binary_join_element_wise(str(root), names, "/")
    sha = pa.FixedSizeBinaryArray.from_buffers(DIGEST, len(paths), [None, pa.py_buffer(np.random.bytes(32 * len(paths)))])
    identities = pa.table([sha, pa.nulls(len(paths), pa.string())], schema=IDENTITIES_SCHEMA)
    start = np.arange(len(paths)) % SPAN_KINDS * 0.5
    spanned = span_table(list(zip(start.tolist(), (start + 3.0).tolist())))
    times = {"without": [], "with": []}
    sizes = {}
    for _ in range(repeats):
        for label, table in (("without", None), ("with", spanned)):
            began = time.perf_counter()
            requests = keyed_requests(paths, identities, root, sampling, TEACHER_ID, spec_json, table)
            times[label].append(time.perf_counter() - began)
            sizes[label] = requests.nbytes
            del requests
    return {"seconds": {k: sorted(v)[len(v) // 2] for k, v in times.items()}, "mb": {k: v / 1e6 for k, v in sizes.items()},
            "clips": len(paths)}


def child(args) -> None:
    workdir = Path(args.child_dir)
    if args.child == "setup-folder":
        result = setup_folder(workdir, args.child_size, args.rows_per_part)
    elif args.child == "setup-table":
        result = setup_table(workdir, args.child_size)
    elif args.child == "compact":
        result = compact(workdir)
    elif args.child == "spans":
        result = spans(args.child_size, args.repeats)
    else:
        result = plan(workdir, args.child.split("-", 1)[1])
    print(json.dumps(result))


def run_child(step: str, workdir: Path, n: int, rows_per_part: int, repeats: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--child-dir", str(workdir), "--child-size", str(n),
           "--rows-per-part", str(rows_per_part), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode:
        raise RuntimeError(f"{step} of {n}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(n: int, got: dict) -> None:
    expected = new_count(n)
    if got["todo"] != expected or got["rehashed"] != expected:
        raise RuntimeError(f"{n} clips: planned {got['todo']} / re-read {got['rehashed']}, expected {expected}")


def print_row(label: str, n: int, got: dict) -> None:
    s, peak = got["seconds"], got["peak_mb"]
    total = sum(s.values())
    goal = GOAL.get(n)
    verdict = "" if goal is None else (" ok" if total < goal and (n < 10_000_000 or max(peak.values()) < GOAL_PEAK_MB)
                                       else " MISSED")
    print(f"{label:<22}{n:>9}" + "".join(f"{s[k]:>10.2f}" for k in STAGES) + f"{total:>9.2f}"
          f"{max(peak.values()):>9.0f}{got['rss_imports_mb']:>8.0f}{verdict}")
    cpu = got["cpu_seconds"]
    print(f"{'  CPU s (all threads)':<31}" + "".join(f"{cpu[k]:>10.2f}" for k in STAGES) + f"{sum(cpu.values()):>9.2f}")
    print(f"{'  peak RSS MB':<31}" + "".join(f"{peak[k]:>10.0f}" for k in STAGES))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--folder-sizes", default="100000", help="videos in the folder case, comma-separated")
    parser.add_argument("--table-sizes", default="1000000,10000000", help="videos in the table case, comma-separated")
    parser.add_argument("--span-sizes", default="1000000", help="clips in the spans case, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each side in the spans case")
    parser.add_argument("--rows-per-part", type=int, default=64, help="clips per manifest part (= per shard)")
    parser.add_argument("--workdir", type=Path, default=None, help="where files go (default: a temporary dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    parser.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    sizes = {case: [int(s) for s in text.split(",") if s] for case, text in
             (("folder", args.folder_sizes), ("table", args.table_sizes), ("spans", args.span_sizes))}
    base = Path(tempfile.mkdtemp(prefix="p4d-bench-planning-", dir=args.workdir))
    try:
        print_conditions("bench/planning.py: planning a rerun (what is missing) at 100k-10M clips",
                         ["pyarrow", "numpy"], base)
        print(f"folder sizes {sizes['folder']}, table sizes {sizes['table']}, span sizes {sizes['spans']}; "
              f"{args.rows_per_part} rows per manifest "
              f"part, 1 in {FAILED_EVERY} rows failed, {NEW_FRACTION:.0%} new videos after the run; every step in a "
              "fresh process")
        rows, compactions, prepared = [], [], {}
        for case in ("folder", "table"):
            for n in sizes[case]:
                workdir = base / f"{case}-{n}"
                workdir.mkdir()
                prepared[case, n] = run_child(f"setup-{case}", workdir, n, args.rows_per_part)
                if case == "folder":
                    # The plan saves the new videos' hashes: the second plan must find them unknown too.
                    hashes = workdir / "cache" / "manifests" / "content_hashes.parquet"
                    shutil.copy(hashes, workdir / "hashes-before-the-rerun.parquet")
                    got = run_child("plan-folder", workdir, n, args.rows_per_part)
                    check(n, got)
                    rows.append(("folder, parts", n, got))
                    compactions.append((n, prepared[case, n], run_child("compact", workdir, n, args.rows_per_part)))
                    shutil.copy(workdir / "hashes-before-the-rerun.parquet", hashes)
                    shutil.rmtree(hashes.with_suffix(""))  # the additions the first plan wrote
                got = run_child(f"plan-{case}", workdir, n, args.rows_per_part)
                check(n, got)
                rows.append((f"{case}, compacted", n, got))
                shutil.rmtree(workdir)
        print(f"\n{'case, clips table':<22}{'clips':>9}" + "".join(f"{k + ' s':>10}" for k in STAGES)
              + f"{'TOTAL s':>9}{'peak MB':>9}{'imports':>8}")
        for label, n, got in rows:
            print_row(label, n, got)
        print("(inputs: walk the folder / read and resolve the table's video paths; stat: the table case's old "
              "videos come from a listing,\n only its 1 % new ones are stat-ed; hashes: remembered-hash lookup + "
              "reading the new videos; save: what was hashed remembered;\n plan: the clips table's keys read and matched. "
              f"Goals: 1M < {GOAL[1_000_000]:.0f} s; 10M < {GOAL[10_000_000]:.0f} s and < {GOAL_PEAK_MB} MB peak.)")
        for label, n, got in rows:
            if "limits" in got:
                print(f"{label}, {n}: the filesystem alone, bare loops: walk {got['limits']['walk_s']:.2f} s, "
                      f"os.stat of every video {got['limits']['stat_s']:.2f} s")
        for n, setup, got in compactions:
            print(f"compact {n} clips: {got['files_folded']} parts ({setup['manifest_mb']:.0f} MB) -> 1 file "
                  f"({got['mb_after']:.0f} MB) in {got['seconds']:.1f} s ({got['cpu_seconds']:.1f} s CPU), peak RSS "
                  f"{got['peak_mb']:.0f} MB; "
                  f"cold hash of the first run: {setup['cold_hash_s']:.1f} s")
        for n in sizes["spans"]:
            got = run_child("spans", base, n, args.rows_per_part, args.repeats)
            s, mb = got["seconds"], got["mb"]
            print(f"keys and clip ids of {got['clips']} clips ({got['clips'] // 2} videos), median of {args.repeats}: "
                  f"without spans {s['without']:.2f} s ({mb['without']:.0f} MB table), with a span each "
                  f"({SPAN_KINDS} distinct) {s['with']:.2f} s ({mb['with']:.0f} MB): {s['with'] / s['without']:.2f}x")
        table = [(n, got) for label, n, got in rows if label.startswith("table")]
        if len(table) > 1:
            (n0, a), (n1, b) = table[0], table[-1]
            print(f"growth {n0} -> {n1} clips ({n1 / n0:.0f}x), table case: TOTAL "
                  f"{sum(b['seconds'].values()) / sum(a['seconds'].values()):.1f}x time, "
                  f"{max(b['peak_mb'].values()) / max(a['peak_mb'].values()):.1f}x peak RSS; per stage (time / peak): "
                  + ", ".join(f"{k} {b['seconds'][k] / max(a['seconds'][k], 1e-3):.1f}x / "
                              f"{b['peak_mb'][k] / a['peak_mb'][k]:.1f}x" for k in STAGES))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
