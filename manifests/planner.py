"""Planning: of the clips a job wants, which are not cached yet.

In columns, so that ten million clips plan in seconds and in memory proportional to the two columns
it needs: the clips table's cache_key (and status) are read as columns (manifests/clips_table.py),
turned into 32-byte keys a batch at a time; a wanted key is looked up by its first 8 bytes (Arrow's
hash lookup on integers: ~1.5 s for 10M against 10M here, ~6 s and twice the memory on the whole 32
bytes), then compared whole.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.cache_key import digest_bytes, digests_of_hex
from manifests.clips_table import read_clips_table
from manifests.schemas import CLIP_FAILED, CLIP_OK

_COMPARE_ROWS = 1 << 20  # whole-key comparisons a chunk at a time: bounded temporaries


def unique_clips(requests: pa.Table) -> pa.Table:
    """One row per cache_key, its first (a video named twice, or the same bytes under two names)."""
    keys = digest_bytes(requests["cache_key"])
    # Equal keys have equal prefixes: only rows whose prefix repeats (duplicates, or a 64-bit prefix
    # shared by different keys) need their whole key compared.
    prefixes = _prefixes(keys)
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
    A transient row (the machine failed the clip, not the clip itself) is never done.
    """
    done = recorded_keys(cache_root, ok_only=retry_failed)
    requests = unique_clips(requests)
    return requests.filter(pa.array(~contains(done, requests["cache_key"])))


def recorded_keys(cache_root: str | Path, ok_only: bool = False) -> pa.Array:
    """The cache keys (binary(32)) that settle a clip: its ok rows, and (unless ok_only) a failed row
    that is its key's latest row not ok (a transient row after it, the machine's fault on a retry,
    leaves the clip to the next run); a key once per row."""
    others = []  # the rows not ok, with their times: few, so kept whole to find each key's latest

    def keys_of(rows: pa.Table, where) -> pa.Table:
        # The keys as 32 bytes as they are read: as text they take twice that.
        keys = digests_of_hex(rows["cache_key"], lambda row: f"{where(row)}: field 'cache_key'")
        ok = pc.equal(rows["status"], CLIP_OK)
        if not ok_only:
            other = pc.invert(ok)
            others.append(pa.table({"cache_key": keys.filter(other),
                                    "failed": pc.equal(rows["status"], CLIP_FAILED).filter(other),
                                    "created_at": rows["created_at"].filter(other)}))
        return pa.table({"cache_key": keys.filter(ok)})

    columns = ("cache_key", "status") if ok_only else ("cache_key", "status", "created_at")
    done = read_clips_table(cache_root, columns, convert=keys_of)["cache_key"].combine_chunks()
    if ok_only or not others:
        return done
    return pa.concat_arrays([done, _latest_failed(pa.concat_tables(others))])


def _latest_failed(rows: pa.Table) -> pa.Array:
    """Keys whose latest row (of `rows`) is failed."""
    if not rows.num_rows:
        return rows["cache_key"].combine_chunks()
    rows = rows.sort_by([("cache_key", "ascending"), ("created_at", "ascending")])
    keys = digest_bytes(rows["cache_key"].combine_chunks())
    last = np.ones(len(keys), bool)
    last[:-1] = (keys[1:] != keys[:-1]).any(axis=1)  # the row before another key's: its key's latest
    return rows["cache_key"].combine_chunks().filter(pa.array(last & rows["failed"].to_numpy(zero_copy_only=False)))


def contains(done: pa.Array, keys: pa.Array) -> np.ndarray:
    """Whether each of `keys` is one of `done` (both binary(32), exactly)."""
    done_bytes, key_bytes = digest_bytes(done), digest_bytes(keys)
    done_prefixes = _prefixes(done_bytes)
    # The first done row with the same first 8 bytes, or -1.
    at = pc.index_in(pa.array(_prefixes(key_bytes)), value_set=pa.array(done_prefixes)).fill_null(-1).to_numpy()
    found = np.zeros(len(at), bool)
    for start in range(0, len(at), _COMPARE_ROWS):
        rows = slice(start, start + _COMPARE_ROWS)
        hit = at[rows] >= 0
        found[rows][hit] = (done_bytes[at[rows][hit]] == key_bytes[rows][hit]).all(axis=1)
    # A prefix found whose first done row holds another key: a prefix two keys share. Compared whole
    # with every done key of that prefix (astronomically rare with SHA-256, but then exact).
    unsure = np.flatnonzero((at >= 0) & ~found)
    if unsure.size:
        same_prefix = np.flatnonzero(np.isin(done_prefixes, _prefixes(key_bytes[unsure])))
        candidates = {done_bytes[row].tobytes() for row in same_prefix}
        found[unsure] = [key_bytes[row].tobytes() in candidates for row in unsure]
    return found


def _prefixes(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each (rows, 32) key as one integer."""
    return np.ascontiguousarray(keys[:, :8]).view(np.uint64).ravel() if len(keys) else np.zeros(0, np.uint64)
