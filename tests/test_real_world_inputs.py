"""The caching job on inputs as they come: rotated phone videos, variable frame rate, a 4K file,
too-short and audio-only files, and the real-world files of tests/data/videos. Each becomes an ok clip
with upright frames and the container's true timestamps, or a failed row with its reason; the summary
groups failures by reason. (Every codec of the PyAV wheel: tests/test_video_reader.py, at the reader,
since the teacher adds nothing per codec and costs ~2 s per clip on CPU.)"""
from __future__ import annotations

import json
import logging
import re
import shutil
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from conftest import TEST_VIDEOS
from manifests.clips_table import current_clips, read_clips_table
from pipeline.cache_teacher import main as cache_main
from pipeline.video_reader import resize_frames
from shards.cache_reader import read_cached_clip
from test_video_reader import LOSSY_TOLERANCE, VFR_PTS_MS, marked, write_audio_only, write_video

NUM_FRAMES = 3  # the rotated real-world files have 3 frames
UHD = (3840, 2160)
# The other real-world files (flipping_a_pancake.mkv, unordered.mov) go through the job in
# tests/test_cache_job.py and through the reader in tests/test_video_reader.py.
REAL_WORLD = ["corrupted.mp4", "video_90.mov", "video_180.mov", "video_270.mov"]


def uhd_pictures() -> list[np.ndarray]:
    return [marked(40 + 30 * k, *UHD) for k in range(3)]


