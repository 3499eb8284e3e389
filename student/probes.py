"""4D probes of a frozen student: how much of each region's depth, depth order, motion and of the
camera's motion its LLM features carry, read by small linear probes.

    probe_student(export, train_cache, train_truth, test_cache, test_truth) -> {probe: score}

The features: the exported student, frozen, sees each cached clip (its frames and real timestamps, as
in training) and its LLM hidden states at the visual tokens are read at the layer D_4DP reads (the
last, `branch.layer`), as a grid [slots, rows, cols, D]. A region's feature at a slot is the mean of
the tokens whose cell centre lies in the object's box (the union over the slot's frames; the cell
holding the box centre when none does). Ground truth: the data set's region table
(manifests/region_truth.py), exact, from the synthetic generator; clip frame i is the video's frame
frame_indices[i], slot s holds clip frames [s x f, (s + 1) x f), f the frames per slot (Qwen2.5-VL 2).

The probes (ridge regression on standardized features, the penalty picked by leave-clips-out
cross-validation on the training clips; fitted on the training cache's clips, scored on the test
cache's, whose scenes no training scene shares):
  depth_r2       per (clip, object, slot): log of the region's median depth; R^2 on the test regions
  order_acc      per (clip, slot, two objects whose depths differ by >= 10 %): which is closer, from
                 the difference of their features (both orders, so chance is 50 %); accuracy
  speed_r2       per (clip, object): its mean speed over the clip's frames (m/s), from its mean
                 feature over the slots it is seen in; R^2
  direction_acc  per (clip, moving object): where it goes between the clip's first and last frame as
                 the first camera sees it, left / right / toward / away, asked (as the benchmark's
                 direction questions) only when it travels >= 0.3 m and the dominant axis is >= 2x the
                 other; from [mean feature, last seen slot - first seen slot]; accuracy (one-vs-rest)
  camera_r2      per (clip, consecutive slots): the camera's turn about its vertical axis (degrees) and
                 its move right and forward (m) from the first slot's first frame to the next's, from
                 the difference of the slots' mean features over all tokens; R^2, mean of the three
R^2 = 1 - SSE / SS of the test targets about their own mean: 0 is "knows the average", < 0 worse.
The control (blind=True): the same probes on the student shown black frames, so that its features know
where a region is and when a slot is, but nothing the pixels show: what position and time alone give.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from manifests.region_truth import read_region_truth
from shards.cache_reader import ClipReader
from shards.teacher_fields import CLIP_FIELDS
from student.batch import collate
from student.cache_index import load_cache_index

PROBES = ("depth_r2", "order_acc", "speed_r2", "direction_acc", "camera_r2")
DIRECTIONS = ("left", "right", "toward", "away")
ORDER_MIN_RATIO = 1.1  # two regions' depths must differ by 10 % for an order question
DIRECTION_MIN_SHIFT = 0.3  # metres; the benchmark's direction questions use the same two rules
DIRECTION_MIN_DOMINANCE = 2.0
ALPHAS = tuple(10.0 ** k for k in range(-2, 6))
FOLDS = 4
PROMPT = [{"role": "user", "content": "<video>\nWhat happens in the video?"}]


@dataclass
class ClipTruth:
    """One clip as the probes see it: the student's grid and the ground truth at the clip's frames."""

    grid: np.ndarray  # [slots, rows, cols, D]
    frames_per_slot: int
    boxes: np.ndarray  # [T, K, 4] normalized, NaN where the object is not visible
    depth: np.ndarray  # [T, K] median metric depth, NaN where not visible
    position: np.ndarray  # [T, K, 3] world
    velocity: np.ndarray  # [T, K, 3] world
    cam_to_world: np.ndarray  # [T, 4, 4]


def clip_truths(model, tokenizer, cache: str | Path, truth_dir: str | Path, blind: bool = False,
                layer: int = -1) -> list[ClipTruth]:
    """Every clip of `cache` once: the frozen student's grid and the clip's ground truth."""
    index = load_cache_index(cache, split=None)
    truth = read_region_truth(truth_dir).to_pydict()
    by_frame: dict[tuple[str, int], list[int]] = {}
    for i, (video, frame) in enumerate(zip(truth["video"], truth["frame"])):
        by_frame.setdefault((video, frame), []).append(i)
    root = Path(truth_dir).resolve()
    reader = ClipReader(index.root, CLIP_FIELDS)
    clips, seen = [], set()
    for record in index.records:
        clip = record.clip
        if clip is None or clip["cache_key"] in seen:
            continue
        seen.add(clip["cache_key"])
        video = Path(clip["video_uri"]).resolve()
        if not video.is_relative_to(root):
            raise ValueError(f"{cache}: clip {clip['clip_id']} is of {video}, outside the ground truth's folder {root}")
        name = video.relative_to(root).as_posix()
        rows = []
        for frame in clip["frame_indices"]:
            if (name, frame) not in by_frame:
                raise ValueError(f"{truth_dir}: no ground truth for {name} frame {frame} (clip {clip['clip_id']})")
            rows.append(sorted(by_frame[(name, frame)], key=lambda i: truth["object"][i]))
        arrays = reader.read(clip)
        frames = np.zeros_like(arrays["frames"]) if blind else arrays["frames"]
        sample = {"sample_id": clip["clip_id"], "conversations": PROMPT, "frames": frames,
                  "timestamps": arrays["timestamps"], "window_starts": clip["window_starts"], "targets": {}}
        batch = collate([sample], model.adapter, tokenizer, generation=True)
        grid = model.visual_hidden(batch, layer)[0].float().numpy()

        def column(name, shape=()):
            return np.array([[truth[name][i] if truth[name][i] is not None else np.full(shape, np.nan)
                              for i in frame_rows] for frame_rows in rows], dtype=np.float64)

        clips.append(ClipTruth(grid, batch.videos[0].grid.frames_per_slot, column("box", (4,)), column("depth"),
                               column("position"), column("velocity"),
                               np.array([truth["cam_to_world"][r[0]] for r in rows]).reshape(-1, 4, 4)))
    return clips


def region_feature(grid: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Mean of the slot's tokens [rows, cols, D] whose cell centre lies in the normalized box."""
    rows, cols = grid.shape[:2]
    ys, xs = (np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols
    inside = ((xs[None, :] >= box[0]) & (xs[None, :] <= box[2])) & ((ys[:, None] >= box[1]) & (ys[:, None] <= box[3]))
    if not inside.any():
        r = min(int((box[1] + box[3]) / 2 * rows), rows - 1)
        c = min(int((box[0] + box[2]) / 2 * cols), cols - 1)
        return grid[r, c]
    return grid[inside].mean(axis=0)


def slot_regions(clip: ClipTruth) -> dict[tuple[int, int], tuple[np.ndarray, float]]:
    """(slot, object) -> (region feature, mean depth over the slot's frames that see it)."""
    out = {}
    f = clip.frames_per_slot
    for s in range(clip.grid.shape[0]):
        frames = range(s * f, min((s + 1) * f, len(clip.depth)))
        for k in range(clip.depth.shape[1]):
            seen = [t for t in frames if np.isfinite(clip.depth[t, k])]
            if not seen:
                continue
            boxes = clip.boxes[seen, k]
            union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
            out[(s, k)] = (region_feature(clip.grid[s], union), float(np.mean(clip.depth[seen, k])))
    return out


def direction_class(clip: ClipTruth, k: int) -> int | None:
    """Index in DIRECTIONS of where object k goes (first to last clip frame, first camera's view), or
    None when the move is too short or no axis dominates."""
    rotation = clip.cam_to_world[0, :3, :3]
    x, _, z = rotation.T @ (clip.position[-1, k] - clip.position[0, k])
    if np.hypot(x, z) < DIRECTION_MIN_SHIFT:
        return None
    if abs(x) >= DIRECTION_MIN_DOMINANCE * abs(z):
        return 1 if x > 0 else 0
    if abs(z) >= DIRECTION_MIN_DOMINANCE * abs(x):
        return 3 if z > 0 else 2
    return None


def camera_motion(clip: ClipTruth, a: int, b: int) -> np.ndarray:
    """[turn about the camera's vertical axis (degrees), move right (m), move forward (m)] from frame a
    to frame b, in camera a's frame."""
    relative = np.linalg.inv(clip.cam_to_world[a]) @ clip.cam_to_world[b]
    turn = np.degrees(np.arctan2(relative[0, 2], relative[2, 2]))
    return np.array([turn, relative[0, 3], relative[2, 3]])


def probe_data(clips: list[ClipTruth]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """probe -> (X [n, d], y [n] or [n, m], clip index of each row)."""
    rows: dict[str, list] = {p: [] for p in PROBES}
    for c, clip in enumerate(clips):
        regions = slot_regions(clip)
        for (s, k), (feature, depth) in regions.items():
            rows["depth_r2"].append((feature, np.log(depth), c))
        for s in range(clip.grid.shape[0]):
            here = sorted(k for (slot, k) in regions if slot == s)
            for a, b in combinations(here, 2):
                (fa, da), (fb, db) = regions[(s, a)], regions[(s, b)]
                if max(da, db) / min(da, db) >= ORDER_MIN_RATIO:
                    rows["order_acc"].append((fa - fb, 1.0 if da < db else -1.0, c))
                    rows["order_acc"].append((fb - fa, 1.0 if db < da else -1.0, c))
            if s + 1 < clip.grid.shape[0]:
                step = clip.grid[s + 1].mean(axis=(0, 1)) - clip.grid[s].mean(axis=(0, 1))
                a, b = s * clip.frames_per_slot, (s + 1) * clip.frames_per_slot
                rows["camera_r2"].append((step, camera_motion(clip, a, b), c))
        for k in range(clip.depth.shape[1]):
            slots = sorted(s for (s, obj) in regions if obj == k)
            if not slots:
                continue
            features = np.stack([regions[(s, k)][0] for s in slots])
            speed = np.linalg.norm(clip.velocity[:, k], axis=-1).mean()
            rows["speed_r2"].append((features.mean(axis=0), speed, c))
            label = direction_class(clip, k)
            if label is not None and len(slots) >= 2:
                x = np.concatenate([features.mean(axis=0), features[-1] - features[0]])
                rows["direction_acc"].append((x, label, c))
    return {p: (np.stack([r[0] for r in v]), np.array([r[1] for r in v]), np.array([r[2] for r in v]))
            for p, v in rows.items() if v}


class Ridge:
    """Ridge regression on standardized features, y centred; several outputs at once. A feature that
    does not vary over the training rows (below 1e-6 of the most varied one: a blind student's are
    nearly constant) is left out, not blown up from its float noise."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Ridge":
        std = x.std(axis=0)
        self.mean, self.scale = x.mean(axis=0), np.where(std > 1e-6 * std.max(), std, np.inf)
        z = (x - self.mean) / self.scale
        self.offset = y.mean(axis=0)
        self.weights = np.linalg.solve(z.T @ z + self.alpha * np.eye(z.shape[1]), z.T @ (y - self.offset))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale @ self.weights + self.offset


def r2(truth: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination, the mean over outputs."""
    truth, pred = truth.reshape(len(truth), -1), pred.reshape(len(pred), -1)
    sse = ((truth - pred) ** 2).sum(axis=0)
    sst = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1.0 - sse / np.maximum(sst, 1e-12)))


