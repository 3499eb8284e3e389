"""What the caching job stores is what the teacher said: a job with the L4P teacher (tiny config,
seeded weights) on a real video, then every cached field compared with the teacher's own predict on
the same decoded clip, within the error bound its stored encoding states (shards/codecs.py), for
both shard formats, read back through the stock readers (zarr, webdataset) and ours.

The shape-and-dtype checks elsewhere pass for a bug that keeps shapes (latent tokens reordered, a
map of another frame, a wrong scale); these fail. Each bound below is the encoding's stated error
plus the float32 rounding of the decoded value, never a number fitted to what passed."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import webdataset as wds
import zarr

from conftest import TEST_VIDEOS
from manifests.clips_table import current_clips, read_clips_table
from pipeline.config import JobConfig, OutputConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from pipeline.teachers.base import TeacherInput
from pipeline.teachers.registry import build_teacher
from pipeline.video_reader import read_clip, resize_frames
from shards.cache_reader import read_cached_clip
from shards.codecs import PROB_LOGIT_MAX, PROB_LOGIT_STEP, decode_field, encode_arrays, side_specs
from shards.formats import FORMATS, open_writer, shard_filename
from shards.schema import FieldSpec, specs_from_json
from shards.teacher_fields import CLIP_FIELDS
from shards.torch_codecs import encode_tensor

VIDEO = "flipping_a_pancake.mkv"  # 310 real frames, 426 x 240
SAMPLING = SamplingConfig(num_frames=24)  # two teacher windows: merged maps, per-window latents and rays
# One clip per call and one thread, as the teacher actor runs it (TeacherActor: num_cpus threads).
TEACHER = TeacherConfig(name="l4p-tiny", batch_size=1, num_cpus=1)
FLOAT32_ROUNDING = 2.0**-24  # relative: one rounding of a decoded value to float32


@pytest.fixture(scope="module")
def caches(ray_session, tmp_path_factory):
    videos = tmp_path_factory.mktemp("videos")
    shutil.copy(TEST_VIDEOS / VIDEO, videos / VIDEO)
    out = {}
    for fmt in FORMATS:
        cache = tmp_path_factory.mktemp(f"cache-{fmt}")
        summary = run_job(JobConfig(videos=str(videos), out=str(cache), sampling=SAMPLING, teacher=TEACHER,
                                    output=OutputConfig(format=fmt)))
        assert summary["clips"]["ok"] == 1, summary
        (row,) = current_clips(read_clips_table(cache)).values()
        out[fmt] = (cache, row)
    return out


@pytest.fixture(scope="module")
def teacher_view(caches):
    """The clip decoded as the decode stage does it, and the teacher's predict on it, run here."""
    _, row = caches["zarr"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clip = read_clip(row["video_uri"], SAMPLING)
        frames = resize_frames(clip.frames, (224, 224))
        teacher = build_teacher(TEACHER)
        outputs = teacher.predict([TeacherInput(row["video_uri"], clip.frame_indices, clip.timestamps, frames)])[0]
    finally:
        torch.set_num_threads(threads)
    return clip, {"frames": frames, "timestamps": np.asarray(clip.timestamps), **outputs}


def stock_stored_arrays(cache, row) -> dict[str, np.ndarray]:
    """Every stored array of the clip (main arrays and side arrays), as the stock readers give them."""
    path = cache / row["shard"]
    if row["format"] == "zarr":
        group = zarr.open_group(str(path), mode="r")
        return {name: np.asarray(group[name][row["row"]]) for name in group.array_keys()}
    (sample,) = [s for s in wds.WebDataset(str(path), shardshuffle=False).decode() if s["__key__"] == row["cache_key"]]
    return {key.split(".")[0]: value for key, value in sample.items() if not key.startswith("__")}


def encoding_error_bound(spec: FieldSpec, exact: np.ndarray, stored: dict[str, np.ndarray]) -> np.ndarray:
    """The largest |decoded - exact| the field's encoding allows at each element (shards/codecs.py),
    plus the float32 rounding of the decoded value."""
    magnitude = np.abs(exact.astype(np.float64))
    if spec.encoding == "plain":
        if np.dtype(spec.dtype).kind != "f":
            return np.zeros_like(magnitude)  # integers are stored exactly (range checked on write)
        info = np.finfo(spec.dtype)
        # Round to nearest: half an ulp, 2**-(mantissa bits + 1) relative; subnormals in absolute terms.
        # (In float64: half the smallest float16 subnormal is itself 0 in float16.)
        return np.maximum(float(info.eps) / 2 * magnitude, float(info.smallest_subnormal) / 2)
    if spec.encoding == "bf16":
        return 2.0**-8 * magnitude  # 8 significant bits, round to nearest even
    if spec.encoding == "int8-token":
        # Rounding a code errs by half a step; the step of element (token, channel) is
        # token_scale x channel_scale.
        step = stored[f"{spec.name}__token_scale"][..., None] * stored[f"{spec.name}__channel_scale"][..., None, :]
        offset = np.abs(stored[f"{spec.name}__offset"][..., None, :])
        # The decode computes codes x scales + offset in float32: a few roundings of those magnitudes.
        return step / 2 + 4 * FLOAT32_ROUNDING * (magnitude + offset + step * 127)
    if spec.encoding == "log-depth":
        return np.expm1(spec.step / 2) * magnitude + FLOAT32_ROUNDING * magnitude  # half a step in log
    if spec.encoding == "fixed":
        return spec.step / 2 + FLOAT32_ROUNDING * magnitude
    raise AssertionError(f"no stated bound for encoding {spec.encoding!r}: add it here from shards/codecs.py")


def assert_probability_within_bound(name: str, exact: np.ndarray, decoded: np.ndarray) -> None:
    """prob-u8: 0 and 1 exact; otherwise the logit, clipped to +-PROB_LOGIT_MAX, within half a logit
    step, so the decoded p lies between the sigmoids of logit -+ step / 2 (+ float32 rounding)."""
    p = exact.astype(np.float64)
    ends = (p == 0) | (p == 1)
    np.testing.assert_array_equal(decoded[ends], p[ends], err_msg=f"{name}: exact 0 and 1")
    with np.errstate(divide="ignore"):
        logit = np.clip(np.log(p) - np.log1p(-p), -PROB_LOGIT_MAX, PROB_LOGIT_MAX)[~ends]
    low = 1 / (1 + np.exp(-(logit - PROB_LOGIT_STEP / 2)))
    high = 1 / (1 + np.exp(-(logit + PROB_LOGIT_STEP / 2)))
    got = decoded[~ends].astype(np.float64)
    outside = (got < low * (1 - FLOAT32_ROUNDING)) | (got > high * (1 + FLOAT32_ROUNDING))
    assert not outside.any(), f"{name}: {outside.sum()} of {outside.size} values outside half a logit step"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_cached_field_is_the_teachers_output_within_its_encoding_error(caches, teacher_view, fmt):
    cache, row = caches[fmt]
    clip, exact = teacher_view
    assert row["frame_indices"] == [int(i) for i in clip.frame_indices], "the job decoded the same frames"
    specs = {s.name: s for s in specs_from_json(row["fields"])}
    assert set(specs) == {"frames", "timestamps", "latents", "depth", "flow", "dyn_mask", "camray"}
    stored = stock_stored_arrays(cache, row)
    ours = read_cached_clip(cache, row)
    for name, spec in specs.items():
        parts = {s.name: stored[s.name] for s in [spec, *side_specs(spec)]}
        decoded = decode_field(spec, parts)
        np.testing.assert_array_equal(ours[name], decoded, err_msg=f"{name}: our reader = the stock reader")
        want = np.asarray(exact[name])
        assert decoded.shape == want.shape, name
        if spec.encoding == "prob-u8":
            assert_probability_within_bound(name, want, decoded)
            continue
        error = np.abs(decoded.astype(np.float64) - want.astype(np.float64))
        bound = encoding_error_bound(spec, want, parts)
        worst = np.unravel_index(np.argmax(error - bound), error.shape)
        assert (error <= bound).all(), (
            f"{fmt} {name} ({spec.encoding} {spec.dtype}): {(error > bound).sum()} of {error.size} values beyond "
            f"the encoding's bound; worst at {worst}: cached {decoded[worst]}, teacher {want[worst]}, "
            f"bound {bound[worst]:.3g}")


# The clip's cache_key as the job computed it before the teacher's outputs were encoded on its device
# (main at 1b33b5e, this test's config): the key hashes the same things, so a cache written before is
# still found complete by a rerun, and its clips are not recomputed.
CACHE_KEY_BEFORE = "01053b47106f9ebd51be8832dd163d0cf395e1a6feb9c8e32a6372ede47b522e"


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_shard_holds_the_bytes_of_the_numpy_codecs(caches, teacher_view, fmt, tmp_path):
    """The job quantizes on the teacher's device (shards/torch_codecs.py); the encode task before it
    did so with numpy (codecs.encode_arrays, then the format's writer). The same clip through the
    numpy path gives the same stored arrays and the same shard, byte for byte, under the same key."""
    cache, row = caches[fmt]
    _, exact = teacher_view
    assert row["cache_key"] == CACHE_KEY_BEFORE
    specs = specs_from_json(row["fields"])
    encoded = encode_arrays(specs, {s.name: np.asarray(exact[s.name]) for s in specs})
    for spec in specs:  # and the torch path (a GPU teacher's) gives these bytes from these outputs too
        if spec.name not in CLIP_FIELDS:
            for name, array in encode_tensor(spec, torch.as_tensor(exact[spec.name])).items():
                assert array.tobytes() == encoded[name].tobytes(), name
    writer = open_writer(fmt, tmp_path / shard_filename(fmt, "numpy"), specs)
    stored = writer.add(row["cache_key"], encoded)
    assert dict(row["checksums"]) == stored.checksums and row["nbytes"] == stored.nbytes
    ours, theirs = cache / row["shard"], writer.commit()
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file()) if ours.is_dir() else [None]
    for rel in files:
        a, b = (ours / rel, theirs / rel) if rel else (ours, theirs)
        assert a.read_bytes() == b.read_bytes(), f"{fmt}: {rel or a.name} differs"
    assert len(files) > 1 or fmt == "wds"
