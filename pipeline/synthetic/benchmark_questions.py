"""R4D-Bench-style multiple-choice questions about one synthetic scene, by R4D category, exact answers.

The benchmark's questions (benchmark.py writes them). Every question is multiple choice in the layout
of questions.py (options "A. text", "Answer with the option's letter.", answered "<letter>. <text>"),
asks about marked objects (`<obj_k>` = the region with mark_id k; marks, regions and visibility as in
questions.py), and is asked only when its answer is clear by a margin. Categories use R4D's column
codes; objects never rotate in the generator, so R is asked about the camera, which does.

  VG  locate      where is the centre of <k> in the first frame, in that camera's coordinates (x right,
                  y down, z forward, m)? 4 options, shuffled, 1 decimal shown: the truth and, while at least
                  LOCATE_MIN_GAP from every option kept, the centres of the other objects seen in that
                  frame, then random places in view at the object's centre height (never derived from
                  the truth, which they would point at)
  SR  closest     which marked object (2-4, all seen in the first frame) is closest to the camera
                  there: the camera-to-centre distances of the nearest two clearly apart (CLOSER margins)
      side        is <a> to the left or to the right of <b> in the first frame: the horizontal image
                  tangents x/z of the two centres differ by >= SIDE_MIN_GAP
  DM  height      how tall is <k> (m): numeric ladder (below)
      tallest     which marked object is the tallest: the top two heights clearly apart (HEIGHT margins)
  R   turn        which way does the camera turn (yaw, about the vertical) between the first and the
                  last frame: to its left / right, asked when |yaw change| >= TURN_MIN_DEGREES
      turn_angle  by how many degrees: numeric ladder
  C   count       how many of the marked objects (seen in the first and the last frame) move in the room:
                  options 0..m; asked when every moving one travels >= MOVE_MIN_PATH
  T   direction   left / right / toward / away from the first camera, or "it does not move" (5 options;
                  questions.direction_index and its margins), for moving objects
  FP  direction   the same question about a static object: the premise (it moves) is false, the answer
                  is "it does not move"; T's questions list that option too, so it is no give-away
      speed_change  "Does <k> speed up, slow down or keep a constant speed?" about a static object:
                  "it does not move" (SA's speed_change lists the same four options)
  SA  speed       mean speed over the frame times (m/s): numeric ladder
      speed_change  speeds up / slows down (speed monotonic over the frames, first and last frame speeds
                  clearly apart by the FASTER margins) / constant (zero acceleration, exactly)
      fastest     which marked object is fastest on average: top two clearly apart (FASTER margins)
  DP  displacement  |p[N-1] - p[0]| (m), and path_length: the polyline through the N frame positions
                  (m), numeric ladders, for objects travelling >= MOVE_MIN_PATH
Numeric ladder: 4 options value x LADDER_RATIO^(j - r), j = 0..3, listed ascending, the truth's rank r
drawn uniformly from the scene's seeded rng (so neither its position nor the ladder gives it away);
LADDER_RATIO 1.6 puts each decision boundary ~26 % from the truth. Texts have 2 significant digits;
meta "value" keeps the exact number.
At most MAX_PER_TYPE questions of one type and category per scene (drawn with the rng), so that scenes
with many objects do not flood a category.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.ground_truth import SceneGroundTruth
from pipeline.synthetic.questions import (
    CLOSER_MIN_GAP, CLOSER_MIN_RATIO, DIRECTION_MIN_SHIFT, DIRECTIONS, FASTER_MIN_GAP, FASTER_MIN_RATIO, Question,
    clearly_apart, direction_index, direction_text, mark_token, multiple_choice, object_regions, sample_row,
)

STATIC_CATEGORIES = ("VG", "DM", "SR")  # R4D column codes, in its report's order
DYNAMIC_CATEGORIES = ("R", "C", "T", "FP", "SA", "DP")
COVERED_CATEGORIES = (*STATIC_CATEGORIES, *DYNAMIC_CATEGORIES)
NOT_MOVING = "it does not move"
MOTION_DIRECTIONS = (*DIRECTIONS, NOT_MOVING)
SPEED_CHANGES = ("it speeds up", "it slows down", "it keeps a constant speed", NOT_MOVING)
TURNS = ("to its left", "to its right")

LADDER_RATIO = 1.6
LADDER_SIZE = 4
MAX_PER_TYPE = 2
MAX_MARKED = 4  # objects one question lists: a count's options 0..4 fill the 5 letters A-E
SIDE_MIN_GAP = 0.15  # horizontal image tangent (x / z); ~13 % of the image width at a 60 degree field of view
HEIGHT_MIN_GAP = 0.1  # metres, and
HEIGHT_MIN_RATIO = 1.2
TURN_MIN_DEGREES = 5.0
LOCATE_MIN_GAP = 0.6  # metres between any two options of a "locate" question
LOCATE_RANGE = 3.0  # metres from the room centre: where objects are (placed within 2 m, then travel)
LOCATE_DRAWS = 12
MOVE_MIN_PATH = DIRECTION_MIN_SHIFT  # metres: less is hard to call moving at all


@dataclass(frozen=True)
class BenchmarkQuestion:
    category: str  # R4D column code
    question: Question
    value: float | None  # the exact quantity a numeric question is about
    unit: str | None

    @property
    def group(self) -> str:
        return "static" if self.category in STATIC_CATEGORIES else "dynamic"


def significant(value: float) -> str:
    """value with 2 significant digits, never in exponent notation (0.073, 1.2, 12, 123)."""
    digits = max(0, 1 - int(np.floor(np.log10(abs(value)))))
    return f"{round(value, digits):.{digits}f}"


def ladder(value: float, rng: np.random.Generator) -> tuple[list[float], int]:
    """(option values ascending, index of the truth): see the module docstring."""
    rank = int(rng.integers(LADDER_SIZE))
    return [value * LADDER_RATIO ** (j - rank) for j in range(LADDER_SIZE)], rank


def camera_turn_degrees(cam_to_world: np.ndarray) -> float:
    """Signed yaw of the viewing direction from the first to the last frame, degrees, > 0 = to the
    camera's left (counterclockwise seen from above: z is up)."""
    (x0, y0), (x1, y1) = cam_to_world[0, :2, 2], cam_to_world[-1, :2, 2]
    return float(np.degrees(np.arctan2(x0 * y1 - y0 * x1, x0 * x1 + y0 * y1)))


