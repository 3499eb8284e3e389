"""VSTI-Bench (video spatio-temporal intelligence): rows of {"video_path", "question", "question_type",
"options", "mc_answer", "ground_truth"} in a .json / .jsonl / .parquet file at the dataset root.

Multiple-choice types (camera_movement_direction, camera_obj_rel_dist_v1..v3, obj_obj_relative_pos_lr /
_nf / _ud) are answered "<letter>. <text>"; numeric types (camera_displacement, camera_obj_abs_dist) are
answered with the ground-truth value and scored by mean relative accuracy, so meta keeps the float.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, NativeRow, answer_letter, checked_marks, choice_meta, collect, multiple_choice,
    option_texts, sample_id, sample_row, table_records,
)

NAME = "vsti"
NUMERIC_TYPES = ("camera_displacement", "camera_obj_abs_dist")
CHOICE_TYPES = ("camera_movement_direction", "camera_obj_rel_dist_v1", "camera_obj_rel_dist_v2",
                "camera_obj_rel_dist_v3", "obj_obj_relative_pos_lr", "obj_obj_relative_pos_nf",
                "obj_obj_relative_pos_ud")
SUFFIXES = (".json", ".jsonl", ".parquet")


def annotation_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no VSTI-Bench annotation file ({', '.join(SUFFIXES)}) at the top level")
    return files


def convert_row(native: NativeRow, root: Path, dataset: str, split: str) -> dict:
    video = native.media(root, "video_path")
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
    return sample_row(sample_id=sample_id(dataset, native, "id"), dataset=dataset, split=split, video=video,
                      conversations=conversations, meta=meta)


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    result = AdapterResult(NAME, root)
    for path in annotation_files(root):
        collect(result, table_records(path), lambda n: convert_row(n, root, NAME, "train"), lenient)
    return result
