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
_LETTERS = "ABCD"
_ANSWER_FORMAT = "Answer with the option's letter."

# Margins below which a comparison is not asked: the answer would hinge on a few centimetres.
_CLOSER_MIN_GAP = 0.3  # metres, and
_CLOSER_MIN_RATIO = 1.1
_FASTER_MIN_GAP = 0.1  # m/s, and
_FASTER_MIN_RATIO = 1.25
_DIRECTION_MIN_SHIFT = 0.3  # metres in the camera's x-z plane
_DIRECTION_MIN_DOMINANCE = 2.0  # the dominant component at least this many times the other


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


def _mark(mark_id: int) -> str:
    return f"<obj_{mark_id}>"


def _choice(
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
        near, far = sorted((distances[a], distances[b]))
        if far - near >= _CLOSER_MIN_GAP and far >= _CLOSER_MIN_RATIO * near:
            options = [_mark(mark_ids[a]), _mark(mark_ids[b])]
            values = {int(mark_ids[k]): float(distances[k]) for k in (a, b)}
            questions.append(_choice("closer", "In the last frame, which object is closer to the camera?",
                                     options, int(distances[b] < distances[a]), marks(a, b), values))
    for a, b in pairs(seen_throughout):
        slow, fast = sorted((speeds[a], speeds[b]))
        if fast - slow >= _FASTER_MIN_GAP and fast >= _FASTER_MIN_RATIO * slow:
            options = [_mark(mark_ids[a]), _mark(mark_ids[b])]
            values = {int(mark_ids[k]): float(speeds[k]) for k in (a, b)}
            questions.append(_choice("faster", "Which object moves faster on average over the video?",
                                     options, int(speeds[b] > speeds[a]), marks(a, b), values))
    for k in seen_throughout:
        right, forward = shift_cam[k, 0], shift_cam[k, 2]
        major, minor = sorted((abs(right), abs(forward)), reverse=True)
        if np.hypot(right, forward) >= _DIRECTION_MIN_SHIFT and major >= _DIRECTION_MIN_DOMINANCE * minor:
            answer = int(right > 0) if abs(right) > abs(forward) else 2 + int(forward > 0)
            text = (f"In which direction does {_mark(mark_ids[k])} mostly move between the first and the last "
                    "frame, as seen by the camera in the first frame?")
            values = {int(mark_ids[k]): [float(right), float(forward)]}
            questions.append(_choice("direction", text, list(DIRECTIONS), answer, marks(k), values))
    for k in seen_throughout:
        text = f"What is the average speed of {_mark(mark_ids[k])} over the video, in metres per second?"
        questions.append(_numeric("speed", text, speeds[k], "m/s", marks(k)))
    for k in seen_throughout:
        text = (f"How far does {_mark(mark_ids[k])} move in a straight line between the first and the last "
                "frame, in metres?")
        questions.append(_numeric("displacement", text, np.linalg.norm(displacement[k]), "m", marks(k)))
    return questions


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
        rows.append({
            "sample_id": f"synthetic/{scene}/q{number:02d}",
            "dataset": "synthetic",
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
        })
    return rows
