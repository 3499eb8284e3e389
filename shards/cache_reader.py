"""Reading cached clips given their clips-table rows: a row says which shard, which row inside it, the
stored field specs and the checksums to verify against. The student's loader and the cache viewer
read clips this one way."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from shards.base import ShardReader
from shards.codecs import Encoded
from shards.formats import open_reader
from shards.integrity import ShardCorruptError
from shards.schema import specs_from_json
from shards.store import join, location

OPEN_SHARDS = 4  # readers kept open: a shard-grouped read order revisits few shards at a time


class ClipReader:
    """Reads cached clips, keeping the last few shards' readers open (a WebDataset reader indexes its
    tar once). `fields`: what `read` returns of each clip, where the clip stores it (None: every
    field it stores); a field a clip does not store is absent from its result.

    decode=False: a quantized field comes back as its codecs.Encoded (stored arrays), for a consumer
    that decodes it where it is used (the student's step, on its GPU); a plain field is its value
    either way. keep_clips: the stored arrays of the last clips read are kept, so samples of one
    clip read close together read its shard once (`reads` counts the clips read from shards); a kept
    clip's arrays are shared by every read that returns them: never write into them."""

    def __init__(self, cache_root: str | Path, fields: Sequence[str] | None = None, open_shards: int = OPEN_SHARDS,
                 decode: bool = True, keep_clips: int = 0):
        self.root = location(cache_root)
        self.fields = None if fields is None else tuple(fields)
        self.decode, self.keep_clips = decode, keep_clips
        self._open_shards = open_shards
        self._open: OrderedDict[str, ShardReader] = OrderedDict()
        self._kept: OrderedDict[tuple[str, int], dict[str, np.ndarray | Encoded]] = OrderedDict()
        self.reads = 0

    def _reader(self, row: Mapping, specs) -> ShardReader:
        shard = row["shard"]
        if shard not in self._open:
            if len(self._open) >= self._open_shards:
                self._open.popitem(last=False)
            self._open[shard] = open_reader(row["format"], join(self.root, shard), specs)
        self._open.move_to_end(shard)
        return self._open[shard]

    def read(self, row: Mapping) -> dict[str, np.ndarray | Encoded]:
        if row["status"] != "ok":
            raise ValueError(f"clip {row['clip_id']} has no cached arrays: status {row['status']} ({row['error']})")
        key = (row["shard"], int(row["row"]))
        stored = self._kept.get(key)
        if stored is None:
            stored = self._read_stored(row)
            if self.keep_clips:
                self._kept[key] = stored
                if len(self._kept) > self.keep_clips:
                    self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(key)
        if self.decode:
            return {name: value.decode() if isinstance(value, Encoded) else value for name, value in stored.items()}
        return dict(stored)

    def _read_stored(self, row: Mapping) -> dict[str, np.ndarray | Encoded]:
        specs = specs_from_json(row["fields"])
        stored = {s.name for s in specs}
        fields = None if self.fields is None else [f for f in self.fields if f in stored]
        try:
            # pyarrow gives a map column as (key, value) pairs
            arrays = self._reader(row, specs).read(row["row"], fields=fields, checksums=dict(row["checksums"]),
                                                   decode=False)
        except ShardCorruptError as e:
            # The reader knows the shard and the cache_key; the row adds the name a person knows the clip by.
            raise e.with_clip_id(row["clip_id"]) from e
        self.reads += 1
        return arrays


def read_cached_clip(cache_root: str | Path, row: Mapping, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """One clip's `fields` (those it stores; None: all), read once."""
    return ClipReader(cache_root, fields, open_shards=1).read(row)
