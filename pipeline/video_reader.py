"""Decoding the frames of one clip with decord: which frames (by their real timestamps), and resizing."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.sampling import SamplingConfig

# decord prefixes each message with "[hh:mm:ss] /source/file.cc:123: " (several times when errors nest);
# the reason a user can act on is what follows.
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
DECODE_THREADS = 1


class VideoReadError(RuntimeError):
    """A clip cannot be read; str() is a one-line reason that names the file."""


@dataclass
class DecodedClip:
    video_path: str
    frame_indices: np.ndarray  # int64 [T], indices into the video's frames
    timestamps: np.ndarray  # float64 [T], presentation start of each frame, seconds
    frames: np.ndarray  # uint8 [T, H, W, 3], RGB, upright (rotation metadata applied)
    num_video_frames: int
    duration: float  # seconds from the first frame's start to the last frame's end


def read_clip(path: str | Path, sampling: SamplingConfig) -> DecodedClip:
    """Decode the frames of `path` selected by `sampling`.

    Usable frames are those whose start timestamp lies in [sampling.start, sampling.end] (default: all).
    - fps None: num_frames indices rounded from a linspace over the first..last usable frame.
    - fps set: target times t0 + k/fps (t0 = sampling.start, or the first frame's timestamp when start is
      None: 0 for ordinary files), each taken from the usable frame with the nearest start time (ties go
      to the earlier frame). The clip is too short when the last target lies more than half a frame
      interval past the last usable frame.
    When the video is too short, VideoReadError is raised unless sampling.pad, which repeats frames:
    with fps None the same rounded linspace runs over fewer usable frames than requested, so each frame
    appears about num_frames / usable times, in order; with fps set the targets past the end all take the
    last usable frame. A repeated frame keeps its true timestamp, so timestamps repeat too.
    Timestamps come from decord's get_frame_timestamp (never index / fps: the nominal fps is wrong for
    variable-frame-rate files), rounded to the microsecond to drop decord's float32 noise.
    """
    path = str(path)
    reader = _open(path)
    num_video_frames = len(reader)
    spans = np.round(reader.get_frame_timestamp(np.arange(num_video_frames)).astype(np.float64), 6)
    starts = spans[:, 0]

    lo = -np.inf if sampling.start is None else sampling.start
    hi = np.inf if sampling.end is None else sampling.end
    usable = np.flatnonzero((starts >= lo) & (starts <= hi))
    if usable.size == 0:
        raise VideoReadError(
            f"no frames in the sampling span [{lo}, {hi}] s: {path} has {num_video_frames} frames "
            f"starting {starts.min():.3f}..{starts.max():.3f} s"
        )

    if sampling.fps is None:
        chosen = _uniform(path, usable, starts, sampling)
    else:
        chosen = _at_rate(path, usable, spans, sampling)

    needed, where = np.unique(chosen, return_inverse=True)
    frames = _decode(reader, path, needed, num_video_frames)[where]
    return DecodedClip(
        video_path=path,
        frame_indices=chosen.astype(np.int64),
        timestamps=starts[chosen],
        frames=frames,
        num_video_frames=num_video_frames,
        duration=float(spans[-1, 1] - spans[0, 0]),
    )


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 [T, H, W, 3] frames to size = (height, width), bilinear with antialiasing."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"resize_frames wants uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    # torch rather than PIL: a channels-last uint8 tensor (the permuted view of NHWC) takes torch's
    # vectorized uint8 antialias path, 7-9x faster than PIL frame by frame on CPU (16 frames
    # 720x1280 -> 224x224: ~9 ms vs ~70 ms) and within 1 grey level of PIL's output.
    nchw = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    out = F.interpolate(nchw, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def _open(path: str) -> decord.VideoReader:
    file = Path(path)
    if not file.exists():
        raise VideoReadError(f"file not found: {path}")
    if not file.is_file():
        raise VideoReadError(f"not a regular file: {path}")
    if file.stat().st_size == 0:
        raise VideoReadError(f"empty file (0 bytes): {path}")
    try:
        # One decoding thread: a decode task holds one CPU, and FFmpeg's threads (one per core by
        # default) buy it no speed there, only core-seconds of synchronization (~8 % more for 16
        # frames of a 10 s 720p H.264 video; bench/throughput.py). The frames are the same.
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS)
    except (RuntimeError, decord.DECORDError) as error:
        reason = _decord_reason(error)
        if "cannot find video stream" in reason:
            raise VideoReadError(f"no video stream (zero video frames): {path}") from error
        raise VideoReadError(f"not a video or unreadable container: {path} (decord: {reason})") from error
    if len(reader) == 0:
        raise VideoReadError(f"zero video frames: {path}")
    return reader


def _uniform(path: str, usable: np.ndarray, starts: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    if usable.size < sampling.num_frames and not sampling.pad:
        raise VideoReadError(
            f"too short: {path} has {usable.size} usable frames spanning "
            f"{starts[usable[0]]:.3f}-{starts[usable[-1]]:.3f} s, {sampling.num_frames} requested "
            f"(sampling.pad=True repeats frames instead)"
        )
    positions = np.round(np.linspace(0, usable.size - 1, sampling.num_frames)).astype(np.int64)
    return usable[positions]


def _at_rate(path: str, usable: np.ndarray, spans: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    times = spans[usable, 0]
    first = times[0] if sampling.start is None else sampling.start
    targets = first + np.arange(sampling.num_frames) / sampling.fps

    last = usable[-1]
    interval = spans[last, 1] - spans[last, 0]
    if interval <= 0 and times.size > 1:
        # Some containers give the last frame no duration; the typical spacing stands in for it.
        interval = float(np.median(np.diff(times)))
    # 1 us of slack: timestamps are rounded to the microsecond.
    if targets[-1] > times[-1] + interval / 2 + 1e-6 and not sampling.pad:
        raise VideoReadError(
            f"too short: {path} has {usable.size} usable frames spanning {times[0]:.3f}-{times[-1]:.3f} s, "
            f"{sampling.num_frames} requested at {sampling.fps} fps need up to {targets[-1]:.3f} s "
            f"(sampling.pad=True repeats frames instead)"
        )
    if times.size == 1:
        return np.full(sampling.num_frames, usable[0], dtype=np.int64)
    right = np.clip(np.searchsorted(times, targets), 1, times.size - 1)
    left = right - 1
    nearest = np.where(targets - times[left] <= times[right] - targets, left, right)
    return usable[nearest]


def _decode(reader: decord.VideoReader, path: str, indices: np.ndarray, num_video_frames: int) -> np.ndarray:
    try:
        return reader.get_batch(indices.tolist()).asnumpy()
    except decord.DECORDError as error:
        failed = _first_undecodable(path, indices)
        where = f"at frame {failed}" if failed is not None else "(no single frame fails alone)"
        raise VideoReadError(
            f"decoding failed {where}: {path} has {num_video_frames} frames, {indices.size} were requested "
            f"({indices[0]}..{indices[-1]}); decord: {_decord_reason(error)}"
        ) from error


def _first_undecodable(path: str, indices: np.ndarray) -> int | None:
    """The first requested frame that fails alone: a batch error does not say which frame it was. Each
    frame is tried by a fresh reader, so the answer does not depend on where the failed batch left the
    decoder (the same reader gave different frames from run to run)."""
    for index in indices.tolist():
        try:
            _open(path).get_batch([index])
        except decord.DECORDError:
            return index
    return None


def _decord_reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return _DECORD_PREFIX.sub("", lines[0]).strip() if lines else type(error).__name__
