"""From teacher outputs to stored arrays and back, and the compression each format applies per field.

`encode_arrays` is the single place where values become their storage form: it checks them
thoroughly once (shape, finiteness, range), so writers only re-check cheaply (`check_encoded`).
A quantized field is stored as its main array plus side arrays `<field>__<part>` (fixed-shape
float arrays: scales, offsets), so stock Zarr / tar + numpy readers still open every file;
`decode_field` turns them back into the float32 values every consumer sees.

Encodings (FieldSpec.encoding) and their worst-case error, which the tests check:
  plain       a cast to the stored dtype (float16: relative 2**-11).
  bf16        bfloat16 bit patterns in uint16, round to nearest even: relative 2**-8.
  int8-token  [..., N, C]: each channel centred and scaled by its RMS over the tokens (so a few
              outlier channels, as real ViT features have, do not eat every token's range), then each
              token quantized to int8 with its own scale max(absmax / 127, step * RMS).
              Error <= token_scale / 2 * channel_scale per element.
  log-depth   uint16 code = round((log d - log_min) / step) + 1, log_min per clip; code 0 = depth 0
              (invalid). Relative error <= exp(step / 2) - 1.
  fixed       int16 code = round(value / step): absolute error <= step / 2, |value| <= 32767 step.
  prob-u8     a probability p in [0, 1] as uint8: 0 and 1 exactly (codes 0, 255), else uniform in
              logit over [-PROB_LOGIT_MAX, PROB_LOGIT_MAX] (codes 1..254): logit error <= PROB_LOGIT_STEP / 2.
              Uniform in logit, not in p, because the motion loss is a BCE whose sensitivity to the
              target is the prediction's logit: a background at p = 3e-4 (logit -8) that a linear
              round(255 p) stores as 0 moves L_ED dyn_mask by several %. (The dyn_mask default until
              the field became L4P's logit, now `fixed`: it keeps the caches written then readable.)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, BloscShuffle, GzipCodec, ZstdCodec

from shards.schema import FieldSpec

SIDE_SEPARATOR = "__"
INT8_MAX = 127
INT16_MAX = 32767
UINT16_MAX = 65535
PROB_LOGIT_MAX = 12.0  # sigmoid(12) = 1 - 6e-6: beyond it a probability is stored as the bound
PROB_LOGIT_STEP = 2 * PROB_LOGIT_MAX / 253


def side_specs(spec: FieldSpec) -> list[FieldSpec]:
    """The side arrays of a field (uncompressed: they are tiny beside the field)."""
    shape = spec.shape
    if spec.encoding == "int8-token":
        parts = [("offset", (*shape[:-2], shape[-1])), ("channel_scale", (*shape[:-2], shape[-1])),
                 ("token_scale", shape[:-1])]
        return [FieldSpec(f"{spec.name}{SIDE_SEPARATOR}{p}", s, "float32", "none", 0) for p, s in parts]
    if spec.encoding == "log-depth":
        return [FieldSpec(f"{spec.name}{SIDE_SEPARATOR}log_min", (), "float64", "none", 0)]
    return []


def stored_specs(specs: list[FieldSpec]) -> list[FieldSpec]:
    """Every array a shard holds per clip: each field's main array (as a plain spec) then its side arrays."""
    out = []
    for spec in specs:
        out.append(replace(spec, encoding="plain", step=0.0))
        out.extend(side_specs(spec))
    return out


def check_names(specs: list[FieldSpec], arrays: Mapping[str, object]) -> None:
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise ValueError(f"field {missing[0]!r}: missing (expected fields {expected}, got {sorted(arrays)})")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ValueError(f"field {extra[0]!r}: not in the schema (expected fields {expected})")


def _nonfinite_summary(array: np.ndarray) -> str:
    return f"{int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} inf values"


def _check_range(spec: FieldSpec, array: np.ndarray, low: float, high: float, what: str) -> None:
    if array.size == 0:
        return
    got_low, got_high = array.min(), array.max()
    if got_low < low or got_high > high:
        raise ValueError(f"field {spec.name!r}: values expected in [{low:g}, {high:g}] for {what}, "
                         f"got [{got_low}, {got_high}]")


def _check_uint8_range(spec: FieldSpec, array: np.ndarray) -> None:
    # A plain cast would wrap 256 to 0 and truncate 254.7 to 254 without a word.
    _check_range(spec, array, 0, 255, "uint8")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError(f"field {spec.name!r}: values expected whole numbers for uint8, got fractions")


