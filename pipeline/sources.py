"""Where clips come from: a folder of videos, and optionally a samples table whose rows name
videos of that folder. Each unique video becomes one clip request with its cache_key."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from manifests.cache_key import cache_key_function, file_sha256
from manifests.regions import check_table_marks
from manifests.samples_table import read_samples
from pipeline.sampling import SamplingConfig

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")

Span = tuple[float, float]  # [start, end] seconds of a video


@dataclass(frozen=True)
class ClipRequest:
    video_uri: str  # absolute path
    clip_id: str  # readable: path relative to the videos root, without extension, (span,) + key prefix
    video_sha256: str | None  # None when the bytes could not be read
    read_error: str | None  # why the bytes could not be read
    cache_key: str
    # The clip's own part of its video (an STI-Bench question's time span, a Wolf clip cut from its
    # nuScenes scene): replaces the job's sampling.start / end, and enters the cache_key, so one video
    # gives one clip per span. None: the job's sampling as configured.
    span: Span | None = None

    def sampling_for(self, sampling: SamplingConfig) -> SamplingConfig:
        return sampling if self.span is None else replace(sampling, start=self.span[0], end=self.span[1])

    def sampling_json(self, job_sampling_json: str) -> str:
        """The clips table's `sampling` of this clip, from the job's (what the cache_key hashed)."""
        if self.span is None:
            return job_sampling_json
        return json.dumps(with_span(json.loads(job_sampling_json), self.span), sort_keys=True)


def with_span(sampling: dict, span: Span | None) -> dict:
    """Sampling parameters (as a dict) of a clip limited to `span`."""
    return sampling if span is None else {**sampling, "start": span[0], "end": span[1]}


def find_videos(root: Path) -> list[Path]:
    """Video files under root (recursively, symlinks followed, hidden entries skipped), resolved to
    absolute real paths, in a stable order. Dangling symlinks are kept (absolute, unresolved): they
    become failed rows that say the file is missing. Unreadable folders are skipped, as os.walk does."""
    found = []
    # scandir's entry types and one realpath per folder, not a stat and a Path.resolve() per file:
    # 100k files in ~1 s, not ~25 s.
    pending = [os.fspath(root)]
    while pending:
        directory = pending.pop()
        real_prefix = os.path.join(os.path.realpath(directory), "")
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir():
                pending.append(entry.path)
            elif name.lower().endswith(VIDEO_EXTENSIONS):
                if not entry.is_symlink():
                    found.append(real_prefix + name)
                elif os.path.exists(entry.path):
                    found.append(os.path.realpath(entry.path))
                else:
                    found.append(os.path.abspath(entry.path))
    return [Path(p) for p in sorted(set(found))]  # two links to one file are one video


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """An annotation's media path, which must stay inside its dataset root."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: path {relative!r} escapes the dataset root {root}")
    return path


def read_video_identity(path: Path, hash_file: Callable[[Path], str] = file_sha256) -> tuple[str | None, str | None]:
    """(sha256 of the content, None) or (None, the reason the bytes cannot be read)."""
    try:
        return hash_file(path), None
    except FileNotFoundError:
        return None, f"file not found: {path}"
    except IsADirectoryError:
        return None, f"not a file but a directory: {path}"
    except PermissionError:
        return None, f"permission denied: {path}"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"


def build_requests(
    videos: list[Path], root: Path, sampling: dict, teacher_id: str, output_spec: str,
    hash_file: Callable[[Path], str] = file_sha256, spans: Sequence[Span | None] | None = None,
) -> list[ClipRequest]:
    """One request per entry of `videos` (with its entry of `spans`, if given).

    hash_file: the content hash of a video; manifests.content_hash.ContentHashes(...).sha256 skips
    re-reading videos whose size and mtime did not change. A video listed with several spans is read
    once."""
    requests = []
    # String operations, not Path.relative_to / with_suffix: 100k videos in ~1 s, not ~4 s.
    prefix = os.path.join(os.fspath(root.resolve()), "")
    key_functions = {}  # span -> cache_key_function: the fixed part is hashed once per span
    identities: dict[str, tuple[str | None, str | None]] = {}
    spans = spans if spans is not None else [None] * len(videos)
    for path, span in tqdm(zip(videos, spans), total=len(videos), desc="hash videos", unit="clip",
                           disable=not videos):
        uri = os.fspath(path)
        if uri not in identities:
            identities[uri] = read_video_identity(path, hash_file)
        sha, error = identities[uri]
        if span not in key_functions:
            key_functions[span] = cache_key_function(with_span(sampling, span), teacher_id, output_spec)
        key = key_functions[span](f"sha256:{sha}" if sha else f"unreadable:{uri}")
        relative = os.path.splitext(uri[len(prefix):] if uri.startswith(prefix) else os.path.basename(uri))[0]
        if span is not None:
            relative += f"@{span[0]:g}-{span[1]:g}s"
        requests.append(ClipRequest(uri, f"{relative}-{key[:8]}", sha, error, key, span))
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
    if samples is not None:
        check_table_marks(samples["conversations"].to_pylist(), samples["regions"].to_pylist(), str(spath))
    found = find_videos(root)
    named = sample_videos(samples, spath, root) if samples is not None else []
    videos = found if not named else [Path(p) for p in sorted({*map(str, found), *map(str, named)})]
    log.info("%d videos (%d in %s, %d named by samples)", len(videos), len(found), root, len(named))
    return root, videos, samples, spath if samples is not None else None
