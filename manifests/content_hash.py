"""Content hashes of videos, remembered by (path, size, mtime_ns) so a rerun does not re-read them.

Hashing every video's bytes is the only part of planning that grows with the data's BYTES (100k clips
of ~10 MB videos: ~1 TB to read). A file whose path, size and modification time (ns) are unchanged is
taken to hold the same bytes; any change of size or mtime re-reads it. The hash still goes into the
cache_key, so a reused hash never reuses a teacher output it should not: a different teacher, sampling
or storage spec still gives a different key.

Stored as CACHE/manifests/content_hashes.parquet (path, size, mtime_ns, sha256), rewritten atomically
(shards.atomic) after planning; a missing or unreadable file is rebuilt (it is derived data).
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.cache_key import file_sha256
from shards.store import exists, join, open_for_read, write_file

log = logging.getLogger(__name__)

HASHES_FILE = Path("manifests") / "content_hashes.parquet"
HASHES_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("mtime_ns", pa.int64(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
])


class ContentHashes:
    """sha256 of files by path, recomputed only when a file's size or mtime_ns changed.

    `hasher` reads a file and returns its hex sha256 (manifests.cache_key.file_sha256; tests pass a
    counting one).
    """

    def __init__(self, path: Path | str | None = None, hasher: Callable[[str | Path], str] = file_sha256):
        self.path = path  # a path, or a URL for a cache on an object store
        self._hasher = hasher
        self._entries: dict[str, tuple[int, int, str]] = {}
        self._changed = False
        if path is not None and exists(path):
            self._entries = _read(path)

    @classmethod
    def of_cache(cls, cache_root: str | Path, hasher: Callable[[str | Path], str] = file_sha256) -> ContentHashes:
        return cls(join(cache_root, HASHES_FILE.as_posix()), hasher)

    def __len__(self) -> int:
        return len(self._entries)

    def sha256(self, path: str | Path) -> str:
        """The file's content hash; OSError (missing, a directory, no permission) as open() raises it."""
        key = os.fspath(path)
        info = os.stat(key)
        if not stat.S_ISREG(info.st_mode):
            return self._hasher(path)  # a directory or a device: let open() say what it is
        entry = self._entries.get(key)
        if entry is not None and entry[:2] == (info.st_size, info.st_mtime_ns):
            return entry[2]
        # Stat before reading: a file rewritten while being hashed gets a new mtime, so the next run
        # sees a mismatch and re-reads it rather than trusting a hash of half-old bytes.
        digest = self._hasher(path)
        self._entries[key] = (info.st_size, info.st_mtime_ns, digest)
        self._changed = True
        return digest

    def save(self) -> None:
        """Write the hashes (atomically) if any was computed since loading."""
        if self.path is None or not self._changed:
            return
        paths = list(self._entries)
        columns = list(zip(*self._entries.values())) if paths else [[], [], []]
        table = pa.table([paths, *columns], schema=HASHES_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_file(self.path, sink.getvalue().to_pybytes(), replace=True)
        self._changed = False


def _read(path: Path | str) -> dict[str, tuple[int, int, str]]:
    try:
        with open_for_read(path) as source:
            table = pq.read_table(source)
        if not table.schema.equals(HASHES_SCHEMA, check_metadata=False):
            raise ValueError(f"schema {table.schema} differs from {HASHES_SCHEMA}")
    except (OSError, ValueError, pa.ArrowException) as e:
        log.warning("%s: unreadable content-hash cache, every video will be re-hashed (%s)", path, e)
        return {}
    columns = [table[name].to_pylist() for name in HASHES_SCHEMA.names]
    return {p: (size, mtime, sha) for p, size, mtime, sha in zip(*columns)}
