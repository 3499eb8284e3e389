"""The teacher-output contract (shards/teacher_fields.py): L4P's windows, the per-clip shapes they
give, the default storage, and the contract checked against the released L4P model's key list."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT
from shards import teacher_fields as tf
from shards.schema import FieldSpec


def test_padding_and_window_starts():
    assert tf.padded_length(16) == 16 and tf.window_starts(16) == [0]
    assert tf.padded_length(32) == 32 and tf.window_starts(32) == [0, 8, 16]
    np.testing.assert_array_equal(tf.mirror_pad_indices(32), np.arange(32))

    assert tf.padded_length(20) == 24 and tf.window_starts(24) == [0, 8]
    np.testing.assert_array_equal(tf.mirror_pad_indices(20), [*range(20), 18, 17, 16, 15])

    # Too short for one reflection: bounce between the ends; a single frame is repeated.
    assert tf.padded_length(3) == 16
    np.testing.assert_array_equal(tf.mirror_pad_indices(3), [0, 1, 2, 1] * 4)
    np.testing.assert_array_equal(tf.mirror_pad_indices(1), np.zeros(16))

    frames = tf.window_frame_indices(20)
    np.testing.assert_array_equal(frames, [list(range(16)), [*range(8, 20), 18, 17, 16, 15]])
    assert tf.clip_window_starts(20) == [0, 8] and tf.clip_window_starts(33) == [0, 8, 16, 24]


def test_windowing_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one frame"):
        tf.padded_length(0)
    with pytest.raises(ValueError, match="multiple of stride"):
        tf.padded_length(20, window=16, stride=6)
    with pytest.raises(ValueError, match="padded length 20"):
        tf.window_starts(20)


def test_teacher_shapes_by_hand():
    # 16 frames: one window of 8 x 16 x 16 = 2048 tokens; 20 frames pad to 24: two windows.
    assert tf.teacher_shapes(16) == {"latents": (4, 2048, 1408), "depth": (16, 224, 224), "flow": (2, 16, 224, 224),
                                     "dyn_mask": (16, 224, 224), "camray": (1, 6, 16, 16, 16)}
    shapes = tf.teacher_shapes(20, hooks=2, latent_dim=48)
    assert shapes["latents"] == (2, 4096, 48) and shapes["camray"] == (2, 6, 16, 16, 16)
    assert shapes["flow"] == (2, 20, 224, 224)
    assert tf.clip_shapes(8, (112, 160)) == {"frames": (8, 112, 160, 3), "timestamps": (8,)}


def test_default_storage_covers_every_field_and_is_storable():
    storage = tf.default_storage()
    assert list(storage) == [*tf.CLIP_FIELDS, *tf.TEACHER_FIELDS]
    shapes = {**tf.clip_shapes(16, tf.INPUT_SIZE), **tf.teacher_shapes(16)}
    for name, spec in storage.items():
        FieldSpec.stored_as(name, shapes[name], spec)  # raises on a combination no shard can store


def released_key_shapes() -> dict[str, tuple[int, ...]]:
    """key -> shape of the released L4P state dict (tests/data/l4p_state_dict.tsv, see its README)."""
    rows = [line.split("\t") for line in (ROOT / "tests/data/l4p_state_dict.tsv").read_text().splitlines()
            if line and not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.split("x")) for key, shape, *_ in rows[1:]}


def test_the_contract_matches_the_released_l4p():
    shapes = released_key_shapes()
    # Patch embedding Conv3d 3 -> C with kernel (tubelet, patch, patch).
    assert shapes["l4p_model.video_encoder.patch_embed.proj.weight"] == (tf.L4P_DIM, 3, tf.TUBELET, tf.PATCH, tf.PATCH)
    # Each head's last conv gives its output channels; the cache calls flow_2d_backward "flow".
    names = {"depth": "depth", "flow": "flow_2d_backward", "dyn_mask": "dyn_mask", "camray": "camray"}
    for field, task in names.items():
        out_channels = shapes[f"l4p_model.task_heads.{task}.task_head.dpt.head2.2.weight"][0]
        assert tf.MAP_CHANNELS[field] == out_channels, field


def test_the_l4p_teachers_follow_the_contract():
    from pipeline.teachers.l4p.config import FULL

    assert (FULL.img_size, FULL.patch_size, FULL.tubelet, FULL.num_frames) == (tf.MAP_SIZE, tf.PATCH, tf.TUBELET,
                                                                              tf.WINDOW)
    assert FULL.hooks == tf.L4P_HOOKS and FULL.embed_dim == tf.L4P_DIM
    assert FULL.num_tokens == tf.TOKENS_PER_WINDOW and FULL.grid == (tf.SLOTS, tf.GRID, tf.GRID)
