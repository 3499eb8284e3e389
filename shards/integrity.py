"""Checksums of stored arrays and the one error every reader raises for bytes that are not what was written.

The checksum covers the array as stored (storage dtype, little-endian, C order) with its dtype and
shape folded in, so it is the same whichever format holds the array, and a reinterpretation of the
same bytes (another dtype or shape) does not pass.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import numpy as np


class ShardCorruptError(Exception):
    """Stored bytes of a shard fail to decode or do not match the recorded checksum.

    cache_key / field are None when the damage is not inside one clip's field (e.g. a tar header);
    clip_id is known to readers that start from a manifest row (shards.cache_reader).
    """

    def __init__(self, path: str | os.PathLike, cache_key: str | None, field: str | None, reason: str,
                 clip_id: str | None = None):
        self.path = os.fspath(path)
        self.cache_key = cache_key
        self.field = field
        self.reason = reason
        self.clip_id = clip_id
        clip = f"clip {cache_key}" if clip_id is None else f"clip {clip_id} (cache_key {cache_key})"
        super().__init__(f"corrupt shard {self.path}: {clip}, field {field}: {reason}")

    def with_clip_id(self, clip_id: str) -> "ShardCorruptError":
        return ShardCorruptError(self.path, self.cache_key, self.field, self.reason, clip_id)

    def __reduce__(self):
        # Crosses processes intact (loader workers, Ray tasks): the default would call __init__(message).
        return ShardCorruptError, (self.path, self.cache_key, self.field, self.reason, self.clip_id)


def array_checksum(array: np.ndarray) -> str:
    """sha256 hex of the array's dtype, shape and C-contiguous little-endian bytes."""
    array = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape};".encode())
    digest.update(array)
    return digest.hexdigest()


def verify_checksum(
    path: str | os.PathLike, cache_key: str, field: str, array: np.ndarray, checksums: Mapping[str, str]
) -> None:
    """Raise ShardCorruptError unless `array` matches `checksums[field]` (field -> hex, as recorded)."""
    if field not in checksums:
        raise ValueError(f"field {field!r}: no expected checksum given (got fields {sorted(checksums)})")
    actual = array_checksum(array)
    if actual != checksums[field]:
        raise ShardCorruptError(path, cache_key, field, f"checksum expected {checksums[field]}, got {actual}")
