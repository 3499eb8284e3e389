"""Where a cache lives: a local (or shared-filesystem) directory, or an fsspec URL (s3://bucket/prefix
and friends). The few operations the cache needs, for both.

Local paths keep the POSIX behaviour the rest of shards/ relies on (write a temporary, fsync, rename).
An object store has no rename, so a file is uploaded whole under its final name and becomes
meaningful only when something written later references it (a shard when its manifest part is
written, the part itself being the commit); a crashed upload leaves an unreferenced object, which the
next run removes. Endpoint and credentials come from the standard environment the filesystem reads
(for s3fs: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, profiles):
no project-specific setting.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from shards.atomic import atomic_write_bytes, commit_temporary, fsync_dir, remove_temporary, temporary_path

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# A URL of these is a local path in disguise: refused, so that one cache has one spelling.
_LOCAL_PROTOCOLS = ("file", "local")


def url_protocol(value: str | os.PathLike) -> str | None:
    """'s3' for 's3://bucket/x', None for a filesystem path."""
    match = _URL.match(os.fspath(value))
    return match.group(1) if match else None


def is_url(value: str | os.PathLike) -> bool:
    return url_protocol(value) is not None


def location(value: str | os.PathLike) -> Path | str:
    """A filesystem path as a Path, a URL as its string (pathlib would turn 's3://b/x' into 's3:/b/x')."""
    return os.fspath(value).rstrip("/") if is_url(value) else Path(value)


def join(root: str | os.PathLike, *parts: str) -> Path | str:
    """`root`/parts for a path or a URL root."""
    if is_url(root):
        return "/".join([os.fspath(root).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(root).joinpath(*parts)


def check_store_url(value: str, what: str) -> None:
    """ValueError naming `what` unless `value`'s protocol is an object store whose fsspec filesystem
    is installed (s3:// needs s3fs)."""
    import fsspec

    protocol = url_protocol(value)
    if protocol in _LOCAL_PROTOCOLS:
        raise ValueError(f"{what} {value!r}: give a local path as a plain path, not a {protocol}:// URL")
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{what} {value!r}: {protocol}:// has no usable fsspec filesystem here ({e})") from None


def _filesystem(url: str):
    import fsspec

    # No listings cache: other processes (the job's writers) add objects, and a cached listing would
    # hide them (s3fs also answers `exists` from its parent's cached listing).
    return fsspec.core.url_to_fs(url, use_listings_cache=False)


class Store:
    """A cache root and the operations on the files under it, by path relative to the root."""

    def __init__(self, root: str | os.PathLike):
        self.root = location(root)
        self.is_local = not is_url(self.root)
        if self.is_local:
            self.fs, self._base = None, None
        else:
            self.fs, self._base = _filesystem(self.root)

    def __str__(self) -> str:
        return os.fspath(self.root)

    def path(self, rel: str | os.PathLike) -> Path | str:
        """The location of `rel` (a Path, or a URL), as readers and messages take it."""
        return join(self.root, os.fspath(rel))

    def _key(self, rel: str | os.PathLike) -> str:
        # The filesystem's own path (bucket/prefix/rel, no protocol).
        return "/".join([self._base.rstrip("/"), os.fspath(rel).strip("/")])

    def exists(self, rel: str | os.PathLike) -> bool:
        return self.path(rel).exists() if self.is_local else self.fs.exists(self._key(rel))

    def read_bytes(self, rel: str | os.PathLike) -> bytes:
        return self.path(rel).read_bytes() if self.is_local else self.fs.cat_file(self._key(rel))

    def write_bytes(self, rel: str | os.PathLike, data: bytes, *, replace: bool = False) -> Path | str:
        """Readers see nothing (or the old object) or all of `data`. replace=False refuses an existing
        file (FileExistsError); on a store that is a conditional create (If-None-Match: *), so it is
        atomic where the store honours it."""
        if self.is_local:
            path = self.path(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            return atomic_write_bytes(path, data, replace=replace)
        self.fs.pipe_file(self._key(rel), data, mode="overwrite" if replace else "create")
        return self.path(rel)

    def upload(self, local: str | os.PathLike, rel: str | os.PathLike, *, replace: bool = True) -> str:
        """Upload a finished local file, or a directory's files, to `rel` (a store only). Each object is
        written whole; the result is meaningful once something written later references it.
        replace=False: each object a conditional create (FileExistsError if it exists)."""
        local = Path(local)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for path in files:
            target = rel if path == local else f"{os.fspath(rel)}/{path.relative_to(local).as_posix()}"
            self.fs.put_file(os.fspath(path), self._key(target), mode="overwrite" if replace else "create")
        return self.path(rel)

    def children(self, rel: str) -> list[str]:
        """Relative paths of the entries directly under `rel` (files, and directories or prefixes)."""
        if self.is_local:
            directory = self.path(rel)
            return sorted(p.relative_to(self.root).as_posix() for p in directory.iterdir()) if directory.is_dir() else []
        base = self._base.rstrip("/") + "/"
        try:
            return sorted(p[len(base):] for p in self.fs.ls(self._key(rel), detail=False, refresh=True))
        except FileNotFoundError:
            return []

    def delete(self, rel: str | os.PathLike) -> None:
        """Remove a file or a directory (prefix) with everything under it."""
        if self.is_local:
            import shutil

            path = self.path(rel)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        else:
            self.fs.rm(self._key(rel), recursive=True)

    def size(self, rel: str | os.PathLike) -> int:
        """Bytes of a file, or of every file under a directory (prefix)."""
        if self.is_local:
            path = self.path(rel)
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        return self.fs.du(self._key(rel), total=True)


def read_range(shard: str | os.PathLike, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of a file or an object (one ranged GET); fewer at its end."""
    if is_url(shard):
        fs, key = _filesystem(os.fspath(shard))
        return fs.cat_file(key, start=offset, end=offset + size)
    with open(shard, "rb") as f:
        f.seek(offset)
        return f.read(size)


def open_for_read(shard: str | os.PathLike):
    """A binary, seekable file object of a file or an object."""
    if is_url(shard):
        fs, key = _filesystem(os.fspath(shard))
        return fs.open(key, "rb")
    return open(shard, "rb")


@contextmanager
def arrow_source(path: str | os.PathLike):
    """What pyarrow reads a file or an object from: a filesystem path as it is (pyarrow then reads it
    natively, without the GIL), an object as a seekable file object, closed on exit."""
    if not is_url(path):
        yield path
        return
    with open_for_read(path) as source:
        yield source


def remove_files(paths: list[str | os.PathLike]) -> None:
    """Delete files given by path or URL (missing ones are no error): on a store in batched requests
    (s3fs: one DeleteObjects per 1000 keys), on a filesystem durably (their directories fsync-ed)."""
    urls = [os.fspath(p) for p in paths if is_url(p)]
    if urls:
        fs, _ = _filesystem(urls[0])
        fs.rm([fs._strip_protocol(u) for u in urls])
    directories = set()
    for path in (Path(p) for p in paths if not is_url(p)):
        path.unlink(missing_ok=True)
        directories.add(path.parent)
    for directory in directories:
        fsync_dir(directory)


def exists(shard: str | os.PathLike) -> bool:
    """Whether a file, directory or object (prefix) is at `shard`."""
    if is_url(shard):
        fs, key = _filesystem(os.fspath(shard))
        return fs.exists(key)
    return os.path.lexists(shard)


def staging_path(final: str | os.PathLike) -> Path:
    """Where a writer builds what will be published at `final`: a temporary sibling on a filesystem
    (the rename never crosses filesystems), a fresh local temporary directory for a URL."""
    if is_url(final):
        import tempfile

        return temporary_path(Path(tempfile.mkdtemp(prefix="p4d-staging-")) / os.fspath(final).rsplit("/", 1)[-1])
    return temporary_path(final)


def publish(temp: Path, final: str | os.PathLike, *, replace: bool = False) -> Path | str:
    """Make a finished temporary (file or directory, from staging_path) visible at `final`; refuses an
    existing `final` unless replace=True. A filesystem renames it atomically; a store gets it uploaded
    whole (an object appears whole or not at all, under its final name), with a conditional create
    unless replace=True."""
    if not is_url(final):
        return commit_temporary(temp, final, replace=replace)
    if not replace and exists(final):
        raise FileExistsError(f"{final} already exists; committed data is never replaced")
    root, _, name = os.fspath(final).rpartition("/")
    Store(root).upload(temp, name, replace=replace)
    remove_staging(temp)
    return final


def remove_staging(temp: Path) -> None:
    """Remove a temporary from staging_path (and the directory made for it, for a URL's)."""
    remove_temporary(temp)
    if temp.parent.name.startswith("p4d-staging-"):
        temp.parent.rmdir()


def write_file(path: str | os.PathLike, data: bytes, *, replace: bool = False) -> Path | str:
    """Store.write_bytes for one file given by its full path or URL."""
    parent, _, name = os.fspath(location(path)).rpartition("/")
    return Store(parent or ".").write_bytes(name, data, replace=replace)


@contextmanager
def fetched_directory(url: str, names: list[str]):
    """A local temporary directory holding the files `names` of the directory at `url` (those that
    exist), for readers that take a local path (torch.export.load); deleted on exit."""
    import tempfile

    store = Store(url)
    with tempfile.TemporaryDirectory(prefix="p4d-fetched-") as local:
        for name in names:
            if store.exists(name):
                Path(local, name).write_bytes(store.read_bytes(name))
        yield Path(local)
