"""Look at a cache: list its clips, or render a cached clip's frames, depth, flow, motion mask and
camera-ray directions side by side into a PNG, as the student reads them.

  p4d-inspect CACHE                       # a table of clips (or: python -m student.inspect_cache CACHE)
  p4d-inspect CACHE --clip KEY --png out.png
  p4d-inspect CACHE --pictures 4          # PNGs of the first 4 ok clips in CACHE/pictures/
  p4d-inspect CACHE --clip KEY --marks [--sample ID]   # a sample's region marks on the frames
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from manifests.clips_table import current_clips, read_clips_table
from manifests.regions import check_marks, parse_regions
from manifests.samples_table import SAMPLES_FILE, read_samples
from manifests.schemas import CLIP_OK
from shards.cache_reader import read_cached_clip
from shards.local_path import cache_location, local_path
from shards.store import exists, is_url, join
from shards.teacher_fields import CLIP_FIELDS, MAP_TASKS
from student.marks import MarkStyle, draw_clip_marks
from student.visualize import render_clip_png

PICTURE_FIELDS = [*CLIP_FIELDS, *MAP_TASKS]
PICTURES_DIR = "pictures"  # CACHE/pictures: where --pictures and --clip write by default


def find_clip(clips: dict[str, dict], wanted: str) -> dict:
    """A clip by cache_key, clip_id, or a unique prefix of either."""
    matches = [r for k, r in clips.items() if k.startswith(wanted) or r["clip_id"].startswith(wanted)]
    exact = [r for r in matches if wanted in (r["cache_key"], r["clip_id"])]
    if exact:
        return exact[0]
    if len(matches) != 1:
        raise SystemExit(f"--clip {wanted!r}: {'no clip' if not matches else f'{len(matches)} clips'} match")
    return matches[0]


def camray_per_frame(camray: np.ndarray, starts: list[int], num_frames: int) -> np.ndarray:
    """[W, 6, 16, gh, gw] rays per window -> [6, T, gh, gw] for display: each frame from the latest
    window that holds it (each window's rays are relative to its own first camera)."""
    out = np.empty((camray.shape[1], num_frames, *camray.shape[3:]), camray.dtype)
    for window, start in zip(camray, starts):
        span = min(window.shape[1], num_frames - start)
        out[:, start:start + span] = window[:, :span]
    return out


def find_marked_sample(cache_root: Path, row: dict, sample_id: str | None) -> dict:
    """The sample whose marks to draw: the one named, else the clip's first sample with regions."""
    path = join(cache_root, SAMPLES_FILE.as_posix())
    if not exists(path):
        raise SystemExit(f"{cache_root}: no samples table, hence no region marks")
    samples = [s for s in read_samples(path).to_pylist() if s["cache_key"] == row["cache_key"]]
    if sample_id is not None:
        samples = [s for s in samples if s["sample_id"] == sample_id]
    else:
        samples = [s for s in samples if s["regions"]]
    if not samples:
        wanted = f"sample {sample_id!r}" if sample_id else "a sample with regions"
        raise SystemExit(f"--marks: clip {row['clip_id']} has no {wanted}")
    return samples[0]


def render(cache_root: Path, row: dict, out: Path, marks: dict | None = None) -> Path:
    """marks: a sample row whose regions are drawn onto the frames, as the student loader draws them."""
    arrays = read_cached_clip(cache_root, row, PICTURE_FIELDS)
    if "camray" in arrays:
        arrays["camray"] = camray_per_frame(arrays["camray"], row["window_starts"], len(row["timestamps"]))
    title = f"{row['clip_id']}  ({row['video_uri']})"
    if marks is not None:
        regions = parse_regions(marks["regions"], where=marks["sample_id"])
        check_marks(marks["conversations"], regions, where=marks["sample_id"])
        arrays["frames"] = draw_clip_marks(arrays["frames"], row["frame_indices"], regions, MarkStyle())
        title = f"{title}  marks of {marks['sample_id']}"
    return render_clip_png(arrays, out, title=title)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("cache", type=cache_location, help="cache directory or object-store URL (s3://bucket/cache)")
    p.add_argument("--clip", help="cache_key or clip_id (or a unique prefix) to render")
    p.add_argument("--png", type=local_path, help="output PNG for --clip (default CACHE/pictures/<clip_id>.png; "
                   "./pictures/ for a cache on an object store)")
    p.add_argument("--pictures", type=int, default=0, help="render this many ok clips into CACHE/pictures/")
    p.add_argument("--marks", action="store_true", help="with --clip: draw a sample's region marks on the frames")
    p.add_argument("--sample", help="with --marks: the sample_id (default: the clip's first sample with regions)")
    args = p.parse_args(argv)
    clips = current_clips(read_clips_table(args.cache))
    if not clips:
        raise SystemExit(f"{args.cache}: no clips in the manifest")
    # Pictures are local files to look at, also of a cache on an object store.
    pictures = Path(PICTURES_DIR) if is_url(args.cache) else args.cache / PICTURES_DIR
    if args.clip:
        row = find_clip(clips, args.clip)
        marks = find_marked_sample(args.cache, row, args.sample) if args.marks else None
        suffix = "-marks" if marks is not None else ""
        out = args.png or pictures / f"{row['clip_id'].replace('/', '__')}{suffix}.png"
        print(render(args.cache, row, out, marks))
        return 0
    if args.pictures:
        ok = [r for r in clips.values() if r["status"] == CLIP_OK][: args.pictures]
        for row in ok:
            print(render(args.cache, row, pictures / f"{row['clip_id'].replace('/', '__')}.png"))
        return 0
    for row in sorted(clips.values(), key=lambda r: r["clip_id"]):
        where = f"{row['shard']}#{row['row']}" if row["status"] == CLIP_OK else f"{row['stage']}: {row['error']}"
        print(f"{row['status']:6} {row['clip_id']:40} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