def _plain(spec: FieldSpec, array: np.ndarray) -> np.ndarray:
    if spec.dtype in ("uint8", "int8", "uint16") and array.dtype.kind != "b" and array.dtype != np.dtype(spec.dtype):
        if spec.dtype == "uint8":
            _check_uint8_range(spec, array)
        else:
            info = np.iinfo(spec.dtype)
            _check_range(spec, array, info.min, info.max, spec.dtype)
            if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
                raise ValueError(f"field {spec.name!r}: values expected whole numbers for {spec.dtype}, got fractions")
    with np.errstate(over="ignore"):  # an overflow is reported below, with the field's name
        stored = array.astype(spec.dtype, order="C", copy=False)
    if stored.dtype.kind == "f" and stored.dtype != array.dtype and not np.isfinite(stored).all():
        raise ValueError(
            f"field {spec.name!r}: values expected to fit {spec.dtype}, "
            f"got max |value| {np.abs(array).max()} ({_nonfinite_summary(stored)} after the cast)"
        )
    return stored


def _bf16(spec: FieldSpec, array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    # Round to nearest even on the 16 dropped bits; a finite float32 rounds to inf only above bf16's max.
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16
    stored = rounded.astype(np.uint16)
    if ((stored & 0x7F80) == 0x7F80).any():
        raise ValueError(f"field {spec.name!r}: values expected to fit bfloat16, got max |value| {np.abs(array).max()}")
    return stored


def _int8_token(spec: FieldSpec, array: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(array, dtype=np.float32)
    offset = x.mean(axis=-2, dtype=np.float64).astype(np.float32)
    centred = x - offset[..., None, :]
    channel = np.sqrt(np.square(centred, dtype=np.float32).mean(axis=-2, dtype=np.float64)).astype(np.float32)
    channel[channel == 0] = 1  # a constant channel is exactly its offset
    y = centred / channel[..., None, :]
    del centred
    absmax = np.abs(y).max(axis=-1)
    rms = np.sqrt(np.square(y).mean(axis=-1, dtype=np.float64)).astype(np.float32)
    token = np.maximum(absmax / INT8_MAX, np.float32(spec.step) * rms)
    token[token == 0] = 1  # an all-zero (centred) token stores zeros, whatever its scale
    y /= token[..., None]
    codes = np.rint(y, out=y).clip(-INT8_MAX, INT8_MAX).astype(np.int8)
    name = spec.name + SIDE_SEPARATOR
    return {spec.name: codes, name + "offset": offset, name + "channel_scale": channel, name + "token_scale": token}


def _log_depth(spec: FieldSpec, array: np.ndarray) -> dict[str, np.ndarray]:
    depth = np.asarray(array, dtype=np.float64)
    if (depth < 0).any():
        raise ValueError(f"field {spec.name!r}: depth expected >= 0 (0 = invalid), got min {depth.min()}")
    valid = depth > 0
    logs = np.log(depth, where=valid, out=np.zeros_like(depth))
    log_min = float(logs[valid].min()) if valid.any() else 0.0
    codes = np.rint((logs - log_min) / spec.step) + 1
    if valid.any() and codes[valid].max() > UINT16_MAX:
        raise ValueError(
            f"field {spec.name!r}: depth range [{depth[valid].min()}, {depth.max()}] spans more than "
            f"{UINT16_MAX - 1} log-depth steps of {spec.step}: use a larger step"
        )
    codes[~valid] = 0
    return {spec.name: codes.astype(np.uint16), spec.name + SIDE_SEPARATOR + "log_min": np.array(log_min, np.float64)}


def _fixed(spec: FieldSpec, array: np.ndarray) -> np.ndarray:
    codes = np.rint(np.asarray(array, dtype=np.float64) / spec.step)
    if codes.size and np.abs(codes).max() > INT16_MAX:
        raise ValueError(f"field {spec.name!r}: max |value| {np.abs(array).max()} exceeds {INT16_MAX} fixed-point "
                         f"steps of {spec.step}: use a larger step")
    return codes.astype(np.int16)


def _prob_u8(spec: FieldSpec, array: np.ndarray) -> np.ndarray:
    _check_range(spec, array, 0, 1, "a probability")
    p = np.asarray(array, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-p)
    codes = np.rint((np.clip(logit, -PROB_LOGIT_MAX, PROB_LOGIT_MAX) + PROB_LOGIT_MAX) / PROB_LOGIT_STEP) + 1
    codes[p == 0] = 0
    codes[p == 1] = 255
    return codes.astype(np.uint8)


def encode_field(spec: FieldSpec, value: object) -> dict[str, np.ndarray]:
    """One field's stored arrays (its main array and side arrays), checked; see encode_arrays."""
    array = np.asarray(value)
    if array.shape != spec.shape:
        raise ValueError(f"field {spec.name!r}: shape expected {spec.shape}, got {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"field {spec.name!r}: dtype expected bool, integer or float, got {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"field {spec.name!r}: values expected finite, got {_nonfinite_summary(array)}")
    if spec.encoding == "plain":
        return {spec.name: _plain(spec, array)}
    if spec.encoding == "bf16":
        return {spec.name: _bf16(spec, array)}
    if spec.encoding == "int8-token":
        return _int8_token(spec, array)
    if spec.encoding == "log-depth":
        return _log_depth(spec, array)
    if spec.encoding == "fixed":
        return {spec.name: _fixed(spec, array)}
    return {spec.name: _prob_u8(spec, array)}


def encode_arrays(specs: list[FieldSpec], arrays: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Validate one clip's arrays against the schema and turn them into their C-contiguous stored
    arrays: one per field, plus the side arrays of quantized fields (see stored_specs).

    Raises ValueError naming the field and what was expected vs got: a missing or extra field, a wrong
    shape, a non-numeric dtype, NaN/inf in a float field, a value that does not fit the storage.
    """
    check_names(specs, arrays)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        for name, array in encode_field(spec, arrays[spec.name]).items():
            # Teachers hand over views (a transposed map): the writers and checksums want C order.
            out[name] = array if array.flags.c_contiguous else array.copy(order="C")
    return out


def decode_field(spec: FieldSpec, stored: Mapping[str, np.ndarray]) -> np.ndarray:
    """The values of one field from its stored arrays: the main array as stored for a plain field,
    float32 for a quantized one."""
    codes = stored[spec.name]
    if spec.encoding == "plain":
        return codes
    if spec.encoding == "bf16":
        return (codes.astype(np.uint32) << 16).view(np.float32)
    if spec.encoding == "fixed":
        return (codes.astype(np.float64) * spec.step).astype(np.float32)
    if spec.encoding == "prob-u8":
        logit = (codes.astype(np.float64) - 1) * PROB_LOGIT_STEP - PROB_LOGIT_MAX
        p = 1 / (1 + np.exp(-logit))
        return np.where(codes == 0, 0.0, np.where(codes == 255, 1.0, p)).astype(np.float32)
    side = {s.name[len(spec.name) + len(SIDE_SEPARATOR):]: stored[s.name] for s in side_specs(spec)}
    if spec.encoding == "int8-token":
        values = codes.astype(np.float32)
        values *= side["token_scale"][..., None]
        values *= side["channel_scale"][..., None, :]
        values += side["offset"][..., None, :]
        return values
    logs = side["log_min"] + (codes.astype(np.float64) - 1) * spec.step
    return np.where(codes > 0, np.exp(logs), 0.0).astype(np.float32)


@dataclass(frozen=True)
class Encoded:
    """A quantized field as stored: its spec and its stored arrays (the main array and its side arrays,
    by name), for a consumer that decodes it where it uses it (the student: on its GPU)."""

    spec: FieldSpec
    arrays: Mapping[str, np.ndarray]

    def decode(self) -> np.ndarray:
        return decode_field(self.spec, self.arrays)


def check_encoded(specs: list[FieldSpec], arrays: Mapping[str, object]) -> None:
    """The writers' cheap re-check that `arrays` came out of `encode_arrays` for these specs."""
    physical = stored_specs(specs)
    check_names(physical, arrays)
    for spec in physical:
        array = arrays[spec.name]
        if not isinstance(array, np.ndarray):
            raise ValueError(f"field {spec.name!r}: expected a numpy array, got {type(array).__name__}")
        got = (str(array.dtype), array.shape, array.flags.c_contiguous)
        if got != (spec.dtype, spec.shape, True):
            raise ValueError(
                f"field {spec.name!r}: expected C-contiguous {spec.dtype} {spec.shape}, got "
                f"{'C-contiguous' if got[2] else 'non-contiguous'} {got[0]} {got[1]} "
                "(pass the arrays through encode_arrays)"
            )


def zarr_compressors(spec: FieldSpec) -> tuple[BytesBytesCodec, ...]:
    """The Zarr v3 compressors of a field (zarr.codecs objects: numcodecs ones are refused by v3)."""
    if spec.codec == "none":
        return ()
    if spec.codec == "zstd":
        return (ZstdCodec(level=spec.level),)
    if spec.codec == "blosc-lz4":
        # Byte shuffle groups the high bytes of fp16/fp32 values, which is where lz4 finds repeats.
        return (BloscCodec(cname="lz4", clevel=spec.level, shuffle=BloscShuffle.shuffle),)
    if spec.codec == "gzip":
        return (GzipCodec(level=spec.level),)
    raise ValueError(f"field {spec.name!r}: codec {spec.codec!r} has no Zarr compressor")


def wds_gzip_level(spec: FieldSpec) -> int | None:
    """The gzip level of a field in a WebDataset shard, None for no compression.

    Every compressing codec becomes gzip there: it is the only compression stock webdataset
    decoding undoes.
    """
    if spec.codec == "none":
        return None
    return min(max(spec.level, 1), 9)
