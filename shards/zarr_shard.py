"""A shard as one Zarr v3 group directory `<name>.zarr`.

Layout: one array per stored array (each field, plus the side arrays of quantized fields, see
shards/codecs.py), shape [n_clips, *shape], chunks (1, *field.shape) so a clip of a
field is read alone, and the sharding codec groups all clips of a field into one file
(`<field>/c/0/...`), compressed per spec. Group attributes: `cache_keys` (row order) and `fields`
(schema.specs_to_json). Stock `zarr.open_group(path, mode="r")` reads it (a quantized field as
its codes and side arrays).
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import zarr

from shards.atomic import commit_temporary, remove_temporary, temporary_path
from shards.codecs import check_encoded, stored_specs, zarr_compressors
from shards.formats import StoredClip, check_addable, check_committable, check_row, check_specs, read_decoded, stored_clip
from shards.integrity import ShardCorruptError, verify_checksum
from shards.schema import FieldSpec, specs_from_json, specs_to_json

# What zarr's codecs raise on damaged bytes: zstd/blosc RuntimeError, gzip BadGzipFile (an OSError),
# a shard index failing its crc32c or a chunk of the wrong size ValueError.
_DECODE_ERRORS = (ValueError, RuntimeError, OSError, EOFError, zlib.error)


class ZarrShardWriter:
    """Buffers the shard's clips in memory and writes each field once, at commit.

    With the sharding codec all clips of a field live in one file, and zarr rewrites that whole file
    on every partial write: writing clip by clip would write O(n_clips^2) bytes. A shard holds a
    bounded number of clips, so the buffer is bounded too (n_clips x ~29.5 MB at full L4P shapes).
    One writer per shard: concurrent writers into one shard file lose data.
    """

    def __init__(self, final_path: str | os.PathLike, specs: list[FieldSpec]):
        self.path = Path(final_path)
        self._specs = check_specs(specs)
        if os.path.lexists(self.path):
            raise FileExistsError(f"{self.path} already exists; committed shards are never replaced")
        self._temp = temporary_path(self.path)
        zarr.open_group(self._temp, mode="w-", zarr_format=3)
        self._stored = stored_specs(self._specs)
        self._keys: list[str] = []
        self._clips: dict[str, list[np.ndarray]] = {s.name: [] for s in self._stored}
        self._closed = False

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, cache_key: str, arrays: Mapping[str, np.ndarray]) -> StoredClip:
        check_addable(self.path, self._closed, self._keys, cache_key)
        check_encoded(self._specs, arrays)
        # Copied: the caller may reuse its buffers before commit, and the checksums are of these bytes.
        arrays = {s.name: arrays[s.name].copy() for s in self._stored}
        for name, array in arrays.items():
            self._clips[name].append(array)
        self._keys.append(cache_key)
        return stored_clip(len(self._keys) - 1, arrays)

    def commit(self) -> Path:
        check_committable(self.path, self._closed, self._keys)
        try:
            if os.path.lexists(self.path):
                raise FileExistsError(f"{self.path} already exists; committed shards are never replaced")
            group = zarr.open_group(self._temp, mode="r+", zarr_format=3)
            for spec in self._stored:
                # pop: each field's per-clip copies are freed once stacked, so the peak stays near one
                # buffered shard plus one stacked field.
                data = np.stack(self._clips.pop(spec.name))
                group.create_array(
                    spec.name,
                    data=data,
                    chunks=(1, *spec.shape),
                    shards=data.shape,
                    compressors=zarr_compressors(spec),
                )
            group.update_attributes({"cache_keys": self._keys, "fields": specs_to_json(self._specs)})
            return commit_temporary(self._temp, self.path)
        except BaseException:
            self.abort()
            raise
        finally:
            self._closed = True

    def abort(self) -> None:
        if self._temp.exists():
            remove_temporary(self._temp)
        self._clips = {}
        self._closed = True


class ZarrShardReader:
    def __init__(self, path: str | os.PathLike, specs: list[FieldSpec]):
        self.path = Path(path)
        self._specs = check_specs(specs)
        group = zarr.open_group(self.path, mode="r", zarr_format=3)
        stored = {s.name: s for s in specs_from_json(group.attrs["fields"])}
        expected = {s.name: s for s in self._specs}
        if stored != expected:
            raise ValueError(f"shard {self.path}: stored fields {stored} differ from the expected {expected}")
        self._keys = list(group.attrs["cache_keys"])
        stored_arrays = stored_specs(self._specs)
        missing = [s.name for s in stored_arrays if s.name not in group]
        if missing:
            raise ShardCorruptError(self.path, None, missing[0], "array missing from the group")
        self._arrays = {s.name: group[s.name] for s in stored_arrays}
        for spec in stored_arrays:
            array, shape = self._arrays[spec.name], (len(self._keys), *spec.shape)
            if (str(array.dtype), array.shape) != (spec.dtype, shape):
                raise ShardCorruptError(
                    self.path, None, spec.name, f"array expected {spec.dtype} {shape}, got {array.dtype} {array.shape}"
                )

    def __len__(self) -> int:
        return len(self._keys)

    def cache_keys(self) -> list[str]:
        return list(self._keys)

    def read(
        self, row: int, fields: list[str] | None = None, checksums: Mapping[str, str] | None = None
    ) -> dict[str, np.ndarray]:
        key = self._keys[check_row(row, len(self._keys))]

        def read_stored(spec: FieldSpec) -> np.ndarray:
            try:
                # An integer index reads the shard index and this one chunk's byte range only.
                array = self._arrays[spec.name][row]
            except _DECODE_ERRORS as e:
                reason = f"stored bytes do not decode: {e!r}"
                raise ShardCorruptError(self.path, key, spec.name, reason) from e
            if checksums is not None:
                verify_checksum(self.path, key, spec.name, array, checksums)
            return array

        return read_decoded(self._specs, fields, read_stored)

    def __iter__(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for row, key in enumerate(self._keys):
            yield key, self.read(row)
