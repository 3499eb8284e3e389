"""Paths given on command lines and in configs. A cache may be an object-store URL (shards/store.py);
everything else (videos, runs, exports) is a local or shared-filesystem path, and a URL there is
refused by name, because pathlib would otherwise take 's3://bucket/x' for the relative folder
's3:/bucket/x' and write there."""
from __future__ import annotations

import argparse
from pathlib import Path

from shards.store import check_store_url, url_protocol

ONLY_CACHES = "only caches can be on object storage"
# decord and the dataset readers open files by path.
VIDEOS_STAY_LOCAL = "videos are read by decord from files: keep them on a local disk or a POSIX mount of the bucket"


class NotALocalPathError(argparse.ArgumentTypeError, ValueError):
    """A ValueError for config code; an ArgumentTypeError so that argparse prints its message (for a
    plain ValueError from a `type=` function it prints only 'invalid value')."""


def local_path(value: str | Path, what: str = "path", why: str = ONLY_CACHES) -> Path:
    """`value` as a Path if it is a filesystem path; NotALocalPathError naming `what` and `why` if it is a
    URL. Also an argparse `type=`."""
    protocol = url_protocol(value)
    if protocol is not None:
        raise NotALocalPathError(
            f"{what} {value!r}: {protocol}:// URLs are not supported here ({why}); give a local or "
            "shared-filesystem path")
    return Path(value)


def cache_location(value: str | Path, what: str = "cache") -> Path | str:
    """A cache's root: a Path, or an object-store URL whose fsspec filesystem is installed (s3:// needs
    s3fs); NotALocalPathError naming `what` for any other URL. Also an argparse `type=`."""
    if url_protocol(value) is None:
        return Path(value)
    try:
        check_store_url(str(value), what)
    except ValueError as e:
        raise NotALocalPathError(str(e)) from None
    return str(value).rstrip("/")
