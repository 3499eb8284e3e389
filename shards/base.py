"""What every shard format implements, and the records and checks they share.

Both formats hold the same clips with the same fields (shards/schema.py), so the caching job and the
student are written once against `ShardWriter` / `ShardReader`; shards/formats.py picks the format.
A format module imports this one and nothing of the other format.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from shards.codecs import Encoded, check_encoded, decode_field, stored_specs
from shards.integrity import array_checksum
from shards.schema import FieldSpec
from shards.store import publish

# A WebDataset key ends at the first dot of a member name and field names become member-name and
# Zarr node-name parts, so both are restricted for both formats alike: a clip moves between formats
# unchanged. "cache_key" names the WebDataset member that carries the key.
_NAME = re.compile(r"[0-9A-Za-z_-]+")
_RESERVED_FIELDS = ("cache_key",)


@dataclass(frozen=True)
class StoredClip:
    """Where a clip went and what was stored: the clips manifest records it."""

    row: int
    nbytes: int  # stored bytes of the clip's arrays (side arrays included) before compression
    checksums: dict[str, str]  # stored array (field or side array) -> integrity.array_checksum of it


@dataclass(frozen=True)
class PackedClip:
    """One clip as the bytes its shard format stores (serialized, compressed), made by
    `ShardWriter.pack` wherever a CPU is free (the caching job's encode tasks, in parallel) so that
    the shard's writer, one per shard, only appends bytes."""

    format: str
    stored: tuple[FieldSpec, ...]  # the stored arrays it was packed as (codecs.stored_specs of the specs)
    payloads: dict[str, bytes]  # stored array (field or side array) -> its bytes in the shard
    nbytes: int  # as StoredClip
    checksums: dict[str, str]  # as StoredClip


class ShardWriter(ABC):
    """Writes clips into one shard under a temporary name; `commit` makes the shard visible at once."""

    format: ClassVar[str]  # "zarr" | "wds"
    suffix: ClassVar[str]  # of the shard's file or directory name
    path: Path | str  # the final path (or URL, shards.store), which exists only after commit
    _temp: Path  # where the shard is built until commit (shards.store.staging_path)
    _specs: list[FieldSpec]
    _keys: list[str]
    _closed: bool  # committed or aborted

    @staticmethod
    @abstractmethod
    def pack_arrays(stored: list[FieldSpec], arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        """Each stored array of one clip as the bytes this format stores for it."""

    @classmethod
    def pack(cls, specs: list[FieldSpec], arrays: Mapping[str, np.ndarray]) -> PackedClip:
        """One clip's arrays (out of codecs.encode_arrays) as the bytes a shard of `specs` stores; the
        checksums are of the arrays as they are now, so a caller may reuse its buffers afterwards."""
        check_encoded(check_specs(specs), arrays)
        physical = stored_specs(specs)
        stored = {s.name: arrays[s.name] for s in physical}
        return PackedClip(cls.format, tuple(physical), cls.pack_arrays(physical, stored),
                          sum(a.nbytes for a in stored.values()),
                          {name: array_checksum(a) for name, a in stored.items()})

    def add(self, cache_key: str, arrays: Mapping[str, np.ndarray]) -> StoredClip:
        """Store one clip's arrays (already passed through codecs.encode_arrays) as the next row."""
        return self.add_packed(cache_key, self.pack(self._specs, arrays))

    @abstractmethod
    def add_packed(self, cache_key: str, packed: PackedClip) -> StoredClip:
        """Store one clip packed for this format and these specs as the next row."""

    def commit(self) -> Path | str:
        """Finish the shard and publish it at `path` (renamed, or uploaded whole to a store); refuses if
        `path` exists. Returns `path`."""
        check_committable(self.path, self._closed, self._keys)
        try:
            self._finish()
            return publish(self._temp, self.path)
        except BaseException:
            self.abort()
            raise
        finally:
            self._closed = True

    @abstractmethod
    def _finish(self) -> None:
        """Complete the temporary shard's bytes; commit calls it once."""

    @abstractmethod
    def abort(self) -> None:
        """Remove the temporary shard; no-op after commit or abort."""

    def __len__(self) -> int:
        """Clips added so far."""
        return len(self._keys)


class ShardReader(ABC):
    """Reads clips of one committed shard by row; only the asked fields are read from disk."""

    path: Path | str
    _keys: list[str]

    @abstractmethod
    def read(
        self, row: int, fields: list[str] | None = None, checksums: Mapping[str, str] | None = None,
        decode: bool = True,
    ) -> dict[str, np.ndarray | Encoded]:
        """The clip's DECODED arrays (all fields, or `fields`): a quantized field comes back as float32
        values, never as its codes; with decode=False as its codecs.Encoded (stored arrays), to be
        decoded by its consumer. Each stored array is verified when `checksums` is given.

        Raises integrity.ShardCorruptError for bytes that do not decode or do not match.
        """

    def cache_keys(self) -> list[str]:
        """The clips' cache keys in row order."""
        return list(self._keys)

    def __iter__(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """(cache_key, all arrays) in row order."""
        for row, key in enumerate(self._keys):
            yield key, self.read(row)

    def __len__(self) -> int:
        """Clips in the shard."""
        return len(self._keys)


def check_cache_key(cache_key: str) -> None:
    if not isinstance(cache_key, str) or not _NAME.fullmatch(cache_key):
        raise ValueError(f"cache_key {cache_key!r}: expected letters, digits, '_' or '-' (no dots)")


def check_addable(path: Path, closed: bool, keys: list[str], cache_key: str) -> None:
    """What every writer checks before storing a clip: still open, a valid and new key."""
    if closed:
        raise RuntimeError(f"writer of {path} is already committed or aborted")
    check_cache_key(cache_key)
    if cache_key in keys:
        raise ValueError(f"cache_key {cache_key!r}: already in shard {path}")


def check_packed(path: Path, format: str, stored: list[FieldSpec], packed: PackedClip) -> None:
    """What a writer checks of a packed clip: packed for its format and its stored arrays (names,
    dtypes, shapes, compression), else its bytes would be read back as something else."""
    if packed.format != format:
        raise ValueError(f"shard {path}: a clip packed for {packed.format!r}, not {format!r}")
    if packed.stored != tuple(stored):
        differ = [s.name for s in stored if s not in packed.stored] + [s.name for s in packed.stored if s not in stored]
        raise ValueError(f"shard {path}: a clip packed with other stored arrays than the shard's (differing: "
                         f"{sorted(set(differ))})")


def check_committable(path: Path, closed: bool, keys: list[str]) -> None:
    if closed:
        raise RuntimeError(f"writer of {path} is already committed or aborted")
    if not keys:
        raise ValueError(f"shard {path} has no clips; abort() it instead")


def check_specs(specs: list[FieldSpec]) -> list[FieldSpec]:
    """The specs as a list, after checking their names are unique and storable in both formats."""
    specs = list(specs)
    if not specs:
        raise ValueError("a shard needs at least one field")
    names = [s.name for s in specs]
    for name in names:
        if not _NAME.fullmatch(name) or name.startswith("__") or name in _RESERVED_FIELDS:
            raise ValueError(
                f"field {name!r}: expected letters, digits, '_' or '-', not starting with '__', "
                f"not one of {_RESERVED_FIELDS}"
            )
    # Side arrays (`<field>__<part>`) share the field names' namespace in both formats.
    stored = [s.name for s in stored_specs(specs)]
    for name in stored:
        if stored.count(name) > 1:
            raise ValueError(f"field {name!r}: appears {stored.count(name)} times in the specs (side arrays included)")
    return specs


def stored_clip(row: int, packed: PackedClip) -> StoredClip:
    return StoredClip(row=row, nbytes=packed.nbytes, checksums=packed.checksums)


def select_specs(specs: list[FieldSpec], fields: list[str] | None) -> list[FieldSpec]:
    """The specs of the asked fields, in the asked order (all of them for None)."""
    if fields is None:
        return list(specs)
    by_name = {s.name: s for s in specs}
    unknown = [f for f in fields if f not in by_name]
    if unknown:
        raise ValueError(f"field {unknown[0]!r}: not in the shard's fields {list(by_name)}")
    return [by_name[f] for f in fields]


def read_fields(
    specs: list[FieldSpec], fields: list[str] | None, read_stored: Callable[[FieldSpec], np.ndarray],
    decode: bool = True,
) -> dict[str, np.ndarray | Encoded]:
    """The asked fields, decoded or (decode=False) a quantized one as its Encoded stored arrays (a plain
    field's stored array is its value either way); `read_stored(spec)` reads (and verifies) one stored
    array."""
    out = {}
    for spec in select_specs(specs, fields):
        stored = {s.name: read_stored(s) for s in stored_specs([spec])}
        out[spec.name] = decode_field(spec, stored) if decode or spec.encoding == "plain" else Encoded(spec, stored)
    return out


def check_row(row: int, n_rows: int) -> int:
    if not 0 <= row < n_rows:
        raise IndexError(f"row {row} out of range for a shard of {n_rows} clips")
    return row
