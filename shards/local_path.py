"""Paths the caches, runs and exports live at are local (or shared-filesystem) paths: object storage
is not supported yet. A URL is refused by name, because pathlib would otherwise take
's3://bucket/cache' for the relative folder 's3:/bucket/cache' and write the whole cache there."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class NotALocalPathError(argparse.ArgumentTypeError, ValueError):
    """A ValueError for config code; an ArgumentTypeError so that argparse prints its message (for a
    plain ValueError from a `type=` function it prints only 'invalid value')."""


def local_path(value: str | Path, what: str = "path") -> Path:
    """`value` as a Path if it is a filesystem path; NotALocalPathError naming `what` if it is a URL.
    Also an argparse `type=`."""
    match = _URL.match(str(value))
    if match:
        raise NotALocalPathError(
            f"{what} {value!r}: {match.group(1)}:// URLs are not supported (object storage is not implemented "
            "yet); give a local or shared-filesystem path")
    return Path(value)
