"""Scrub a cache: re-read every committed field of every cached clip, verify it, report the damaged
ones, and optionally mark them missing so that the next caching run recomputes them (and nothing else).

  python -m pipeline.scrub CACHE [--repair] [--workers N]

A cache on a shared filesystem for months can rot (a flipped byte, a shard truncated by a write over
quota); readers find it only when they hit it, mid-training. The scrub reads each clip that the clips
table holds as ok through the readers the student uses (shards/cache_reader.py: every stored array
decoded, its dtype, shape and checksum checked against its manifest row), shards in parallel. A shard
that cannot be opened at all damages each clip in it. Each damaged clip is printed with its shard,
clip id, cache key, field and reason, then one summary line.

--repair then removes every row of the damaged clips from the clips table, atomically
(manifests/compaction.py drop_clips), under the cache's lock: they are missing, and the next run of
the caching job computes them again, into new shards; the damaged bytes are no longer referenced.

Exit code 0 when every clip verified, 3 when some were damaged (repaired or not), 1 when the scrub
could not run (not a cache, the cache locked by a running job).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from manifests.clips_table import current_clips, read_clips_table
from manifests.compaction import drop_clips
from manifests.schemas import CLIP_OK
from pipeline.cache_dir import CacheDir, CacheLockedError
from pipeline.failures import describe
from shards.cache_reader import ClipReader
from shards.formats import shard_disk_bytes
from shards.integrity import ShardCorruptError
from shards.local_path import cache_location
from shards.store import exists, is_url, join

log = logging.getLogger("p4d.scrub")

DAMAGED_EXIT_CODE = 3


@dataclass(frozen=True)
class Damage:
    shard: str  # relative to the cache root
    clip_id: str
    cache_key: str
    field: str | None  # None: not one field's bytes (the shard does not open, a tar header is damaged)
    reason: str

    def line(self) -> str:
        return (f"damaged: shard {self.shard}, clip {self.clip_id} (cache_key {self.cache_key}), "
                f"field {self.field or '-'}: {self.reason}")


@dataclass(frozen=True)
class ShardScrub:
    shard: str
    clips: int
    bytes: int  # the shard's bytes on disk
    damaged: tuple[Damage, ...]


def scrub_shard(cache_root: str, shard: str, rows: list[dict]) -> ShardScrub:
    """Read every field of every clip of one shard (its ok rows), verified."""
    reader = ClipReader(cache_root, fields=None, open_shards=1)
    damaged = []
    for row in rows:
        try:
            reader.read(row)
        except ShardCorruptError as e:
            damaged.append(Damage(shard, row["clip_id"], row["cache_key"], e.field, e.reason))
        except Exception as e:  # the shard does not open at all (missing, cut, not a shard): every clip in it
            damaged.append(Damage(shard, row["clip_id"], row["cache_key"], None, describe(e)))
    path = join(cache_root, shard)
    size = shard_disk_bytes(path) if exists(path) else 0
    return ShardScrub(shard, len(rows), size, tuple(damaged))


@dataclass(frozen=True)
class Scrub:
    shards: int
    clips: int
    bytes: int
    seconds: float
    damaged: tuple[Damage, ...]

    def summary(self) -> str:
        rate = self.bytes / 1e6 / max(self.seconds, 1e-9)
        return (f"scrub: {self.clips} clips in {self.shards} shards, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
                f"({rate:.1f} MB/s): {len({d.cache_key for d in self.damaged})} damaged")


def scrub_cache(cache_root: str | Path, workers: int | None = None) -> Scrub:
    """Verify every ok clip of the cache, shards in parallel over `workers` processes (default: the CPUs)."""
    start = time.perf_counter()
    root = str(cache_root if is_url(cache_root) else Path(cache_root).resolve())
    by_shard = defaultdict(list)
    for row in current_clips(read_clips_table(root)).values():
        if row["status"] == CLIP_OK:
            by_shard[row["shard"]].append(row)
    results = []
    workers = min(workers or os.cpu_count() or 1, max(len(by_shard), 1))
    # forkserver: the workers start from a clean process, not a fork of one holding Ray's or torch's threads.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context) as pool, \
            tqdm(total=len(by_shard), desc="scrub", unit="shard") as bar:
        futures = [pool.submit(scrub_shard, root, shard, rows) for shard, rows in sorted(by_shard.items())]
        for future in as_completed(futures):
            results.append(future.result())
            bar.update(1)
    results.sort(key=lambda r: r.shard)
    return Scrub(len(results), sum(r.clips for r in results), sum(r.bytes for r in results),
                 time.perf_counter() - start, tuple(d for r in results for d in r.damaged))


def repair(cache: CacheDir, damaged: tuple[Damage, ...]) -> None:
    """Mark the damaged clips missing (every row of their cache keys out of the clips table, atomically),
    under the cache's lock and once no writer of a killed job is alive."""
    from pipeline.runner import WRITER_EXIT_TIMEOUT_S  # here: the runner imports Ray, not needed by scrub workers

    keys = sorted({d.cache_key for d in damaged})
    with cache.lock():
        cache.wait_for_writers(WRITER_EXIT_TIMEOUT_S)
        dropped = drop_clips(cache.root, keys)
    log.info("repair: %d damaged clips marked missing (%d rows removed from the clips table); the next caching "
             "run recomputes them", len(keys), dropped.dropped)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("cache", type=cache_location, help="cache directory or object-store URL (the --out of the caching job)")
    parser.add_argument("--repair", action="store_true",
                        help="mark the damaged clips missing in the manifests, for the next caching run to recompute")
    parser.add_argument("--workers", type=int, default=None, help="processes reading shards (default: the CPUs)")
    args = parser.parse_args(argv)
    cache = CacheDir(args.cache)
    if not cache.has_clips_table():
        log.error("%s: no clips table (%s): not a p4d cache", args.cache, cache.clips_dir)
        return 1
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    result = scrub_cache(cache.root, args.workers)
    for damage in result.damaged:
        print(damage.line())
    print(result.summary())
    if not result.damaged:
        return 0
    if args.repair:
        try:
            repair(cache, result.damaged)
        except CacheLockedError as e:
            log.error("%s", e)
            return 1
    return DAMAGED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
