"""Content hashes of videos, remembered by (path, size, mtime_ns) so a rerun does not re-read them.

Hashing every video's bytes is the only part of planning that grows with the data's BYTES (100k clips
of ~10 MB videos: ~1 TB to read). A file whose path, size and modification time (ns) are unchanged is
taken to hold the same bytes; any change of size or mtime re-reads it. The hash still goes into the
cache_key, so a reused hash never reuses a teacher output it should not: a different teacher, sampling
or storage spec still gives a different key.

In columns, for millions of videos: `file_stats` stats the files (threads: a network filesystem
answers many stats at once, one at a time is its latency times the count), `ContentHashes.identify`
matches them against the remembered table (kept sorted by path: a sorted search, not a hash table of
every path) and reads only the misses.

Stored as CACHE/manifests/content_hashes.parquet (path, size, mtime_ns, sha256 as hex) sorted by path,
plus the entries hashed by later runs as additions, CACHE/manifests/content_hashes/part-*.parquet (the
same columns), folded into the first file now and then; every file is written atomically
(shards.atomic). A missing or unreadable file is rebuilt (it is derived data). On an object store
(shards/store.py) the same files are objects: each is built locally and uploaded whole (an S3 PUT is
atomic), an addition with a conditional create under its unique name, the entries file replacing the
old one.
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from manifests.cache_key import DIGEST, DIGEST_BYTES, digest_bytes, digests_of_hex, file_sha256, hex_digests
from manifests.clips_table import parquet_metadata
from shards.atomic import is_temporary
from shards.store import (Store, arrow_source, exists, is_url, join, location, publish, remove_files, remove_staging,
                          staging_path)

log = logging.getLogger(__name__)

HASHES_FILE = Path("manifests") / "content_hashes.parquet"
HASHES_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("mtime_ns", pa.int64(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
])
# What planning knows of each file before reading it (file_stats; or a listing that already has it).
STATS_SCHEMA = pa.schema([
    pa.field("size", pa.int64()),  # null when the file could not be stat-ed
    pa.field("mtime_ns", pa.int64()),
    pa.field("regular", pa.bool_()),  # a regular file (not a directory, a device, ...)
    pa.field("error", pa.string()),  # why it could not be stat-ed, naming the file
])
IDENTITIES_SCHEMA = pa.schema([
    pa.field("video_sha256", DIGEST),  # null when the bytes could not be read
    pa.field("read_error", pa.string()),  # why, naming the file
])
# The additions are folded into the entries file once they hold more than 1/FOLD_EVERY of its rows,
# or once there are this many files of them: a rerun that hashed 1 % of the videos writes 1 %.
FOLD_EVERY = 8
MAX_ADDITION_FILES = 32
_STAT_THREADS = 8
_READ_THREADS = 8
_STAT_CHUNK = 4096
_BATCH_ROWS = 1 << 16
_KNOWN_SCHEMA = pa.schema([HASHES_SCHEMA.field("path"), HASHES_SCHEMA.field("size"),
                           HASHES_SCHEMA.field("mtime_ns"), pa.field("sha256", DIGEST, nullable=False)])


def read_error(path: str, error: OSError) -> str:
    """Why a file's bytes cannot be read, as a clip's failure reason."""
    if isinstance(error, FileNotFoundError):
        return f"file not found: {path}"
    if isinstance(error, IsADirectoryError):
        return f"not a file but a directory: {path}"
    if isinstance(error, PermissionError):
        return f"permission denied: {path}"
    return f"cannot read {path}: {error.strerror or error}"


def file_stats(paths: pa.Array) -> pa.Table:
    """size, mtime_ns and kind of each file (symlinks followed), or why it cannot be stat-ed
    (STATS_SCHEMA), in the order of `paths`."""

    def stat_chunk(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        chunk = paths.slice(start, _STAT_CHUNK).to_pylist()
        sizes, mtimes, regular = (np.zeros(len(chunk), np.int64) for _ in range(3))
        errors = [None] * len(chunk)
        for i, path in enumerate(chunk):
            try:
                info = os.stat(path)
            except OSError as e:
                errors[i] = read_error(path, e)
                continue
            sizes[i], mtimes[i], regular[i] = info.st_size, info.st_mtime_ns, stat.S_ISREG(info.st_mode)
        return sizes, mtimes, regular, errors

    starts = range(0, len(paths), _STAT_CHUNK)
    with ThreadPoolExecutor(_STAT_THREADS) as pool:
        chunks = list(tqdm(pool.map(stat_chunk, starts), total=len(starts), desc="stat videos", unit="chunk",
                           disable=len(starts) < 64))
    sizes, mtimes, regular = (np.concatenate([c[k] for c in chunks]) if chunks else np.zeros(0, np.int64)
                              for k in range(3))
    errors = pa.array([e for c in chunks for e in c[3]], pa.string())
    failed = errors.is_valid().to_numpy(zero_copy_only=False)
    return pa.table([pa.array(sizes, mask=failed), pa.array(mtimes, mask=failed),
                     pa.array(regular.astype(bool), mask=failed), errors], schema=STATS_SCHEMA)


class ContentHashes:
    """sha256 of files by path, recomputed only when a file's size or mtime_ns changed.

    `hasher` reads a file and returns its hex sha256 (manifests.cache_key.file_sha256; tests pass a
    counting one). Nothing is held between calls: ten million entries are ~1.5 GB, so `identify` reads
    them a batch at a time.
    """

    def __init__(self, path: str | Path | None = None, hasher: Callable[[str | Path], str] = file_sha256):
        # The entries file (a path or a URL); its additions live in the folder beside it, named like it.
        self.path = None if path is None else location(path)
        self._hasher = hasher
        self._new: dict[str, tuple[int, int, bytes]] = {}  # hashed since the last save, by path

    @classmethod
    def of_cache(cls, cache_root: str | Path, hasher: Callable[[str | Path], str] = file_sha256) -> ContentHashes:
        return cls(join(cache_root, HASHES_FILE.as_posix()), hasher)

    @property
    def additions_dir(self) -> Path | str:
        return location(os.fspath(self.path).removesuffix(HASHES_FILE.suffix))

    def _addition_files(self) -> list[Path | str]:
        if self.path is None:
            return []
        names = (n.rsplit("/", 1)[-1] for n in Store(self.additions_dir).children(""))
        return sorted(join(self.additions_dir, n) for n in names
                      if n.startswith("part-") and n.endswith(".parquet") and not is_temporary(n))

    def _known(self) -> Iterator[pa.Table]:
        """The remembered entries (_KNOWN_SCHEMA), each table sorted by path: the file's a batch at a
        time, then every addition's, then what was hashed since the last save."""
        if self.path is not None and exists(self.path):
            yield from _batches(self.path)
        yield _newest_per_path([t for p in self._addition_files() for t in _batches(p)] + [self._new_table()])

    def _new_table(self) -> pa.Table:
        paths = sorted(self._new)
        columns = list(zip(*(self._new[p] for p in paths))) or [(), (), ()]
        return pa.table([paths, columns[0], columns[1], pa.array(columns[2], DIGEST)], schema=_KNOWN_SCHEMA)

    def identify(self, paths: pa.Array, stats: pa.Table) -> pa.Table:
        """Each file's sha256 or the reason its bytes cannot be read (IDENTITIES_SCHEMA), in the order
        of `paths` (absolute, as strings), given their `stats` (file_stats). Remembered hashes whose
        path, size and mtime_ns match are taken as they are; every other file is read."""
        n = len(paths)
        # Sorted needles make each sorted search walk its table once (random ones: ~20x slower).
        order = None if _is_sorted(paths) else pc.sort_indices(paths)
        if order is not None:
            paths, stats = paths.take(order), stats.take(order)
        sizes, mtimes = stats["size"].fill_null(-1).to_numpy(), stats["mtime_ns"].fill_null(-1).to_numpy()
        regular = stats["regular"].fill_null(False).to_numpy(zero_copy_only=False)
        hit, digests = np.zeros(n, bool), np.zeros((n, DIGEST_BYTES), np.uint8)
        for known in self._known():
            if not known.num_rows or not n:
                continue
            # Only the paths between the table's first and last can be in it.
            first = pc.search_sorted(paths, known["path"][0]).as_py()
            end = pc.search_sorted(paths, known["path"][-1], side="right").as_py()
            at, listed = _positions(known["path"], paths.slice(first, end - first))
            at = np.minimum(at, known.num_rows - 1)  # a path after the last one is not listed anyway
            rows = np.arange(first, end)
            found = (listed & ~hit[rows] & regular[rows] & (known["size"].to_numpy()[at] == sizes[rows])
                     & (known["mtime_ns"].to_numpy()[at] == mtimes[rows]))
            digests[rows[found]] = digest_bytes(known["sha256"])[at[found]]
            hit[rows[found]] = True
        readable = hit.copy()
        unread: dict[int, str] = {}  # row -> why its bytes could not be read
        misses = np.flatnonzero(~hit & stats["error"].is_null().to_numpy(zero_copy_only=False))
        missed = paths.take(misses).to_pylist()
        # Each file read once (a video with several spans is listed once per span), several at a time:
        # a network filesystem serves many reads at once, and reading and hashing release the GIL.
        distinct = list(dict.fromkeys(missed))
        with ThreadPoolExecutor(_READ_THREADS) as pool:
            read = dict(zip(distinct, tqdm(pool.map(self._read, distinct), total=len(distinct), desc="hash videos",
                                           unit="video", disable=len(distinct) < 100)))
        for i, path in zip(misses, missed):
            digest, error = read[path]
            if digest is None:
                unread[i] = error
                continue
            digests[i], readable[i] = np.frombuffer(digest, np.uint8), True
            if regular[i]:  # a directory or a device is not remembered: its next read says what it is
                self._new[path] = (int(sizes[i]), int(mtimes[i]), digest)
        validity = pa.py_buffer(np.packbits(readable, bitorder="little"))
        sha = pa.FixedSizeBinaryArray.from_buffers(DIGEST, n, [validity, pa.py_buffer(digests)],
                                                   null_count=int(n - readable.sum()))
        errors = stats["error"].combine_chunks()
        if unread:
            mask = np.zeros(n, bool)
            mask[list(unread)] = True
            errors = pc.replace_with_mask(errors, pa.array(mask), pa.array([unread[i] for i in sorted(unread)]))
        identities = pa.table([sha, errors], schema=IDENTITIES_SCHEMA)
        if order is not None:
            identities = identities.take(pc.sort_indices(order))
        return identities

    def _read(self, path: str) -> tuple[bytes | None, str | None]:
        """A file's sha256, or why its bytes cannot be read. Stat-ed before (file_stats): a file
        rewritten while being hashed gets a new mtime, so the next run sees a mismatch and re-reads it
        rather than trusting a hash of half-old bytes."""
        try:
            return bytes.fromhex(self._hasher(path)), None
        except OSError as e:
            return None, read_error(path, e)

    def save(self) -> None:
        """Remember the hashes computed since the last save: as one more additions file (a rerun
        writes what it hashed, not every entry again), or, once the additions hold more than
        1/FOLD_EVERY of the entries, folded with them into a new entries file (the newest entry of a
        path wins)."""
        if self.path is None or not self._new:
            return
        additions = self._addition_files()
        added = sum(_rows(p) for p in additions) + len(self._new)
        if added * FOLD_EVERY > _rows(self.path) or len(additions) >= MAX_ADDITION_FILES:
            _fold(self.path, _newest_per_path([t for p in additions for t in _batches(p)] + [self._new_table()]),
                  replace=True)
            remove_files(additions)  # folded: a kill before this leaves entries twice, which is harmless
        else:
            name = f"part-{time.time_ns()}-{secrets.token_hex(4)}.parquet"
            _fold(join(self.additions_dir, name), self._new_table(), replace=False)
        self._new = {}


