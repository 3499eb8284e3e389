"""The clips table on disk: one Parquet part per committed shard (plus parts holding only failed
rows), written atomically and LAST, so a part is the proof that its shard's clips are done; and the
compacted files that fold many parts into one (manifests/compaction.py).

A compacted file names, in its footer, every file whose rows it holds ("folds"). The table is every
compacted file plus every part that no compacted file folds: a compaction commits by renaming its
file into place, so a reader sees either the parts or the compacted file that folds them, never
both, whatever point a crash stopped the compaction at. Folded files still on disk are garbage the
next compaction removes. `read_clips_table` is the one reader of this rule.

A cache on an object store (shards/store.py) is read the same way, its files named by URL; a part is
written there with a conditional create, and a compacted file is uploaded whole under its final name
(an S3 PUT is atomic: the object appears whole or not at all), which is its commit there.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schemas import CLIP_OK, CLIPS_SCHEMA
from shards.atomic import is_temporary
from shards.store import Store, arrow_source

log = logging.getLogger(__name__)

CLIPS_DIR = Path("manifests") / "clips"
PART_PREFIX = "part-"
COMPACTED_PREFIX = "compacted-"
# Footer key of a compacted file: the file names (in CLIPS_DIR) whose rows it holds, as zlib-compressed
# JSON (a first compaction of 10M clips in shards of 8 folds 1.25M parts: ~60 MB of names, ~3 MB so).
FOLDS_KEY = b"p4d.folds"
_READ_THREADS = 4  # parts are small files: pyarrow decodes them without the GIL, so threads overlap the I/O
# A compaction may remove a listed file while it is being read (it folded it): list again, this often.
_READ_ATTEMPTS = 5
_CONVERT_ROWS = 1 << 16
# convert(rows, where) -> rows: see read_clips_table
Convert = Callable[[pa.Table, Callable[[int], str]], pa.Table]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows as dicts with the schema's column names; missing optional columns become null."""
    missing = [
        (i, f.name) for i, r in enumerate(rows) for f in CLIPS_SCHEMA if not f.nullable and r.get(f.name) is None
    ]
    if missing:
        i, name = missing[0]
        raise ValueError(f"clips row {i}: required field {name!r} is missing")
    return pa.Table.from_pylist(rows, schema=CLIPS_SCHEMA)


