"""RoboFAC (robot failure analysis, video QA; Hugging Face MINT-SJTU/RoboFAC-dataset): the root holds
`training_qa.json`, `simulation_data/`, `realworld_data/` and `test_qa_sim/`. `training_qa.json` is a
list of LLaVA-style rows, one QA pair each, {"video", "conversations": [{"from": "human", "value":
"<video>\\n..."}, {"from": "assistant" | "gpt", "value": ...}]}, without an id.

`video` is relative to `simulation_data/` (not to the root), `{task}/{scenario}/{uuid}.mp4`, and the
first part of some paths still carries a task's early name: the maintainers confirmed the rewrite
below in the repository's issue #2 (MINT-SJTU/RoboFAC, "Missing videos in training_qa.json").
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, ClipSource, MediaRoot, NativeRow, RowIds, checked_marks, collect, json_records, llava_turns,
    require_object, sample_row,
)

NAME = "robofac"
ANNOTATION = "training_qa.json"
VIDEOS = "simulation_data"
OPTIONS: dict[str, str] = {}
# Early task names in the first path part -> the folder names under simulation_data/ (issue #2).
OLD_NAMES = (
    ("dataset_success_cleaned", "success_data"),
    ("Rotation2-v1", "SpinPullStack-v1"), ("Rotation2-gen1", "SpinPullStack-gen1"),
    ("Rotation2-gen2", "SpinPullStack-gen2"),
    ("Rotation-v1", "SpinStack-v1"), ("Rotation-gen1", "SpinStack-gen1"), ("Rotation-gen2", "SpinStack-gen2"),
)


def current_path(video: str) -> str:
    """`video` with its first part's early task name replaced by the published folder name."""
    first, sep, rest = video.partition("/")
    for old, new in OLD_NAMES:
        first = first.replace(old, new)
    return first + sep + rest


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    ids = RowIds(NAME)
    top, videos = MediaRoot(root), MediaRoot(root / VIDEOS)

    def convert(native: NativeRow) -> dict:
        require_object(native)
        video = native.text("video")
        clip = ClipSource(native.media(videos, "video", current_path(video)))
        conversations = llava_turns(native, "conversations", "<video>")
        checked_marks(native, "conversations", conversations, None)
        # No id in the release: a row is named by what it asks about which video.
        return sample_row(sample_id=ids(video, conversations[0]["content"]), dataset=NAME, split="train",
                          root=top, clip=clip, conversations=conversations,
                          meta=json.dumps({"task": "failure_analysis"}))

    return collect(AdapterResult(NAME, root, media_dir), json_records(root / ANNOTATION), convert, lenient)
