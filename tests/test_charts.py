"""student/charts.py: every bar stands at its value, in its column, in its series' colour, with its
error bar and label, both in the figure and in the PNG a person opens; legend and labels stay readable
at the shapes eval and the ablation draw."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.container import BarContainer
from PIL import Image

from student.charts import bar_chart, bar_figure
from student.scoring import R4D_COLUMNS

COLUMNS = ["Avg", "Sta", "Dyn"]
SERIES = {"base": [40.0, None, 0.0], "ours": [62.5, 10.0, 90.0]}
ERRORS = {"ours": [5.0, None, 2.5]}
TITLE = "synthetic (2 seeds)"
# What eval draws (one export, R4D's 12 columns) and what the ablation draws (5 rows, Avg / Sta / Dyn
# with their spread over seeds), at the widest labels those values give.
EVAL_CHART = (R4D_COLUMNS, {"export": [100.0] * len(R4D_COLUMNS)}, None)
ABLATION_CHART = (COLUMNS, {row: [100.0, 99.9, 100.0] for row in ("baseline", "tpe", "ld", "ed", "ld_ed")},
                  {row: [1.5, 2.0, 0.5] for row in ("baseline", "tpe", "ld", "ed", "ld_ed")})


def drawn(fig):
    """The figure laid out as savefig lays it out (same canvas, same dpi)."""
    FigureCanvasAgg(fig).draw()
    return fig.axes[0]


def bars_of(ax) -> dict[str, list]:
    return {bars.get_label(): list(bars) for bars in ax.containers if isinstance(bars, BarContainer)}


def test_bars_stand_at_their_values_in_their_columns():
    ax = drawn(bar_figure(TITLE, COLUMNS, SERIES, ERRORS))
    assert ax.get_title() == TITLE
    assert [t.get_text() for t in ax.get_xticklabels()] == COLUMNS
    assert list(ax.get_xticks()) == [0, 1, 2]
    # The default y_max (accuracies in %): ticked up to it, 10 % headroom above for the labels.
    assert list(ax.get_yticks()) == [0, 20, 40, 60, 80, 100]
    assert ax.get_ylim() == (0.0, pytest.approx(110.0))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(SERIES)
    bars = bars_of(ax)
    for s, (name, values) in enumerate(SERIES.items()):
        shown = [(g, v) for g, v in enumerate(values) if v is not None]
        assert len(bars[name]) == len(shown), f"{name}: None values are left out, zeros are not"
        for (g, value), bar in zip(shown, bars[name]):
            assert bar.get_height() == value and bar.get_y() == 0
            assert g - 0.5 < bar.get_x() < bar.get_x() + bar.get_width() < g + 0.5, f"{name} in column {g}"
            assert bar.get_facecolor()[:3] == pytest.approx(to_rgb(f"C{s}"))
    # Within each column the series stand left to right in their given order, side by side, the
    # group centred on its column's tick.
    base, ours = bars["base"][0], bars["ours"][0]
    assert base.get_x() + base.get_width() == pytest.approx(ours.get_x())
    assert (base.get_x() + ours.get_x() + ours.get_width()) / 2 == pytest.approx(0.0)
    assert bars["base"][1].get_x() < bars["ours"][2].get_x()
    labels = sorted(t.get_text() for t in ax.texts)  # one decimal, as results.md writes them
    assert labels == sorted(f"{v:.1f}" for values in SERIES.values() for v in values if v is not None)


def test_error_bars_span_value_plus_minus_error():
    ax = drawn(bar_figure(TITLE, COLUMNS, SERIES, ERRORS))
    containers = {bars.get_label(): bars for bars in ax.containers if isinstance(bars, BarContainer)}
    assert containers["base"].errorbar is None
    segments = containers["ours"].errorbar.lines[2][0].get_segments()
    spans = [(round(seg[0, 0], 6), seg[0, 1], seg[1, 1]) for seg in segments if len(seg)]
    centres = [round(bar.get_x() + bar.get_width() / 2, 6) for bar in containers["ours"]]
    assert spans == [(centres[0], 57.5, 67.5), (centres[2], 87.5, 92.5)]  # none for the None error


@pytest.mark.parametrize("chart", [EVAL_CHART, ABLATION_CHART], ids=["eval", "ablation"])
def test_legend_and_value_labels_are_readable(chart):
    """Whatever the number of bars: the legend beside the axes, inside the figure; no two value
    labels overlap; one series' bars fill its group's width."""
    columns, series, errors = chart
    ax = drawn(bar_figure(TITLE, columns, series, errors))
    figure_box, axes_box = ax.figure.bbox, ax.get_window_extent()
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(axes_box)
    assert figure_box.x0 <= legend.x0 and legend.x1 <= figure_box.x1 and legend.y1 <= figure_box.y1
    labels = [t.get_window_extent() for t in ax.texts]
    assert len(labels) == sum(len(values) for values in series.values())
    for label in labels:  # drawn (a label whose anchor leaves the axes is not), below the title
        assert axes_box.x0 <= label.x0 and label.x1 <= axes_box.x1 and axes_box.y0 < label.y0 and label.y1 <= axes_box.y1
    for a, b in itertools.combinations(labels, 2):
        assert not a.overlaps(b), "two value labels overlap"
    for group in zip(*bars_of(ax).values()):
        assert sum(bar.get_width() for bar in group) == pytest.approx(0.8)


def column_top(image: np.ndarray, x: int, rgb: tuple[int, int, int]) -> int:
    """The highest image row of the bar colour's run that rises from the bottom of the column x."""
    rows = np.flatnonzero((image[:, x] == rgb).all(axis=1))
    assert rows.size, f"no pixel of {rgb} in pixel column {x}"
    run = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)[-1]
    return int(run[0])


