"""A shard as one tar `<name>.tar` in WebDataset layout.

One sample per clip, members in row order: `<key>.<field>.npy` (codec none) or `<key>.<field>.npy.gz`
(any other codec), side arrays of quantized fields likewise (`<key>.<field>__<part>.npy`, see
shards/codecs.py), then `<key>.cache_key.txt`. Stock `webdataset.WebDataset(path,
shardshuffle=False).decode()` gives the arrays with no custom code. Our reader does not use
webdataset's decoders (their defaults unpickle .pkl/.pyd members): it indexes member offsets with
tarfile on open and decodes .npy with allow_pickle=False.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Mapping

import numpy as np
from numpy.lib.format import read_array, write_array

from shards.base import (PackedClip, ShardReader, ShardWriter, StoredClip, check_addable, check_packed,
                         check_row, check_specs, read_fields, stored_clip)
from shards.codecs import Encoded, stored_specs, wds_gzip_level
from shards.integrity import ShardCorruptError, verify_checksum
from shards.schema import FieldSpec
from shards.store import exists, location, open_for_read, read_range, remove_staging, staging_path

_KEY_MEMBER = "cache_key.txt"
# gzip.BadGzipFile is an OSError; a truncated stream raises EOFError; a damaged .npy header ValueError.
_DECODE_ERRORS = (ValueError, OSError, EOFError, zlib.error)


def _member_suffix(spec: FieldSpec) -> str:
    return f"{spec.name}.npy" if wds_gzip_level(spec) is None else f"{spec.name}.npy.gz"


class WdsShardWriter(ShardWriter):
    """Appends each clip's members (ShardWriter.pack) to the temporary tar as it comes (nothing is
    buffered)."""

    format, suffix = "wds", ".tar"

    @staticmethod
    def pack_arrays(stored: list[FieldSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        """Each stored array of one clip as its member's bytes: .npy, gzipped when the codec compresses."""
        packed = {}
        for spec in stored:
            buffer = io.BytesIO()
            write_array(buffer, arrays[spec.name], allow_pickle=False)
            level = wds_gzip_level(spec)
            packed[spec.name] = (buffer.getvalue() if level is None
                                 else gzip.compress(buffer.getvalue(), compresslevel=level, mtime=0))
        return packed

    def __init__(self, final_path: str | os.PathLike, specs: list[FieldSpec]):
        self.path = location(final_path)
        self._specs = check_specs(specs)
        self._stored = stored_specs(self._specs)
        if exists(self.path):
            raise FileExistsError(f"{self.path} already exists; committed shards are never replaced")
        self._temp = staging_path(self.path)
        self._tar = tarfile.open(self._temp, mode="x", format=tarfile.PAX_FORMAT)
        self._keys: list[str] = []
        self._closed = False

    def _add_member(self, name: str, payload: bytes) -> None:
        # Fixed metadata: the same clips give the same tar bytes.
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = 0o444
        self._tar.addfile(info, io.BytesIO(payload))

    def add_packed(self, cache_key: str, packed: PackedClip) -> StoredClip:
        check_addable(self.path, self._closed, self._keys, cache_key)
        check_packed(self.path, self.format, self._stored, packed)
        try:
            for spec in self._stored:
                self._add_member(f"{cache_key}.{_member_suffix(spec)}", packed.payloads[spec.name])
            self._add_member(f"{cache_key}.{_KEY_MEMBER}", cache_key.encode())
        except BaseException:
            # A tar holding part of a clip must never be committed.
            self.abort()
            raise
        self._keys.append(cache_key)
        return stored_clip(len(self._keys) - 1, packed)

    def _finish(self) -> None:
        self._tar.close()

    def abort(self) -> None:
        self._tar.close()
        if self._temp.exists():
            remove_staging(self._temp)
        self._closed = True


class WdsShardReader(ShardReader):
    def __init__(self, path: str | os.PathLike, specs: list[FieldSpec]):
        self.path = location(path)
        self._specs = check_specs(specs)
        self._stored = stored_specs(self._specs)
        self._keys: list[str] = []
        self._members: list[dict[str, tuple[int, int]]] = []  # per row: field -> (data offset, size)
        self._index()

    def _index(self) -> None:
        suffixes = {_member_suffix(s): s.name for s in self._stored}
        try:
            # From a store: the headers are read through a seekable object, member data is skipped.
            with open_for_read(self.path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    key, _, suffix = member.name.partition(".")
                    if not self._keys or key != self._keys[-1]:
                        if key in self._keys:
                            reason = "members of the clip are not contiguous"
                            raise ShardCorruptError(self.path, key, None, reason)
                        self._keys.append(key)
                        self._members.append({})
                    if suffix == _KEY_MEMBER:
                        continue
                    if suffix not in suffixes or not member.isfile():
                        raise ShardCorruptError(self.path, key, None, f"unexpected member {member.name!r}")
                    self._members[-1][suffixes[suffix]] = (member.offset_data, member.size)
                end = tar.offset
        except tarfile.TarError as e:
            raise ShardCorruptError(self.path, None, None, f"tar does not parse: {e!r}") from e
        # tarfile takes a damaged header after the first one, or a cut, for the end of the archive:
        # only the end-of-archive zero blocks prove that no clip was lost.
        block = read_range(self.path, end, 2 * tarfile.BLOCKSIZE)
        if len(block) < 2 * tarfile.BLOCKSIZE or any(block):
            raise ShardCorruptError(
                self.path, None, None, f"neither a tar header nor the end of the archive at byte {end}"
            )
        for key, members in zip(self._keys, self._members):
            for spec in self._stored:
                if spec.name not in members:
                    raise ShardCorruptError(
                        self.path, key, spec.name, f"member {key}.{_member_suffix(spec)} missing"
                    )

    def _decode(self, key: str, spec: FieldSpec, payload: bytes) -> np.ndarray:
        try:
            if wds_gzip_level(spec) is not None:
                payload = gzip.decompress(payload)
            array = read_array(io.BytesIO(payload), allow_pickle=False)
        except _DECODE_ERRORS as e:
            raise ShardCorruptError(self.path, key, spec.name, f"stored bytes do not decode: {e!r}") from e
        if (str(array.dtype), array.shape) != (spec.dtype, spec.shape):
            raise ShardCorruptError(
                self.path, key, spec.name,
                f"array expected {spec.dtype} {spec.shape}, got {array.dtype} {array.shape}",
            )
        return array

    def read(
        self, row: int, fields: list[str] | None = None, checksums: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> dict[str, np.ndarray | Encoded]:
        key = self._keys[check_row(row, len(self._keys))]

        def read_stored(spec: FieldSpec) -> np.ndarray:
            # By member offset: a ranged read of the member alone (a file is opened per read, not held:
            # a handle shared by forked loader workers would share its offset).
            offset, size = self._members[row][spec.name]
            payload = read_range(self.path, offset, size)
            if len(payload) != size:
                reason = f"member expected {size} bytes, got {len(payload)} (truncated)"
                raise ShardCorruptError(self.path, key, spec.name, reason)
            array = self._decode(key, spec, payload)
            if checksums is not None:
                verify_checksum(self.path, key, spec.name, array, checksums)
            return array

        return read_fields(self._specs, fields, read_stored, decode)
