"""STI-Bench (spatio-temporal intelligence, evaluation; GitHub MINT-SJTU/STI-Bench, commit 43ddebe):
`qa.parquet` of {"Video", "ID", "Question", "Candidates" (letter -> text, as a struct or a JSON string;
options may be null), "Answer" (letter), "Task", "time_start", "time_end", "Source", "Scene"?} and the
videos from `video.zip`, unzipped to `videos/` (one official script says `video/`: both are read).

A question concerns [time_start, time_end] of its video: its clip is sampled inside that span (its own
cache_key: one video, several spans), and its prompt is the official one, "From {time_start} s to
{time_end} s. {Question}", the options as "(A) text" lines, "Please output only the option letter!".
`ID` repeats across videos: a row is named by (Video, ID, time_start, time_end), as the official
scripts key it.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, ClipSource, MediaRoot, NativeRow, answer_letter, checked_marks, choice_meta, collect, option_texts,
    parquet_records, sample_row,
)

NAME = "stibench"
ANNOTATION = "qa.parquet"
VIDEO_DIRS = ("videos", "video")
OPTIONS: dict[str, str] = {}
ANSWER_FORMAT = "Please output only the option letter!"


def span(native: NativeRow) -> tuple[float, float]:
    start = native.get("time_start", (int, float))
    end = native.get("time_end", (int, float))
    if not end > start >= 0:
        raise native.error("time_end", f"span [{start}, {end}] is empty or negative")
    return start, end


def candidates(native: NativeRow) -> dict[str, str]:
    """The options: a struct (every row has every letter; absent options are null) or a JSON string."""
    value = native.get("Candidates", (str, dict))
    if isinstance(value, dict):
        value = {letter: text for letter, text in value.items() if text is not None}
    return option_texts(native, "Candidates", value)


def official_prompt(question: str, options: dict[str, str], start, end) -> str:
    listed = "\n".join(f"({letter}) {text}" for letter, text in options.items())
    return f"<video>\nFrom {start} s to {end} s. {question}\n{listed}\n{ANSWER_FORMAT}"


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    path = root / ANNOTATION
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    videos = MediaRoot(next((root / d for d in VIDEO_DIRS if (root / d).is_dir()), root / VIDEO_DIRS[0]))
    top = MediaRoot(root)

    def convert(native: NativeRow) -> dict:
        video = native.text("Video")
        start, end = span(native)
        clip = ClipSource(native.media(videos, "Video"), (float(start), float(end)))
        options = candidates(native)
        answer = answer_letter(native, "Answer", options, by_text=False)
        conversations = [{"role": "user", "content": official_prompt(native.text("Question"), options, start, end)},
                         {"role": "assistant", "content": answer}]
        checked_marks(native, "Question", conversations, None)
        meta = choice_meta(options, answer, task=native.text("Task"), scene=native.text("Scene", optional=True),
                           source=native.text("Source", optional=True), time_start=start, time_end=end)
        row_id = native.get("ID", (int, str))
        return sample_row(sample_id=f"{NAME}/{video}|{row_id}|{start}|{end}", dataset=NAME, split="test", root=top,
                          clip=clip, conversations=conversations, meta=meta)

    return collect(AdapterResult(NAME, root, media_dir), parquet_records(path), convert, lenient)