def path_lengths(positions: np.ndarray) -> np.ndarray:
    """[N, K, 3] centres -> [K] length of the polyline through the frame positions."""
    return np.linalg.norm(np.diff(positions, axis=0), axis=2).sum(axis=0)


def _listed(mark_ids: list[int]) -> str:
    tokens = [mark_token(m) for m in mark_ids]
    return ", ".join(tokens[:-1]) + f" and {tokens[-1]}"


class _Scene:
    """The quantities the questions compare, computed once per scene."""

    def __init__(self, gt: SceneGroundTruth, mark_ids: np.ndarray, visible: list[set[int]],
                 rng: np.random.Generator):
        self.gt, self.mark_ids, self.rng = gt, mark_ids, rng
        first, last = 0, gt.num_frames - 1
        positions = gt.object_positions
        by_mark = sorted(range(gt.num_objects), key=lambda k: int(mark_ids[k]))
        self.seen_first = [k for k in by_mark if first in visible[k]]
        self.seen_throughout = [k for k in by_mark if first in visible[k] and last in visible[k]]
        self.distances_first = np.linalg.norm(positions[first] - gt.cam_to_world[first, :3, 3], axis=1)
        world_to_first = np.linalg.inv(gt.cam_to_world[first])
        self.centres_first = positions[first] @ world_to_first[:3, :3].T + world_to_first[:3, 3]
        self.heights = gt.object_sizes[:, 2]
        self.speeds = np.linalg.norm(gt.object_velocities, axis=2)  # [N, K]
        self.mean_speeds = self.speeds.mean(axis=0)
        self.displacements = np.linalg.norm(positions[last] - positions[first], axis=1)
        self.shift_cam = (positions[last] - positions[first]) @ gt.cam_to_world[first, :3, :3]
        self.paths = path_lengths(positions)

    def marks(self, *objects: int) -> dict[int, int]:
        return {int(self.mark_ids[k]): int(k) for k in objects}

    def some(self, items: list) -> list:
        """At most MAX_PER_TYPE of items, drawn with the scene's rng, in their original order."""
        if len(items) <= MAX_PER_TYPE:
            return items
        return [items[i] for i in sorted(self.rng.choice(len(items), MAX_PER_TYPE, replace=False))]

    def choice(self, category: str, kind: str, text: str, options: list[str], answer: int, objects: list[int],
               values: dict, value: float | None = None, unit: str | None = None) -> BenchmarkQuestion:
        question = multiple_choice(kind, text, options, answer, self.marks(*objects), values)
        return BenchmarkQuestion(category, question, value, unit)

    def numeric(self, category: str, kind: str, text: str, value: float, unit: str,
                objects: list[int]) -> BenchmarkQuestion:
        values, answer = ladder(value, self.rng)
        options = [f"{significant(v)} {unit}" for v in values]
        return self.choice(category, kind, text, options, answer, objects, {}, value, unit)

    def best_of(self, objects: list[int], quantity: np.ndarray, largest: bool, min_gap: float,
                min_ratio: float) -> int | None:
        """Index into objects of the extreme of quantity, when it is clearly apart from the runner-up."""
        if len(objects) < 2:
            return None
        order = np.argsort(quantity[objects])
        best, runner_up = (order[-1], order[-2]) if largest else (order[0], order[1])
        apart = clearly_apart(quantity[objects[best]], quantity[objects[runner_up]], min_gap, min_ratio)
        return int(best) if apart else None


