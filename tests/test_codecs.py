"""Storage encodings (shards/codecs.py) on real shards: each round-trips within its stated error bound,
the edge cases (all-zero token, outlier channels, invalid depth, out-of-range values) behave, the
manifest records the encoding, readers of both formats return decoded values, and stock zarr /
webdataset / tarfile + numpy readers still open a quantized shard."""
from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import webdataset
import zarr

from manifests.cache_key import compute_cache_key
from manifests.clips_table import current_clips, read_clips_table, write_clips_part
from pipeline.config import JobConfig
from pipeline.runner import field_specs
from shards.cache_reader import read_cached_clip
from shards.codecs import PROB_LOGIT_MAX, PROB_LOGIT_STEP, decode_field, encode_arrays, stored_specs
from shards.formats import FORMATS, open_reader, open_writer, shard_filename
from shards.schema import FieldSpec, specs_from_json, specs_to_json
from shards.teacher_fields import default_storage

HOOKS, TOKENS, CHANNELS = 2, 64, 96
OUTLIERS = [3, 40, 77]  # channel indices 10-50x larger than the rest, as in real ViT features
T, H, W = 3, 8, 10

SPECS = [
    FieldSpec("latents", (HOOKS, TOKENS, CHANNELS), "int8", "zstd", 3, "int8-token", 0.0),
    FieldSpec("depth", (T, H, W), "uint16", "zstd", 3, "log-depth", 2**-8),
    FieldSpec("flow", (2, T, H, W), "int16", "gzip", 3, "fixed", 1 / 16),
    FieldSpec("dyn_mask", (T, H, W), "int16", "none", 0, "fixed", 2**-5),  # the default for the logit
    FieldSpec("camray", (1, 6, 4, 4, 4), "uint16", "zstd", 3, "bf16"),
    FieldSpec("frames", (T, H, W, 3), "uint8", "zstd", 3),
]