def _encode(probe: str, y: np.ndarray) -> np.ndarray:
    """Targets as ridge regresses them: classes one-vs-rest as +-1 columns."""
    if probe == "direction_acc":
        return np.where(y[:, None] == np.arange(len(DIRECTIONS))[None, :], 1.0, -1.0)
    return y.astype(np.float64)


def _score(probe: str, y: np.ndarray, pred: np.ndarray) -> float:
    if probe == "order_acc":
        return float(np.mean(np.sign(pred) == y))
    if probe == "direction_acc":
        return float(np.mean(pred.argmax(axis=1) == y))
    return r2(y, pred)


def fit_probe(probe: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Ridge:
    """The ridge whose penalty scores best over FOLDS folds of whole training clips."""
    target = _encode(probe, y)
    folds = np.unique(groups) % FOLDS
    best, best_score = ALPHAS[0], -np.inf
    for alpha in ALPHAS:
        scores = []
        for fold in np.unique(folds):
            held = np.isin(groups, np.unique(groups)[folds == fold])
            if held.all() or not held.any():
                continue
            model = Ridge(alpha).fit(x[~held], target[~held])
            scores.append(_score(probe, y[held], model.predict(x[held])))
        if scores and np.mean(scores) > best_score:
            best, best_score = alpha, float(np.mean(scores))
    return Ridge(best).fit(x, target)


def score_probes(train: list[ClipTruth], test: list[ClipTruth]) -> dict[str, float | None]:
    """Every probe fitted on `train`'s clips and scored on `test`'s (None: no example on a side)."""
    train_data, test_data = probe_data(train), probe_data(test)
    scores: dict[str, float | None] = {}
    for probe in PROBES:
        if probe not in train_data or probe not in test_data:
            scores[probe] = None
            continue
        x, y, groups = train_data[probe]
        model = fit_probe(probe, x, y, groups)
        tx, ty, _ = test_data[probe]
        scores[probe] = _score(probe, ty, model.predict(tx))
    return scores


def probe_student(export: str | Path, train_cache: str | Path, train_truth: str | Path, test_cache: str | Path,
                  test_truth: str | Path, blind: bool = False) -> dict[str, float | None]:
    """The probes of an exported student (frozen): fitted on the training cache's clips, scored on the
    test cache's; blind: the control, every clip shown as black frames."""
    from student.model import StudentModel, load_tokenizer

    model = StudentModel.from_export(export).eval()
    tokenizer = load_tokenizer(export)
    train = clip_truths(model, tokenizer, train_cache, train_truth, blind)
    test = clip_truths(model, tokenizer, test_cache, test_truth, blind)
    return score_probes(train, test)