def _grounding(s: _Scene) -> list[BenchmarkQuestion]:
    questions = []
    world_to_first = np.linalg.inv(s.gt.cam_to_world[0])
    half_tan_x = 0.5 * s.gt.image_size[1] / s.gt.K[0, 0]
    for k in s.some(s.seen_first):
        truth = s.centres_first[k]
        # Distractors owe nothing to the truth (an offset, mirror or scaled copy of it would point at it):
        # real object centres first, then random places in view at the object's centre height.
        candidates = [s.centres_first[j] for j in s.seen_first if j != k]
        for _ in range(LOCATE_DRAWS):
            x, y = s.rng.uniform(-LOCATE_RANGE, LOCATE_RANGE, 2)
            point = world_to_first[:3, :3] @ [x, y, s.gt.object_positions[0, k, 2]] + world_to_first[:3, 3]
            if point[2] > 1.0 and abs(point[0]) < half_tan_x * point[2]:
                candidates.append(point)
        kept = [truth]
        for candidate in candidates:
            if len(kept) < LADDER_SIZE and all(np.linalg.norm(candidate - o) >= LOCATE_MIN_GAP for o in kept):
                kept.append(candidate)
        order = s.rng.permutation(len(kept))
        options = ["({:.1f}, {:.1f}, {:.1f}) m".format(*kept[i]) for i in order]
        text = (f"In the first frame, where is the centre of {mark_token(s.mark_ids[k])}, in the camera's coordinates "
                "(x to the right, y down, z forward, in metres)?")
        values = {int(s.mark_ids[k]): [float(c) for c in truth]}
        questions.append(s.choice("VG", "locate", text, options, int(np.argmin(order)), [k], values))
    return questions


