"""Wolf (video captioning; GitHub NVlabs/Wolf, commit 72ee064): `annotations/` holds the captions as
dicts {"<name>.mp4": caption}:
  `Normal Nuscenes_annotations.json` (1,051) and `Interactive Nuscenes_annotations.json` (500): the two
      files 4D-RGPT trains on, read by default (`captions=normal+interactive`);
  `robotics_annotations.json` (100) and `Pexels_annotations.json` (473, values {"output": caption,
      "tags": [...]}): not nuScenes, read only on request (`captions=...+robotics+pexels`).
No video is published. A clip is found by its name under `videos=DIR` (default ROOT/videos), or, for a
nuScenes clip, cut from its whole scene `<scenes>/<scene_id>.mp4` (`scenes=DIR`) by
`annotations/wolf_driving_index_file.json` ({name: {scene_id, frame_id, ts, te}}).

The index does not say the unit of ts / te. They are read as nuScenes keyframe numbers (2 Hz: the clip is
[ts / 2, te / 2] seconds of the scene video): te <= 40 and te - ts = 6 in all 5,285 entries, and a
nuScenes scene is ~20 s of 2 Hz keyframes. Unconfirmed by the authors.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets.common import AdapterResult, ClipSource, MediaRoot, NativeRow, collect, read_json, sample_row

NAME = "wolf"
ANNOTATIONS = "annotations"
INDEX = "wolf_driving_index_file.json"
CAPTION_FILES = {"normal": "Normal Nuscenes_annotations.json", "interactive": "Interactive Nuscenes_annotations.json",
                 "robotics": "robotics_annotations.json", "pexels": "Pexels_annotations.json"}
DEFAULT_CAPTIONS = "normal+interactive"
OPTIONS = {"captions": f"caption files, '+'-joined, of {'|'.join(CAPTION_FILES)} (default {DEFAULT_CAPTIONS})",
           "videos": "folder of the clips by name (default: ROOT/videos)",
           "scenes": "folder of whole nuScenes scene videos <scene_id>.mp4, cut by the index's ts / te"}
KEYFRAME_HZ = 2.0  # nuScenes keyframes per second: the assumed unit of the index's ts / te
PROMPT = "Describe the video in detail."


def caption_files(root: Path, captions: str) -> list[tuple[str, Path]]:
    names = [n.strip().lower() for n in captions.split("+") if n.strip()]
    unknown = [n for n in names if n not in CAPTION_FILES]
    if unknown or not names:
        raise ValueError(f"wolf captions={captions!r}: expected '+'-joined names of {sorted(CAPTION_FILES)}")
    files = [(n, root / ANNOTATIONS / CAPTION_FILES[n]) for n in names]
    missing = [str(p) for _, p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Wolf caption file(s) not found: {missing}")
    return files


def records(path: Path) -> list[NativeRow]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video: caption}}, got {type(data).__name__}")
    # The row is named by its key: Wolf has no row numbers of its own.
    return [NativeRow(path, key, {"video": key, "caption": value}) for key, value in data.items()]


def caption_of(native: NativeRow) -> str:
    """The caption: a string, or Pexels' {"output": caption, "tags": [...]}."""
    value = native.data["caption"]
    if isinstance(value, dict):
        return NativeRow(native.file, native.index, value).text("output")
    return native.text("caption")


def scene_index(root: Path) -> dict[str, dict]:
    path = root / ANNOTATIONS / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the nuScenes clip index is needed to cut clips from scenes (scenes=DIR)")
    index = read_json(path)
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected a JSON object {{clip name: {{scene_id, frame_id, ts, te}}}}")
    return index


def scene_clip(native: NativeRow, index: dict[str, dict], scenes: MediaRoot) -> ClipSource | None:
    """The clip cut from its scene video, when the index has it and the scene video exists."""
    name = native.data["video"]
    if name not in index:
        return None
    entry = index[name]
    where = NativeRow(native.file.with_name(INDEX), name, entry if isinstance(entry, dict) else {})
    scene = where.text("scene_id")
    path = where.media(scenes, "scene_id", f"{scene}.mp4")
    if not path.exists():
        return None
    start, end = where.get("ts", (int, float)), where.get("te", (int, float))
    if not end > start >= 0:
        raise where.error("te", f"span [{start}, {end}] is empty or negative")
    return ClipSource(path, (start / KEYFRAME_HZ, end / KEYFRAME_HZ))


def read(root: Path, lenient: bool = False, media_dir: Path | None = None, captions: str = DEFAULT_CAPTIONS,
         videos: str | None = None, scenes: str | None = None) -> AdapterResult:
    root = Path(root)
    clips_dir = MediaRoot(Path(videos) if videos else root / "videos")
    scenes_dir = MediaRoot(scenes) if scenes else None
    top = MediaRoot(root)
    index = scene_index(root) if scenes_dir is not None else {}
    result = AdapterResult(NAME, root, media_dir)
    for subset, path in caption_files(root, captions):

        def convert(native: NativeRow, subset=subset) -> dict:
            caption = caption_of(native)
            by_name = ClipSource(native.media(clips_dir, "video"))
            clip = by_name
            if scenes_dir is not None and not by_name.path.exists():
                clip = scene_clip(native, index, scenes_dir) or by_name
            return sample_row(
                sample_id=f"{NAME}/{subset}/{Path(native.data['video']).stem}", dataset=NAME, split="train",
                root=top, clip=clip,
                conversations=[{"role": "user", "content": f"<video>\n{PROMPT}"},
                               {"role": "assistant", "content": caption.strip()}],
                meta=json.dumps({"task": "caption", "subset": subset}, sort_keys=True))

        collect(result, records(path), convert, lenient)
    return result
