"""Where clips come from: a folder of videos, and optionally a samples table whose rows name
videos of that folder. Each unique video (or video and span: pipeline/datasets/) becomes one clip
request with its cache_key, planned as a table (a row per clip) and computed as ClipRequest objects."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.cache_key import cache_keys, hex_digests
from manifests.content_hash import ContentHashes, file_stats
from manifests.regions import check_table_marks
from manifests.samples_table import read_samples
from manifests.schemas import CLIP_REQUESTS_SCHEMA, SPAN_FIELDS, SPANNED_REQUESTS_SCHEMA
from pipeline.sampling import SamplingConfig

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
_CLIP_ID_CHUNK = 1 << 20

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


def find_videos(root: Path) -> list[str]:
    """Video files under root (recursively, symlinks followed, hidden entries skipped), as absolute
    real paths, sorted. Dangling symlinks are kept (absolute, unresolved): they become failed rows
    that say the file is missing. Unreadable folders are skipped, as os.walk does."""
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
    return sorted(set(found))  # two links to one file are one video


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """An annotation's media path, which must stay inside its dataset root."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: path {relative!r} escapes the dataset root {root}")
    return path


def resolve_all_inside(root: Path, relative: pa.Array, where: Callable[[int], str], unique: bool = False) -> pa.Array:
    """resolve_inside for many paths at once (absolute real paths, no nulls): one realpath per folder
    and one listing per folder to find the files that are symlinks, not one realpath (a stat per path
    component) per file. In the order of `relative`; or, with unique=True, each path once (a
    symlinked file may still alias another), sorted (exactly path order unless a folder holds files
    beside a subfolder that does: the sort is by real folder, then name, twice as fast as by whole
    path). where(i): the place of `relative`'s row i in errors."""
    real_root = os.path.realpath(root)

    def inside(path: str) -> bool:
        return path == real_root or path.startswith(os.path.join(real_root, ""))

    def escapes(i: int) -> ValueError:
        return ValueError(f"{where(i)}: path {relative[i].as_py()!r} escapes the dataset root {root}")

    # Lexically: an absolute path or a '..' component may leave the root whatever the links are.
    # (The plain substring first: the pattern is only looked for where ".." is.)
    outside = pc.or_(pc.starts_with(relative, "/"), pc.and_(pc.match_substring(relative, ".."), pc.match_substring_regex(
        relative, r"(^|/)\.\.(/|$)")))
    if pc.any(outside).as_py():
        raise escapes(pc.index(outside, True).as_py())
    # Split at the last "/" (every path given one: "./"), not by a pattern: ~3x faster.
    parts = pc.split_pattern(pc.binary_join_element_wise("./", relative, ""), "/", max_splits=1, reverse=True)
    folders, names = pc.list_element(parts, 0), pc.list_element(parts, 1)
    written = pc.unique(folders)
    real_of = {}  # folder as written -> its real path
    for folder in written.to_pylist():
        real_of[folder] = os.path.realpath(os.path.join(real_root, folder))
        if not inside(real_of[folder]):
            raise escapes(pc.index(folders, folder).as_py())
    # Real folders in the order of their paths' prefixes ("a.b/" before "a/"), as whole paths sort;
    # two spellings of a folder ("a", "./a", a link to it) are one.
    real_folders = sorted(set(real_of.values()), key=lambda f: f + "/")
    rank_of = {folder: rank for rank, folder in enumerate(real_folders)}
    ranks = pa.array([rank_of[real_of[f]] for f in written.to_pylist()], pa.int32()).take(pc.index_in(folders, written))
    rows = pa.array(np.arange(len(relative)))  # row of `relative` behind each row below
    if unique:
        rows = pc.sort_indices(pa.table({"rank": ranks, "name": names}), [("rank", "ascending"), ("name", "ascending")])
        ranks, names = ranks.take(rows), names.take(rows)
        if len(rows) > 1:  # sorted, so a repeat follows its first
            repeat = pc.and_(pc.equal(ranks.slice(1), ranks.slice(0, len(rows) - 1)),
                             pc.equal(names.slice(1), names.slice(0, len(rows) - 1))).to_numpy(zero_copy_only=False)
            if repeat.any():
                first = pa.array(np.append(True, ~repeat))
                rows, ranks, names = rows.filter(first), ranks.filter(first), names.filter(first)
    links = []
    for rank, real in enumerate(real_folders):
        try:
            with os.scandir(real) as entries:
                links += [f"{rank}/{e.name}" for e in entries if e.is_symlink()]
        except OSError:  # not there (yet): its files will be missing
            pass
    real_folders = [os.path.join(real, "") for real in real_folders]
    resolved = pc.binary_join_element_wise(pa.array(real_folders, pa.string()).take(ranks), names, "")
    if not links:
        return resolved
    # A symlinked file resolves on its own, and where it points must be inside the root too. Matched
    # by (real folder, name): "a//b.mp4" names the link a/b.mp4 as well.
    linked = pc.is_in(pc.binary_join_element_wise(pc.cast(ranks, pa.string()), names, "/"),
                      value_set=pa.array(links, pa.string()))
    reals = []
    for i in np.flatnonzero(linked.to_numpy(zero_copy_only=False)):
        row = rows[i].as_py()
        real = os.path.realpath(os.path.join(real_root, relative[row].as_py()))
        if not inside(real):
            raise escapes(row)
        reals.append(real)
    return pc.replace_with_mask(resolved, linked, pa.array(reals, pa.string()))


