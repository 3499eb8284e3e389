"""VLM4D (4D motion understanding, evaluation; GitHub ShijieZhou-UCLA/VLM4D, commit 23f2680, videos on
Hugging Face shijiezhou/VLM4D). Two layouts of the same rows {"id", "video", "question_type",
"question", "choices" {A..D}, "answer" (the option TEXT)}:
  as published: `data/real_mc.json` (1,371 rows) and `data/synthetic_mc.json` (445), `video` a full
      Hugging Face URL `.../resolve/main/<path>` whose file is `<root>/<path>` (`videos_real/<source>/...`,
      `videos_synthetic/...`: the video repository downloaded into the root);
  as 4D-RGPT's evaluation reads it: `QA/real_mc_processed.json` / `QA/synthetic_mc_processed.json`, `video`
      relative to the root.
232 real rows have integer choices and answers (compared as text); ids like `validation_N` repeat
across the two files, so a row is named by its file's subset and its id. One published row
(real_mc.json row 632, `validation_633`) lists its answer under two letters (C and D, same text): it
is refused as ambiguous (skipped with --lenient).
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, ClipSource, MediaRoot, NativeRow, answer_letter, checked_marks, choice_meta, collect, json_records,
    multiple_choice, option_texts, require_object, sample_id, sample_row,
)

log = logging.getLogger(__name__)

NAME = "vlm4d"
LAYOUTS = (("data/real_mc.json", "data/synthetic_mc.json"),
           ("QA/real_mc_processed.json", "QA/synthetic_mc_processed.json"))
OPTIONS: dict[str, str] = {}
URL_MARKER = "/resolve/"  # https://huggingface.co/datasets/<owner>/<name>/resolve/<revision>/<path>


def local_path(native: NativeRow) -> str:
    """The row's video path under the root: a Hugging Face URL's file path, or the path itself."""
    video = native.text("video")
    if "://" not in video:
        return video
    head, marker, tail = video.partition(URL_MARKER)
    revision, sep, path = tail.partition("/")
    if not marker or not sep or not path:
        raise native.error("video", f"URL {video!r} is not a Hugging Face file URL (.../resolve/<revision>/<path>)")
    return path


def annotation_files(root: Path) -> list[Path]:
    for layout in LAYOUTS:
        files = [root / name for name in layout if (root / name).is_file()]
        if files:
            return files
    raise FileNotFoundError(f"{root}: none of the VLM4D annotation files {[n for layout in LAYOUTS for n in layout]}")


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    result = AdapterResult(NAME, root, media_dir)
    top = MediaRoot(root)
    files = annotation_files(root)
    log.info("vlm4d: reading %s", ", ".join(str(p.relative_to(root)) for p in files))
    for path in files:
        subset = path.stem.removesuffix("_processed").removesuffix("_mc")

        def convert(native: NativeRow, subset=subset) -> dict:
            require_object(native)
            clip = ClipSource(native.media(top, "video", local_path(native)))
            options = option_texts(native, "choices", native.get("choices", (dict, list)))
            answer = answer_letter(native, "answer", options, by_text=True)
            conversations = multiple_choice("<video>", native.text("question"), options, answer)
            checked_marks(native, "question", conversations, None)
            return sample_row(sample_id=sample_id(f"{NAME}/{subset}", native, "id"), dataset=NAME, split="test",
                              root=top, clip=clip, conversations=conversations,
                              meta=choice_meta(options, answer, subset=subset))

        collect(result, json_records(path), convert, lenient)
    return result
