"""`--check` at scale: seconds to validate 100k annotation rows, header probes per second with one thread
and with the preflight's thread pool, and the peak memory of streaming a one-row-group SAT split.

    .venv/bin/python bench/preflight.py [--rows 100000] [--videos 400] [--sat-rows 20000,80000] [--repeats 3]

rows       a RoboFAC root (training_qa.json, --rows LLaVA rows naming 1000 videos under simulation_data/,
           every tenth with an early task name) and an STI-Bench root (qa.parquet, --rows rows with
           JSON-string candidates and spans), read the way --check reads them (every row validated,
           every media path resolved inside the root); beside each, the limit: parsing the same file
           alone (json.loads / pyarrow read_table + to_pylist).
probes     --videos copies of a real-world video (tests/data/videos/flipping_a_pancake.mkv) probed
           with pipeline.preflight.probe_header, 1 thread then PROBE_THREADS threads, alternated,
           medians of --repeats.
sat        SAT_train.parquet of --sat-rows rows (each size in turn) with ~6 KB noise images in ONE row
           group (no dictionary, no compression: the file holds every row's bytes), read in a fresh
           process by the adapter's row reader (common.parquet_records: rows counted, none kept), by
           the SAT adapter (every row validated and kept, images not written) and, as the comparison,
           by pyarrow.parquet.read_table: each process's peak RSS during the read above its RSS before
           it (the peak is reset after the imports through /proc/self/clear_refs).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402,F401  (PyAV before decord, as everywhere in the project)
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from bench.conditions import PROJECT_ROOT, median, print_conditions  # noqa: E402
from pipeline.datasets.registry import Source, read_dataset  # noqa: E402
from pipeline.preflight import PROBE_THREADS, probe_header  # noqa: E402

VIDEO = PROJECT_ROOT / "tests" / "data" / "videos" / "flipping_a_pancake.mkv"


def robofac_root(root: Path, rows: int) -> Path:
    videos = [f"{'Rotation-v1' if i % 10 == 0 else 'PickCube-v1'}/scene_{i % 7}/{i:05d}.mp4" for i in range(1000)]
    data = [{"video": videos[i % len(videos)],
             "conversations": [{"from": "human", "value": f"<video>\nWhat went wrong in attempt {i}?"},
                               {"from": "gpt", "value": f"The gripper missed the cube by {i % 9} cm."}]}
            for i in range(rows)]
    root.mkdir(parents=True)
    (root / "training_qa.json").write_text(json.dumps(data))
    return root


def stibench_root(root: Path, rows: int) -> Path:
    options = json.dumps({"A": "1 m", "B": "5 m", "C": "10 m", "D": "20 m"})
    table = pa.Table.from_pylist([
        {"Video": f"v{i % 500}.mp4", "ID": i // 500, "Question": f"How far did the car travel in part {i}?",
         "Candidates": options, "Answer": "ABCD"[i % 4], "Task": "Displacement & Path Length",
         "time_start": float(i % 5), "time_end": float(i % 5 + 3), "Source": "waymo", "Scene": "outdoor"}
        for i in range(rows)])
    (root / "videos").mkdir(parents=True)
    pq.write_table(table, root / "qa.parquet")
    return root


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_rows(workdir: Path, rows: int, repeats: int) -> None:
    print(f"\n-- validating {rows} rows as --check does (median of {repeats}; the limit: parsing the file alone)")
    robofac = robofac_root(workdir / "RoboFAC", rows)
    sti = stibench_root(workdir / "STI-Bench", rows)
    cases = [
        ("robofac", robofac, lambda: json.loads((robofac / "training_qa.json").read_text())),
        ("stibench", sti, lambda: pq.read_table(sti / "qa.parquet").to_pylist()),
    ]
    print(f"{'source':10} {'rows':>8} {'validate s':>11} {'rows/s':>9} {'parse s':>8} {'ratio':>6}")
    for name, root, parse in cases:
        validate, limit, kept = [], [], []
        for _ in range(repeats):  # alternated: the adapter, then the bare parse
            result = None

            def read():
                nonlocal result
                result = read_dataset(Source(name, root), lenient=True, media_dir=None)

            validate.append(timed(read))
            kept.append(len(result.rows))
            limit.append(timed(parse))
        v, p = median(validate), median(limit)
        assert kept[-1] == rows, f"{name}: {kept[-1]} of {rows} rows kept"
        print(f"{name:10} {rows:8d} {v:11.2f} {rows / v:9.0f} {p:8.2f} {v / p:6.1f}")


def bench_probes(workdir: Path, count: int, repeats: int) -> None:
    folder = workdir / "videos"
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"v{i:04d}.mkv"
        shutil.copy(VIDEO, path)
        paths.append(path)
    print(f"\n-- header probes of {count} copies of {VIDEO.name} ({VIDEO.stat().st_size / 1e3:.0f} KB), "
          f"median of {repeats}")
    results = {1: [], PROBE_THREADS: []}
    for _ in range(repeats):
        for threads in results:
            with ThreadPoolExecutor(threads) as pool:
                results[threads].append(timed(lambda: list(pool.map(probe_header, paths))))
    one = median(results[1])
    for threads, seconds in results.items():
        s = median(seconds)
        print(f"{threads:3d} thread(s): {s:6.2f} s = {count / s:7.0f} videos/s ({one / s:4.1f}x one thread)")


SAT_READERS = {
    "rows": "from pipeline.datasets.common import parquet_records\n"
            "n = sum(1 for _ in parquet_records(ROOT / 'SAT_train.parquet'))",
    "adapter": "from pipeline.datasets.registry import Source, read_dataset\n"
               "result = read_dataset(Source('sat', ROOT), lenient=False, media_dir=None)\n"
               "n = len(result.rows)",
    "read_table": "import pyarrow.parquet as pq\n"
                  "n = pq.read_table(ROOT / 'SAT_train.parquet').num_rows",
}


def bench_sat(workdir: Path, rows: int) -> None:
    root = workdir / f"SAT-{rows}"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for i in range(64):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(out, format="PNG")
        images.append(out.getvalue())
    table = pa.Table.from_pylist([{"image_bytes": [{"bytes": images[i % 64], "path": None}], "question": f"q{i}",
                                   "answers": ["yes", "no"], "question_type": "obj_rel", "correct_answer": "no"}
                                  for i in range(rows)])
    pq.write_table(table, root / "SAT_train.parquet", row_group_size=rows, use_dictionary=False, compression="none")
    size = (root / "SAT_train.parquet").stat().st_size
    print(f"\n-- SAT_train.parquet: {rows} rows, one row group, {size / 1e6:.0f} MB on disk; peak RSS of a fresh "
          "process during the read, above its RSS before it")
    for name, code in SAT_READERS.items():
        script = (f"import sys, time; sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
                  "import av, pyarrow.parquet, PIL.Image\nfrom pathlib import Path\n"
                  "import pipeline.datasets.registry\n"
                  f"ROOT = Path({str(root)!r})\n"
                  "def status(key):\n"
                  "    line = next(x for x in open('/proc/self/status') if x.startswith(key))\n"
                  "    return int(line.split()[1]) * 1024\n"
                  "open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) restarts from here\n"
                  "base = status('VmRSS')\n"
                  f"start = time.perf_counter()\n{code}\n"
                  "print(n, round(time.perf_counter() - start, 2), (status('VmHWM') - base) / 1e6)\n")
        n, seconds, grown = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                           text=True).stdout.split()
        print(f"{name:10}: {n} rows in {seconds:>5} s, peak RSS +{float(grown):4.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--videos", type=int, default=400)
    p.add_argument("--sat-rows", default="20000,80000", help="comma-separated row counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where the roots are written (default: a temporary folder)")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="p4d-bench-preflight-", dir=args.workdir))
    try:
        print_conditions("bench/preflight.py: --check at scale", ["pyarrow", "av", "pillow"], workdir)
        print(f"probe threads: {PROBE_THREADS} (pipeline.preflight.PROBE_THREADS); cores: {os.cpu_count()}")
        bench_rows(workdir, args.rows, args.repeats)
        bench_probes(workdir, args.videos, args.repeats)
        for rows in map(int, args.sat_rows.split(",")):
            bench_sat(workdir, rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