def _spatial_relation(s: _Scene) -> list[BenchmarkQuestion]:
    questions = []
    candidates = s.seen_first[:MAX_MARKED]
    best = s.best_of(candidates, s.distances_first, False, CLOSER_MIN_GAP, CLOSER_MIN_RATIO)
    if best is not None:
        values = {int(s.mark_ids[k]): float(s.distances_first[k]) for k in candidates}
        questions.append(s.choice(
            "SR", "closest", "In the first frame, which of the marked objects is closest to the camera?",
            [mark_token(s.mark_ids[k]) for k in candidates], best, candidates, values))
    tangent = s.centres_first[:, 0] / s.centres_first[:, 2]
    pairs = [(a, b) for i, a in enumerate(s.seen_first) for b in s.seen_first[i + 1:]
             if abs(tangent[a] - tangent[b]) >= SIDE_MIN_GAP]
    for a, b in s.some(pairs):
        text = (f"In the first frame, as seen by the camera, is {mark_token(s.mark_ids[a])} to the left or to the "
                f"right of {mark_token(s.mark_ids[b])}?")
        values = {int(s.mark_ids[k]): float(tangent[k]) for k in (a, b)}
        questions.append(s.choice("SR", "side", text, ["to the left", "to the right"], int(tangent[a] > tangent[b]),
                                  [a, b], values))
    return questions


def _dimensions(s: _Scene) -> list[BenchmarkQuestion]:
    questions = [
        s.numeric("DM", "height", f"How tall is {mark_token(s.mark_ids[k])}, in metres?", float(s.heights[k]), "m",
                  [k])
        for k in s.some(s.seen_first)
    ]
    candidates = s.seen_first[:MAX_MARKED]
    best = s.best_of(candidates, s.heights, True, HEIGHT_MIN_GAP, HEIGHT_MIN_RATIO)
    if best is not None:
        values = {int(s.mark_ids[k]): float(s.heights[k]) for k in candidates}
        questions.append(s.choice("DM", "tallest", "Which of the marked objects is the tallest?",
                                  [mark_token(s.mark_ids[k]) for k in candidates], best, candidates, values))
    return questions


def _rotation(s: _Scene) -> list[BenchmarkQuestion]:
    turn = camera_turn_degrees(s.gt.cam_to_world)
    if abs(turn) < TURN_MIN_DEGREES:
        return []
    return [
        s.choice("R", "turn", "Between the first and the last frame, which way does the camera turn?",
                 list(TURNS), int(turn < 0), [], {"degrees": turn}, turn, "degrees"),
        s.numeric("R", "turn_angle", "By how many degrees does the camera turn left or right between the first "
                  "and the last frame?", abs(turn), "degrees", []),
    ]


def _counting(s: _Scene) -> list[BenchmarkQuestion]:
    marked = s.seen_throughout[:MAX_MARKED]
    moving = [k for k in marked if s.gt.object_moving[k]]
    if len(marked) < 2 or any(s.paths[k] < MOVE_MIN_PATH for k in moving):
        return []
    text = (f"How many of {_listed([int(s.mark_ids[k]) for k in marked])} move in the room (not only in the "
            "image) during the video?")
    values = {int(s.mark_ids[k]): bool(s.gt.object_moving[k]) for k in marked}
    options = [str(n) for n in range(len(marked) + 1)]
    return [s.choice("C", "count", text, options, len(moving), marked, values, float(len(moving)), "objects")]


