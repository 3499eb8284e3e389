"""The region ground-truth table of a synthetic data set: what the 4D probes (student/probes.py) are
scored against, written by the generator (pipeline/synthetic/region_truth.py) beside samples.parquet.

One row per (video, frame, object), every object at every frame of the video, visible or not:
  video          the video's path relative to the data set's folder (as samples.parquet gives it)
  frame          the video's frame index; time its timestamp (seconds)
  object         the object's index in the scene (ground truth order); label e.g. "red sphere"
  visible_pixels pixels of the frame that see the object
  box            normalized [x0, y0, x1, y1] of those pixels (null when the object is not visible)
  depth          median metric z-depth of those pixels (NaN when not visible)
  position       world centre (m); velocity world velocity (m/s)
  cam_to_world   the camera's pose at the frame, row-major 4 x 4 (x right, y down, z forward)
A plain Parquet file: any pyarrow / pandas / DuckDB reader opens it.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REGION_TRUTH_FILE = "region_truth.parquet"

REGION_TRUTH_SCHEMA = pa.schema([
    pa.field("video", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("time", pa.float64(), nullable=False),
    pa.field("object", pa.int16(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("visible_pixels", pa.int32(), nullable=False),
    pa.field("box", pa.list_(pa.float32(), 4)),
    pa.field("depth", pa.float32(), nullable=False),
    pa.field("position", pa.list_(pa.float64(), 3), nullable=False),
    pa.field("velocity", pa.list_(pa.float64(), 3), nullable=False),
    pa.field("cam_to_world", pa.list_(pa.float64(), 16), nullable=False),
])


def read_region_truth(path: str | Path) -> pa.Table:
    """The table at `path` (a data set's folder or the file), refused unless it has the schema's columns."""
    path = Path(path)
    if path.is_dir():
        path = path / REGION_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no region ground truth at {path}: generate the data set again, or write it "
                                "with python -m pipeline.synthetic.region_truth DIR")
    table = pq.read_table(path)
    missing = [f.name for f in REGION_TRUTH_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a region ground-truth table, columns {missing} missing")
    return table.select(REGION_TRUTH_SCHEMA.names).cast(REGION_TRUTH_SCHEMA)
