"""Wolf (video captioning on nuScenes): `annotations/*_annotations.json` ("Normal Nuscenes" 4,785
captions, "Interactive" 500), each a dict {"<token>.mp4": caption}; the videos live under `videos/`."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets.common import AdapterResult, NativeRow, collect, read_json, sample_row

NAME = "wolf"
ANNOTATIONS = "annotations"
VIDEOS = "videos"
PROMPT = "Describe the video in detail."


def annotation_files(root: Path) -> list[Path]:
    files = sorted((root / ANNOTATIONS).glob("*_annotations.json"))
    if not files:
        raise FileNotFoundError(f"{root / ANNOTATIONS}: no Wolf annotation file (*_annotations.json)")
    return files


def records(path: Path) -> list[NativeRow]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video: caption}}, got {type(data).__name__}")
    # The row is named by its key: Wolf has no row numbers of its own.
    return [NativeRow(path, key, {"video": key, "caption": caption}) for key, caption in data.items()]


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    result = AdapterResult(NAME, root)
    for path in annotation_files(root):
        subset = path.name.removesuffix("_annotations.json")

        def convert(native: NativeRow, subset=subset) -> dict:
            video = native.media(root, "video", relative_to=VIDEOS)
            caption = native.text("caption")
            return sample_row(
                sample_id=f"{NAME}/{subset.replace(' ', '_')}/{Path(native.data['video']).stem}", dataset=NAME,
                split="train", video=video,
                conversations=[{"role": "user", "content": f"<video>\n{PROMPT}"},
                               {"role": "assistant", "content": caption.strip()}],
                meta=json.dumps({"task": "caption", "subset": subset}, sort_keys=True))

        collect(result, records(path), convert, lenient)
    return result
