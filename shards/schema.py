"""The per-clip field schema shared by every shard format.

A field is one named array per clip (frames, latents, depth, ...). Its spec fixes the stored dtype,
the per-clip shape, the encoding (a plain cast, or a quantization with side arrays, see
shards/codecs.py) and the compression, so a Zarr shard and a WebDataset shard written from the same
spec hold identical arrays. The spec is recorded in the clips manifest (JSON) so readers never guess,
and it enters every clip's cache_key, so a codec change is a new key.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

STORAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "float16", "float32", "float64")
CODECS = ("none", "zstd", "blosc-lz4", "gzip")
# encoding -> the stored dtype it requires (None: any storage dtype, a plain cast).
ENCODINGS = {
    "plain": None,
    "bf16": "uint16",  # bfloat16 bit patterns: numpy, Zarr v3 and .npy have no bfloat16 dtype
    "int8-token": "int8",  # per-channel centre + scale, then a per-token scale
    "log-depth": "uint16",  # fixed-point log depth, 0 = invalid (depth 0)
    "fixed": "int16",  # fixed point: round(value / step)
    "prob-u8": "uint8",  # probability in [0, 1], uniform in logit, 0 and 1 exact
}
STEP_REQUIRED = ("log-depth", "fixed")


def check_storage(dtype: str, codec: str, encoding: str, step: float) -> None:
    """Raise ValueError unless the combination is storable: the checks every storage spec passes,
    whether it names a field's storage in a config (FieldStorage) or a stored field (FieldSpec)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype {dtype!r} not in {STORAGE_DTYPES}")
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} not in {CODECS}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} not in {tuple(ENCODINGS)}")
    required = ENCODINGS[encoding]
    if required is not None and dtype != required:
        raise ValueError(f"encoding {encoding} stores {required}, got dtype {dtype!r}")
    if not math.isfinite(step) or step < 0:
        raise ValueError(f"step expected finite and >= 0, got {step}")
    if encoding in STEP_REQUIRED and step == 0:
        raise ValueError(f"encoding {encoding} needs a step > 0")
    if encoding in ("plain", "bf16", "prob-u8") and step:
        raise ValueError(f"encoding {encoding} takes no step, got {step}")


@dataclass(frozen=True)
class FieldStorage:
    """How a field's values are stored, whatever its shape: the storage dtype, the encoding (+ its
    quantization step) and the compression (see FieldSpec for their meaning)."""

    dtype: str = "float16"
    codec: str = "zstd"
    level: int = 3
    encoding: str = "plain"
    step: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "step", float(self.step))
        check_storage(self.dtype, self.codec, self.encoding, self.step)


@dataclass(frozen=True)
class FieldSpec:
    """How one per-clip array is stored.

    dtype: the stored dtype of the field's main array (what a stock reader sees).
    encoding: "plain" (a cast to dtype) or a quantization (ENCODINGS); readers return decoded float32
      arrays for quantized fields. `step` is the quantization step: for int8-token a fraction of each
      token's RMS (0: the finest, absmax / 127), for log-depth in natural-log units, for fixed in the
      field's units (both required > 0).
    codec: "none" | "zstd" | "blosc-lz4" | "gzip". Zarr uses the codec as named; WebDataset stores
      "none" as `.npy` and every other codec as `.npy.gz` (gzip is the only compression that stock
      webdataset decoding undoes), with `level` clipped to gzip's 1..9.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str = "zstd"
    level: int = 3
    encoding: str = "plain"
    step: float = 0.0

    @classmethod
    def stored_as(cls, name: str, shape: tuple[int, ...], storage: FieldStorage) -> FieldSpec:
        return cls(name, shape, **asdict(storage))

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "step", float(self.step))
        try:
            check_storage(self.dtype, self.codec, self.encoding, self.step)
        except ValueError as e:
            raise ValueError(f"field {self.name!r}: {e}") from None
        if self.encoding == "int8-token" and len(self.shape) < 2:
            raise ValueError(f"field {self.name!r}: int8-token needs a [..., tokens, channels] shape, got {self.shape}")

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of one clip's main array (side arrays not included)."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def specs_to_json(specs: list[FieldSpec]) -> str:
    return json.dumps([asdict(s) for s in specs], sort_keys=True)


def specs_from_json(text: str) -> list[FieldSpec]:
    # Manifests written before encodings existed lack encoding / step: their defaults are what they meant.
    return [FieldSpec(**{**d, "shape": tuple(d["shape"])}) for d in json.loads(text)]
