"""R4D-Bench (region-prompted 4D VQA, evaluation): `test.json`, a list of {"id", "video", "som_image",
"question" with `<obj_k>` region tokens, "options" (4-5 texts), "answer" (the option TEXT), "task",
"benchmark" (stibench | vlm4d)}.

The regions come drawn: `som_image` is the Set-of-Marks picture (a frame with numbered marks), copied
content-addressed under the cache root like every source image (common.store_image), carried in
`images` and shown before the video; there are no boxes to validate <obj_k> against, so rows are
marked `premarked` in meta. The paper's prompt is prefixed with the video length in seconds, which
the evaluator takes from the clip's timestamps (clips table): the adapter does not decode videos.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, ClipSource, MediaRoot, NativeRow, answer_letter, checked_marks, choice_meta, collect, json_records,
    image_extension, multiple_choice, option_texts, require_object, sample_id, sample_row,
)

NAME = "r4d"
ANNOTATION = "test.json"
OPTIONS: dict[str, str] = {}


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    result = AdapterResult(NAME, root, media_dir)
    top = MediaRoot(root)

    def convert(native: NativeRow) -> dict:
        require_object(native)
        clip = ClipSource(native.media(top, "video"))
        som_path = native.media(top, "som_image")
        try:
            data = som_path.read_bytes()
        except OSError as e:
            raise native.error("som_image", f"cannot read {som_path}: {e.strerror or e}") from None
        options = option_texts(native, "options", native.get("options", list))
        answer = answer_letter(native, "answer", options, by_text=True)
        conversations = multiple_choice("<image>\n<video>", native.text("question"), options, answer)
        checked_marks(native, "question", conversations, None, premarked=True)
        meta = choice_meta(options, answer, task=native.text("task"), benchmark=native.text("benchmark"),
                           premarked=True, prompt_prefix="video_length_seconds",
                           som_image=top.label(som_path))
        return sample_row(sample_id=sample_id(NAME, native, "id"), dataset=NAME, split="test", root=top, clip=clip,
                          images=[result.store_image(*image_extension(native, "som_image", data))],
                          conversations=conversations, meta=meta)

    return collect(result, json_records(root / ANNOTATION), convert, lenient)
