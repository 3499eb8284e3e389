"""Scoring answers the way the benchmarks do: the chosen option of a multiple-choice answer, mean
relative accuracy for numeric ones (VSTI-Bench), and R4D-Bench's 12-column table.

R4D columns (docs/datasets.md): Avg, Sta, Dyn, then Static VG (3D video grounding), DM (dimensional
measurement), SR (spatial relation) and Dynamic R (rotational), C (counting), T (translational),
FP (false positives), SA (speed & acceleration), DP (displacement & path length). Avg, Sta and Dyn are
micro averages over the questions of the group (every question weighs the same), as a benchmark's
overall accuracy is.
"""
from __future__ import annotations

import re

import numpy as np

STATIC = ("VG", "DM", "SR")
DYNAMIC = ("R", "C", "T", "FP", "SA", "DP")
R4D_COLUMNS = ("Avg", "Sta", "Dyn", *STATIC, *DYNAMIC)

# R4D-Bench `task` names -> column; matched on lower-cased words, first hit wins. The released split
# names its tasks in words ("3D video grounding", "speed & acceleration", ...), so keywords are robust
# to small spelling drifts between releases; an unknown task is an error, never a silent column.
_TASK_KEYWORDS = (
    ("grounding", "VG"), ("dimension", "DM"), ("measure", "DM"), ("size", "DM"),
    ("spatial", "SR"), ("relation", "SR"), ("rotat", "R"), ("count", "C"), ("translat", "T"),
    ("false", "FP"), ("speed", "SA"), ("acceler", "SA"), ("displacement", "DP"), ("path", "DP"),
)


def r4d_column(task: str) -> str:
    if task in STATIC or task in DYNAMIC:
        return task
    lowered = task.lower()
    for word, column in _TASK_KEYWORDS:
        if word in lowered:
            return column
    raise ValueError(f"R4D task {task!r} maps to no column of {R4D_COLUMNS[3:]}")


_LETTER_PATTERNS = (
    re.compile(r"^\s*\(?([A-Z])\)?\s*(?:[.:)\]]|$|\s)"),  # "B", "B.", "(B)", "B) text", "B text"
    re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b\)?", re.IGNORECASE),  # "The answer is B"
)


def parse_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter an answer chose, or None. Tried in order: a leading letter ("B", "(B)",
    "B. red"), "answer/option is B" anywhere, then the option text itself (the longest option text
    found in the answer, so "red cube" beats "cube"). Letters outside `options` never count."""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m and m.group(1).upper() in options:
            return m.group(1).upper()
    lowered = " ".join(text.lower().split())
    found = [(len(v), k) for k, v in options.items() if v and " ".join(v.lower().split()) in lowered]
    return max(found)[1] if found else None


_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    m = _NUMBER.search(text.replace(",", ""))
    return float(m.group()) if m else None


def mean_relative_accuracy(pred: float | None, truth: float) -> float:
    """VSI/VSTI-Bench MRA: the fraction of thresholds theta in {0.50, 0.55, ..., 0.95} for which
    |pred - truth| / |truth| < 1 - theta. A missing prediction scores 0."""
    if pred is None or not np.isfinite(pred):
        return 0.0
    relative = abs(pred - truth) / max(abs(truth), 1e-9)
    thresholds = np.arange(0.50, 0.951, 0.05)
    return float(np.mean(relative < 1.0 - thresholds))


def r4d_table(scored: list[tuple[str, float]]) -> dict[str, float | None]:
    """(column, score in [0, 1]) per question -> percentages per R4D column (None: no question)."""
    by_column: dict[str, list[float]] = {c: [] for c in (*STATIC, *DYNAMIC)}
    for column, score in scored:
        by_column[column].append(score)

    def pct(values):
        return round(100.0 * float(np.mean(values)), 2) if values else None

    static = [s for c in STATIC for s in by_column[c]]
    dynamic = [s for c in DYNAMIC for s in by_column[c]]
    table = {"Avg": pct(static + dynamic), "Sta": pct(static), "Dyn": pct(dynamic)}
    table.update({c: pct(by_column[c]) for c in (*STATIC, *DYNAMIC)})
    table["n"] = len(scored)
    return table


def markdown_table(rows: dict[str, dict[str, float | None]], columns=R4D_COLUMNS) -> str:
    """{row name: table} -> a markdown table (one row per model / ablation row)."""
    head = "| model | " + " | ".join(columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = [head, rule]
    for name, table in rows.items():
        cells = ["-" if table.get(c) is None else f"{table[c]:.1f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
