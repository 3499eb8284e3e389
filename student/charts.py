"""Grouped bar charts as PNG, drawn by matplotlib.

The figure is built on matplotlib's object API (`Figure`, no pyplot): no global figure state and no
GUI backend, so a chart can be drawn from any thread or process (the ablation's driver, eval runs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

GROUP_WIDTH = 0.8  # of one column's slot: the rest is the gap between groups
HEADROOM = 0.1  # of y_max, above it


def bar_figure(title: str, columns: list[str], series: dict[str, list[float | None]],
               errors: dict[str, list[float | None]] | None = None, y_max: float = 100.0) -> Figure:
    """One group of bars per column, one bar per series (a model / ablation row), each labelled with
    its value; optional error bars (e.g. the spread over seeds). None values are left out. The y axis
    is ticked from 0 to y_max."""
    for kind, table in (("series", series), ("errors", errors or {})):
        for name, values in table.items():
            if len(values) != len(columns):
                raise ValueError(f"{kind} {name!r} has {len(values)} values for {len(columns)} columns {columns}")
    bars = len(columns) * max(1, len(series))
    fig = Figure(figsize=(max(5.0, 2.5 + 0.4 * bars), 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    width = GROUP_WIDTH / max(1, len(series))
    slots = np.arange(len(columns), dtype=float)
    for s, (name, values) in enumerate(series.items()):
        shown = [g for g, value in enumerate(values) if value is not None]
        spread = (errors or {}).get(name)
        # NaN draws no error bar for that one bar; an error of 0 draws a flat one.
        yerr = None if spread is None else [np.nan if spread[g] is None else spread[g] for g in shown]
        offset = (s - (len(series) - 1) / 2) * width
        drawn = ax.bar(slots[shown] + offset, [values[g] for g in shown], width, yerr=yerr, capsize=2,
                       color=f"C{s}", label=name)
        ax.bar_label(drawn, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(slots, columns)
    ax.set_xlim(-0.5, len(columns) - 0.5)
    # Ticks up to y_max, room above it for the labels of bars (and error bars) that reach it: a label
    # whose anchor leaves the axes is not drawn at all.
    ax.set_ylim(0, y_max * (1 + HEADROOM))
    ax.set_yticks([tick for tick in ax.get_yticks() if tick <= y_max])
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="0.9")
    ax.set_axisbelow(True)
    ax.set_title(title)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def bar_chart(path: str | Path, title: str, columns: list[str], series: dict[str, list[float | None]],
              errors: dict[str, list[float | None]] | None = None, y_max: float = 100.0) -> Path:
    """`bar_figure` written to `path` (a .png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bar_figure(title, columns, series, errors, y_max).savefig(path)
    return path
