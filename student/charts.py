"""Grouped bar charts as PNG with PIL (matplotlib is not in the stack; a bar chart needs no more)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def bar_chart(path: str | Path, title: str, columns: list[str], series: dict[str, list[float | None]],
              errors: dict[str, list[float | None]] | None = None, y_max: float = 100.0) -> Path:
    """One group of bars per column, one bar per series (a model / ablation row); optional error bars
    (e.g. the spread over seeds). None values are left out."""
    group_w, bar_gap, left, top, bottom, height = 26 * max(1, len(series)) + 14, 2, 48, 36, 60, 300
    width = left + group_w * len(columns) + 20 + 160
    img = Image.new("RGB", (width, top + height + bottom), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((left, 8), title, fill="black", font=font)
    for tick in range(0, 101, 20):
        y = top + height - tick / 100 * height
        draw.line([(left - 4, y), (left + group_w * len(columns), y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{tick / 100 * y_max:g}", fill="black", font=font)
    bar_w = (group_w - 14) // max(1, len(series)) - bar_gap
    for g, column in enumerate(columns):
        x0 = left + g * group_w + 7
        for s, (name, values) in enumerate(series.items()):
            value = values[g]
            if value is None:
                continue
            x = x0 + s * (bar_w + bar_gap)
            y = top + height - min(value, y_max) / y_max * height
            draw.rectangle([x, y, x + bar_w, top + height], fill=PALETTE[s % len(PALETTE)])
            err = (errors or {}).get(name, [None] * len(columns))[g]
            if err:
                cx, dy = x + bar_w / 2, err / y_max * height
                draw.line([(cx, y - dy), (cx, y + dy)], fill="black", width=1)
        draw.text((x0, top + height + 6), column, fill="black", font=font)
    for s, name in enumerate(series):
        y = top + 10 + 16 * s
        lx = left + group_w * len(columns) + 20
        draw.rectangle([lx, y, lx + 10, y + 10], fill=PALETTE[s % len(PALETTE)])
        draw.text((lx + 16, y - 1), name, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
