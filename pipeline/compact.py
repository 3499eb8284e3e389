"""Compact a cache's clips table: fold the parts that committed shards wrote into a few large files
sorted by cache_key (manifests/compaction.py), so that planning a rerun opens a few files, not one per
shard.

  python -m pipeline.compact CACHE [--memory-mb 256]

Takes the cache's lock (refused while a caching job runs on it: the job compacts at its own end) and
waits for the shard writers of a killed job to exit. Safe to kill at any point; run it again to finish.
Exit code 0 after a compaction or when there was nothing to fold, 1 when it could not run.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from manifests.compaction import MEMORY_BYTES, compact_clips
from pipeline.cache_dir import CacheDir, CacheLockedError
from pipeline.runner import WRITER_EXIT_TIMEOUT_S
from shards.local_path import cache_location

log = logging.getLogger("p4d.compact")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("cache", type=cache_location,
                        help="cache directory or object-store URL (the --out of the caching job)")
    parser.add_argument("--memory-mb", type=int, default=MEMORY_BYTES >> 20,
                        help="rows held in memory while sorting and merging, in MB (a row is ~2.4 KB)")
    args = parser.parse_args(argv)
    cache = CacheDir(args.cache)
    if not cache.has_clips_table():
        log.error("%s: no clips table (%s): not a p4d cache", args.cache, cache.clips_dir)
        return 1
    try:
        with cache.lock():
            cache.wait_for_writers(WRITER_EXIT_TIMEOUT_S)
            result = compact_clips(cache.root, memory_bytes=args.memory_mb << 20)
    except CacheLockedError as e:
        log.error("%s", e)
        return 1
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
