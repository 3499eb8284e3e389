"""Compaction of the clips table: the parts (one small Parquet file per committed shard) folded into a
few large files sorted by cache_key, atomically, in bounded memory.

Why: every rerun reads the table to plan, and a cache of 10M clips in shards of 8 holds 1.25M parts;
opening them, not decoding them, is the cost (more so on a network filesystem).

One compaction, under the cache lock with no shard writer alive:
1. remove what an interrupted compaction left: temporaries, and files that a committed compacted
   file already folds (killed after its commit, before its removals);
2. sort the parts, in name order, into runs that fit in `memory_bytes` (temporary files);
3. pick the compacted files to merge with: the newest ones, while each holds no more rows than what
   is merged so far, so each compacted file holds at least twice the rows of the next newer one and a
   table of N rows has about log2(N / rows per compaction) of them;
4. merge the runs and those files, streaming, into compacted-<n>.parquet; its footer names every file
   it folds (manifests/clips_table.py: folds_metadata);
5. commit it by a rename (the one atomic step), then remove the files it folds.
A kill before 5 leaves only temporaries, a kill after it leaves folded files that readers skip: either
way every row is seen exactly once. Rows are kept as they are (history included), in their table
order among equal keys, except the rows of `drop_keys`: the way a repair marks clips missing.

On an object store (shards/store.py) the runs and the merged file are built in a local temporary
directory, and step 5's commit is the upload of the finished file under its final name, with a
conditional create: an S3 PUT (or a completed multipart upload) is atomic, so readers see no object or
the whole file, and what a kill leaves is the same as above, less the temporaries in the cache (a
killed process's local temporary directory stays behind in the machine's temp folder; an interrupted
multipart upload is invisible and billed until the bucket's lifecycle rule aborts it).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator
from contextlib import ExitStack
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from manifests.clips_table import (CLIPS_DIR, COMPACTED_PREFIX, compacted_sequence, file_name, folds_metadata,
                                   is_compacted, manifest_files, parquet_metadata, read_clips_file)
from manifests.schemas import CLIPS_SCHEMA
from shards.atomic import remove_temporaries, temporary_path
from shards.store import Store, arrow_source, publish, remove_files, remove_staging, staging_path

log = logging.getLogger(__name__)

# The job compacts at its end once this many parts are unfolded: reading 64 parts costs ~20 ms
# locally, so fewer are not worth a rewrite.
JOB_MIN_PARTS = 64
# Rows held in memory (Arrow's uncompressed size) while sorting runs and merging: a full clips row is
# ~2.4 KB, most of it checksums and the field specs, so 256 MB is ~100k rows.
MEMORY_BYTES = 256 << 20
# Row groups of a compacted file: its readers read by row group, a merge holds one per input.
ROW_GROUP_ROWS = 16384
_RUN_ROW_GROUP_ROWS = 1024  # a run is read back by a merge of up to ~100 runs at once
_READ_THREADS = 4
_READ_AHEAD = 256  # parts read concurrently while sorting runs


@dataclass(frozen=True)
class Compaction:
    path: Path | str | None  # the compacted file written (a URL on a store); None when there was nothing to do
    folded: tuple[str, ...]  # names of the files whose rows it holds (removed)
    rows: int
    dropped: int  # rows of drop_keys left out
    removed_leftovers: int  # files of an interrupted compaction removed first
    seconds: float

    def summary(self) -> dict:
        return {"file": file_name(self.path) if self.path else None, "files_folded": len(self.folded),
                "rows": self.rows, "rows_dropped": self.dropped, "leftovers_removed": self.removed_leftovers,
                "seconds": round(self.seconds, 3)}


def compact_clips(cache_root: str | Path, min_parts: int = 1, drop_keys: Collection[str] = (),
                  memory_bytes: int = MEMORY_BYTES) -> Compaction:
    """Fold the unfolded parts (when there are at least `min_parts`) into a new compacted file, with
    the compacted files the size rule picks. drop_keys: cache_keys whose rows are left out; then every
    file holding one is folded whatever min_parts says, and nothing is written when none holds one.
    The caller holds the cache lock."""
    start = time.perf_counter()
    store = Store(cache_root)
    leftovers: list[Path | str] = []
    if store.is_local:
        directory = store.path(CLIPS_DIR)
        if not directory.is_dir():
            return Compaction(None, (), 0, 0, 0, time.perf_counter() - start)
        leftovers += remove_temporaries(directory)
    # A store holds no temporaries (the compacted file is uploaded under its final name; its runs are
    # local): only files that a compacted file folds.
    files = manifest_files(cache_root)
    remove_files(files.folded)
    leftovers += files.folded
    for path in leftovers:
        log.info("removed what an interrupted compaction left: %s", file_name(path))
    drop = pa.array(sorted(set(drop_keys)), pa.string())
    parts = files.parts
    holding = [p for p in files.live if len(drop) and _holds_any(p, drop)]
    nothing_to_drop = len(drop) and not holding
    if nothing_to_drop or (not holding and (not parts or len(parts) < min_parts)):
        return Compaction(None, (), 0, 0, len(leftovers), time.perf_counter() - start)
    holding = [p for p in holding if is_compacted(p)]  # every part is folded anyway

    sequence = 1 + max((compacted_sequence(p) for p in files.compacted), default=0)
    final = store.path(f"{CLIPS_DIR.as_posix()}/{COMPACTED_PREFIX}{sequence:08d}.parquet")
    # Beside `final` on a filesystem (the rename stays on it), in a local temporary directory for a store.
    temp = staging_path(final)
    runs: list[Path] = []
    try:
        runs.extend(_sorted_runs(parts, temp.parent, memory_bytes))
        merged = sum(pq.read_metadata(r).num_rows for r in runs) + sum(_rows(p) for p in holding)
        picked = set(holding)
        for path in reversed(files.compacted):  # newest first
            if path in picked:
                continue
            if _rows(path) > merged:
                break
            picked.add(path)
            merged += _rows(path)
        inputs = [p for p in files.compacted if p in picked]
        folds = [file_name(p) for p in [*inputs, *parts]]
        rows, dropped = _merge([*inputs, *runs], temp, folds, drop, memory_bytes)
        remove_files(runs)
        runs = []
        publish(temp, final)  # the commit: a rename, or an upload (with a conditional create) to a store
    except BaseException:
        remove_files(runs)
        remove_staging(temp)
        raise
    remove_files([*inputs, *parts])
    done = Compaction(final, tuple(folds), rows, dropped, len(leftovers), time.perf_counter() - start)
    log.info("compacted %d parts and %d compacted files (%d rows, %d dropped) into %s in %.1f s",
             len(parts), len(inputs), rows, dropped, file_name(final), done.seconds)
    return done


def drop_clips(cache_root: str | Path, cache_keys: Collection[str]) -> Compaction:
    """Remove every row of `cache_keys` from the clips table, atomically: those clips become missing
    and the next run computes them again (a repair of damaged clips). The caller holds the cache lock."""
    return compact_clips(cache_root, min_parts=1, drop_keys=cache_keys)


def _rows(path: Path | str) -> int:
    return parquet_metadata(path).num_rows


def _holds_any(path: Path, keys: pa.Array) -> bool:
    return pc.any(pc.is_in(read_clips_file(path, ("cache_key",))["cache_key"], value_set=keys)).as_py()


def _sorted_runs(parts: list[Path], directory: Path, memory_bytes: int) -> Iterator[Path]:
    """The parts' rows, in part-name order, as runs sorted by cache_key (stable) of about half
    `memory_bytes` each, in temporary files (yielded as soon as written, so a failure leaks none)."""
    pending: list[pa.Table] = []

    def write_run() -> Path:
        run = temporary_path(directory / "run.parquet")
        pq.write_table(pa.concat_tables(pending).sort_by("cache_key"), run, row_group_size=_RUN_ROW_GROUP_ROWS)
        pending.clear()
        return run

    with ThreadPoolExecutor(_READ_THREADS) as pool, tqdm(total=len(parts), desc="compact: sort parts",
                                                          unit="part", disable=len(parts) < 1000) as bar:
        for i in range(0, len(parts), _READ_AHEAD):
            chunk = parts[i:i + _READ_AHEAD]
            pending.extend(pool.map(read_clips_file, chunk))
            bar.update(len(chunk))
            if 2 * sum(t.nbytes for t in pending) >= memory_bytes:  # sorting copies them
                yield write_run()
    if pending:
        yield write_run()


class _SortedInput:
    """One file sorted by cache_key, read a batch at a time; `table` holds the rows not yet merged."""

    def __init__(self, source, path: Path | str, batch_rows: int):
        file = pq.ParquetFile(source, pre_buffer=False)  # else the whole file is read ahead
        if not file.schema_arrow.equals(CLIPS_SCHEMA, check_metadata=False):
            raise ValueError(f"{path}: schema differs from the clips schema; got {file.schema_arrow}")
        self.batches = file.iter_batches(batch_size=batch_rows, use_threads=False)
        self.table = CLIPS_SCHEMA.empty_table()
        self.exhausted = False

    def fill(self) -> None:
        """Append the next batch (or note the end)."""
        batch = next(self.batches, None)
        if batch is None:
            self.exhausted = True
        else:
            self.table = pa.concat_tables([self.table, pa.Table.from_batches([batch])])

    def last_key(self) -> str:
        return self.table["cache_key"][-1].as_py()

    def take_below(self, key: str | None) -> pa.Table:
        """Remove and return the rows whose cache_key sorts before `key` (all rows when None)."""
        cut = self.table.num_rows if key is None else pc.search_sorted(self.table["cache_key"], key).as_py()
        taken, self.table = self.table.slice(0, cut), self.table.slice(cut)
        return taken


def _merge(inputs: list[Path | str], out: Path, folds: list[str], drop: pa.Array, memory_bytes: int) -> tuple[int, int]:
    """Merge files sorted by cache_key into `out`, stable (equal keys keep the inputs' order), leaving
    out rows of `drop`; returns (rows written, rows dropped)."""
    row_bytes = max((_row_bytes(p) for p in inputs), default=1)
    batch_rows = max(64, memory_bytes // (2 * row_bytes * max(len(inputs), 1)))
    written = dropped = 0
    pending: list[pa.Table] = []
    total = sum(_rows(p) for p in inputs)
    with ExitStack() as opened, pq.ParquetWriter(out, CLIPS_SCHEMA) as writer, \
            tqdm(total=total, desc="compact: merge", unit="row", disable=total < 1_000_000) as bar:
        sources = [_SortedInput(opened.enter_context(arrow_source(p)), p, batch_rows) for p in inputs]

        def write(final: bool) -> None:
            nonlocal pending
            table = pa.concat_tables(pending) if pending else None
            if table is not None and (final or table.num_rows >= ROW_GROUP_ROWS):
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                pending = []

        while True:
            # Every input still being read shows at least one row, so its last row bounds what it can
            # still hold: every row of a key below the smallest such bound is in memory now, and all
            # rows of one key leave in the same round, in input order (sort_by is stable).
            for source in sources:
                while not source.exhausted and source.table.num_rows == 0:
                    source.fill()
            reading = [s for s in sources if not s.exhausted]
            bound = min((s.last_key() for s in reading), default=None)
            round_ = pa.concat_tables([s.take_below(bound) for s in sources]).sort_by("cache_key")
            for source in reading:
                if source.last_key() == bound:
                    source.fill()
            if len(drop):
                keep = pc.invert(pc.is_in(round_["cache_key"], value_set=drop))
                dropped += round_.num_rows - pc.sum(keep).as_py()
                round_ = round_.filter(keep)
            if round_.num_rows:
                pending.append(round_)
                written += round_.num_rows
            bar.update(round_.num_rows)
            write(final=False)
            if bound is None:
                break
        write(final=True)
        writer.add_key_value_metadata(folds_metadata(folds))  # the footer's own entry: not in the rows' schema
    return written, dropped


def _row_bytes(path: Path | str) -> int:
    """Bytes per row in memory of a file's first rows (the footer's sizes are of dictionary-encoded
    pages: the field specs, ~900 bytes a row in memory, are a few bytes a row there)."""
    with arrow_source(path) as source, pq.ParquetFile(source, pre_buffer=False) as f:
        batch = next(f.iter_batches(batch_size=256), None)
    return max(1, batch.nbytes // batch.num_rows) if batch is not None and batch.num_rows else 1