def write_clips_part(cache_root: str | Path, part_name: str, rows: list[dict]) -> Path | str:
    """Write a part once (atomically on a filesystem, a conditional create on an object store)."""
    table = rows_to_table(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return Store(cache_root).write_bytes(CLIPS_DIR / f"{PART_PREFIX}{part_name}.parquet", sink.getvalue().to_pybytes())


def file_name(path: Path | str) -> str:
    """A file's name, of a path or a URL."""
    return os.fspath(path).rsplit("/", 1)[-1]


def is_compacted(path: Path | str) -> bool:
    return file_name(path).startswith(COMPACTED_PREFIX)


def compacted_sequence(path: Path | str) -> int:
    """compacted-<sequence>.parquet: later compactions have larger numbers."""
    return int(file_name(path)[len(COMPACTED_PREFIX):-len(".parquet")])


def folds_metadata(names: list[str]) -> dict[bytes, bytes]:
    """The footer entry (ParquetWriter.add_key_value_metadata: the file's, not the rows' schema's) of a
    compacted file that holds the rows of the files `names`."""
    return {FOLDS_KEY: zlib.compress(json.dumps(names).encode())}


def parquet_metadata(path: Path | str) -> pq.FileMetaData:
    """A Parquet file's footer, of a path or a URL."""
    with arrow_source(path) as source:
        return pq.read_metadata(source)


def folded_names(path: Path | str) -> list[str]:
    """The file names a compacted file holds the rows of (its footer says)."""
    metadata = parquet_metadata(path).metadata or {}
    if FOLDS_KEY not in metadata:
        raise ValueError(f"{path}: a compacted clips file without its {FOLDS_KEY.decode()!r} footer entry")
    return json.loads(zlib.decompress(metadata[FOLDS_KEY]))


@dataclass(frozen=True)
class ManifestFiles:
    # Paths, or URLs for a cache on an object store.
    live: tuple[Path | str, ...]  # what the table is: compacted files by sequence, then unfolded parts by name
    folded: tuple[Path | str, ...]  # committed files that a compacted file holds: an interrupted compaction's garbage

    @property
    def parts(self) -> list[Path]:
        return [p for p in self.live if not is_compacted(p)]

    @property
    def compacted(self) -> list[Path]:
        return [p for p in self.live if is_compacted(p)]


def manifest_files(cache_root: str | Path) -> ManifestFiles:
    """The clips table's files as of now. Every compacted file on disk counts for what it folds, folded
    or not itself: the rows it holds are held by whatever folds it."""
    store = Store(cache_root)
    if store.is_local:
        directory = store.path(CLIPS_DIR)
        try:
            listed = os.listdir(directory)
        except FileNotFoundError:
            return ManifestFiles((), ())
    else:
        listed = [file_name(rel) for rel in store.children(CLIPS_DIR.as_posix())]
    names = sorted(n for n in listed if n.endswith(".parquet") and not is_temporary(n))
    path = {n: store.path(f"{CLIPS_DIR.as_posix()}/{n}") for n in names}
    compacted = sorted((path[n] for n in names if n.startswith(COMPACTED_PREFIX)), key=compacted_sequence)
    folded = {name for p in compacted for name in folded_names(p)}
    parts = [path[n] for n in names if n.startswith(PART_PREFIX)]
    live = [p for p in [*compacted, *parts] if file_name(p) not in folded]
    return ManifestFiles(tuple(live), tuple(p for p in [*compacted, *parts] if file_name(p) in folded))


def read_clips_file(path: Path | str, columns: tuple[str, ...] | None = None,
                    convert: Convert | None = None) -> pa.Table:
    """One file of the clips table (see read_clips_table); a path or a URL."""
    with arrow_source(path) as source:
        return _read_clips_source(source, path, columns, convert)


def _read_clips_source(source, path: Path | str, columns: tuple[str, ...] | None, convert: Convert | None) -> pa.Table:
    # One open per file: the footer gives the schema, then only the asked columns are read.
    # pre_buffer reads every asked column chunk of the file at once: batch by batch it must not.
    with pq.ParquetFile(source, pre_buffer=convert is None) as f:
        if not f.schema_arrow.equals(CLIPS_SCHEMA, check_metadata=False):
            raise ValueError(f"{path}: schema differs from the clips schema; got {f.schema_arrow}")
        names = None if columns is None else list(columns)
        if convert is None:
            return f.read(columns=names, use_threads=False)
        pieces, offset = [], 0
        for batch in f.iter_batches(batch_size=_CONVERT_ROWS, columns=names, use_threads=False):
            table = pa.Table.from_batches([batch])
            pieces.append(convert(table, lambda row, first=offset: f"{path}: row {first + row}"))
            offset += batch.num_rows
        return pa.concat_tables(pieces) if pieces else _empty(columns, convert)


def read_clips_table(cache_root: str | Path, columns: tuple[str, ...] | None = None,
                     convert: Convert | None = None) -> pa.Table:
    """Every row of the clips table (history included: a retried clip has several rows), all columns
    or only `columns`: the compacted files, then the parts written since, each row once.

    convert(table, where): applied to the rows a batch at a time as they are read (where(row) names a
    row's file and place, for errors), so that what it drops or shrinks is never all in memory."""
    for _ in range(_READ_ATTEMPTS):
        try:
            files = manifest_files(cache_root).live
            if not files:
                return _empty(columns, convert)
            with ThreadPoolExecutor(min(_READ_THREADS, len(files))) as pool:
                return pa.concat_tables(list(pool.map(lambda p: read_clips_file(p, columns, convert), files)))
        except FileNotFoundError as e:
            log.info("a clips file was removed by a compaction while being read (%s); listing them again", e)
    raise RuntimeError(f"{Store(cache_root).path(CLIPS_DIR)}: files kept vanishing while being read "
                       f"({_READ_ATTEMPTS} attempts); is something other than a compaction deleting them?")


def _empty(columns: tuple[str, ...] | None, convert: Convert | None) -> pa.Table:
    """What reading no row gives."""
    empty = pa.schema([CLIPS_SCHEMA.field(c) for c in columns or CLIPS_SCHEMA.names]).empty_table()
    return empty if convert is None else convert(empty, str)


def _current_rows(table: pa.Table) -> pa.Table:
    """One row per cache_key, in table order: its first ok row if it has one, else its latest failed
    row (the later one of equal times). Vectorized: 100k rows in a fraction of a second."""
    n = table.num_rows
    order = np.arange(n)
    ok = pc.equal(table["status"], CLIP_OK).to_numpy(zero_copy_only=False)
    created = table["created_at"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    ranked = table.select(["cache_key"]).append_column("ok", pa.array(ok)).append_column(
        "preference", pa.array(np.where(ok, -order, created))).append_column("order", pa.array(order))
    ranked = ranked.sort_by([("cache_key", "ascending"), ("ok", "descending"), ("preference", "descending"),
                             ("order", "descending")])
    keys = ranked["cache_key"].to_numpy(zero_copy_only=False)
    first = np.ones(n, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    chosen = np.sort(ranked["order"].to_numpy()[first])
    return table.take(chosen)


def current_clips(table: pa.Table) -> dict[str, dict]:
    """The state of each cache_key as its full row: its ok row if it has one, else its latest failed row."""
    return {row["cache_key"]: row for row in _current_rows(table).to_pylist()}


def duplicate_ok_keys(table: pa.Table) -> list[str]:
    """Keys with more than one ok row: must be empty in a consistent cache."""
    keys = table.filter(pc.equal(table["status"], CLIP_OK))["cache_key"].to_pylist()
    seen, dups = set(), []
    for k in keys:
        if k in seen:
            dups.append(k)
        seen.add(k)
    return dups
