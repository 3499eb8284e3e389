"""STI-Bench (spatio-temporal intelligence, evaluation): `qa.parquet` of {"Video", "ID", "Question",
"Candidates" (JSON object letter -> text), "Answer" (letter), "Task", "time_start", "time_end",
"Scene"}; the videos live under `videos/`.

A question is about the span [time_start, time_end] of its video: the span is kept in meta; the clip
itself is sampled by the job's sampling config (one clip per video), see the report of issue 7.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, NativeRow, answer_letter, checked_marks, choice_meta, collect, multiple_choice,
    option_texts, parquet_records, sample_id, sample_row,
)

NAME = "stibench"
ANNOTATION = "qa.parquet"
VIDEOS = "videos"


def span(native: NativeRow) -> tuple[float | None, float | None]:
    start = native.get("time_start", (int, float), optional=True)
    end = native.get("time_end", (int, float), optional=True)
    if start is not None and end is not None and not end > start >= 0:
        raise native.error("time_end", f"span [{start}, {end}] is empty or negative")
    return start, end


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    path = root / ANNOTATION
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")

    def convert(native: NativeRow) -> dict:
        video = native.media(root, "Video", relative_to=VIDEOS)
        options = option_texts(native, "Candidates", native.get("Candidates", (str, dict)))
        answer = answer_letter(native, "Answer", options, by_text=False)
        conversations = multiple_choice("<video>", native.text("Question"), options, answer)
        checked_marks(native, "Question", conversations, None)
        start, end = span(native)
        meta = choice_meta(options, answer, task=native.text("Task"), scene=native.text("Scene", optional=True),
                           time_start=start, time_end=end)
        return sample_row(sample_id=sample_id(NAME, native, "ID"), dataset=NAME, split="test", video=video,
                          conversations=conversations, meta=meta)

    return collect(AdapterResult(NAME, root), parquet_records(path), convert, lenient)
