"""Region marks drawn onto a clip's frames when the student loads it, Set-of-Marks style: a numbered
tag, optionally the box outline, per region of the sample (manifests/regions.py parses them).

Drawn at load time, never into the cache: the teacher always sees unmarked frames, and one cached
clip serves samples with different marks. The loader, evaluation and the cache viewer draw with this
one module, so a picture shows exactly what the student saw.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from manifests.regions import Region

# Kelly / Tableau-like colours distinguishable from each other and from most scene content.
DISTINCT_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                   (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class MarkStyle:
    """How marks look. colors "distinct": one palette colour per mark id (the same id keeps its colour
    across frames); "mono": every mark in `mono_color`. font_size in pixels of the image drawn on."""

    colors: str = "distinct"
    mono_color: tuple[int, int, int] = (255, 0, 0)
    font_size: int = 14
    box: bool = True
    line_width: int = 2

    def __post_init__(self):
        if self.colors not in ("distinct", "mono"):
            raise ValueError(f"MarkStyle.colors must be 'distinct' or 'mono', got {self.colors!r}")
        if self.font_size < 4 or self.line_width < 1:
            raise ValueError("MarkStyle.font_size must be >= 4 and line_width >= 1")

    def color(self, mark_id: int) -> tuple[int, int, int]:
        return DISTINCT_COLORS[mark_id % len(DISTINCT_COLORS)] if self.colors == "distinct" else self.mono_color




def marks_at(regions: Sequence[Region], frame_index: int, max_gap: int = 0) -> list[tuple[int, tuple]]:
    """(mark_id, box) of each region on native frame `frame_index`: its box on that frame, or on the
    nearest annotated frame at most `max_gap` frames away (sparse annotations, e.g. keyframes)."""
    picked = []
    for region in regions:
        if not region.frame_indices:
            continue
        frames = np.asarray(region.frame_indices)
        nearest = int(np.argmin(np.abs(frames - frame_index)))
        if abs(int(frames[nearest]) - frame_index) <= max_gap:
            picked.append((region.mark_id, region.boxes[nearest]))
    return picked


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_marks(image: np.ndarray, marks: Sequence[tuple[int, tuple]], style: MarkStyle = MarkStyle()) -> np.ndarray:
    """A copy of `image` [H, W, 3] uint8 with each (mark_id, normalized box) drawn: the box outline
    (style.box) and the mark number on a filled tag at the box's top-left corner, kept inside the image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_marks needs an [H, W, 3] uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = _font(style.font_size)
    for mark_id, (x0, y0, x1, y1) in marks:
        color = style.color(mark_id)
        corners = (x0 * width, y0 * height, max(x0 * width, x1 * width - 1), max(y0 * height, y1 * height - 1))
        if style.box:
            draw.rectangle(corners, outline=color, width=style.line_width)
        text = str(mark_id)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, style.font_size // 6)
        tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(max(0, int(corners[0])), max(0, width - tag_w))
        ty = min(max(0, int(corners[1])), max(0, height - tag_h))
        draw.rectangle((tx, ty, tx + tag_w - 1, ty + tag_h - 1), fill=color)
        # Black text on light colours, white on dark ones (ITU-R BT.601 luma).
        luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((tx + pad - left, ty + pad - top), text, fill=BLACK if luma > 150 else WHITE, font=font)
    return np.asarray(canvas)


def draw_clip_marks(frames: np.ndarray, frame_indices: Sequence[int], regions: Sequence[Region],
                    style: MarkStyle = MarkStyle(), max_gap: int = 0) -> np.ndarray:
    """Marks on every frame of a clip [T, H, W, 3]; frame_indices are the clip frames' native indices
    (the clips table's `frame_indices`), which the regions' boxes are keyed by."""
    if len(frames) != len(frame_indices):
        raise ValueError(f"{len(frames)} frames but {len(frame_indices)} frame indices")
    return np.stack([draw_marks(frame, marks_at(regions, int(index), max_gap), style)
                     for frame, index in zip(frames, frame_indices)])
