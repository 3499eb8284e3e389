"""Planning: of the clips a job wants, which are not cached yet.

In columns, so that ten million clips plan in seconds and in memory proportional to the two columns
it needs: the clips table's cache_key and status are read as columns (manifests/clips_table.py),
turned into 32-byte keys, and the wanted clips are matched against them with Arrow's hash lookup.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.cache_key import digest_bytes, digests_of_hex
from manifests.clips_table import manifest_files, read_clips_table
from manifests.schemas import CLIP_OK


def unique_clips(requests: pa.Table) -> pa.Table:
    """One row per cache_key, its first (a video named twice, or the same bytes under two names)."""
    keys = digest_bytes(requests["cache_key"])
    # Equal keys have equal first 8 bytes: only rows whose prefix repeats (duplicates, or a 64-bit
    # prefix shared by different keys) need their whole key compared.
    prefixes = np.ascontiguousarray(keys[:, :8]).view(np.uint64).ravel()
    ordered = np.sort(prefixes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not repeated.size:
        return requests
    keep = np.ones(len(keys), bool)
    seen = set()
    for row in np.flatnonzero(np.isin(prefixes, repeated)):
        key = keys[row].tobytes()
        keep[row] = key not in seen
        seen.add(key)
    return requests.filter(pa.array(keep))


def missing_clips(requests: pa.Table, cache_root: str | Path, retry_failed: bool = False) -> pa.Table:
    """Rows of `requests` (CLIP_REQUESTS_SCHEMA) whose cache_key is not done, each key once (its
    first row), in input order.

    Done = an ok row in the clips table, or a failed row unless retry_failed: most failures are
    deterministic (a corrupt file stays corrupt), and a repaired video has new bytes, hence a new key.
    """
    table = read_clips_table(cache_root, ("cache_key", "status"))
    done = digests_of_hex(table["cache_key"], lambda row: f"{_locate(cache_root, row)}: field 'cache_key'")
    if retry_failed:
        done = done.filter(pc.equal(table["status"], CLIP_OK))
    requests = unique_clips(requests)
    return requests.filter(pc.invert(pc.is_in(requests["cache_key"], value_set=done)))


def _locate(cache_root: str | Path, row: int) -> str:
    """'FILE: row R' of the clips table's row `row` (read_clips_table's order)."""
    for path in manifest_files(cache_root).live:
        rows = pq.read_metadata(path).num_rows
        if row < rows:
            return f"{path}: row {row}"
        row -= rows
    return f"{Path(cache_root)}: row {row}"
