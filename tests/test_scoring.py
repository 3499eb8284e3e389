"""Answer parsing and benchmark scoring (student/scoring.py): what an evaluation reports rests on it."""
from __future__ import annotations

import pytest

from student.scoring import (
    R4D_COLUMNS, markdown_table, mean_relative_accuracy, parse_choice, parse_number, r4d_column, r4d_table,
)

OPTIONS = {"A": "left", "B": "right", "C": "toward the camera", "D": "the red cube"}


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("B.", "B"), ("(C)", "C"), ("D) the red cube", "D"), ("A. left", "A"), ("c", None),
    ("The answer is C.", "C"), ("Answer: (B)", "B"), ("I think option A is right", "A"),
    ("It moves toward the camera, clearly.", "C"), ("Right.", "B"), ("the red cube, I believe", "D"),
    ("E", None), ("none of them", None), ("", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, OPTIONS) == expected


def test_parse_choice_prefers_the_longest_option_text():
    assert parse_choice("it is the red cube", {"A": "cube", "B": "red cube"}) == "B"


def test_parse_number():
    assert parse_number("about 2.5 m") == 2.5
    assert parse_number("1,200 metres") == 1200.0
    assert parse_number("-0.3") == -0.3
    assert parse_number("no idea") is None


def test_mean_relative_accuracy_matches_its_definition():
    # VSI-Bench: mean over theta in {0.50, ..., 0.95} of 1[|p - t| / t < 1 - theta].
    assert mean_relative_accuracy(10.0, 10.0) == 1.0
    assert mean_relative_accuracy(None, 10.0) == 0.0
    # relative error 0.12 passes thresholds with 1 - theta > 0.12: theta in {0.50, ..., 0.85} = 8 of 10
    assert mean_relative_accuracy(11.2, 10.0) == pytest.approx(0.8)
    assert mean_relative_accuracy(20.0, 10.0) == 0.0  # relative error 1.0 passes none


def test_r4d_table_micro_averages_the_groups():
    scored = [("SR", 1.0), ("SR", 0.0), ("DM", 1.0), ("T", 1.0), ("FP", 0.0), ("FP", 0.0)]
    table = r4d_table(scored)
    assert table["Avg"] == pytest.approx(100 * 3 / 6, abs=0.01)
    assert table["Sta"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert table["Dyn"] == pytest.approx(100 * 1 / 3, abs=0.01)
    assert table["SR"] == 50.0 and table["VG"] is None and table["n"] == 6
    md = markdown_table({"student": table})
    assert md.splitlines()[0] == "| model | " + " | ".join(R4D_COLUMNS) + " |"
    assert "| student | 50.0 | 66.7 | 33.3 | - | 100.0 | 50.0 | - | - | 100.0 | 0.0 | - | - |" in md


@pytest.mark.parametrize("task, column", [
    ("3D Video Grounding", "VG"), ("Dimensional Measurement", "DM"), ("Spatial Relation", "SR"),
    ("Rotational", "R"), ("Counting", "C"), ("Translational", "T"), ("False Positives", "FP"),
    ("Speed & Acceleration", "SA"), ("Displacement & Path Length", "DP"), ("SA", "SA"),
])
def test_r4d_task_names_map_to_columns(task, column):
    assert r4d_column(task) == column


def test_an_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="maps to no column"):
        r4d_column("colour naming")


def test_eval_scores_rows_as_their_benchmark_does():
    """student/eval.py's row scoring: VSTI numeric rows by MRA, choice rows by the parsed letter, the
    R4D column from R4D's `task` or the synthetic benchmark's `category`."""
    from student.eval import column_of, score

    numeric = {"metric": "mean_relative_accuracy", "answer": 10.0}
    assert score("about 11.2 m", numeric) == {"parsed": 11.2, "score": pytest.approx(0.8)}
    choice = {"options": {"A": "left", "B": "right"}, "answer": "B"}
    assert score("It is right.", choice) == {"parsed": "B", "score": 1.0}
    assert score("A", choice)["score"] == 0.0
    assert column_of({"task": "Speed & Acceleration", **choice}) == "SA"
    assert column_of({"category": "FP", **choice}) == "FP"
    assert column_of(choice) is None
    with pytest.raises(ValueError, match="neither options nor a numeric metric"):
        score("x", {"answer": "y"})
