"""Colour maps and the clip grid PNG."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from student.visualize import (
    GAP,
    HEADER_HEIGHT,
    LABEL_WIDTH,
    TILE_HEIGHT,
    TITLE_HEIGHT,
    depth_to_rgb,
    flow_to_rgb,
    mask_to_rgb,
    rays_to_rgb,
    render_clip_png,
)


def _uniform_flow(u: float, v: float) -> np.ndarray:
    return np.stack([np.full((4, 4), u), np.full((4, 4), v)])


def test_flow_wheel_hues_and_white_zero():
    right = flow_to_rgb(_uniform_flow(1, 0))[0, 0].astype(int)
    up = flow_to_rgb(_uniform_flow(0, -1))[0, 0].astype(int)  # v points down the image
    down = flow_to_rgb(_uniform_flow(0, 1))[0, 0].astype(int)
    # Middlebury wheel: right is red, up is blue-violet, down is yellow-orange.
    assert right[0] == 255 and right[1] < 30 and right[2] < 30
    assert up[2] == 255 and up[0] < 128 and up[1] < 30
    assert down[0] == 255 and down[1] > 180 and down[2] < 30
    np.testing.assert_array_equal(flow_to_rgb(np.zeros((2, 4, 4))), 255)


def test_flow_saturation_follows_max_magnitude():
    half = flow_to_rgb(_uniform_flow(1, 0), max_magnitude=2)[0, 0].astype(int)
    full = flow_to_rgb(_uniform_flow(2, 0), max_magnitude=2)[0, 0].astype(int)
    assert full[1] < half[1] < 255 and half[0] == full[0] == 255


def test_depth_near_is_warm_far_is_cool():
    # Evenly spaced inverse depth, nearest first: pixel k sits at k/63 of the colour range, reversed.
    depth = 1.0 / np.linspace(1.0, 0.1, 64).reshape(8, 8)
    rgb = depth_to_rgb(depth).astype(int).reshape(-1, 3)
    near, near_middle, far_middle = rgb[5], rgb[16], rgb[48]
    assert near[0] > near[2] + 100 and near_middle[0] > near_middle[2] + 100
    assert far_middle[2] > far_middle[0] + 100
    assert near[0] > rgb[-1, 0] + 100


def test_depth_invalid_is_black():
    depth = np.array([[1.0, np.nan], [0.0, 4.0]])
    rgb = depth_to_rgb(depth)
    np.testing.assert_array_equal(rgb[0, 1], 0)
    np.testing.assert_array_equal(rgb[1, 0], 0)
    assert rgb[0, 0].any() and rgb[1, 1].any()


def test_mask_and_rays():
    # dyn_mask is a logit: shown as its probability (sigmoid(+-1000) would overflow a plain exp).
    np.testing.assert_array_equal(mask_to_rgb(np.array([[-1000.0, 0.0, np.log(3.0), 1000.0]]))[0],
                                  [[0, 0, 0], [128, 128, 128], [191, 191, 191], [255, 255, 255]])
    camray = np.zeros((6, 2, 2))
    camray[0], camray[2] = 0.3, 0.4  # d = (0.3, 0, 0.4), not unit (a network's): shown as (0.6, 0, 0.8)
    rgb = rays_to_rgb(camray, (10, 6))
    assert rgb.shape == (10, 6, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[3, 3], [204, 128, 230])


def _clip_arrays(t=6, h=48, w=64, map_size=32):
    rng = np.random.default_rng(0)
    return {
        "frames": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        "timestamps": np.arange(t) / 10,
        "depth": rng.uniform(1, 5, (t, map_size, map_size)).astype(np.float16),
        "flow": rng.normal(size=(2, t, map_size, map_size)).astype(np.float16),
        "dyn_mask": rng.uniform(size=(t, map_size, map_size)).astype(np.float32),
        "camray": rng.normal(size=(6, t, 16, 16)).astype(np.float16),
        "latents": np.zeros((4, 8, 8), np.float16),  # not a picture: ignored
    }


def _expected_size(columns: int, rows: int, title: bool, aspect=64 / 48) -> tuple[int, int]:
    tile_w = round(TILE_HEIGHT * aspect)
    width = LABEL_WIDTH + columns * (tile_w + GAP) + GAP
    height = (TITLE_HEIGHT if title else 0) + HEADER_HEIGHT + rows * (TILE_HEIGHT + GAP) + GAP
    return width, height


def test_render_clip_png_size_per_fields_and_rows(tmp_path):
    arrays = _clip_arrays()
    regions = [{"mark_id": 3, "boxes": {"0": [0.1, 0.1, 0.5, 0.5], 5: [0.2, 0.2, 0.6, 0.9]}}]
    full = render_clip_png(arrays, tmp_path / "full.png", rows=4, title="clip", regions=regions)
    assert Image.open(full).size == _expected_size(columns=5, rows=4, title=True)

    without_flow = {k: v for k, v in arrays.items() if k != "flow"}
    fewer = render_clip_png(without_flow, tmp_path / "fewer.png", rows=3)
    assert Image.open(fewer).size == _expected_size(columns=4, rows=3, title=False)

    # More rows than frames: every frame once.
    many = render_clip_png({"depth": arrays["depth"]}, tmp_path / "many.png", rows=10)
    assert Image.open(many).size == _expected_size(columns=1, rows=6, title=False, aspect=1.0)


def test_render_clip_png_draws_regions_on_frames(tmp_path):
    arrays = {"frames": np.zeros((2, 48, 64, 3), np.uint8)}
    plain = np.asarray(Image.open(render_clip_png(arrays, tmp_path / "plain.png", rows=2)))
    boxed = render_clip_png(arrays, tmp_path / "boxed.png", rows=2,
                            regions=[{"mark_id": 1, "boxes": {1: [0.25, 0.25, 0.75, 0.75]}}])
    changed = np.argwhere(np.any(plain != np.asarray(Image.open(boxed)), axis=-1))
    # Only the second row (clip frame 1) carries the box.
    second_row_top = HEADER_HEIGHT + GAP + TILE_HEIGHT + GAP
    assert len(changed) and changed[:, 0].min() >= second_row_top


def test_render_clip_png_rejects_mismatched_or_empty_input(tmp_path):
    arrays = _clip_arrays()
    arrays["depth"] = arrays["depth"][:5]
    with pytest.raises(ValueError, match="disagree on the number of frames"):
        render_clip_png(arrays, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="nothing to render"):
        render_clip_png({"latents": np.zeros(3)}, tmp_path / "empty.png")
