"""RoboFAC (robot failure analysis, video QA): `training_qa.json`, a list of LLaVA-style rows
{"id"?, "video": relative path, "conversations": [{"from": "human" | "gpt", "value": ...}]}; the
human turn carries a `<video>` placeholder."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, NativeRow, checked_marks, collect, json_records, require_object, sample_id, sample_row,
)

NAME = "robofac"
ANNOTATION = "training_qa.json"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def llava_turns(native: NativeRow, name: str, media_token: str) -> list[dict]:
    """LLaVA conversations -> [{"role", "content"}], alternating user / assistant from a user turn,
    with the media placeholder in the first user turn (added there if the release left it out)."""
    turns = native.get(name, list)
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLES:
            raise native.error(name, f"turn {i} is not {{'from': human|gpt, 'value': text}}: {turn!r:.80}")
        role = ROLES[turn["from"]]
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise native.error(name, f"turn {i} is from {turn['from']!r}: turns must alternate human, gpt, ...")
        out.append({"role": role, "content": turn["value"]})
    if len(out) < 2 or len(out) % 2:
        raise native.error(name, f"expected human/gpt pairs, got {len(out)} turn(s)")
    if not any(media_token in t["content"] for t in out if t["role"] == "user"):
        out[0] = {"role": "user", "content": f"{media_token}\n{out[0]['content']}"}
    return out


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)

    def convert(native: NativeRow) -> dict:
        require_object(native)
        video = native.media(root, "video")
        conversations = llava_turns(native, "conversations", "<video>")
        checked_marks(native, "conversations", conversations, None)
        return sample_row(sample_id=sample_id(NAME, native, "id"), dataset=NAME, split="train", video=video,
                          conversations=conversations, meta=json.dumps({"task": "failure_analysis"}))

    return collect(AdapterResult(NAME, root), json_records(root / ANNOTATION), convert, lenient)
