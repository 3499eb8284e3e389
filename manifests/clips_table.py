"""The clips table on disk: one Parquet part per committed shard (plus parts holding only failed
rows), written atomically and LAST, so a part is the proof that its shard's clips are done."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schemas import CLIP_OK, CLIPS_SCHEMA
from shards.atomic import atomic_write_bytes

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


def write_clips_part(cache_root: str | Path, part_name: str, rows: list[dict]) -> Path:
    table = rows_to_table(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = Path(cache_root) / CLIPS_DIR / f"part-{part_name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def clip_part_paths(cache_root: str | Path) -> list[Path]:
    return sorted((Path(cache_root) / CLIPS_DIR).glob("part-*.parquet"))


def read_clips_table(cache_root: str | Path) -> pa.Table:
    """Every row of every committed part (history included: a retried clip has several rows)."""
    parts = clip_part_paths(cache_root)
    if not parts:
        return CLIPS_SCHEMA.empty_table()
    tables = []
    for p in parts:
        t = pq.read_table(p)
        if not t.schema.equals(CLIPS_SCHEMA, check_metadata=False):
            raise ValueError(f"{p}: schema differs from the clips schema; got {t.schema}")
        tables.append(t)
    return pa.concat_tables(tables)


def current_clips(table: pa.Table) -> dict[str, dict]:
    """The state of each cache_key: its ok row if it has one, else its latest failed row."""
    state: dict[str, dict] = {}
    for row in table.to_pylist():
        key = row["cache_key"]
        prev = state.get(key)
        if prev is None or (prev["status"] != CLIP_OK and (row["status"] == CLIP_OK or row["created_at"] >= prev["created_at"])):
            state[key] = row
    return state


def duplicate_ok_keys(table: pa.Table) -> list[str]:
    """Keys with more than one ok row: must be empty in a consistent cache."""
    keys = table.filter(pc.equal(table["status"], CLIP_OK))["cache_key"].to_pylist()
    seen, dups = set(), []
    for k in keys:
        if k in seen:
            dups.append(k)
        seen.add(k)
    return dups
