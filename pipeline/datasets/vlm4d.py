"""VLM4D (4D motion understanding, evaluation): `QA/real_mc.json` and `QA/synthetic_mc.json`, lists of
{"id", "video", "question", "choices" (object letter -> text), "answer" (the option TEXT)}."""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, NativeRow, answer_letter, checked_marks, choice_meta, collect, json_records,
    multiple_choice, option_texts, require_object, sample_id, sample_row,
)

NAME = "vlm4d"
ANNOTATIONS = ("QA/real_mc.json", "QA/synthetic_mc.json")


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    files = [root / name for name in ANNOTATIONS if (root / name).is_file()]
    if not files:
        raise FileNotFoundError(f"{root}: none of the VLM4D annotation files {ANNOTATIONS}")
    result = AdapterResult(NAME, root)
    for path in files:
        subset = path.stem.removesuffix("_mc")

        def convert(native: NativeRow, subset=subset) -> dict:
            require_object(native)
            video = native.media(root, "video")
            options = option_texts(native, "choices", native.get("choices", (dict, list)))
            answer = answer_letter(native, "answer", options, by_text=True)
            conversations = multiple_choice("<video>", native.text("question"), options, answer)
            checked_marks(native, "question", conversations, None)
            return sample_row(sample_id=sample_id(f"{NAME}/{subset}", native, "id"), dataset=NAME, split="test",
                              video=video, conversations=conversations,
                              meta=choice_meta(options, answer, subset=subset))

        collect(result, json_records(path), convert, lenient)
    return result
