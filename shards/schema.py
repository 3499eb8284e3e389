"""The per-clip field schema shared by every shard format.

A field is one named array per clip (frames, latents, depth, ...). Its spec fixes the stored dtype,
the per-clip shape and the compression, so a Zarr shard and a WebDataset shard written from the same
spec hold identical arrays. The spec is recorded in the clips manifest (JSON) so readers never guess.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

STORAGE_DTYPES = ("uint8", "float16", "float32", "float64")
CODECS = ("none", "zstd", "blosc-lz4", "gzip")


@dataclass(frozen=True)
class FieldSpec:
    """How one per-clip array is stored.

    codec: "none" | "zstd" | "blosc-lz4" | "gzip". Zarr uses the codec as named; WebDataset stores
    "none" as `.npy` and every other codec as `.npy.gz` (gzip is the only compression that stock
    webdataset decoding undoes), with `level` clipped to gzip's 1..9.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str = "zstd"
    level: int = 3

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"field {self.name!r}: dtype {self.dtype!r} not in {STORAGE_DTYPES}")
        if self.codec not in CODECS:
            raise ValueError(f"field {self.name!r}: codec {self.codec!r} not in {CODECS}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of one clip's array."""
        n = 1
        for s in self.shape:
            n *= s
        import numpy as np

        return n * np.dtype(self.dtype).itemsize


def specs_to_json(specs: list[FieldSpec]) -> str:
    return json.dumps([asdict(s) for s in specs], sort_keys=True)


def specs_from_json(text: str) -> list[FieldSpec]:
    return [FieldSpec(**{**d, "shape": tuple(d["shape"])}) for d in json.loads(text)]