def build_requests(videos: list[str] | pa.Array, root: Path, sampling: dict, teacher_id: str, output_spec: str,
                   hashes: ContentHashes | None = None, stats: pa.Table | None = None,
                   spans: Sequence[Span | None] | None = None) -> pa.Table:
    """One clip request per entry of `videos` (absolute paths), in their order (CLIP_REQUESTS_SCHEMA;
    SPANNED_REQUESTS_SCHEMA when an entry of `spans` gives its clip its own part of its video, None
    the job's sampling). A video listed with several spans is read once.
    hashes: the remembered content hashes (ContentHashes.of_cache skips re-reading videos whose size
    and mtime did not change); None reads every video. stats: the videos' file_stats when a listing
    already gave them; None stats every file."""
    paths = videos if isinstance(videos, pa.Array) else pa.array([os.fspath(v) for v in videos], pa.string())
    identities = (hashes or ContentHashes()).identify(paths, file_stats(paths) if stats is None else stats)
    return keyed_requests(paths, identities, root, sampling, teacher_id, output_spec,
                          None if spans is None else span_table(spans))


def keyed_requests(paths: pa.Array, identities: pa.Table, root: Path, sampling: dict, teacher_id: str,
                   output_spec: str, spans: pa.Table | None = None) -> pa.Table:
    """build_requests once the videos' identities (ContentHashes.identify) and, if any, the clips' spans
    (span_table) are known: their cache keys and clip ids. clip_id: the path under root without its
    extension (as os.path.splitext cuts it), the span as "@<start>-<end>s" for a clip with one, "-",
    the key's first 8 hex characters; string kernels, not a Path per video."""
    sha = identities["video_sha256"].combine_chunks()
    distinct, which = distinct_spans(spans) if spans is not None else ([], None)
    keys = clip_keys(sha, paths, sampling, teacher_id, output_spec, distinct, which)
    # What joins a clip id's stem to its key, per distinct span: "-" for the rows without one.
    joints = pa.array(["-", *(f"@{start:g}-{end:g}s-" for start, end in distinct)], pa.string())
    prefix = os.path.join(os.fspath(root.resolve()), "")

    def clip_ids(start: int) -> pa.Array:
        # A chunk at a time: the intermediate strings of ten million would be ~1 GB.
        chunk = paths.slice(start, _CLIP_ID_CHUNK)
        under = pc.starts_with(chunk, prefix)
        relative = pc.utf8_slice_codeunits(chunk, len(prefix))
        if not pc.all(under).as_py():  # a video outside root (named by a samples table): its file name
            relative = pc.if_else(under, relative, pc.replace_substring_regex(chunk, r"^.*/", ""))
        stem = pc.replace_substring_regex(relative, r"([^/.])\.[^./]*$", r"\1")
        key = hex_digests(keys.slice(start, _CLIP_ID_CHUNK), 4)
        if which is None:
            return pc.binary_join_element_wise(stem, key, "-")
        return pc.binary_join_element_wise(stem, joints.take(which[start:start + _CLIP_ID_CHUNK]), key, "")

    ids = pa.chunked_array([clip_ids(start) for start in range(0, len(paths), _CLIP_ID_CHUNK)], pa.string())
    columns = [paths, ids, sha, identities["read_error"], keys]
    if which is None:
        return pa.table(columns, schema=CLIP_REQUESTS_SCHEMA)
    return pa.table([*columns, spans["span_start"], spans["span_end"]], schema=SPANNED_REQUESTS_SCHEMA)


def clip_keys(video_sha256: pa.Array, paths: pa.Array, sampling: dict, teacher_id: str, output_spec: str,
              spans: Sequence[Span] = (), which: np.ndarray | None = None) -> pa.Array:
    """The clips' cache keys (binary(32)): each video's identity with the job's sampling, or, where
    which[i] > 0, with the sampling limited to spans[which[i] - 1] (what ClipRequest.sampling_for
    gives the decoder). The job and --check key clips with this one function."""
    samplings = [sampling, *(with_span(sampling, span) for span in spans)]
    return cache_keys(video_sha256, paths, samplings, teacher_id, output_spec, which)


