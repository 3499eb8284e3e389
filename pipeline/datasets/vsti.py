"""VSTI-Bench (video spatio-temporal intelligence; VLM-3R project). Two sources, never mixed up:

`vsti` (training, Hugging Face Journey9ni/VLM-3R-DATA): `vstibench_train/qa_*.json`, LLaVA-style rows
{"id" (uuid), "data_source", "scene_name", "question_type", "video", "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": letter or number}]}; the ids listed in
`vstibench_train/erratum_dropped_items.json` (the publisher's 2026 label fix) are left out. Videos are
not shipped (ScanNet): `<videos>/<video>`, e.g. `scannet/videos/scene0191_00.mp4` as VLM-3R's training
script expects, with `videos` the dataset root unless the source names another folder (`videos=DIR`).

`vsti_test` (the benchmark, Hugging Face Journey9ni/vstibench; split `test` only): rows of
{"video_path", "question", "question_type", "options", "mc_answer", "ground_truth", "dataset",
"scene_name", "frame_indices"} in the .json / .jsonl / .parquet files at the top of the root; `video_path`
is relative to the root (or to `videos=DIR`). Multiple-choice types are answered "<letter>. <text>";
numeric types are answered with the ground-truth value and scored by mean relative accuracy, so meta
keeps the float.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, ClipSource, MediaRoot, NativeRow, RowIds, answer_letter, checked_marks, choice_meta, collect,
    json_records, llava_turns, multiple_choice, option_texts, read_json, require_object, sample_row,
    table_records,
)

NAME = "vsti"
TEST_NAME = "vsti_test"
OPTIONS = {"videos": "folder the rows' video paths are relative to (default: the dataset root)"}
TRAIN_DIR = "vstibench_train"
TRAIN_PATTERN = "qa_*.json"
ERRATUM = "erratum_dropped_items.json"
NUMERIC_TYPES = ("camera_displacement", "camera_obj_abs_dist", "camera_obj_dist_change")
CHOICE_TYPES = ("camera_movement_direction", "camera_obj_rel_dist_v1", "camera_obj_rel_dist_v2",
                "camera_obj_rel_dist_v3", "obj_obj_relative_pos_lr", "obj_obj_relative_pos_nf",
                "obj_obj_relative_pos_ud")
CHOICE_LETTERS = ("A", "B", "C", "D")
TEST_SUFFIXES = (".json", ".jsonl", ".parquet")


def video_root(root: Path, videos: str | None) -> MediaRoot:
    base = Path(videos) if videos else root
    if not base.is_dir():
        raise FileNotFoundError(f"videos={base}: not a directory (the folder the VSTI-Bench video paths start in)")
    return MediaRoot(base)


def erratum_ids(folder: Path) -> set[str]:
    """Ids the publisher dropped (entries {"id", "file", "scene_name", "drop_reason"}, or bare ids)."""
    path = folder / ERRATUM
    if not path.exists():
        return set()
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of dropped items, got {type(entries).__name__}")
    ids = {e.get("id") if isinstance(e, dict) else e for e in entries}
    if not all(isinstance(i, str) and i for i in ids):
        raise ValueError(f"{path}: every dropped item needs a string id")
    return ids


def checked_answer(native: NativeRow, kind: str, answer: str) -> str:
    if kind in NUMERIC_TYPES:
        try:
            float(answer)
        except ValueError:
            raise native.error("conversations", f"numeric type {kind} needs a number, got {answer!r}") from None
    elif kind in CHOICE_TYPES:
        if answer.strip().rstrip(".") not in CHOICE_LETTERS:
            raise native.error("conversations", f"choice type {kind} needs an option letter, got {answer!r}")
    else:
        raise native.error("question_type", f"unknown type {kind!r}; known: {CHOICE_TYPES + NUMERIC_TYPES}")
    return answer.strip()


def read(root: Path, lenient: bool = False, media_dir: Path | None = None, videos: str | None = None) -> AdapterResult:
    """The training rows (split `train`)."""
    root = Path(root)
    folder = root / TRAIN_DIR
    files = sorted(folder.glob(TRAIN_PATTERN))
    if not files:
        raise FileNotFoundError(f"{folder}: no VSTI-Bench training file ({TRAIN_PATTERN})")
    base, dropped = video_root(root, videos), erratum_ids(folder)
    result = AdapterResult(NAME, root, media_dir)
    top = MediaRoot(root)

    def convert(native: NativeRow) -> dict | list[dict]:
        require_object(native)
        row_id = native.text("id")
        if row_id in dropped:
            result.skip(native, "id", f"dropped by the publisher's erratum ({ERRATUM})")
            return []
        clip = ClipSource(native.media(base, "video"))
        kind = native.text("question_type")
        # LLaVA-NeXT-Video's rows say <image> for the video's frames; here the placeholder is <video>.
        conversations = [{**t, "content": t["content"].replace("<image>", "<video>")}
                         for t in llava_turns(native, "conversations", "<image>")]
        answer = checked_answer(native, kind, conversations[-1]["content"])
        checked_marks(native, "conversations", conversations, None)
        meta = {"question_type": kind, "answer": answer, "scene_name": native.text("scene_name", optional=True),
                "data_source": native.text("data_source", optional=True)}
        return sample_row(sample_id=f"{NAME}/{row_id}", dataset=NAME, split="train", root=top, clip=clip,
                          conversations=conversations, meta=json.dumps(meta, sort_keys=True))

    for path in files:
        collect(result, json_records(path), convert, lenient)
    return result


def read_test(root: Path, lenient: bool = False, media_dir: Path | None = None,
              videos: str | None = None) -> AdapterResult:
    """The benchmark's rows (split `test`: an evaluation set, refused by training mixtures)."""
    root = Path(root)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in TEST_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no VSTI-Bench test file ({', '.join(TEST_SUFFIXES)}) at the top level")
    base = video_root(root, videos)
    ids = RowIds(TEST_NAME)
    result = AdapterResult(TEST_NAME, root, media_dir)
    top = MediaRoot(root)

    def convert(native: NativeRow) -> dict:
        require_object(native)
        clip = ClipSource(native.media(base, "video_path"))
        question = native.text("question")
        kind = native.text("question_type")
        if kind in NUMERIC_TYPES:
            value = native.get("ground_truth", (int, float, str))
            try:
                value = float(value)
            except ValueError:
                raise native.error("ground_truth", f"numeric type {kind} needs a number, got {value!r}") from None
            conversations = [{"role": "user", "content": f"<video>\n{question.strip()}"},
                             {"role": "assistant", "content": f"{value:g}"}]
            meta = json.dumps({"question_type": kind, "answer": value, "answer_text": f"{value:g}",
                               "metric": "mean_relative_accuracy"}, sort_keys=True)
        elif kind in CHOICE_TYPES:
            options = option_texts(native, "options", native.get("options", (list, dict, str)))
            answer = answer_letter(native, "mc_answer", options, by_text=False)
            conversations = multiple_choice("<video>", question, options, answer)
            meta = choice_meta(options, answer, question_type=kind, metric="accuracy")
        else:
            raise native.error("question_type", f"unknown type {kind!r}; known: {CHOICE_TYPES + NUMERIC_TYPES}")
        checked_marks(native, "question", conversations, None)
        # The test rows carry no id: named by their content.
        return sample_row(sample_id=ids(native.data), dataset=TEST_NAME, split="test", root=top, clip=clip,
                          conversations=conversations, meta=meta)

    for path in files:
        collect(result, table_records(path), convert, lenient)
    return result