def _rows(path: Path | str) -> int:
    """Entries in a hashes file; 0 if there is none or it is unreadable."""
    try:
        return parquet_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return 0


def _batches(path: Path | str) -> Iterator[pa.Table]:
    """A hashes file's entries (_KNOWN_SCHEMA), a batch at a time, each sorted by path. An unreadable
    file yields nothing (its videos are read again)."""
    try:
        # pre_buffer=False: else the whole file is read ahead.
        with arrow_source(path) as source, pq.ParquetFile(source, pre_buffer=False) as file:
            if not file.schema_arrow.equals(HASHES_SCHEMA, check_metadata=False):
                raise ValueError(f"schema {file.schema_arrow} differs from {HASHES_SCHEMA}")
            offset = 0
            for batch in file.iter_batches(batch_size=_BATCH_ROWS):
                sha = digests_of_hex(batch.column(3), lambda row: f"{path}: row {offset + row}: field 'sha256'")
                table = pa.Table.from_batches([batch]).set_column(3, _KNOWN_SCHEMA.field("sha256"), sha)
                offset += batch.num_rows
                # A file of an older version is in no order: each batch is sorted as it comes.
                yield table if _is_sorted(table["path"]) else table.sort_by("path").combine_chunks()
    except (OSError, ValueError, pa.ArrowException) as e:
        log.warning("%s: unreadable content-hash cache, its videos will be re-hashed (%s)", path, e)


