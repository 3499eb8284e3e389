"""The samples table's regions column: parse, validate, resolve `<obj_k>` tokens.

A region is one marked object of a sample (manifests.schemas.REGION): a mark id, a label and
normalized [x0, y0, x1, y1] boxes on native video frames. `<obj_k>` in a conversation refers to the
region whose mark_id is k. The student draws them as marks when it loads a clip (student/marks.py).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MARK_TOKEN = re.compile(r"<obj_(\d+)>")


@dataclass(frozen=True)
class Region:
    mark_id: int
    label: str | None
    frame_indices: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]


def parse_regions(value: Iterable[dict] | None, where: str = "regions") -> list[Region]:
    """The regions column of one row (a list of dicts, as pyarrow gives it), validated."""
    if value is None:
        return []
    regions = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        mark_id = item.get("mark_id")
        if not isinstance(mark_id, (int, np.integer)) or isinstance(mark_id, bool) or mark_id < 0:
            raise ValueError(f"{here}: mark_id must be an integer >= 0, got {mark_id!r}")
        frames = list(item.get("frame_indices") or [])
        boxes = list(item.get("boxes") or [])
        if len(frames) != len(boxes):
            raise ValueError(f"{here}: {len(frames)} frame_indices but {len(boxes)} boxes")
        if any(not isinstance(f, (int, np.integer)) or f < 0 for f in frames) or frames != sorted(set(frames)):
            raise ValueError(f"{here}: frame_indices must be increasing integers >= 0, got {frames}")
        checked = []
        for frame, box in zip(frames, boxes):
            box = tuple(float(b) for b in box)
            if len(box) != 4 or not all(np.isfinite(box)):
                raise ValueError(f"{here}: frame {frame}: a box is 4 finite numbers, got {box}")
            x0, y0, x1, y1 = box
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"{here}: frame {frame}: box {box} is not a normalized [x0, y0, x1, y1] "
                                 "with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
            checked.append(box)
        regions.append(Region(int(mark_id), item.get("label"), tuple(int(f) for f in frames), tuple(checked)))
    ids = [r.mark_id for r in regions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: mark ids repeat: {ids}")
    return regions


def question_marks(text: str) -> list[int]:
    """Mark ids named by `<obj_k>` tokens in a text, in order of first appearance."""
    return list(dict.fromkeys(int(k) for k in MARK_TOKEN.findall(text)))


def check_marks(conversations: Sequence[dict], regions: Sequence[dict] | Sequence[Region], where: str,
                premarked: bool = False) -> None:
    """Every <obj_k> of the conversation has a region with mark_id k. premarked: the sample's marks
    are already drawn into its media (R4D-Bench's som_image), so there is nothing to look up."""
    named = question_marks("\n".join(turn["content"] for turn in conversations))
    if premarked or not named:
        return
    have = {r.mark_id if isinstance(r, Region) else r["mark_id"] for r in regions}
    missing = [k for k in named if k not in have]
    if missing:
        raise ValueError(f"{where}: <obj_{missing[0]}> has no region with mark_id {missing[0]} "
                         f"(regions have marks {sorted(have)})")


def check_table_marks(conversations: Sequence[list], regions: Sequence[list | None], where: str) -> None:
    """Every row of a samples table: its regions valid and every <obj_k> resolvable (`where: row i`)."""
    for i, (turns, value) in enumerate(zip(conversations, regions)):
        here = f"{where}: row {i}"
        check_marks(turns, parse_regions(value, where=f"{here}: field 'regions'"), where=here)
