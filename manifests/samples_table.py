"""The samples table: questions / answers / regions pointing at clips by cache_key.

Samples live only in Parquet, never inside shards: adding or editing questions never touches a
shard. The caching job fills `cache_key` from each sample's `video` and merges the rows into
CACHE/manifests/samples.parquet (a sample_id seen again replaces its older row).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.schemas import SAMPLES_SCHEMA
from shards.store import Store, open_for_read, write_file

SAMPLES_FILE = Path("manifests") / "samples.parquet"


def read_samples(path: str | Path) -> pa.Table:
    """A samples Parquet file (a path or a URL), checked against the schema (column names and types)."""
    with open_for_read(path) as source:
        table = pq.read_table(source)
    missing = [f.name for f in SAMPLES_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: samples table lacks column(s) {missing}")
    table = table.select(SAMPLES_SCHEMA.names)
    nulls = [f.name for f in SAMPLES_SCHEMA if not f.nullable and table[f.name].null_count]
    if nulls:
        col = nulls[0]
        row = pc.index(pc.is_null(table[col]), True).as_py()
        raise ValueError(f"{path}: row {row}: required field {col!r} is null")
    try:
        table = table.cast(SAMPLES_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{path}: samples table does not match the schema: {e}") from e
    return table


def write_samples(path: str | Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(SAMPLES_SCHEMA), sink)
    write_file(path, sink.getvalue().to_pybytes(), replace=True)


def merge_samples(cache_root: str | Path, new: pa.Table) -> pa.Table:
    """Merge `new` into the cache's samples table; returns the merged table written."""
    store = Store(cache_root)
    path = store.path(SAMPLES_FILE)
    if store.exists(SAMPLES_FILE):
        old = read_samples(path)
        keep = pc.invert(pc.is_in(old["sample_id"], value_set=new["sample_id"]))
        merged = pa.concat_tables([old.filter(keep), new.cast(SAMPLES_SCHEMA)])
    else:
        merged = new.cast(SAMPLES_SCHEMA)
    write_samples(path, merged)
    return merged
