"""Where clips come from: a folder of videos, and optionally a samples table whose rows name
videos of that folder. Each unique video becomes one clip request with its cache_key."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from manifests.cache_key import compute_cache_key, file_sha256
from manifests.samples_table import read_samples

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class ClipRequest:
    video_uri: str  # absolute path
    clip_id: str  # readable: path relative to the videos root, without extension, + key prefix
    video_sha256: str | None  # None when the bytes could not be read
    read_error: str | None  # why the bytes could not be read
    cache_key: str


def find_videos(root: Path) -> list[Path]:
    """Video files under root (recursively, hidden entries skipped), in a stable order. Dangling
    symlinks are kept: they become failed rows that say the file is missing."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found)


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """An annotation's media path, which must stay inside its dataset root."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: path {relative!r} escapes the dataset root {root}")
    return path


def read_video_identity(path: Path) -> tuple[str | None, str | None]:
    """(sha256 of the content, None) or (None, the reason the bytes cannot be read)."""
    try:
        return file_sha256(path), None
    except FileNotFoundError:
        return None, f"file not found: {path}"
    except IsADirectoryError:
        return None, f"not a file but a directory: {path}"
    except PermissionError:
        return None, f"permission denied: {path}"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"


def build_requests(
    videos: list[Path], root: Path, sampling: dict, teacher_id: str, output_spec: str
) -> list[ClipRequest]:
    requests = []
    root = root.resolve()
    for path in tqdm(videos, desc="hash videos", unit="video", disable=not videos):
        sha, error = read_video_identity(path)
        identity = f"sha256:{sha}" if sha else f"unreadable:{path}"
        key = compute_cache_key(identity, sampling, teacher_id, output_spec)
        try:
            stem = path.relative_to(root).with_suffix("").as_posix()
        except ValueError:
            stem = path.stem
        requests.append(ClipRequest(str(path), f"{stem}-{key[:8]}", sha, error, key))
    return requests


def attach_cache_keys(samples: pa.Table, samples_path: Path, root: Path, key_by_video: dict[str, str]) -> pa.Table:
    """Fill each sample's cache_key from its video (image-only samples keep a null key)."""
    keys = []
    for i, video in enumerate(samples["video"].to_pylist()):
        if video is None:
            keys.append(None)
            continue
        path = str(resolve_inside(root, video, f"{samples_path}: row {i}: field 'video'"))
        keys.append(key_by_video[path])
    return samples.set_column(samples.schema.get_field_index("cache_key"), "cache_key", pa.array(keys, pa.string()))


def sample_videos(samples: pa.Table, samples_path: Path, root: Path) -> list[Path]:
    """Videos named by the samples (validated to stay inside root), even ones not on disk."""
    videos = pc.unique(samples["video"].drop_null()).to_pylist()
    rows = {v: i for i, v in reversed(list(enumerate(samples["video"].to_pylist())))}
    return [resolve_inside(root, v, f"{samples_path}: row {rows[v]}: field 'video'") for v in videos]


def load_sources(videos_root: str | None, samples_path: str | None) -> tuple[Path, list[Path], pa.Table | None, Path | None]:
    """The videos to cache: every video file of the folder plus every video the samples name."""
    if videos_root is None:
        raise ValueError("no input: give --videos DIR (and optionally --samples FILE)")
    root = Path(videos_root)
    if not root.is_dir():
        raise ValueError(f"--videos {root}: not a directory")
    spath = Path(samples_path) if samples_path else root / "samples.parquet"
    if samples_path and not spath.exists():
        raise ValueError(f"--samples {spath}: file not found")
    samples = read_samples(spath) if spath.exists() else None
    found = [p.resolve() if p.exists() else p.absolute() for p in find_videos(root)]
    named = sample_videos(samples, spath, root) if samples is not None else []
    videos = sorted(set(found) | set(named))
    log.info("%d videos (%d in %s, %d named by samples)", len(videos), len(found), root, len(named))
    return root, videos, samples, spath if samples is not None else None
