"""The clips table on disk: one Parquet part per committed shard (plus parts holding only failed
rows), written atomically and LAST, so a part is the proof that its shard's clips are done."""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schemas import CLIP_OK, CLIPS_SCHEMA
from shards.store import Store, is_url, open_for_read

CLIPS_DIR = Path("manifests") / "clips"


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
    return Store(cache_root).write_bytes(CLIPS_DIR / f"part-{part_name}.parquet", sink.getvalue().to_pybytes())


def clip_part_paths(cache_root: str | Path) -> list[Path | str]:
    """The committed parts (paths, or URLs for a cache on an object store), in name order."""
    store = Store(cache_root)
    return [store.path(rel) for rel in store.glob(f"{CLIPS_DIR.as_posix()}/part-*.parquet")]


# What planning needs of each row (current_status): reading only these keeps a rerun's plan of 100k
# clips fast and small, where the full rows (field specs, checksums, timestamps) are ~2 KB each.
PLAN_COLUMNS = ("cache_key", "status", "created_at")
_READ_THREADS = 4  # parts are small files: pyarrow decodes them without the GIL, so threads overlap the I/O


def _read_part(path: Path | str, columns: tuple[str, ...] | None) -> pa.Table:
    if is_url(path):
        with open_for_read(path) as source:
            return _read_parquet_part(source, path, columns)
    # A path, not a Python file object: pyarrow then reads it natively, without the GIL.
    return _read_parquet_part(path, path, columns)


def _read_parquet_part(source, path: Path | str, columns: tuple[str, ...] | None) -> pa.Table:
    # One open per part: the footer gives the schema, then only the asked columns are read.
    with pq.ParquetFile(source) as f:
        if not f.schema_arrow.equals(CLIPS_SCHEMA, check_metadata=False):
            raise ValueError(f"{path}: schema differs from the clips schema; got {f.schema_arrow}")
        return f.read(columns=None if columns is None else list(columns), use_threads=False)


def read_clips_table(cache_root: str | Path, columns: tuple[str, ...] | None = None) -> pa.Table:
    """Every row of every committed part (history included: a retried clip has several rows), all
    columns or only `columns`, parts in name order."""
    parts = clip_part_paths(cache_root)
    schema = CLIPS_SCHEMA if columns is None else pa.schema([CLIPS_SCHEMA.field(c) for c in columns])
    if not parts:
        return schema.empty_table()
    with ThreadPoolExecutor(min(_READ_THREADS, len(parts))) as pool:
        return pa.concat_tables(list(pool.map(lambda p: _read_part(p, columns), parts)))


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


def current_status(table: pa.Table) -> dict[str, str]:
    """cache_key -> status of its current row (as current_clips), for planning: no row becomes a dict."""
    rows = _current_rows(table.select(list(PLAN_COLUMNS)))
    return dict(zip(rows["cache_key"].to_pylist(), rows["status"].to_pylist()))


def duplicate_ok_keys(table: pa.Table) -> list[str]:
    """Keys with more than one ok row: must be empty in a consistent cache."""
    keys = table.filter(pc.equal(table["status"], CLIP_OK))["cache_key"].to_pylist()
    seen, dups = set(), []
    for k in keys:
        if k in seen:
            dups.append(k)
        seen.add(k)
    return dups
