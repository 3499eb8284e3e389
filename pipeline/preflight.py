"""`--check`: what a caching job would do, before booking a cluster. Reads every row of every source
(strict or not, every malformed row is listed), resolves every media path, probes each video's header
(duration, frames, size; in parallel threads) and prints per source: rows ok / skipped by reason,
unique clips, clips already cached, clips to compute (and those the headers say will fail), the teacher
compute they need and the bytes they will write. Starts neither Ray nor a teacher, and writes nothing.

Clips already cached are found by their cache_key, which hashes each video's bytes: the videos are
hashed only when the cache already holds clips (hashes it remembers for unchanged files are reused),
and keyed as the job keys them (pipeline.sources.clip_keys); otherwise every clip is to compute and
unique clips are counted by file and span.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from manifests.cache_key import hex_digests
from manifests.content_hash import ContentHashes, file_stats
from manifests.planner import contains, recorded_keys
from pipeline.config import JobConfig, TeacherConfig
from pipeline.datasets.common import CLIP
from pipeline.datasets.registry import parse_source, read_dataset
from pipeline.runner import field_specs
from pipeline.sampling import SamplingConfig
from pipeline.source_report import LOST_EXIT_CODE, failure_reason
from pipeline.sources import Span, clip_keys, distinct_spans, load_sources, span_table
from shards.teacher_fields import clip_window_starts
from pipeline.teachers.l4p.model import window_flops
from pipeline.teachers.registry import teacher_class
from shards.codecs import stored_specs
from shards.schema import specs_to_json
from shards.store import Store, location

log = logging.getLogger(__name__)

PROBE_THREADS = min(32, 4 * (os.cpu_count() or 1))  # header reads wait on the disk, not the CPU


@dataclass(frozen=True)
class Header:
    """A video's header as PyAV reads it (no frame decoded), or why it cannot be read."""

    error: str | None = None
    duration: float = 0.0  # seconds
    frames: int = 0
    frames_estimated: bool = False  # the container stores no frame count: duration x average rate
    width: int = 0
    height: int = 0


