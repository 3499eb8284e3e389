"""The L4P teacher inside the caching job: windows, checkpoints, heads export, real videos."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import TEST_VIDEOS, copy_scenes
from manifests.clips_table import current_clips, read_clips_table
from pipeline.config import JobConfig, OutputConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from pipeline.teachers.base import TeacherInput
from pipeline.teachers.l4p.config import TINY
from pipeline.teachers.l4p.heads_export import load_heads
from pipeline.teachers.l4p.model import L4PModel
from pipeline.teachers.registry import build_teacher, teacher_identity
from shards.cache_reader import read_cached_clip


def random_clip(num_frames: int, seed: int = 0) -> TeacherInput:
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, 224, 224, 3), dtype=np.uint8)
    return TeacherInput("clip.mp4", np.arange(num_frames), np.arange(num_frames) / 10, frames)


def direct(model: L4PModel, frames: np.ndarray) -> dict[str, np.ndarray]:
    """The model on one 16-frame window, normalized here independently of the teacher."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    video = (torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255 - mean) / std
    with torch.no_grad():
        return {k: v[0].numpy() for k, v in model(video).items()}


@pytest.fixture(scope="module")
def tiny():
    return build_teacher(TeacherConfig(name="l4p-tiny", seed=3, batch_size=2))


def test_a_16_frame_clip_is_the_single_window_result(tiny):
    clip = random_clip(16)
    out = tiny.predict([clip])[0]
    ref = direct(tiny.model, clip.frames)
    np.testing.assert_allclose(out["latents"], ref["latents"], atol=1e-5)
    np.testing.assert_allclose(out["depth"], ref["depth"][0], rtol=1e-5)
    np.testing.assert_allclose(out["flow"], ref["flow_2d_backward"], atol=1e-5)
    np.testing.assert_allclose(out["dyn_mask"], 1 / (1 + np.exp(-ref["dyn_mask"][0])), atol=1e-6)
    np.testing.assert_allclose(out["camray"][0], ref["camray"], atol=1e-5)


def test_a_32_frame_clip_merges_three_windows(tiny):
    clip = random_clip(32, seed=1)
    out = tiny.predict([clip])[0]
    windows = [direct(tiny.model, clip.frames[s:s + 16]) for s in (0, 8, 16)]
    assert out["latents"].shape == (4, 3 * 2048, TINY.embed_dim) and out["camray"].shape == (3, 6, 16, 16, 16)
    np.testing.assert_allclose(out["latents"][:, 2048:4096], windows[1]["latents"], atol=1e-5)
    np.testing.assert_allclose(out["camray"][2], windows[2]["camray"], atol=1e-5)
    flow = [w["flow_2d_backward"] for w in windows]
    # Later window wins, except its first frame (no previous frame inside that window).
    np.testing.assert_allclose(out["flow"][:, 8], flow[0][:, 8], atol=1e-5)
    np.testing.assert_allclose(out["flow"][:, 9], flow[1][:, 1], atol=1e-5)
    np.testing.assert_allclose(out["flow"][:, 16], flow[1][:, 8], atol=1e-5)
    np.testing.assert_allclose(out["flow"][:, 31], flow[2][:, 15], atol=1e-5)
    np.testing.assert_allclose(out["depth"][:8], windows[0]["depth"][0, :8], rtol=1e-5)
    assert out["depth"].shape == (32, 224, 224) and (out["depth"] > 0).all()


def test_lightning_checkpoint_loads_strictly_and_gives_identical_outputs(tiny, tmp_path):
    weights = {f"{k}": v for k, v in tiny.model.state_dict().items()}
    weights["l4p_model.task_heads.track_2d.decoder.weight"] = torch.zeros(2)  # not distilled: ignored
    path = tmp_path / "l4p.ckpt"
    torch.save({"state_dict": weights, "epoch": 3}, path)
    loaded = build_teacher(TeacherConfig(name="l4p-tiny", checkpoint=str(path)))
    clip = random_clip(16, seed=2)
    for name, array in tiny.predict([clip])[0].items():
        np.testing.assert_array_equal(loaded.predict([clip])[0][name], array, err_msg=name)
    assert teacher_identity(TeacherConfig(name="l4p-tiny", checkpoint=str(path)), 16).teacher_id \
        != teacher_identity(TeacherConfig(name="l4p-tiny", seed=3), 16).teacher_id

    renamed = dict(weights)
    renamed["l4p_model.video_encoder.blocks.0.attn.qkv.weight_renamed"] = renamed.pop(
        "l4p_model.video_encoder.blocks.0.attn.qkv.weight")
    torch.save({"state_dict": renamed}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"(?s)missing.*blocks\.0\.attn\.qkv\.weight.*unexpected.*weight_renamed"):
        build_teacher(TeacherConfig(name="l4p-tiny", checkpoint=str(tmp_path / "bad.ckpt")))
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        build_teacher(TeacherConfig(name="l4p-tiny", checkpoint=str(tmp_path / "nowhere.ckpt")))
    with pytest.raises(ValueError, match="teacher-checkpoint"):
        TeacherConfig(name="l4p")


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_job_with_l4p_tiny_on_a_real_video_and_synthetic_scenes(fmt, synthetic_set, ray_session, tmp_path):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    copy_scenes(synthetic_set, videos, ["scene_0000"])
    shutil.copy(TEST_VIDEOS / "flipping_a_pancake.mkv", videos)
    config = JobConfig(videos=str(videos), out=str(cache), sampling=SamplingConfig(num_frames=24, pad=True),
                       teacher=TeacherConfig(name="l4p-tiny"), output=OutputConfig(format=fmt))
    summary = run_job(config)
    assert summary["clips"]["ok"] == 2 and summary["clips"]["failed"] == 0
    for row in current_clips(read_clips_table(cache)).values():
        assert row["window_starts"] == [0, 8], "24 frames, mirror-padded to 32: windows at 0 and 8"
        arrays = read_cached_clip(cache, row)
        assert arrays["latents"].shape == (4, 2 * 2048, TINY.embed_dim)
        assert arrays["depth"].shape == (24, 224, 224) and arrays["camray"].shape == (2, 6, 16, 16, 16)
    # The frozen heads are exported beside the cache and load without the encoder.
    head_config, heads = load_heads(cache / "teacher")
    assert head_config == TINY and set(heads) == {"depth", "flow_2d_backward", "dyn_mask", "camray"}