def span_table(spans: Sequence[Span | None]) -> pa.Table:
    """Spans (None: the job's sampling) as the requests table's span columns."""
    return pa.table([pa.array([None if s is None else float(s[0]) for s in spans], pa.float64()),
                     pa.array([None if s is None else float(s[1]) for s in spans], pa.float64())],
                    schema=pa.schema(SPAN_FIELDS))


def distinct_spans(spans: pa.Table) -> tuple[list[Span], np.ndarray | None]:
    """The distinct spans of a span table (told apart by their exact float bits, as the cache key's
    JSON tells them apart: 0.0 and -0.0 are two), in order of first appearance, and, per row, 0 for
    none or 1 + the index of its span among them; None when no row has a span."""
    start, end = spans["span_start"].combine_chunks(), spans["span_end"].combine_chunks()
    given = start.is_valid().to_numpy(zero_copy_only=False)
    if not np.array_equal(given, end.is_valid().to_numpy(zero_copy_only=False)):
        row = int(np.flatnonzero(given != end.is_valid().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"span of row {row}: a start without an end or an end without a start")
    if not given.any():
        return [], None
    # Each span's 16 bytes as one value: Arrow's hash lookup, not a sort of pairs (~10x faster).
    bits = np.stack([start.fill_null(0.0).to_numpy(), end.fill_null(0.0).to_numpy()], axis=1)[given]
    pairs = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(bits), [None, pa.py_buffer(bits)])
    distinct = pc.unique(pairs)
    which = np.zeros(len(start), np.int64)
    which[given] = 1 + pc.index_in(pairs, value_set=distinct).to_numpy()
    values = np.frombuffer(distinct.buffers()[1], np.float64, 2 * len(distinct)).reshape(-1, 2)
    return [(float(a), float(b)) for a, b in values], which


def concat_requests(tables: list[pa.Table]) -> pa.Table:
    """Requests tables as one; the span columns, when a table has them, null in the other tables' rows."""
    return pa.concat_tables(tables, promote_options="default")


def clip_requests(requests: pa.Table) -> list[ClipRequest]:
    """The rows of a requests table as ClipRequest objects (keys and hashes as hex), for the clips a job
    computes: ten million objects would not fit where ten million rows do."""
    columns = {
        "video_uri": requests["video_uri"].to_pylist(),
        "clip_id": requests["clip_id"].to_pylist(),
        "video_sha256": hex_digests(requests["video_sha256"].combine_chunks()).to_pylist(),
        "read_error": requests["read_error"].to_pylist(),
        "cache_key": hex_digests(requests["cache_key"].combine_chunks()).to_pylist(),
    }
    if "span_start" in requests.column_names:
        columns["span"] = [None if start is None else (start, end) for start, end in
                           zip(requests["span_start"].to_pylist(), requests["span_end"].to_pylist())]
    return [ClipRequest(*values) for values in zip(*columns.values())]


def attach_cache_keys(samples: pa.Table, samples_path: Path, root: Path, requests: pa.Table) -> pa.Table:
    """Fill each sample's cache_key from its video (image-only samples keep a null key)."""
    videos = samples["video"].combine_chunks()
    named = pc.unique(videos.drop_null())
    real = resolve_all_inside(root, named, lambda i: _sample_row(samples_path, videos, named[i]))
    keys = hex_digests(requests["cache_key"].combine_chunks()).take(pc.index_in(real, requests["video_uri"]))
    filled = keys.take(pc.index_in(videos, named))
    return samples.set_column(samples.schema.get_field_index("cache_key"), "cache_key", filled)


def sample_videos(samples: pa.Table, samples_path: Path, root: Path) -> pa.Array:
    """Videos named by the samples (validated to stay inside root), even ones not on disk; each once,
    sorted (see resolve_all_inside)."""
    videos = samples["video"].combine_chunks()
    named = videos.drop_null()
    return resolve_all_inside(root, named, lambda i: _sample_row(samples_path, videos, named[i]), unique=True)


def _sample_row(samples_path: Path, videos: pa.Array, video: pa.Scalar) -> str:
    return f"{samples_path}: row {pc.index(videos, video).as_py()}: field 'video'"


def load_sources(videos_root: str | None, samples_path: str | None) -> tuple[Path, pa.Array, pa.Table | None, Path | None]:
    """The videos to cache (absolute paths, sorted): every video file of the folder plus every video
    the samples name."""
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
    found = pa.array(find_videos(root), pa.string())
    named = sample_videos(samples, spath, root) if samples is not None else pa.array([], pa.string())
    videos = found
    if len(named) and not pc.all(pc.is_in(named, value_set=found)).as_py():  # named, not (yet) on disk
        videos = pc.unique(pa.concat_arrays([found, named])).sort()
    log.info("%d videos (%d in %s, %d named by samples)", len(videos), len(found), root, len(named))
    return root, videos, samples, spath if samples is not None else None
