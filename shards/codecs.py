"""From teacher outputs to stored arrays, and the compression each format applies per field.

`encode_arrays` is the single place where values become their storage dtype: it checks them
thoroughly once (shape, finiteness, range), so writers only re-check cheaply (`check_encoded`).
Quantizing codecs (int8 with per-token scale, log-depth) will slot in beside the plain cast in
`_encode_field`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, BloscShuffle, GzipCodec, ZstdCodec

from shards.schema import FieldSpec


def _check_names(specs: list[FieldSpec], arrays: Mapping[str, object]) -> None:
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise ValueError(f"field {missing[0]!r}: missing (expected fields {expected}, got {sorted(arrays)})")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ValueError(f"field {extra[0]!r}: not in the schema (expected fields {expected})")


def _nonfinite_summary(array: np.ndarray) -> str:
    return f"{int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} inf values"


def _check_uint8_range(spec: FieldSpec, array: np.ndarray) -> None:
    # A plain cast would wrap 256 to 0 and truncate 254.7 to 254 without a word.
    if array.size == 0:
        return
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise ValueError(f"field {spec.name!r}: values expected in [0, 255] for uint8, got [{low}, {high}]")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError(f"field {spec.name!r}: values expected whole numbers for uint8, got fractions")


def _encode_field(spec: FieldSpec, value: object) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != spec.shape:
        raise ValueError(f"field {spec.name!r}: shape expected {spec.shape}, got {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"field {spec.name!r}: dtype expected bool, integer or float, got {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"field {spec.name!r}: values expected finite, got {_nonfinite_summary(array)}")
    if spec.dtype == "uint8" and array.dtype not in (np.uint8, np.bool_):
        _check_uint8_range(spec, array)
    with np.errstate(over="ignore"):  # an overflow is reported below, with the field's name
        stored = array.astype(spec.dtype, order="C", copy=False)
    if stored.dtype.kind == "f" and stored.dtype != array.dtype and not np.isfinite(stored).all():
        raise ValueError(
            f"field {spec.name!r}: values expected to fit {spec.dtype}, "
            f"got max |value| {np.abs(array).max()} ({_nonfinite_summary(stored)} after the cast)"
        )
    return stored


def encode_arrays(specs: list[FieldSpec], arrays: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Validate one clip's arrays against the schema and cast them to their C-contiguous storage dtype.

    Raises ValueError naming the field and what was expected vs got: a missing or extra field, a wrong
    shape, a non-numeric dtype, NaN/inf in a float field, a value that does not fit the storage dtype.
    """
    _check_names(specs, arrays)
    return {spec.name: _encode_field(spec, arrays[spec.name]) for spec in specs}


def check_encoded(specs: list[FieldSpec], arrays: Mapping[str, object]) -> None:
    """The writers' cheap re-check that `arrays` came out of `encode_arrays` for these specs."""
    _check_names(specs, arrays)
    for spec in specs:
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