def _motion(s: _Scene) -> list[BenchmarkQuestion]:
    """T, FP, SA and DP: questions about one object's motion."""
    static = [k for k in s.seen_throughout if not s.gt.object_moving[k]]
    moving = [k for k in s.seen_throughout if s.gt.object_moving[k] and s.paths[k] >= MOVE_MIN_PATH]
    not_moving = MOTION_DIRECTIONS.index(NOT_MOVING)
    speed_text = "Does {} speed up, slow down or keep a constant speed during the video?"
    questions = []
    directions = [(k, direction_index(s.shift_cam[k, 0], s.shift_cam[k, 2])) for k in moving]
    for k, answer in s.some([(k, a) for k, a in directions if a is not None]):
        values = {int(s.mark_ids[k]): [float(s.shift_cam[k, 0]), float(s.shift_cam[k, 2])]}
        questions.append(s.choice("T", "direction", direction_text(s.mark_ids[k]), list(MOTION_DIRECTIONS), answer,
                                  [k], values))
    for k in s.some(static):
        questions.append(s.choice("FP", "direction", direction_text(s.mark_ids[k]), list(MOTION_DIRECTIONS),
                                  not_moving, [k], {int(s.mark_ids[k]): [0.0, 0.0]}))
    for k in s.some(static):
        questions.append(s.choice("FP", "speed_change", speed_text.format(mark_token(s.mark_ids[k])),
                                  list(SPEED_CHANGES), SPEED_CHANGES.index(NOT_MOVING), [k], {}))
    for k in s.some(moving):
        questions.append(s.numeric("SA", "speed", f"What is the average speed of {mark_token(s.mark_ids[k])} over "
                                   "the video?", float(s.mean_speeds[k]), "m/s", [k]))
    changes = []
    for k in moving:
        speeds, steps = s.speeds[:, k], np.diff(s.speeds[:, k])
        if np.all(s.gt.object_velocities[:, k] == s.gt.object_velocities[0, k]):
            changes.append((k, 2))
        elif (np.all(steps > 0) or np.all(steps < 0)) and clearly_apart(
                speeds[0], speeds[-1], FASTER_MIN_GAP, FASTER_MIN_RATIO):
            changes.append((k, int(speeds[-1] < speeds[0])))
    for k, answer in s.some(changes):
        values = {int(s.mark_ids[k]): [float(s.speeds[0, k]), float(s.speeds[-1, k])]}
        questions.append(s.choice("SA", "speed_change", speed_text.format(mark_token(s.mark_ids[k])),
                                  list(SPEED_CHANGES), answer, [k], values))
    candidates = s.seen_throughout[:MAX_MARKED]
    best = s.best_of(candidates, s.mean_speeds, True, FASTER_MIN_GAP, FASTER_MIN_RATIO)
    if best is not None:
        values = {int(s.mark_ids[k]): float(s.mean_speeds[k]) for k in candidates}
        questions.append(s.choice("SA", "fastest", "Which of the marked objects moves fastest on average over the "
                                  "video?", [mark_token(s.mark_ids[k]) for k in candidates], best, candidates, values))
    for k in s.some([k for k in moving if s.displacements[k] >= MOVE_MIN_PATH]):
        text = (f"How far is {mark_token(s.mark_ids[k])} in the last frame from where it was in the first frame, in "
                "a straight line?")
        questions.append(s.numeric("DP", "displacement", text, float(s.displacements[k]), "m", [k]))
    for k in s.some(moving):
        text = f"How long is the path {mark_token(s.mark_ids[k])} travels during the video?"
        questions.append(s.numeric("DP", "path_length", text, float(s.paths[k]), "m", [k]))
    return questions


def benchmark_questions(gt: SceneGroundTruth, mark_ids: np.ndarray, visible: list[set[int]],
                        rng: np.random.Generator) -> list[BenchmarkQuestion]:
    """Every question of the scene, static categories first. mark_ids[k]: the mark of object k;
    visible[k]: the frames where object k is visible; rng: draws ladders and caps."""
    s = _Scene(gt, mark_ids, visible, rng)
    return [*_grounding(s), *_spatial_relation(s), *_dimensions(s), *_rotation(s), *_counting(s), *_motion(s)]


def benchmark_samples(gt: SceneGroundTruth, scene: str, video: str, dataset: str, split: str, seed: int,
                      index: int, rng: np.random.Generator) -> list[dict]:
    """The scene's questions as SAMPLES_SCHEMA rows; meta: category, group, type, options, answer (letter),
    answer_text, value (exact, or null), unit, values (the compared quantities), objects {mark: object
    index}, scene, seed and scene_index (which benchmark scene: benchmark.py's seed rule)."""
    mark_ids = rng.permutation(gt.num_objects)
    regions = object_regions(gt)
    questions = benchmark_questions(gt, mark_ids, [set(frames) for frames, _ in regions], rng)
    rows = []
    for number, item in enumerate(questions):
        question = item.question
        meta = {
            **question.meta, "category": item.category, "group": item.group, "type": question.type,
            "value": item.value, "unit": item.unit, "scene": scene, "seed": seed, "scene_index": index,
            "objects": {str(m): k for m, k in question.objects.items()},
        }
        sample_id = f"{dataset}/{scene}/{item.category}-{question.type}-{number:02d}"
        rows.append(sample_row(sample_id, dataset, split, video, question, gt, regions, meta))
    return rows
