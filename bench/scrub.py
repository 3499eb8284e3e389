"""The cache scrub's rate (pipeline/scrub.py) beside the disk's own read rate of the same shard bytes.

    .venv/bin/python bench/scrub.py [--clips 16] [--clips-per-shard 4] [--repeats 3] [--formats zarr,wds]
                                    [--workers N]

The data: --clips synthetic scenes (16 frames, 320 x 240 H.264) cached by the real caching job (oracle
teacher at its default latent width 1408: full L4P output shapes, the job's DEFAULT storage config)
into data/bench/scrub/cache-<format> (git-ignored), --clips-per-shard clips per shard (the scrub runs
shards in parallel), reused while its manifest records the field specs the job writes today.

What is timed, per format, alternated in one run (raw, scrub, then the next format, then the next
repetition; medians over --repeats), in two page-cache states:
  raw    every byte of every shard file read with plain read() into a reused buffer, one process: the
         disk's read rate of exactly the bytes the scrub reads (its limit if verifying were free).
  scrub  pipeline.scrub.scrub_cache(workers): the clips table read, every ok clip's every field read,
         decoded and checksum-verified, shards over --workers processes (their start included).
cold: each shard file's pages dropped from the page cache (posix_fadvise DONTNEED on the file: only
these files, no privilege needed) right before each timed pass; warm: every file read once before.
MB/s = the shard files' bytes on disk / seconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.caches import BENCH_DATA, describe_specs, ensure_cache  # noqa: E402
from bench.conditions import median, print_conditions  # noqa: E402
from bench.loader import SCENE_SIZE, raw_read_seconds, shard_files  # noqa: E402

MB = 1e6


def drop_pages(files: list[Path]) -> None:
    """Evict these files' pages from the page cache (written back first), so the next read hits the disk."""
    os.sync()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--clips", type=int, default=16, help="synthetic clips cached (default 16)")
    parser.add_argument("--clips-per-shard", type=int, default=4, help="clips per shard (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated repetitions (default 3)")
    parser.add_argument("--formats", default="zarr,wds", help="comma-separated shard formats (default zarr,wds)")
    parser.add_argument("--workers", type=int, default=None, help="scrub processes (default: the CPUs)")
    args = parser.parse_args(argv)
    if min(args.clips, args.clips_per_shard, args.repeats) < 1:
        parser.error("--clips, --clips-per-shard and --repeats must be >= 1")
    formats = [f for f in args.formats.split(",") if f]

    from pipeline.scrub import scrub_cache

    print_conditions("bench/scrub.py: cache scrub MB/s vs the raw read rate of the same shard bytes",
                     ["numpy", "zarr", "numcodecs", "webdataset", "pyarrow"], BENCH_DATA)
    workers = args.workers or os.cpu_count()
    caches = {}
    for fmt in formats:
        t = time.perf_counter()
        cache, reused = ensure_cache("scrub", "oracle", fmt, args.clips, SCENE_SIZE, args.clips_per_shard)
        files = shard_files(cache)
        size = sum(p.stat().st_size for p in files)
        caches[fmt] = (cache, files, size)
        print(f"cache {fmt}: {cache} ({'reused' if reused else f'built in {time.perf_counter() - t:.0f} s'}), "
              f"{args.clips} clips, {len(files)} shard files, {size / MB:.1f} MB on disk")
    from student.cache_index import load_cache_index

    print("storage (the job's default config):")
    for line in describe_specs(load_cache_index(caches[formats[0]][0]).specs):
        print(f"  {line}")
    print(f"scrub workers: {workers}; {args.repeats} repetitions alternated "
          f"({' -> '.join(f'{f}: raw, scrub' for f in formats)}) per page-cache state")

    results = {}
    for rep in range(args.repeats):
        for state in ("cold", "warm"):
            for fmt, (cache, files, size) in caches.items():
                for kind in ("raw", "scrub"):
                    if state == "cold":
                        drop_pages(files)
                    else:
                        raw_read_seconds(files)
                    if kind == "raw":
                        seconds, nbytes = raw_read_seconds(files)
                        if nbytes != size:
                            raise RuntimeError(f"{cache}: read {nbytes} bytes, the shard files hold {size}")
                    else:
                        result = scrub_cache(cache, workers)
                        if result.damaged or result.clips != args.clips:
                            raise RuntimeError(f"{cache}: scrubbed {result.clips} clips, damaged {result.damaged}")
                        seconds = result.seconds
                    results.setdefault((state, fmt, kind), []).append(seconds)
            print(f"rep {rep + 1} {state:<4}  " + "  ".join(
                f"{fmt} raw {results[(state, fmt, 'raw')][-1]:.3f}s scrub {results[(state, fmt, 'scrub')][-1]:.2f}s"
                for fmt in formats), flush=True)

    print(f"\n-- median of {args.repeats}; ratio = scrub rate / raw read rate, per repetition, then median")
    print(f"{'state':<6}{'format':<7}{'raw MB/s':>10}{'scrub MB/s':>12}{'ratio':>8}{'scrub clips/s':>15}")
    for state in ("cold", "warm"):
        for fmt, (_, _, size) in caches.items():
            raw, scrub = results[(state, fmt, "raw")], results[(state, fmt, "scrub")]
            print(f"{state:<6}{fmt:<7}{median([size / t / MB for t in raw]):>10.0f}"
                  f"{median([size / t / MB for t in scrub]):>12.1f}"
                  f"{median([r / s for r, s in zip(raw, scrub)]):>8.3f}{median([args.clips / t for t in scrub]):>15.2f}")


if __name__ == "__main__":
    main()