@pytest.fixture(scope="module")
def real_world(ray_session, tmp_path_factory):
    """One job over every kind of input, run through the CLI: (cache, rows by file name, summary, log)."""
    videos = tmp_path_factory.mktemp("real-world-videos")
    tenth = Fraction(1, 10)
    # Nominal rate 30 fps, true times VFR_PTS_MS.
    write_video(videos / "vfr.mp4", [marked(20 * k) for k in range(10)], list(VFR_PTS_MS), Fraction(1, 1000), rate=30)
    write_video(videos / "uhd.mp4", uhd_pictures(), [0, 1, 2], tenth, rate=10, options={"preset": "ultrafast"})
    write_video(videos / "one_frame.mp4", [marked(40)], [0], tenth, rate=10)
    write_video(videos / "two_frames.webm", [marked(40), marked(60)], [0, 1], tenth, rate=10, codec="libvpx")
    write_audio_only(videos / "audio_only.mp4")
    for name in REAL_WORLD:
        shutil.copy(TEST_VIDEOS / name, videos / name)

    cache = tmp_path_factory.mktemp("real-world-cache")
    handler, logger = _Records(), logging.getLogger("p4d.cache_teacher")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # pytest leaves the root at WARNING, which would drop INFO records
    try:
        code = cache_main(["--videos", str(videos), "--out", str(cache), "--teacher", "l4p-tiny",
                           "--num-frames", str(NUM_FRAMES), "--format", "zarr", "--batch-size", "4",
                           "--clips-per-shard", "16"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert code == 0, handler.messages
    rows = {Path(r["video_uri"]).name: r for r in current_clips(read_clips_table(cache)).values()}
    summary = json.loads((cache / "summary.json").read_text())
    return cache, rows, summary, handler.messages


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _stored_frames(cache: Path, row: dict) -> np.ndarray:
    assert row["status"] == "ok", (row["video_uri"], row["error"])
    return read_cached_clip(cache, row, ["frames"])["frames"].astype(int)


def test_variable_frame_rate_keeps_the_container_timestamps(real_world):
    cache, rows, _, _ = real_world
    row = rows["vfr.mp4"]
    indices = row["frame_indices"]
    assert indices == [0, 4, 9]
    true_times = np.array(VFR_PTS_MS)[indices] / 1000
    np.testing.assert_allclose(row["timestamps"], true_times, atol=1e-3)
    np.testing.assert_allclose(read_cached_clip(cache, row, ["timestamps"])["timestamps"], true_times, atol=1e-3)
    # index / nominal fps would say 0, 0.133, 0.3 s
    assert not np.allclose(row["timestamps"], np.array(indices) / 30, atol=0.05)


def test_uhd_video_is_cached_at_the_stored_size(real_world):
    cache, rows, _, _ = real_world
    frames = _stored_frames(cache, rows["uhd.mp4"])
    assert frames.shape == (NUM_FRAMES, 224, 224, 3)
    expected = resize_frames(np.stack(uhd_pictures()), (224, 224)).astype(int)
    assert np.abs(frames - expected).mean() < LOSSY_TOLERANCE


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_videos_are_cached_upright(real_world, degrees):
    """Phone videos store the picture sideways plus a display rotation; the cache holds what a viewer
    shows. Compared with PyAV's stored picture turned by its reported rotation."""
    cache, rows, _, _ = real_world
    name = f"video_{degrees}.mov"
    frames = _stored_frames(cache, rows[name])
    with av.open(str(TEST_VIDEOS / name)) as container:
        stored = [f for f in container.decode(video=0)]
    upright = np.stack([np.rot90(f.to_ndarray(format="rgb24"), f.rotation // 90) for f in stored])
    assert upright.shape[1:3] == ((568, 320) if degrees != 180 else (320, 568))
    expected = resize_frames(np.ascontiguousarray(upright), (224, 224)).astype(int)
    assert np.abs(frames - expected).mean() < 3
    # The stored (sideways) picture would be far off: the check can tell.
    sideways = resize_frames(np.stack([f.to_ndarray(format="rgb24") for f in stored]), (224, 224)).astype(int)
    assert np.abs(frames - sideways).mean() > 3 * np.abs(frames - expected).mean()


# file -> (stage, start of the reason)
FAILURES = {
    "corrupted.mp4": ("decode", "decoding failed at frame "),  # the frame: checked below
    "one_frame.mp4": ("decode", "too short"),
    "two_frames.webm": ("decode", "too short"),
    "audio_only.mp4": ("decode", "no video stream"),
}


def test_bad_inputs_become_failed_rows_grouped_by_reason(real_world):
    cache, rows, summary, messages = real_world
    failed = {n for n, r in rows.items() if r["status"] == "failed"}
    assert failed == set(FAILURES), "every other input was cached"
    for name, (stage, reason) in FAILURES.items():
        assert rows[name]["stage"] == stage and rows[name]["error"].startswith(reason), rows[name]["error"]
        assert name in rows[name]["error"], "the reason names the file"
    # The frame named is one that decord cannot decode alone (a fresh reader), the first frame can be.
    frame = int(re.match(r"decoding failed at frame (\d+):", rows["corrupted.mp4"]["error"]).group(1))
    decord.VideoReader(str(TEST_VIDEOS / "corrupted.mp4"), ctx=decord.cpu(0), num_threads=1).get_batch([0])
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(TEST_VIDEOS / "corrupted.mp4"), ctx=decord.cpu(0), num_threads=1).get_batch([frame])

    assert summary["clips"]["failed"] == 4 and summary["clips"]["ok"] == len(rows) - 4
    assert summary["failures_by_reason"] == {
        "decode: too short": 2,
        "decode: decoding failed at frame N": 1,
        "decode: no video stream (zero video frames)": 1,
    }
    examples = summary["failure_examples"]["decode: too short"]
    assert {e["clip_id"] for e in examples} == {rows["one_frame.mp4"]["clip_id"], rows["two_frames.webm"]["clip_id"]}
    assert all(e["error"].startswith("too short") for e in examples)
    # The CLI's last word says what happened, failures by reason included.
    assert messages[-1].startswith(f"done: {len(rows)} clips wanted, 0 already cached, {len(rows) - 4} ok, 4 failed (")
    assert "2 x decode: too short" in messages[-1] and str(cache / "summary.json") in messages[-1]
