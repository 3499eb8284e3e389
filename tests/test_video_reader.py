"""read_clip on generated videos (whose every frame we know) and on the real-world files of tests/data/videos."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.sampling import SamplingConfig
from pipeline.video_reader import VideoReadError, read_clip, resize_frames

from conftest import TEST_VIDEOS

# Irregular presentation times (ms) of the variable-frame-rate fixture.
VFR_PTS_MS = (0, 50, 80, 300, 310, 700, 1000, 1010, 1500, 2000)
GREY_TOLERANCE = 4  # H.264 at crf 0 keeps flat grey within a level or two after YUV <-> RGB


def flat(grey: int, width: int = 64, height: int = 48) -> np.ndarray:
    return np.full((height, width, 3), grey, np.uint8)


def marked(grey: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Flat grey with a white top-left corner, so that a flip or a rotation shows."""
    image = flat(grey, width, height)
    image[: height // 4, : width // 4] = 255
    return image


def write_video(path: Path, pictures: list[np.ndarray], pts: list[int], time_base: Fraction, rate: int,
                codec: str = "libx264", pix_fmt: str = "yuv420p", options: dict | None = None) -> Path:
    """A video of `pictures` (RGB uint8), picture k at time pts[k] * time_base."""
    height, width = pictures[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        stream.options = options or {}
        for image, t in zip(pictures, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    """A file with one AAC stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(5):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, k * 1024
            container.mux(stream.encode(samples))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def cfr_video(tmp_path_factory) -> Path:
    """40 frames at 10 fps; frame k is grey 5 * k (lossless H.264)."""
    path = tmp_path_factory.mktemp("videos") / "cfr.mp4"
    return write_video(path, [flat(5 * k) for k in range(40)], list(range(40)), Fraction(1, 10), rate=10,
                       options={"crf": "0"})


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory) -> Path:
    """10 frames at the irregular times VFR_PTS_MS; frame k is grey 20 * k (lossless H.264)."""
    path = tmp_path_factory.mktemp("videos") / "vfr.mp4"
    return write_video(path, [flat(20 * k) for k in range(10)], list(VFR_PTS_MS), Fraction(1, 1000), rate=30,
                       options={"crf": "0"})


def _greys(clip) -> np.ndarray:
    return clip.frames.reshape(len(clip.frames), -1).mean(axis=1)


def _assert_cfr_frames(clip, expected_indices):
    expected = np.asarray(expected_indices)
    np.testing.assert_array_equal(clip.frame_indices, expected)
    assert clip.frame_indices.dtype == np.int64 and clip.timestamps.dtype == np.float64
    np.testing.assert_allclose(clip.timestamps, expected / 10, atol=1e-3)
    np.testing.assert_allclose(_greys(clip), 5 * expected, atol=GREY_TOLERANCE)


def test_uniform_sampling_returns_expected_frames_and_timestamps(cfr_video):
    clip = read_clip(cfr_video, SamplingConfig(num_frames=5))
    _assert_cfr_frames(clip, [0, 10, 20, 29, 39])
    assert clip.frames.shape == (5, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.num_video_frames == 40
    assert clip.duration == pytest.approx(4.0, abs=1e-3)
    assert clip.video_path == str(cfr_video)


def test_span_limits_usable_frames(cfr_video):
    _assert_cfr_frames(read_clip(cfr_video, SamplingConfig(num_frames=11, start=1.0, end=2.0)), range(10, 21))


def test_fps_sampling_takes_nearest_frames(cfr_video):
    _assert_cfr_frames(read_clip(cfr_video, SamplingConfig(num_frames=4, fps=2.5, start=1.0)), [10, 14, 18, 22])
    # 3 fps on a 10 fps video: targets 0, 0.333, 0.667, 1.0 s fall between frames.
    _assert_cfr_frames(read_clip(cfr_video, SamplingConfig(num_frames=4, fps=3)), [0, 3, 7, 10])


def test_fps_sampling_too_short_raises_unless_padded(cfr_video):
    # The last frame starts at 3.9 s: a target at 4.0 s is more than half a frame interval beyond it.
    _assert_cfr_frames(read_clip(cfr_video, SamplingConfig(num_frames=10, fps=10, start=3.0)), range(30, 40))
    with pytest.raises(VideoReadError) as error:
        read_clip(cfr_video, SamplingConfig(num_frames=11, fps=10, start=3.0))
    message = str(error.value)
    assert "too short" in message and "10 usable frames" in message and "sampling.pad" in message
    assert "cfr.mp4" in message

    padded = read_clip(cfr_video, SamplingConfig(num_frames=6, fps=1, pad=True))
    _assert_cfr_frames(padded, [0, 10, 20, 30, 39, 39])


def test_uniform_sampling_too_short_raises_unless_padded(cfr_video):
    three_frames = SamplingConfig(num_frames=5, start=0.0, end=0.25)
    with pytest.raises(VideoReadError, match=r"too short: .*cfr\.mp4 has 3 usable frames .* 5 requested .*pad"):
        read_clip(cfr_video, three_frames)
    padded = read_clip(cfr_video, SamplingConfig(num_frames=5, start=0.0, end=0.25, pad=True))
    _assert_cfr_frames(padded, [0, 0, 1, 2, 2])


def test_span_without_frames_raises(cfr_video):
    with pytest.raises(VideoReadError, match="no frames in the sampling span"):
        read_clip(cfr_video, SamplingConfig(num_frames=2, start=10.0))


def test_variable_frame_rate_gives_true_timestamps(vfr_video):
    clip = read_clip(vfr_video, SamplingConfig(num_frames=10))
    np.testing.assert_allclose(clip.timestamps, np.array(VFR_PTS_MS) / 1000, atol=1e-3)
    np.testing.assert_allclose(_greys(clip), 20 * np.arange(10), atol=GREY_TOLERANCE)

    # Nearest in time, not in index: 0.25 s -> 0.30 s (frame 3), 0.5 s -> 0.31 s (frame 4), ...
    at_rate = read_clip(vfr_video, SamplingConfig(num_frames=7, fps=4))
    np.testing.assert_array_equal(at_rate.frame_indices, [0, 3, 4, 5, 6, 7, 8])
    np.testing.assert_allclose(at_rate.timestamps, np.array(VFR_PTS_MS)[at_rate.frame_indices] / 1000, atol=1e-3)


# (file name, encoder, pixel format): every video encoder of the PyAV wheel, each in a usual container.
CODECS = [
    ("x264.mp4", "libx264", "yuv420p"),
    ("mpeg4.avi", "mpeg4", "yuv420p"),
    ("vp8.webm", "libvpx", "yuv420p"),
    ("vp9.mkv", "libvpx-vp9", "yuv420p"),
    ("ffv1.mkv", "ffv1", "yuv444p"),
    ("mjpeg.avi", "mjpeg", "yuvj420p"),
]
LOSSY_TOLERANCE = 6  # mean grey-level error of lossy codecs on these flat pictures


@pytest.mark.parametrize("name, codec, pix_fmt", CODECS)
def test_every_codec_of_the_pyav_wheel_decodes_to_the_written_frames(tmp_path, name, codec, pix_fmt):
    pictures = [marked(40 + 30 * k) for k in range(6)]
    path = write_video(tmp_path / name, pictures, list(range(6)), Fraction(1, 10), rate=10, codec=codec,
                       pix_fmt=pix_fmt)
    clip = read_clip(path, SamplingConfig(num_frames=3))
    np.testing.assert_array_equal(clip.frame_indices, [0, 2, 5])
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.2, 0.5], atol=1e-3)
    expected = np.stack([pictures[k] for k in (0, 2, 5)]).astype(int)
    assert np.abs(clip.frames.astype(int) - expected).mean() < LOSSY_TOLERANCE, "same pictures, same orientation"


def test_real_clip_whole_video():
    clip = read_clip(TEST_VIDEOS / "flipping_a_pancake.mkv", SamplingConfig(num_frames=16))
    assert clip.num_video_frames == 310
    assert clip.frames.shape == (16, 240, 426, 3)
    assert clip.frame_indices[0] == 0 and clip.frame_indices[-1] == 309
    assert np.all(np.diff(clip.timestamps) > 0)
    assert clip.timestamps[0] == pytest.approx(0.0, abs=1e-3)
    assert clip.timestamps[-1] == pytest.approx(10.3, abs=0.02)


def test_one_decoding_thread_gives_the_frames_of_ffmpegs_default_threads():
    """The decode stage runs FFmpeg single-threaded (its cost in core-seconds); H.264 decoding is exact,
    so the frames, and the cache's bytes, are those of decord's default threading."""
    import decord

    clip = read_clip(TEST_VIDEOS / "flipping_a_pancake.mkv", SamplingConfig(num_frames=16))
    default = decord.VideoReader(str(TEST_VIDEOS / "flipping_a_pancake.mkv"), ctx=decord.cpu(0))
    assert default.get_batch(clip.frame_indices.tolist()).asnumpy().tobytes() == clip.frames.tobytes()


def test_corrupted_file_fails_naming_the_decode_error():
    with pytest.raises(VideoReadError) as error:
        read_clip(TEST_VIDEOS / "corrupted.mp4", SamplingConfig(num_frames=16))
    message = str(error.value)
    assert message.startswith("decoding failed at frame ") and "corrupted.mp4" in message
    assert "\n" not in message


def test_short_real_video_needs_pad():
    path = TEST_VIDEOS / "unordered.mov"
    with pytest.raises(VideoReadError, match="too short: .* has 4 usable frames"):
        read_clip(path, SamplingConfig(num_frames=16))
    clip = read_clip(path, SamplingConfig(num_frames=16, pad=True))
    assert clip.frames.shape == (16, 50, 50, 3)
    assert set(clip.frame_indices.tolist()) == {0, 1, 2, 3}
    assert np.all(np.diff(clip.frame_indices) >= 0) and np.all(np.diff(clip.timestamps) >= 0)


@pytest.mark.parametrize("degrees, shape", [(90, (568, 320)), (180, (320, 568)), (270, (568, 320))])
def test_rotated_videos_come_upright(degrees, shape):
    path = TEST_VIDEOS / f"video_{degrees}.mov"
    clip = read_clip(path, SamplingConfig(num_frames=3))
    assert clip.frames.shape == (3, *shape, 3)
    # PyAV decodes the stored (unrotated) picture and reports the display rotation counter-clockwise.
    with av.open(str(path)) as container:
        stored = next(container.decode(video=0))
        upright = np.rot90(stored.to_ndarray(format="rgb24"), stored.rotation // 90)
    assert np.abs(clip.frames[0].astype(int) - upright).mean() < 2


def test_bad_files_raise_with_their_reason(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    audio = write_audio_only(tmp_path / "audio.mp4")
    cases = {
        tmp_path / "missing.mp4": "file not found: ",
        empty: "empty file (0 bytes): ",
        text: "not a video or unreadable container: ",
        audio: "no video stream (zero video frames): ",
    }
    for path, reason in cases.items():
        with pytest.raises(VideoReadError) as error:
            read_clip(path, SamplingConfig(num_frames=2))
        assert str(error.value).startswith(reason + str(path))
        assert "\n" not in str(error.value)


def test_resize_frames_shape_dtype_and_constant_frames():
    frames = np.full((3, 48, 64, 3), 77, np.uint8)
    out = resize_frames(frames, (24, 40))
    assert out.shape == (3, 24, 40, 3) and out.dtype == np.uint8
    assert np.all(out == 77)
    assert resize_frames(frames, (100, 30)).shape == (3, 100, 30, 3)


def test_resize_frames_matches_pil_antialiased_bilinear():
    frames = np.random.default_rng(0).integers(0, 256, (2, 90, 160, 3), dtype=np.uint8)
    out = resize_frames(frames, (36, 50))
    for frame, resized in zip(frames, out):
        pil = np.asarray(Image.fromarray(frame).resize((50, 36), Image.BILINEAR))
        assert np.abs(pil.astype(int) - resized).max() <= 1