def _newest_per_path(tables: list[pa.Table]) -> pa.Table:
    """The entries of `tables` (oldest first), sorted by path, a path's last entry only."""
    rows = pa.concat_tables(tables) if tables else _KNOWN_SCHEMA.empty_table()
    rows = rows.take(pc.sort_indices(rows, [("path", "ascending")]))  # stable: a path's entries stay in order
    paths = rows["path"]
    if rows.num_rows > 1:
        last = pc.not_equal(paths.slice(0, rows.num_rows - 1), paths.slice(1)).to_numpy(zero_copy_only=False)
        rows = rows.filter(pa.array(np.append(last, True)))
    return rows.combine_chunks()


def _fold(path: Path | str, extra: pa.Table, *, replace: bool) -> None:
    """Rewrite the hashes file `path` (or write it) with the entries of `extra` (sorted, one per path)
    in place of its own entries of those paths, sorted by path, atomically (replace=False: a new file,
    refused if it exists). Streams the file: its entries are never all in memory."""
    extra_paths = extra["path"].combine_chunks()
    if not is_url(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = staging_path(path)

    def write(writer, table: pa.Table) -> None:
        writer.write_table(table.set_column(3, HASHES_SCHEMA.field("sha256"), hex_digests(table["sha256"])))

    try:
        with pq.ParquetWriter(temp, HASHES_SCHEMA) as writer:
            placed = 0  # entries of extra written so far
            for table in _batches(path) if exists(path) else ():
                kept = table.filter(pc.invert(pc.is_in(table["path"], value_set=extra_paths)))
                # The extra entries up to this batch's last path go with it.
                upto = max(placed, pc.search_sorted(extra_paths, table["path"][-1], side="right").as_py())
                write(writer, pa.concat_tables([kept, extra.slice(placed, upto - placed)]).sort_by("path"))
                placed = upto
            write(writer, extra.slice(placed))
        publish(temp, path, replace=replace)
    except BaseException:
        remove_staging(temp)
        raise


def _positions(sorted_paths: pa.ChunkedArray, paths: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """For each of `paths` (sorted): the first row of `sorted_paths` not before it, and whether that
    row holds it. Two sorted searches, so the matched strings are never copied out to be compared."""
    left = pc.search_sorted(sorted_paths, paths).to_numpy()
    right = pc.search_sorted(sorted_paths, paths, side="right").to_numpy()
    return left, right > left


def _is_sorted(strings: pa.Array) -> bool:
    return len(strings) < 2 or pc.all(pc.less_equal(strings.slice(0, len(strings) - 1), strings.slice(1))).as_py()
