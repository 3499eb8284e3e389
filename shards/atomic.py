"""Atomic commit on a local filesystem: write under a temporary sibling name, make it durable, rename.

A reader that sees a final name sees finished, fsynced bytes; a crash leaves only temporaries, whose
names carry a `.tmp-<16 hex>` suffix so that `remove_temporaries` finds them, and nothing else.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

_TEMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{16}$")


def temporary_path(final: str | os.PathLike) -> Path:
    """A fresh sibling of `final` (same directory, so the rename never crosses filesystems)."""
    final = Path(final)
    return final.with_name(f"{final.name}.tmp-{secrets.token_hex(8)}")


def is_temporary(path: str | os.PathLike) -> bool:
    return _TEMP_SUFFIX.search(Path(path).name) is not None


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the directory's entries (a rename, a new file) durable, not only the files' contents."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_tree(path: Path) -> None:
    # Libraries that write a directory (zarr) do not fsync: the rename must not become durable
    # before the bytes it publishes.
    if not path.is_dir():
        _fsync_file(path)
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            _fsync_file(os.path.join(root, name))
        fsync_dir(root)


def _publish(temp: Path, final: Path, *, replace: bool) -> Path:
    # Check-then-rename is not atomic, but each final path has exactly one writer (one writer per
    # shard, one per manifest part); the check stops a rerun from replacing committed data. os.rename
    # itself would silently replace a file or an empty directory.
    if not replace and os.path.lexists(final):
        raise FileExistsError(f"{final} already exists; committed data is never replaced")
    os.replace(temp, final)
    fsync_dir(final.parent)
    return final


def commit_temporary(temp: str | os.PathLike, final: str | os.PathLike, *, replace: bool = False) -> Path:
    """Move a finished temporary file or directory to `final`, durably; refuses an existing `final`
    unless replace=True (files meant to be rewritten, as in atomic_write_bytes)."""
    temp, final = Path(temp), Path(final)
    if not is_temporary(temp):
        raise ValueError(f"{temp} is not a temporary name from temporary_path()")
    _fsync_tree(temp)
    return _publish(temp, final, replace=replace)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = False) -> Path:
    """Write `data` to `path` so that readers see either nothing (or the old file) or all of it.

    replace=False refuses an existing `path` (manifest parts are written once); replace=True is for
    files that are meant to be rewritten (a run summary).
    """
    path = Path(path)
    temp = temporary_path(path)
    try:
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return _publish(temp, path, replace=replace)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def remove_temporary(path: str | os.PathLike) -> None:
    """Remove one temporary file or directory if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove every leftover temporary under `directory` (recursively); return what was removed.

    Only for a directory no live writer is using (the start of a run): a writer's temporary is
    indistinguishable from a crashed writer's.
    """
    removed = []
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            if is_temporary(name):
                path = Path(root, name)
                remove_temporary(path)
                removed.append(path)
        # A removed temporary directory is not descended into.
        dirs[:] = [d for d in dirs if not is_temporary(d)]
    return sorted(removed)
