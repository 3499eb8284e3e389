"""The shard formats by name: which writer and reader a format uses, and its shard file names.

Both formats implement shards/base.py's interface; code that is given a format's name opens its
shards here.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from shards.base import PackedClip, ShardReader, ShardWriter
from shards.schema import FieldSpec
from shards.store import Store, is_url
from shards.wds_shard import WdsShardReader, WdsShardWriter
from shards.zarr_shard import ZarrShardReader, ZarrShardWriter

_WRITERS: dict[str, type[ShardWriter]] = {"zarr": ZarrShardWriter, "wds": WdsShardWriter}
_READERS: dict[str, type[ShardReader]] = {"zarr": ZarrShardReader, "wds": WdsShardReader}
FORMATS = tuple(_WRITERS)


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"shard format {format!r} not in {FORMATS}")


def shard_filename(format: str, name: str) -> str:
    """`<name>.zarr` or `<name>.tar`."""
    _check_format(format)
    if not name or "/" in name:
        raise ValueError(f"shard name {name!r}: expected a non-empty file name without a directory")
    return f"{name}{_WRITERS[format].suffix}"


def open_writer(format: str, final_path: str | os.PathLike, specs: list[FieldSpec]) -> ShardWriter:
    _check_format(format)
    return _WRITERS[format](final_path, specs)


def pack_clip(format: str, specs: list[FieldSpec], arrays: Mapping[str, np.ndarray]) -> PackedClip:
    """One clip's arrays (out of codecs.encode_arrays) as the bytes a `format` shard of `specs` stores."""
    _check_format(format)
    return _WRITERS[format].pack(specs, arrays)


def open_reader(format: str, path: str | os.PathLike, specs: list[FieldSpec]) -> ShardReader:
    _check_format(format)
    return _READERS[format](path, specs)


def shard_disk_bytes(path: str | os.PathLike) -> int:
    """Bytes a committed shard takes on disk or in its store (a Zarr directory tree or a tar file)."""
    if is_url(path):
        root, _, name = os.fspath(path).rpartition("/")
        return Store(root).size(name)
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