def probe_header(path: Path) -> Header:
    import av  # PyAV reads headers without decoding; the job itself decodes with decord

    path = Path(path)
    if not path.exists():
        return Header(f"file not found: {path}")
    if not path.is_file():
        return Header(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        return Header(f"empty file (0 bytes): {path}")
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                return Header(f"no video stream (zero video frames): {path}")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / 1e6
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            frames, estimated = stream.frames, False
            if not frames:
                frames, estimated = round(duration * rate), True
            width, height = stream.codec_context.width, stream.codec_context.height
    except (av.FFmpegError, ValueError, OSError) as e:
        return Header(f"not a video or unreadable container: {path} (PyAV: {e})")
    return Header(None, duration, frames, estimated, width, height)


def expected_failure(header: Header, span: Span | None, sampling: SamplingConfig) -> str | None:
    """The reason the job will fail this clip, as far as the header tells (frame times are not read:
    the frames in a span are estimated from the mean rate)."""
    if header.error:
        return header.error
    if header.frames < 1 or header.duration <= 0:
        return "zero video frames"
    rate = header.frames / header.duration
    last_start = header.duration - 1 / rate  # the last frame starts one frame before the end
    start, end = span if span is not None else (sampling.start, sampling.end)
    start = max(start or 0.0, 0.0)
    end = last_start if end is None else min(end, last_start)
    if start > last_start + 1e-6:
        return f"no frames in the sampling span [{start:g}, {end:g}] s: the video lasts {header.duration:.3f} s"
    if sampling.pad:
        return None
    if sampling.fps is None:
        usable = round((end - start) * rate) + 1
        if usable < sampling.num_frames:
            return f"too short: ~{usable} frames in [{start:g}, {end:g}] s, {sampling.num_frames} requested"
    elif start + (sampling.num_frames - 1) / sampling.fps > end + 0.5 / rate:
        return f"too short: {sampling.num_frames} frames at {sampling.fps:g} fps need {start:g} s + " \
               f"{(sampling.num_frames - 1) / sampling.fps:g} s, the span ends at {end:g} s"
    return None


def predicted_reason(failure: str) -> str:
    """A predicted failure grouped as the job's summary groups it (the stage that will report it)."""
    stage = "hash" if failure.startswith(("file not found", "not a regular file")) else "decode"
    return failure_reason(stage, failure)


def teacher_tflop_per_clip(teacher: TeacherConfig, num_frames: int) -> float:
    """The teacher's compute per clip of num_frames frames: its 16-frame windows x one window's cost.
    The oracle reads ground truth from files: no teacher compute."""
    if teacher.name == "oracle":
        return 0.0
    windows = len(clip_window_starts(num_frames))
    return windows * sum(window_flops(teacher_class(teacher.name).arch).values()) / 1e12


@dataclass
class ClipCheck:
    path: Path
    span: Span | None
    failure: str | None = None
    key: str | None = None  # only when the cache holds clips to compare with
    cached: bool = False  # the clips table has an ok row of its key
    failed_before: bool = False  # ... only failed rows


@dataclass
class SourceCheck:
    label: str
    rows: int = 0
    skipped: list[dict] = field(default_factory=list)
    clips: dict = field(default_factory=dict)  # (path, span) -> ClipCheck
    images: dict[str, int] = field(default_factory=dict)  # image path under the cache -> bytes


def run_check(config: JobConfig) -> dict:
    """The preflight report (a dict; format_check prints it)."""
    if config.check_gpu_tflops <= 0:
        raise ValueError(f"check_gpu_tflops must be > 0, got {config.check_gpu_tflops}")
    sampling = config.sampling
    num_frames = sampling.num_frames
    log.info("check: teacher %s: its identity (an l4p checkpoint is hashed: ~1 min per 5 GB)", config.teacher.name)
    identity = teacher_class(config.teacher.name).identity(config.teacher, num_frames)
    specs = field_specs(config, identity.shapes, num_frames)
    clip_bytes = sum(s.nbytes for s in stored_specs(specs))
    tflop = teacher_tflop_per_clip(config.teacher, num_frames)
    out = location(config.out)
    recorded, ok_keys = recorded_keys(out), recorded_keys(out, ok_only=True)

    sources = []
    if config.videos is not None or not config.sources:
        root, videos, samples, _ = load_sources(config.videos, config.samples)
        check = SourceCheck(f"videos={root}", rows=0 if samples is None else samples.num_rows)
        check.clips = {(Path(v), None): ClipCheck(Path(v), None) for v in videos.to_pylist()}
        sources.append(check)
    for source in (parse_source(s) for s in config.sources):
        result = read_dataset(source, lenient=True, media_dir=None)
        check = SourceCheck(source.label, len(result.rows), result.skipped, images=result.images)
        for row in result.rows:
            clip = row[CLIP]
            if clip is not None:
                check.clips.setdefault((clip.path, clip.span), ClipCheck(clip.path, clip.span))
        sources.append(check)

    paths = sorted({c.path for s in sources for c in s.clips.values()})
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        headers = dict(zip(paths, tqdm(pool.map(probe_header, paths), total=len(paths),
                                       desc="probe video headers", unit="video", disable=not paths)))
    clips = [clip for source in sources for clip in source.clips.values()]
    for clip in clips:
        clip.failure = expected_failure(headers[clip.path], clip.span, sampling)
    if len(recorded):
        key_clips(clips, out, asdict(sampling), identity.teacher_id, specs_to_json(specs), recorded, ok_keys)

    costs = {"tflop_per_clip": tflop, "bytes_per_clip": clip_bytes, "gpu_tflops": config.check_gpu_tflops,
             "retry_failed": config.retry_failed}
    reports = [source_report(s, costs, out) for s in sources]
    every_clip = {}
    for s in sources:
        for clip in s.clips.values():
            every_clip.setdefault(clip.key or (clip.path, clip.span), clip)
    images = {p: n for s in sources for p, n in s.images.items()}
    total = {**clip_counts(list(every_clip.values()), costs), "images": len(images)}
    total["bytes"] += new_image_bytes(images, out)
    return {
        "teacher": config.teacher.name, "teacher_id": identity.teacher_id, "num_frames": num_frames,
        "windows_per_clip": len(clip_window_starts(num_frames)), "tflop_per_clip": tflop,
        "bytes_per_clip": clip_bytes, "gpu_tflops": config.check_gpu_tflops, "cache": str(out),
        "cached_clips": len(pc.unique(ok_keys)),
        "failed_clips": len(pc.unique(recorded)) - len(pc.unique(ok_keys)),
        "videos_probed": len(paths), "sources": reports, "total": total,
    }


def key_clips(clips: list[ClipCheck], out: Path, sampling: dict, teacher_id: str, spec_json: str,
              recorded: pa.Array, ok_keys: pa.Array) -> None:
    """Each clip's cache_key (its video hashed, or its remembered hash reused) and whether the clips
    table holds it: an ok row (cached), or only failed rows."""
    paths = pa.array([os.fspath(c.path) for c in clips], pa.string())
    identities = ContentHashes.of_cache(out).identify(paths, file_stats(paths))
    spans, which = distinct_spans(span_table([c.span for c in clips]))
    keys = clip_keys(identities["video_sha256"], paths, sampling, teacher_id, spec_json, spans, which)
    cached = contains(ok_keys, keys)
    failed_before = ~cached & contains(recorded, keys)
    for clip, key, ok, failed in zip(clips, hex_digests(keys).to_pylist(), cached, failed_before):
        clip.key, clip.cached, clip.failed_before = key, bool(ok), bool(failed)


def clip_counts(clips: list[ClipCheck], costs: dict) -> dict:
    cached = [c for c in clips if c.cached]
    failed_before = [c for c in clips if c.failed_before and not costs["retry_failed"]]
    done = {id(c) for c in cached + failed_before}
    todo = [c for c in clips if id(c) not in done]
    failing = [c for c in todo if c.failure]
    reasons = Counter(predicted_reason(c.failure) for c in failing)
    example = {}
    for c in failing:
        example.setdefault(predicted_reason(c.failure), c.failure)
    computing = len(todo) - len(failing)
    tflop = computing * costs["tflop_per_clip"]
    return {
        "unique_clips": len(clips), "already_cached": len(cached), "failed_before": len(failed_before),
        "to_compute": len(todo), "expected_to_fail": len(failing),
        "expected_failures": [{"reason": r, "clips": n, "example": example[r]} for r, n in reasons.most_common()],
        "tflop": tflop, "gpu_hours": tflop / costs["gpu_tflops"] / 3600,
        "bytes": computing * costs["bytes_per_clip"],
    }


def new_image_bytes(images: dict[str, int], out: Path | str) -> int:
    """Bytes of the images not yet under the cache root (images are content-addressed)."""
    store = Store(out)
    return sum(n for path, n in images.items() if not store.exists(path))


def source_report(source: SourceCheck, costs: dict, out: Path | str) -> dict:
    counts = clip_counts(list(source.clips.values()), costs)
    counts["bytes"] += new_image_bytes(source.images, out)
    by_field = Counter(f"field {s['field']!r}" for s in source.skipped)
    example = {}
    for s in source.skipped:
        example.setdefault(f"field {s['field']!r}", f"{s['file']}: row {s['row']}: {s['reason']}")
    report = {
        "source": source.label, "rows_ok": source.rows, "rows_skipped": len(source.skipped),
        "skipped_by_reason": [{"reason": r, "rows": n, "example": example[r]} for r, n in by_field.most_common()],
        "images": len(source.images), **counts,
    }
    usable_clips = counts["unique_clips"] - counts["expected_to_fail"]
    report["lost"] = None
    if source.rows == 0 and not source.clips:
        report["lost"] = "no usable row" if source.skipped else "nothing found"
    elif source.clips and usable_clips == 0 and not source.images:
        report["lost"] = f"every clip is expected to fail ({counts['expected_to_fail']} of {counts['unique_clips']})"
    return report


def format_check(report: dict) -> str:
    rate = report["gpu_tflops"] / report["tflop_per_clip"] if report["tflop_per_clip"] else math.inf
    lines = [
        f"check (nothing computed, nothing written): teacher {report['teacher']} ({report['teacher_id']}), "
        f"{report['num_frames']} frames per clip = {report['windows_per_clip']} window(s) of 16: "
        f"{report['tflop_per_clip']:.2f} TFLOP and {report['bytes_per_clip'] / 1e6:.1f} MB (before compression) "
        "per clip",
        f"pricing: {report['gpu_tflops']:g} TFLOP/s sustained per GPU (assumed; --check-gpu-tflops) = "
        + (f"{rate:.3g} clips/s per GPU" if math.isfinite(rate) else "no GPU work (the oracle reads ground truth)"),
        f"cache {report['cache']}: {report['cached_clips']} clips cached, {report['failed_clips']} failed; "
        f"{report['videos_probed']} video headers probed",
    ]
    for source in report["sources"]:
        lines.append(f"source {source['source']}")
        rows = f"  rows: {source['rows_ok']} ok, {source['rows_skipped']} skipped"
        if source["skipped_by_reason"]:
            rows += " (" + "; ".join(f"{r['reason']} x{r['rows']}, e.g. {r['example']}"
                                     for r in source["skipped_by_reason"]) + ")"
        lines.append(rows)
        lines.append("  " + clip_line(source, rate))
        if source["lost"]:
            lines.append(f"  LOST: {source['lost']}")
    lines.append("total (clips shared by sources counted once)")
    lines.append("  " + clip_line(report["total"], rate))
    lost = [s["source"] for s in report["sources"] if s["lost"]]
    lines.append(f"verdict: {len(lost)} source(s) would yield nothing: {', '.join(lost)}" if lost
                 else "verdict: every source yields samples")
    return "\n".join(lines)


def clip_line(counts: dict, rate: float) -> str:
    text = (f"clips: {counts['unique_clips']} unique, {counts['already_cached']} already cached, "
            f"{counts['failed_before']} failed before (not retried), {counts['to_compute']} to compute")
    if counts["expected_to_fail"]:
        text += f" of which {counts['expected_to_fail']} will fail (" + "; ".join(
            f"{f['reason']} x{f['clips']}, e.g. {f['example']}" for f in counts["expected_failures"]) + ")"
    computing = counts["to_compute"] - counts["expected_to_fail"]
    hours = f"{counts['gpu_hours']:.3g} GPU-hours at {rate:.3g} clips/s per GPU" if math.isfinite(rate) \
        else "0 GPU-hours"
    images = f", {counts['images']} images" if counts["images"] else ""
    return (f"{text}; teacher: {computing} clips, {counts['tflop']:.1f} TFLOP = {hours}; "
            f"writes {counts['bytes'] / 1e9:.2f} GB before compression{images}")


def check_exit_code(report: dict) -> int:
    return LOST_EXIT_CODE if any(s["lost"] for s in report["sources"]) else 0
