"""Write a synthetic data set's region ground truth (manifests/region_truth.py) from its sidecars.

    python -m pipeline.synthetic.region_truth DIR      # DIR/videos/*.gt.npz -> DIR/region_truth.parquet

The data set and benchmark generators call it once their scenes are written; the command does it for a
folder generated before the table existed. Everything is read from the exact ground truth: an object's
pixels are those whose object id is its own (the renderer's), the depth is the rendered z-depth.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.region_truth import REGION_TRUTH_FILE, REGION_TRUTH_SCHEMA
from pipeline.synthetic.ground_truth import SIDECAR_SUFFIX, SceneGroundTruth, load_ground_truth
from pipeline.synthetic.questions import min_visible_pixels
from shards.local_path import local_path

VIDEO_SUFFIX = ".mp4"


def region_rows(ground_truth: SceneGroundTruth, video: str) -> list[dict]:
    """One row per (frame, object) of one video: manifests/region_truth.py's columns."""
    height, width = ground_truth.image_size
    threshold = min_visible_pixels(ground_truth.image_size)
    rows = []
    for frame in range(ground_truth.num_frames):
        ids = ground_truth.object_ids[frame]
        pose = [float(x) for x in ground_truth.cam_to_world[frame].ravel()]
        for k in range(ground_truth.num_objects):
            mask = ids == k
            count = int(mask.sum())
            box, depth = None, float("nan")
            if count >= threshold:
                ys, xs = np.nonzero(mask)
                box = [xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height]
                depth = float(np.median(ground_truth.depth[frame][mask]))
            rows.append({
                "video": video, "frame": frame, "time": float(ground_truth.timestamps[frame]), "object": k,
                "label": str(ground_truth.object_labels[k]), "visible_pixels": count, "box": box, "depth": depth,
                "position": [float(x) for x in ground_truth.object_positions[frame, k]],
                "velocity": [float(x) for x in ground_truth.object_velocities[frame, k]],
                "cam_to_world": pose,
            })
    return rows


def write_region_truth(out_dir: str | Path, video_dir: str = "videos") -> Path:
    """DIR/<video_dir>/*.gt.npz -> DIR/region_truth.parquet; returns its path."""
    out_dir = Path(out_dir)
    sidecars = sorted((out_dir / video_dir).glob(f"*{SIDECAR_SUFFIX}"))
    if not sidecars:
        raise FileNotFoundError(f"no ground-truth sidecars (*{SIDECAR_SUFFIX}) in {out_dir / video_dir}")
    rows = []
    for sidecar in sidecars:
        video = sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX) + VIDEO_SUFFIX)
        rows += region_rows(load_ground_truth(video), video.relative_to(out_dir).as_posix())
    path = out_dir / REGION_TRUTH_FILE
    pq.write_table(pa.Table.from_pylist(rows, schema=REGION_TRUTH_SCHEMA), path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=local_path, help="a synthetic data set's or benchmark's folder")
    args = parser.parse_args(argv)
    print(f"wrote {write_region_truth(args.dir)}")


if __name__ == "__main__":
    main()
