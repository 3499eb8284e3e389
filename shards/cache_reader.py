"""Reading one cached clip given its clips-table row: the row says which shard, which row inside
it, the stored field specs and the checksums to verify against."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from shards.formats import open_reader
from shards.integrity import ShardCorruptError
from shards.schema import specs_from_json


def read_cached_clip(cache_root: str | Path, row: Mapping, fields: list[str] | None = None) -> dict[str, np.ndarray]:
    if row["status"] != "ok":
        raise ValueError(f"clip {row['clip_id']} has no cached arrays: status {row['status']} ({row['error']})")
    try:
        reader = open_reader(row["format"], Path(cache_root) / row["shard"], specs_from_json(row["fields"]))
        # pyarrow gives a map column as (key, value) pairs
        return reader.read(row["row"], fields=fields, checksums=dict(row["checksums"]))
    except ShardCorruptError as e:
        # The reader knows the shard and the cache_key; the row adds the name a person knows the clip by.
        raise e.with_clip_id(row["clip_id"]) from e
