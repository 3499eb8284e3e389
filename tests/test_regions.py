"""The regions column parsed and validated, <obj_k> checked against marks (manifests/regions.py),
boxes picked per frame and marks drawn where the boxes say (student/marks.py), on the synthetic set's
own regions."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from manifests.regions import check_marks, parse_regions, question_marks
from student.marks import DISTINCT_COLORS, MarkStyle, draw_clip_marks, draw_marks, marks_at


def region(mark_id=1, frames=(0, 4), boxes=((0.1, 0.1, 0.5, 0.5), (0.2, 0.2, 0.6, 0.6))) -> dict:
    return {"mark_id": mark_id, "label": "cup", "frame_indices": list(frames), "boxes": [list(b) for b in boxes]}


def test_parse_and_validate():
    parsed = parse_regions([region(1), region(2)])
    assert [r.mark_id for r in parsed] == [1, 2] and parsed[0].boxes[1] == (0.2, 0.2, 0.6, 0.6)
    assert parse_regions(None) == []
    bad = {
        "repeat": ([region(1), region(1)], "mark ids repeat"),
        "lengths": ([region(frames=(0,))], "1 frame_indices but 2 boxes"),
        "inverted": ([region(boxes=((0.5, 0.1, 0.1, 0.5), (0.2, 0.2, 0.6, 0.6)))], "not a normalized"),
        "outside": ([region(boxes=((0.1, 0.1, 1.5, 0.5), (0.2, 0.2, 0.6, 0.6)))], "not a normalized"),
        "order": ([region(frames=(4, 0))], "increasing"),
        "negative id": ([region(mark_id=-1)], "mark_id must be"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_regions(value, where="samples.parquet: row 7")


def test_obj_tokens_need_a_region_with_that_mark():
    turns = [{"role": "user", "content": "<video>\nIs <obj_2> left of <obj_5>?"}, {"role": "assistant", "content": "A"}]
    assert question_marks(turns[0]["content"]) == [2, 5]
    check_marks(turns, [region(2), region(5)], where="f.json: row 3")
    with pytest.raises(ValueError, match=r"f.json: row 3: <obj_5> has no region with mark_id 5"):
        check_marks(turns, [region(2)], where="f.json: row 3")
    check_marks(turns, [], where="r4d", premarked=True)


def test_marks_at_picks_the_frame_or_the_nearest_within_a_gap():
    regions = parse_regions([region(1), region(2, frames=(8,), boxes=((0.0, 0.0, 1.0, 1.0),))])
    assert marks_at(regions, 4) == [(1, (0.2, 0.2, 0.6, 0.6))]
    assert marks_at(regions, 3) == []
    assert marks_at(regions, 3, max_gap=1) == [(1, (0.2, 0.2, 0.6, 0.6))]
    assert [m for m, _ in marks_at(regions, 6, max_gap=2)] == [1, 2]


def test_draw_marks_outline_and_tag():
    image = np.full((100, 200, 3), 128, np.uint8)
    marks = [(3, (0.25, 0.5, 0.75, 1.0))]
    drawn = draw_marks(image, marks, MarkStyle(font_size=12, line_width=2))
    assert (image == 128).all(), "the input frame is never modified"
    color = DISTINCT_COLORS[3]
    # Box x from 50 to 149, y from 50 to 99: the bottom edge (row 99) and the right edge (col 149).
    assert tuple(drawn[99, 100]) == color and tuple(drawn[75, 149]) == color
    assert (drawn[75, 100] == 128).all(), "inside the box is untouched"
    tag = drawn[50:60, 50:58]
    assert (np.all(tag == color, axis=-1)).mean() > 0.4, "a filled tag of the mark's colour at the corner"
    plain = draw_marks(image, marks, MarkStyle(font_size=12, box=False, colors="mono", mono_color=(0, 0, 255)))
    assert (plain[99, 100] == 128).all(), "box off: no outline"
    assert (np.all(plain[50:60, 50:58] == (0, 0, 255), axis=-1)).mean() > 0.4
    bigger = draw_marks(image, marks, MarkStyle(font_size=24, box=False))
    assert (bigger != 128).any(axis=-1).sum() > (draw_marks(image, marks, MarkStyle(font_size=12, box=False))
                                                 != 128).any(axis=-1).sum()


def test_marks_land_on_the_synthetic_objects(synthetic_set):
    """The synthetic set's regions are the boxes of each object's pixels: the tag drawn for a mark sits
    on the object's box corner in the decoded frame (nearest pixel of the native resolution)."""
    from decord import VideoReader

    samples = pq.read_table(synthetic_set / "samples.parquet").to_pylist()
    row = next(r for r in samples if r["regions"])
    regions = parse_regions(row["regions"], where=row["sample_id"])
    check_marks(row["conversations"], regions, where=row["sample_id"])
    frames = VideoReader(str(synthetic_set / row["video"])).get_batch([0, 5]).asnumpy()
    drawn = draw_clip_marks(frames, [0, 5], regions, MarkStyle(box=True))
    changed = np.any(drawn != frames, axis=-1)
    assert changed.any()
    height, width = frames.shape[1:3]
    allowed = np.zeros_like(changed)
    for index, frame in enumerate([0, 5]):
        for mark_id, (x0, y0, x1, y1) in marks_at(regions, frame):
            corner = (min(int(y0 * height) + 1, height - 1), min(int(x0 * width) + 1, width - 1))
            assert changed[index][corner], (mark_id, corner)
            allowed[index, max(0, int(y0 * height) - 30):int(y1 * height) + 30,
                    max(0, int(x0 * width) - 30):int(x1 * width) + 30] = True
    assert not (changed & ~allowed).any(), "nothing is drawn away from the marked boxes"


def test_a_samples_table_with_an_unresolvable_mark_is_refused(synthetic_set, tmp_path):
    """The --videos / --samples path checks every row's marks too, naming the file and the row."""
    import pyarrow as pa

    from pipeline.sources import load_sources

    table = pq.read_table(synthetic_set / "samples.parquet")
    rows = table.to_pylist()
    index = next(i for i, r in enumerate(rows) if r["regions"])
    rows[index]["regions"] = rows[index]["regions"][1:] if len(rows[index]["regions"]) > 1 else None
    path = tmp_path / "samples.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    load_sources(str(synthetic_set), None)  # the generator's own table passes
    with pytest.raises(ValueError, match=rf"samples.parquet: row {index}: <obj_\d+> has no region"):
        load_sources(str(synthetic_set), str(path))