def latents(rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed tokens (Student-t, 5 dof) with per-channel offsets and a few outlier channels."""
    x = rng.standard_t(5, (HOOKS, TOKENS, CHANNELS)) * rng.lognormal(0, 0.3, CHANNELS) + rng.normal(0, 0.3, CHANNELS)
    x[..., OUTLIERS] *= np.array([10.0, 25.0, 50.0])
    x[1, 7] = 0.0  # an all-zero token
    return x.astype(np.float32)


def make_clip(rng: np.random.Generator) -> dict[str, np.ndarray]:
    depth = rng.uniform(0.3, 80.0, (W, H, T)).T  # a non-contiguous view, as teachers hand over
    depth[0, 0, :4] = 0.0  # invalid pixels
    mask = rng.normal(0, 6, (T, H, W))  # motion logits
    mask[0, 0, :2] = [-1023.9, 1023.9]  # near the ends of the stored range
    return {
        "latents": latents(rng),
        "depth": depth,
        "flow": rng.normal(0, 5, (2, T, H, W)).astype(np.float32),
        "dyn_mask": mask,
        "camray": rng.normal(0, 1, (1, 6, 4, 4, 4)).astype(np.float32),
        "frames": rng.integers(0, 256, (T, H, W, 3)),
    }


def spec(name: str) -> FieldSpec:
    return next(s for s in SPECS if s.name == name)


def round_trip(name: str, value: np.ndarray, step: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    s = spec(name) if step is None else replace(spec(name), step=step)
    stored = encode_arrays([s], {name: value})
    return decode_field(s, stored), stored


def test_int8_token_error_is_within_half_a_step_per_element():
    x = latents(np.random.default_rng(0))
    for step in (0.0, 0.15):
        decoded, stored = round_trip("latents", x, step)
        assert decoded.dtype == np.float32 and stored["latents"].dtype == np.int8
        # Rounding to the nearest code errs by at most half the element's step = token_scale x
        # channel_scale / 2; 1e-5 relative slack for float32 arithmetic in the decode.
        bound = 0.5 * stored["latents__token_scale"][..., None] * stored["latents__channel_scale"][..., None, :]
        assert (np.abs(decoded - x) <= bound * (1 + 1e-5) + 1e-6 * np.abs(x)).all()


def test_int8_token_keeps_ordinary_channels_precise_beside_outlier_channels():
    x = latents(np.random.default_rng(1))
    decoded, _ = round_trip("latents", x)
    ordinary = np.setdiff1d(np.arange(CHANNELS), OUTLIERS)
    rel = np.sqrt(((decoded - x)[..., ordinary] ** 2).mean(axis=(0, 1))) / x[..., ordinary].std(axis=(0, 1))
    # With the per-channel scale a token's step is ~absmax/127 of unit-variance values (~5 / 127),
    # an RMS error ~1 % of each channel's std. A per-token scale alone would set the step by the
    # 50x outlier channel: ~30 % of an ordinary channel's std.
    assert rel.max() < 0.02, rel.max()


def test_int8_token_all_zero_token_and_all_zero_field():
    x = latents(np.random.default_rng(2))
    decoded, stored = round_trip("latents", x)
    assert np.isfinite(decoded).all() and np.isfinite(stored["latents__token_scale"]).all()
    np.testing.assert_allclose(decoded[1, 7], 0.0, atol=0.5 * stored["latents__token_scale"][1, 7]
                               * stored["latents__channel_scale"][1].max())
    zeros, stored = round_trip("latents", np.zeros_like(x))
    assert (stored["latents"] == 0).all() and (zeros == 0).all()


def test_log_depth_relative_error_invalid_pixels_and_bad_values():
    depth = make_clip(np.random.default_rng(3))["depth"]
    decoded, stored = round_trip("depth", depth)
    valid = depth > 0
    # Half a step in log space: |log d' - log d| <= step / 2, i.e. relative error <= exp(step/2) - 1
    # (+ float32 output rounding, 2**-24).
    rel = np.abs(decoded[valid] / depth[valid] - 1)
    assert rel.max() <= np.expm1(2**-9) + 2**-23, rel.max()
    assert (decoded[~valid] == 0).all() and (stored["depth"][~valid] == 0).all()
    assert (round_trip("depth", np.zeros_like(depth))[0] == 0).all()
    with pytest.raises(ValueError, match="field 'depth'.*>= 0"):
        round_trip("depth", np.where(valid, depth, -1.0))
    with pytest.raises(ValueError, match="field 'depth'.*finite"):
        round_trip("depth", np.where(valid, depth, np.inf))
    with pytest.raises(ValueError, match="field 'depth'.*larger step"):
        round_trip("depth", np.where(valid, depth, 1e-120))  # 280 nats below 80 m: > 65534 steps of 2**-8


def test_fixed_bf16_and_probability_bounds():
    clip = make_clip(np.random.default_rng(4))
    flow, _ = round_trip("flow", clip["flow"])
    assert np.abs(flow - clip["flow"]).max() <= 1 / 32 + 1e-6  # half the 1/16 step (+ float32 rounding)
    with pytest.raises(ValueError, match="field 'flow'.*32767"):
        round_trip("flow", clip["flow"] * 1e3)
    camray, stored = round_trip("camray", clip["camray"])
    assert stored["camray"].dtype == np.uint16
    # bfloat16 keeps 8 significant bits: round to nearest errs by <= 2**-8 relative.
    assert (np.abs(camray - clip["camray"]) <= 2**-8 * np.abs(clip["camray"])).all()
    # The motion logit (default storage): half a step of 2**-5 over |logit| <= 1024 (+ float32 rounding).
    logit, stored = round_trip("dyn_mask", clip["dyn_mask"])
    assert stored["dyn_mask"].dtype == np.int16
    assert np.abs(logit - clip["dyn_mask"]).max() <= 2**-6 + 1e-4
    with pytest.raises(ValueError, match="field 'dyn_mask'.*32767"):
        round_trip("dyn_mask", np.full_like(clip["dyn_mask"], 1024.1))

    # prob-u8, the dyn_mask storage of caches written when the field was a probability.
    old = replace(spec("dyn_mask"), dtype="uint8", encoding="prob-u8", step=0.0)
    p = np.random.default_rng(5).uniform(0, 1, (T, H, W))
    p[0, 0, :3] = [0.0, 1.0, 3e-4]  # exact background / foreground, and a confident network background
    q = decode_field(old, encode_arrays([old], {"dyn_mask": p})).astype(np.float64)
    assert q[0, 0, 0] == 0.0 and q[0, 0, 1] == 1.0, "exact 0 and 1 stay exact"
    # Uniform in logit: half a logit step of error inside [-12, 12] (+ float32 output rounding).
    p, q = p[0, 0, 2:], q[0, 0, 2:]
    inside = np.abs(np.log(p / (1 - p))) < PROB_LOGIT_MAX
    err = np.abs(np.log(q / (1 - q)) - np.log(p / (1 - p)))[inside]
    assert err.max() <= PROB_LOGIT_STEP / 2 + 1e-3, err.max()
    with pytest.raises(ValueError, match=r"field 'dyn_mask'.*\[0, 1\]"):
        encode_arrays([old], {"dyn_mask": np.full((T, H, W), 1.5)})


def test_specs_refuse_inconsistent_encodings():
    with pytest.raises(ValueError, match="field 'latents'.*int8-token stores int8"):
        FieldSpec("latents", (4, 8), "float16", encoding="int8-token")
    with pytest.raises(ValueError, match="field 'depth'.*needs a step"):
        FieldSpec("depth", (4, 8), "uint16", encoding="log-depth")
    with pytest.raises(ValueError, match="field 'latents__offset'.*side arrays"):
        open_writer("zarr", "/nonexistent/s.zarr", [spec("latents"), FieldSpec("latents__offset", (2,), "float32")])


def shard_and_rows(fmt: str, root, clips: list[dict[str, np.ndarray]]) -> list[dict]:
    """A committed shard and its clips-table part, written as the caching job writes them."""
    rel = f"shards/{fmt}/{shard_filename(fmt, 's0')}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    writer = open_writer(fmt, root / rel, SPECS)
    rows = []
    for i, clip in enumerate(clips):
        stored = writer.add(f"key{i}", encode_arrays(SPECS, clip))
        rows.append({"cache_key": f"key{i}", "clip_id": f"clip{i}", "video_uri": f"/v/{i}.mp4", "sampling": "{}",
                     "teacher_id": "t", "status": "ok", "format": fmt, "shard": rel, "row": stored.row,
                     "nbytes": stored.nbytes, "checksums": stored.checksums, "fields": specs_to_json(SPECS),
                     "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)})
    writer.commit()
    write_clips_part(root, "s0", rows)
    return rows


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(5)
    return [make_clip(rng) for _ in range(2)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_records_the_encoding_and_both_formats_read_back_decoded_values(tmp_path, clips, fmt):
    shard_and_rows(fmt, tmp_path, clips)
    rows = current_clips(read_clips_table(tmp_path))
    for i, clip in enumerate(clips):
        row = rows[f"key{i}"]
        assert specs_from_json(row["fields"]) == SPECS
        assert {f"latents__{p}" for p in ("offset", "channel_scale", "token_scale")} <= set(dict(row["checksums"]))
        got = read_cached_clip(tmp_path, row)
        expected = {s.name: decode_field(s, encode_arrays([s], {s.name: clip[s.name]})) for s in SPECS}
        assert list(got) == [s.name for s in SPECS]
        for name, array in expected.items():
            assert got[name].dtype == (np.uint8 if name == "frames" else np.float32), name
            np.testing.assert_array_equal(got[name], array, err_msg=name)
        subset = read_cached_clip(tmp_path, row, ["depth"])
        assert list(subset) == ["depth"] and subset["depth"].dtype == np.float32


def test_default_storage_is_recorded_in_the_spec_and_a_codec_change_is_a_new_key():
    shapes = {"latents": (4, 2048, 1408), "depth": (16, 224, 224), "flow": (2, 16, 224, 224),
              "dyn_mask": (16, 224, 224), "camray": (1, 6, 16, 16, 16)}
    specs = field_specs(JobConfig(), shapes, 16)
    recorded = {d["name"]: d for d in json.loads(specs_to_json(specs))}
    assert (recorded["latents"]["encoding"], recorded["latents"]["step"]) == ("int8-token", default_storage()["latents"].step)
    assert (recorded["dyn_mask"]["encoding"], recorded["dyn_mask"]["step"]) == ("fixed", 2**-5)
    assert recorded["depth"]["encoding"] == "log-depth"
    finer = [replace(s, step=0.0) if s.name == "latents" else s for s in specs]
    base = dict(video_identity="sha256:abc", sampling={"num_frames": 16}, teacher_id="t")
    assert compute_cache_key(output_spec=specs_to_json(specs), **base) != \
        compute_cache_key(output_spec=specs_to_json(finer), **base)


def test_stock_zarr_opens_a_quantized_shard(tmp_path, clips):
    rows = shard_and_rows("zarr", tmp_path, clips)
    group = zarr.open_group(tmp_path / rows[1]["shard"], mode="r")
    names = {s.name for s in stored_specs(SPECS)}
    assert names <= set(group.array_keys())
    codes = group["latents"][1]
    assert codes.dtype == np.int8
    # The documented decode, by hand from the stock arrays: codes x token scale x channel scale + offset.
    by_hand = (codes * group["latents__token_scale"][1][..., None] * group["latents__channel_scale"][1][:, None, :]
               + group["latents__offset"][1][:, None, :])
    ours = read_cached_clip(tmp_path, rows[1], ["latents"])["latents"]
    np.testing.assert_allclose(by_hand, ours, rtol=1e-6, atol=1e-6)


def test_stock_webdataset_and_tarfile_numpy_open_a_quantized_shard(tmp_path, clips):
    rows = shard_and_rows("wds", tmp_path, clips)
    path = tmp_path / rows[0]["shard"]
    samples = list(webdataset.WebDataset(str(path), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["key0", "key1"]
    assert samples[0]["latents.npy.gz"].dtype == np.int8 and samples[0]["latents__token_scale.npy"].shape == (HOOKS, TOKENS)
    assert samples[0]["flow.npy.gz"].dtype == np.int16
    with tarfile.open(path) as tar:
        payload = gzip.decompress(tar.extractfile("key0.depth.npy.gz").read())
        codes = np.load(io.BytesIO(payload), allow_pickle=False)
        log_min = np.load(io.BytesIO(tar.extractfile("key0.depth__log_min.npy").read()), allow_pickle=False)
    by_hand = np.where(codes > 0, np.exp(log_min + (codes.astype(np.float64) - 1) * 2**-8), 0)
    ours = read_cached_clip(tmp_path, rows[0], ["depth"])["depth"]
    np.testing.assert_allclose(by_hand, ours, rtol=1e-6)
    np.testing.assert_array_equal(samples[0]["depth.npy.gz"], codes)
    assert open_reader("wds", path, SPECS).read(1)["dyn_mask"].dtype == np.float32
