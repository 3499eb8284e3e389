"""The teacher interface: output layout, identity, per-clip failure isolation, and what the oracle's
latents are (a fixed random projection of each token's ground-truth 4D patch)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import TeacherConfig
from pipeline.geometry import pixel_centers, project_points, unproject_pixels
from pipeline.teachers.base import TeacherError, TeacherInput
from pipeline.teachers.registry import build_teacher, teacher_identity
from pipeline.sampling import SamplingConfig
from pipeline.synthetic.ground_truth import load_ground_truth
from pipeline.video_reader import read_clip, resize_frames


def clip_input(video, num_frames=16) -> TeacherInput:
    clip = read_clip(video, SamplingConfig(num_frames=num_frames))
    return TeacherInput(str(video), clip.frame_indices, clip.timestamps, resize_frames(clip.frames, (224, 224)))


@pytest.fixture(scope="module")
def scene_video(synthetic_set):
    return synthetic_set / "videos" / "scene_0000.mp4"


def test_l4p_tiny_outputs_follow_the_declared_layout(scene_video):
    config = TeacherConfig(name="l4p-tiny")
    identity = teacher_identity(config, 16)
    out = build_teacher(config).predict([clip_input(scene_video)] * 2)
    assert len(out) == 2
    for name, shape in identity.shapes.items():
        assert out[0][name].shape == shape, name
        assert np.isfinite(np.asarray(out[0][name])).all(), name
    assert identity.shapes["latents"] == (4, 2048, 48) and identity.shapes["camray"] == (1, 6, 16, 16, 16)
    assert (out[0]["depth"] > 0).all()  # dyn_mask (the logit) and camray (raw rays): tests/test_l4p_teacher.py


def test_teacher_id_hashes_config_and_weights():
    a = teacher_identity(TeacherConfig(name="l4p-tiny", seed=0), 16).teacher_id
    assert a == teacher_identity(TeacherConfig(name="l4p-tiny", seed=0), 16).teacher_id
    assert a != teacher_identity(TeacherConfig(name="l4p-tiny", seed=1), 16).teacher_id
    assert teacher_identity(TeacherConfig(name="oracle"), 16).teacher_id.startswith("oracle:")
    # Resources do not change what a teacher computes, so they do not change its id.
    assert a == teacher_identity(TeacherConfig(name="l4p-tiny", batch_size=8, num_gpus=1), 16).teacher_id


def test_one_bad_clip_fails_alone(scene_video):
    teacher = build_teacher(TeacherConfig(name="oracle", latent_dim=8))
    good = clip_input(scene_video)
    stranger = TeacherInput("/nowhere/real_video.mp4", good.frame_indices, good.timestamps, good.frames)
    results = teacher.predict_each([good, stranger, good])
    assert isinstance(results[1], TeacherError) and "only knows synthetic scenes" in str(results[1])
    assert isinstance(results[0], dict) and isinstance(results[2], dict)


def test_oracle_latents_are_the_projection_of_ground_truth_patches(scene_video):
    seed, dim = 3, 8
    out = build_teacher(TeacherConfig(name="oracle", latent_dim=dim, seed=seed)).predict([clip_input(scene_video)])[0]
    # Token (t=1, row 3, col 5) covers frames 2-3, pixels [42:56, 70:84] of the 224 x 224 maps.
    mask = (out["dyn_mask"] > 0).astype(np.float32)  # the patches hold the 0/1 mask, not its logit
    maps = np.stack([np.log(out["depth"]), out["flow"][0], out["flow"][1], mask], 1)  # [T, 4, H, W]
    patch = maps[2:4, :, 42:56, 70:84].reshape(-1)  # (frame, channel, y, x), as documented
    token = 1 * 256 + 3 * 16 + 5
    for hook in range(4):
        projection = np.random.default_rng([seed, hook]).standard_normal((patch.size, dim), np.float32)
        expected = patch @ projection / np.float32(np.sqrt(patch.size))
        np.testing.assert_allclose(out["latents"][hook, token], expected, rtol=1e-4, atol=1e-4)


def test_oracle_flow_is_between_sampled_frames(scene_video):
    """Every 2nd frame sampled: flow goes to the previous SAMPLED frame, i.e. two video frames back."""
    gt = load_ground_truth(scene_video)
    out = build_teacher(TeacherConfig(name="oracle", latent_dim=8)).predict([clip_input(scene_video, 8)])[0]
    idx = clip_input(scene_video, 8).frame_indices
    assert (np.diff(idx) >= 2).all()
    h, w = gt.depth.shape[1:]
    rows = np.floor((np.arange(224) + 0.5) * h / 224).astype(int)
    cols = np.floor((np.arange(224) + 0.5) * w / 224).astype(int)
    static = gt.object_ids[idx[3]][rows][:, cols] < 0
    # Static pixels: pixel + flow lands where the same world point projects in frame idx[2].
    uv = pixel_centers((h, w))[rows][:, cols]
    world = unproject_pixels(gt.K, gt.cam_to_world[idx[3]], uv, gt.depth[idx[3]][rows][:, cols].astype(np.float64))
    before, _ = project_points(gt.K, gt.cam_to_world[idx[2]], world)
    expected = (before - uv) * np.array([224 / w, 224 / h])
    np.testing.assert_allclose(out["flow"][:, 3].transpose(1, 2, 0)[static], expected[static], atol=1e-3)
