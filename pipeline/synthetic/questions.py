"""Region-level questions about marked objects, with exact answers from the ground truth.

Marks: each object of a scene gets a mark id (a seeded permutation of the object indices, so a mark
says nothing about sampling order); `<obj_k>` in a question is the region whose mark_id is k, and a
question's regions are the objects it names. Only objects visible (at least `min_visible_pixels`) in
the frames a question depends on are asked about, and comparisons are asked only when the answer is
clear by a margin, so that every answer is decidable from the video.

Question types (user turn = "<video>\\n" + text; categorical ones are multiple choice, answered with
"<letter>. <option text>"; numeric ones are answered "<value rounded to 2 decimals> <unit>"):
  closer        "In the last frame, which object is closer to the camera?" A/B between two marks.
                Distance = camera centre to object centre at the last frame.
  faster        "Which object moves faster on average over the video?" A/B between two marks.
                Mean speed = mean of |velocity| over the N frame times.
  direction     "In which direction does <obj_k> mostly move between the first and the last frame, as
                seen by the camera in the first frame?" A. left B. right C. toward the camera D. away
                from the camera: the larger of the x (right) and z (forward) components of the
                displacement p[N-1] - p[0] in the first camera's frame.
  speed         mean speed in m/s (numeric).
  displacement  |p[N-1] - p[0]| in m (numeric).
meta (JSON): type, answer (letter, or the exact float), answer_text, unit (numeric), options (multiple
choice), scene, objects {mark_id: object index}, values {mark_id: the compared quantity}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.ground_truth import SceneGroundTruth

QUESTION_TYPES = ("closer", "faster", "direction", "speed", "displacement")
DIRECTIONS = ("left", "right", "toward the camera", "away from the camera")
_LETTERS = "ABCDE"  # the benchmark lists up to 5 options; training questions use at most 4
_ANSWER_FORMAT = "Answer with the option's letter."

# Margins below which a comparison is not asked: the answer would hinge on a few centimetres.
CLOSER_MIN_GAP = 0.3  # metres, and
CLOSER_MIN_RATIO = 1.1
FASTER_MIN_GAP = 0.1  # m/s, and
FASTER_MIN_RATIO = 1.25
DIRECTION_MIN_SHIFT = 0.3  # metres in the camera's x-z plane
DIRECTION_MIN_DOMINANCE = 2.0  # the dominant component at least this many times the other


@dataclass(frozen=True)
class Question:
    type: str
    text: str
    answer_text: str
    objects: dict[int, int]  # mark_id -> object index, in mark order
    meta: dict


def min_visible_pixels(image_size: tuple[int, int]) -> int:
    """An object counts as visible in a frame from this many pixels on (about 0.05% of the image)."""
    return max(4, image_size[0] * image_size[1] // 2000)


def object_regions(ground_truth: SceneGroundTruth) -> list[tuple[list[int], list[list[float]]]]:
    """Per object: (frame indices where it is visible, normalized [x0, y0, x1, y1] boxes of its pixels)."""
    height, width = ground_truth.image_size
    threshold = min_visible_pixels(ground_truth.image_size)
    regions: list[tuple[list[int], list[list[float]]]] = [([], []) for _ in range(ground_truth.num_objects)]
    for frame in range(ground_truth.num_frames):
        ids = ground_truth.object_ids[frame]
        counts = np.bincount(ids.ravel() + 1, minlength=ground_truth.num_objects + 1)[1:]
        for index in np.flatnonzero(counts >= threshold):
            rows, cols = np.nonzero(ids == index)
            box = [cols.min() / width, rows.min() / height, (cols.max() + 1) / width, (rows.max() + 1) / height]
            regions[index][0].append(frame)
            regions[index][1].append([float(b) for b in box])
    return regions


def mark_token(mark_id: int) -> str:
    return f"<obj_{mark_id}>"


def multiple_choice(
    question_type: str, text: str, options: list[str], answer: int, objects: dict[int, int], values: dict
) -> Question:
    letters = _LETTERS[: len(options)]
    listed = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options))
    return Question(
        type=question_type,
        text=f"{text}\n{listed}\n{_ANSWER_FORMAT}",
        answer_text=f"{letters[answer]}. {options[answer]}",
        objects=objects,
        meta={"answer": letters[answer], "answer_text": options[answer], "options": dict(zip(letters, options)),
              "values": values},
    )


def _numeric(question_type: str, text: str, value: float, unit: str, objects: dict[int, int]) -> Question:
    return Question(
        type=question_type, text=text, answer_text=f"{value:.2f} {unit}", objects=objects,
        meta={"answer": float(value), "answer_text": f"{value:.2f}", "unit": unit},
    )


def clearly_apart(a: float, b: float, min_gap: float, min_ratio: float) -> bool:
    """Two non-negative quantities differ by at least min_gap AND the larger is min_ratio times the smaller."""
    low, high = sorted((a, b))
    return high - low >= min_gap and high >= min_ratio * low


def direction_index(right: float, forward: float) -> int | None:
    """The DIRECTIONS index of a displacement (its right and forward components in the first camera's
    frame, metres), or None when it is too short or too diagonal to name one direction."""
    major, minor = sorted((abs(right), abs(forward)), reverse=True)
    if np.hypot(right, forward) < DIRECTION_MIN_SHIFT or major < DIRECTION_MIN_DOMINANCE * minor:
        return None
    return int(right > 0) if abs(right) > abs(forward) else 2 + int(forward > 0)


def direction_text(mark_id: int) -> str:
    return (f"In which direction does {mark_token(mark_id)} mostly move between the first and the last frame, "
            "as seen by the camera in the first frame?")


def scene_questions(ground_truth: SceneGroundTruth, mark_ids: np.ndarray, visible: list[set[int]]) -> list[Question]:
    """Every clear question about the scene, in QUESTION_TYPES order.

    mark_ids[k]: the mark of object k; visible[k]: the frames where object k is visible.
    """
    first, last = 0, ground_truth.num_frames - 1
    positions = ground_truth.object_positions
    distances = np.linalg.norm(positions[last] - ground_truth.cam_to_world[last, :3, 3], axis=1)
    speeds = np.linalg.norm(ground_truth.object_velocities, axis=2).mean(axis=0)
    displacement = positions[last] - positions[first]
    shift_cam = displacement @ ground_truth.cam_to_world[first, :3, :3]
    by_mark = sorted(range(ground_truth.num_objects), key=lambda k: int(mark_ids[k]))
    seen_at_last = [k for k in by_mark if last in visible[k]]
    seen_throughout = [k for k in by_mark if first in visible[k] and last in visible[k]]

    def pairs(objects: list[int]) -> list[tuple[int, int]]:
        return [(a, b) for i, a in enumerate(objects) for b in objects[i + 1:]]

    def marks(*objects: int) -> dict[int, int]:
        return {int(mark_ids[k]): k for k in objects}

    questions: list[Question] = []
    for a, b in pairs(seen_at_last):
        if clearly_apart(distances[a], distances[b], CLOSER_MIN_GAP, CLOSER_MIN_RATIO):
            options = [mark_token(mark_ids[a]), mark_token(mark_ids[b])]
            values = {int(mark_ids[k]): float(distances[k]) for k in (a, b)}
            questions.append(multiple_choice("closer", "In the last frame, which object is closer to the camera?",
                                             options, int(distances[b] < distances[a]), marks(a, b), values))
    for a, b in pairs(seen_throughout):
        if clearly_apart(speeds[a], speeds[b], FASTER_MIN_GAP, FASTER_MIN_RATIO):
            options = [mark_token(mark_ids[a]), mark_token(mark_ids[b])]
            values = {int(mark_ids[k]): float(speeds[k]) for k in (a, b)}
            questions.append(multiple_choice("faster", "Which object moves faster on average over the video?",
                                             options, int(speeds[b] > speeds[a]), marks(a, b), values))
    for k in seen_throughout:
        right, forward = shift_cam[k, 0], shift_cam[k, 2]
        answer = direction_index(right, forward)
        if answer is not None:
            values = {int(mark_ids[k]): [float(right), float(forward)]}
            questions.append(multiple_choice("direction", direction_text(mark_ids[k]), list(DIRECTIONS), answer,
                                             marks(k), values))
    for k in seen_throughout:
        text = f"What is the average speed of {mark_token(mark_ids[k])} over the video, in metres per second?"
        questions.append(_numeric("speed", text, speeds[k], "m/s", marks(k)))
    for k in seen_throughout:
        text = (f"How far does {mark_token(mark_ids[k])} move in a straight line between the first and the last "
                "frame, in metres?")
        questions.append(_numeric("displacement", text, np.linalg.norm(displacement[k]), "m", marks(k)))
    return questions


def sample_row(
    sample_id: str, dataset: str, split: str, video: str, question: Question, ground_truth: SceneGroundTruth,
    regions: list[tuple[list[int], list[list[float]]]], meta: dict,
) -> dict:
    """One SAMPLES_SCHEMA row: the question's conversation and the regions of the objects it marks
    (regions: object_regions of the scene)."""
    return {
        "sample_id": sample_id,
        "dataset": dataset,
        "split": split,
        "video": video,
        "cache_key": None,
        "images": None,
        "conversations": [
            {"role": "user", "content": f"<video>\n{question.text}"},
            {"role": "assistant", "content": question.answer_text},
        ],
        "regions": [
            {"mark_id": mark_id, "label": str(ground_truth.object_labels[k]),
             "frame_indices": regions[k][0], "boxes": regions[k][1]}
            for mark_id, k in question.objects.items()
        ],
        "meta": json.dumps(meta, sort_keys=True),
    }


def scene_samples(
    ground_truth: SceneGroundTruth, scene: str, video: str, split: str, rng: np.random.Generator
) -> list[dict]:
    """The scene's questions as rows of manifests.schemas.SAMPLES_SCHEMA (cache_key left null)."""
    mark_ids = rng.permutation(ground_truth.num_objects)
    regions = object_regions(ground_truth)
    rows = []
    visible = [set(frames) for frames, _ in regions]
    for number, question in enumerate(scene_questions(ground_truth, mark_ids, visible)):
        meta = {"type": question.type, "scene": scene, "objects": {str(m): k for m, k in question.objects.items()},
                **question.meta}
        rows.append(sample_row(f"synthetic/{scene}/q{number:02d}", "synthetic", split, video, question,
                               ground_truth, regions, meta))
    return rows
