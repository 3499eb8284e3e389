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
from collections.abc import Mapping

import google_crc32c  # zarr's own crc32c implementation (a dependency of zarr)
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodecIndexLocation
from zarr.storage import MemoryStore

from shards.base import (PackedClip, ShardReader, ShardWriter, StoredClip, check_addable, check_packed,
                         check_row, check_specs, read_fields, stored_clip)
from shards.codecs import Encoded, stored_specs, zarr_compressors
from shards.integrity import ShardCorruptError, verify_checksum
from shards.schema import FieldSpec, specs_from_json, specs_to_json
from shards.store import exists, location, remove_staging, staging_path

# What zarr's codecs raise on damaged bytes: zstd/blosc RuntimeError, gzip BadGzipFile (an OSError),
# a shard index failing its crc32c or a chunk of the wrong size ValueError.
_DECODE_ERRORS = (ValueError, RuntimeError, OSError, EOFError, zlib.error)
_EMPTY_CHUNK = 2**64 - 1  # the sharding index's (offset, length) of a chunk that is not stored


def _one_chunk_array(spec: FieldSpec, chunks: dict) -> zarr.Array:
    """A one-clip array of `spec` on an in-memory store (`chunks`), with the field's compressors."""
    return zarr.create_array(MemoryStore(chunks), shape=(1, *spec.shape), chunks=(1, *spec.shape), dtype=spec.dtype,
                             fill_value=0, compressors=zarr_compressors(spec))


def _shard_bytes(chunks: list[bytes]) -> bytes:
    """A shard file of the Zarr v3 sharding codec (index at the end, index codecs bytes + crc32c),
    the inner chunks along the first axis: the chunks back to back, then (offset, length) per chunk as
    little-endian uint64, 2**64 - 1 twice for an empty chunk, then the crc32c of that index."""
    index = np.full((len(chunks), 2), _EMPTY_CHUNK, dtype="<u8")
    offset = 0
    for row, chunk in enumerate(chunks):
        if chunk:
            index[row] = (offset, len(chunk))
            offset += len(chunk)
    index_bytes = index.tobytes()
    return b"".join([*chunks, index_bytes, google_crc32c.value(index_bytes).to_bytes(4, "little")])


class ZarrShardWriter(ShardWriter):
    """Holds each clip's compressed chunks (ShardWriter.pack) and writes each field's shard file once,
    at commit.

    With the sharding codec all clips of a field live in one file, and zarr rewrites that whole file
    on every partial write: writing clip by clip would write O(n_clips^2) bytes. Handing zarr the
    stacked raw clips at commit would do all the compression there, in one process, after the shard's
    last clip (in the caching job: one writer compressing while the teacher idles). So clips arrive
    compressed (packed in parallel by the job's encode tasks, by zarr's codecs), and the commit creates
    each array (its metadata, by zarr) and writes its shard file (_shard_bytes): byte-identical to zarr
    writing the stacked clips itself, which a test checks.
    One writer per shard: concurrent writers into one shard file lose data.
    """

    format, suffix = "zarr", ".zarr"

    @staticmethod
    def pack_arrays(stored: list[FieldSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        """Each stored array of one clip as the bytes zarr stores for it inside a shard (an inner chunk).

        Zarr itself encodes: each array is written into a one-clip array with the field's codecs (the
        sharding codec's inner `codecs`) on an in-memory store, whose chunk bytes are taken. A clip equal
        to the fill value everywhere gives b"": zarr stores no chunk for it either."""
        packed = {}
        for spec in stored:
            chunks: dict = {}
            array = _one_chunk_array(spec, chunks)
            array[0] = arrays[spec.name]
            chunk = chunks.get(array.metadata.encode_chunk_key((0,) * array.ndim))
            packed[spec.name] = b"" if chunk is None else chunk.to_bytes()
        return packed

    def __init__(self, final_path: str | os.PathLike, specs: list[FieldSpec]):
        self.path = location(final_path)
        self._specs = check_specs(specs)
        if exists(self.path):
            raise FileExistsError(f"{self.path} already exists; committed shards are never replaced")
        self._temp = staging_path(self.path)
        zarr.open_group(self._temp, mode="w-", zarr_format=3)
        self._stored = stored_specs(self._specs)
        self._keys: list[str] = []
        self._chunks: dict[str, list[bytes]] = {s.name: [] for s in self._stored}
        self._closed = False

    def add_packed(self, cache_key: str, packed: PackedClip) -> StoredClip:
        check_addable(self.path, self._closed, self._keys, cache_key)
        check_packed(self.path, self.format, self._stored, packed)
        for name, chunks in self._chunks.items():
            chunks.append(packed.payloads[name])
        self._keys.append(cache_key)
        return stored_clip(len(self._keys) - 1, packed)

    def _finish(self) -> None:
        if exists(self.path):  # before writing a shard's worth of bytes for nothing
            raise FileExistsError(f"{self.path} already exists; committed shards are never replaced")
        group = zarr.open_group(self._temp, mode="r+", zarr_format=3)
        for spec in self._stored:
            shape = (len(self._keys), *spec.shape)
            array = group.create_array(spec.name, shape=shape, dtype=spec.dtype, chunks=(1, *spec.shape),
                                       shards=shape, fill_value=0, compressors=zarr_compressors(spec))
            self._check_layout(spec, array)
            chunks = self._chunks.pop(spec.name)
            if any(chunks):  # as zarr: no shard file when every chunk equals the fill value
                path = self._temp / spec.name / array.metadata.encode_chunk_key((0,) * array.ndim)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_shard_bytes(chunks))
        group.update_attributes({"cache_keys": self._keys, "fields": specs_to_json(self._specs)})

    def _check_layout(self, spec: FieldSpec, array: zarr.Array) -> None:
        """The shard layout _shard_bytes writes is the one zarr made this array with (a zarr whose
        defaults changed fails here, loudly, instead of writing shards it cannot read)."""
        (sharding,) = array.metadata.codecs
        expected = (sharding.index_location == ShardingCodecIndexLocation.end
                    and tuple(sharding.index_codecs) == (BytesCodec(endian="little"), Crc32cCodec())
                    and tuple(sharding.codecs) == tuple(_one_chunk_array(spec, {}).metadata.codecs))
        if not expected:
            raise RuntimeError(f"{self.path}: zarr {zarr.__version__} made {spec.name!r} with {sharding}, not the "
                               "shard layout this writer writes (index at the end, bytes + crc32c)")

    def abort(self) -> None:
        if self._temp.exists():
            remove_staging(self._temp)
        self._chunks = {}
        self._closed = True


class ZarrShardReader(ShardReader):
    def __init__(self, path: str | os.PathLike, specs: list[FieldSpec]):
        self.path = location(path)
        self._specs = check_specs(specs)
        # A URL opens zarr's fsspec store: a clip's read is a ranged GET of the shard index and its chunk.
        group = zarr.open_group(os.fspath(self.path), mode="r", zarr_format=3)
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

    def read(
        self, row: int, fields: list[str] | None = None, checksums: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> dict[str, np.ndarray | Encoded]:
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

        return read_fields(self._specs, fields, read_stored, decode)