@pytest.mark.parametrize("series, errors, y_max", [
    (SERIES, ERRORS, 120.0),
    ({"export": [50.0, 33.3, 75.0]}, None, None),  # as eval draws it: one series, the default axis
], ids=["two-series", "one-series-default-axis"])
def test_png_shows_each_bar_up_to_its_value(tmp_path, series, errors, y_max):
    scale = {} if y_max is None else {"y_max": y_max}
    path = tmp_path / "new" / "dir" / "results.png"
    bar_chart(path, "an older chart", COLUMNS, {"x": [1.0, 2.0, 3.0]}, y_max=10.0)
    assert bar_chart(path, TITLE, COLUMNS, series, errors, **scale) == path  # rewrites it
    image = np.asarray(Image.open(path).convert("RGB"))
    ax = drawn(bar_figure(TITLE, COLUMNS, series, errors, **scale))
    width, height = ax.figure.canvas.get_width_height()
    assert image.shape[:2] == (height, width)
    box = ax.get_window_extent()  # pixels, origin at the bottom left

    def row_of(value: float) -> float:  # the PNG row of a y value: the axis spans 0..top over the box
        return height - (box.y0 + value / ax.get_ylim()[1] * box.height)

    for s, (name, values) in enumerate(series.items()):
        rgb = tuple(round(255 * c) for c in to_rgb(f"C{s}"))
        bars = dict(zip([g for g, value in enumerate(values) if value is not None], bars_of(ax)[name]))
        for g, value in enumerate(values):
            if value:
                extent = bars[g].get_window_extent()
                x = int(extent.x0 + 0.15 * extent.width)  # clear of the centred label and error bar
                assert abs(column_top(image, x, rgb) - row_of(value)) <= 1.5, f"{name} {COLUMNS[g]} = {value}"
            else:  # None: no bar; 0: a bar of no height
                lo, hi = ax.transData.transform([(g - 0.5, 0), (g + 0.5, 0)])[:, 0]
                region = image[int(height - box.y1) + 2:int(height - box.y0) - 2, int(lo) + 2:int(hi) - 2]
                assert not (region == rgb).all(axis=-1).any(), f"{name} drew {value} in {COLUMNS[g]}"
    if errors:  # ours' Avg (62.5 +- 5): a black line above the bar, at its centre
        centre = bars_of(ax)["ours"][0].get_window_extent()
        x = int(round((centre.x0 + centre.x1) / 2))
        assert image[int(row_of(65.0)), x - 1:x + 2].min() < 100


def test_lengths_that_do_not_match_the_columns_are_refused():
    with pytest.raises(ValueError, match=r"series 'ours' has 2 values for 3 columns"):
        bar_figure(TITLE, COLUMNS, {"ours": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"errors 'ours' has 4 values for 3 columns"):
        bar_figure(TITLE, COLUMNS, {"ours": [1.0, 2.0, 3.0]}, {"ours": [0.1] * 4})
