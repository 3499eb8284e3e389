"""The L4P teacher inside the caching job: windows merged as the released code merges them (every frame
against an independent merge), a checkpoint in the released layout, heads export, real videos."""
from __future__ import annotations

import re
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
from pipeline.teachers.l4p import teacher as teacher_module
from pipeline.teachers.l4p.checkpoint import normalize_keys
from pipeline.teachers.l4p.config import TINY
from pipeline.teachers.l4p.heads_export import load_heads
from pipeline.teachers.l4p.model import L4PModel
from pipeline.teachers.registry import build_teacher, teacher_identity
from shards.cache_reader import read_cached_clip
from test_l4p_heads import released_rows
from test_l4p_windows import released_merge


def random_clip(num_frames: int, seed: int = 0) -> TeacherInput:
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, 224, 224, 3), dtype=np.uint8)
    return TeacherInput("clip.mp4", np.arange(num_frames), np.arange(num_frames) / 10, frames)


def direct(model: L4PModel, windows: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The model on 16-frame windows [16, 224, 224, 3] (one batch: CPU convolutions are much faster
    batched), normalized here independently of the teacher."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    video = (torch.from_numpy(np.stack(windows)).permute(0, 4, 1, 2, 3).float() / 255 - mean) / std
    with torch.no_grad():
        out = model(video)
    return [{k: v[i].numpy() for k, v in out.items()} for i in range(len(windows))]


@pytest.fixture(scope="module")
def tiny():
    return build_teacher(TeacherConfig(name="l4p-tiny", seed=3, batch_size=4))


@pytest.fixture(scope="module")
def clip32():
    return random_clip(32, seed=1)


@pytest.fixture(scope="module")
def windows32(tiny, clip32):
    """The model on the windows of the 32-frame clip (starts 0, 8, 16); the 24-frame clip made of its
    first 24 frames has the first two."""
    return direct(tiny.model, [clip32.frames[s:s + 16] for s in (0, 8, 16)])


def test_a_16_frame_clip_is_the_single_window_result(tiny):
    clips = [random_clip(16), random_clip(16, seed=5)]  # two clips of one window each, one batch
    outs = tiny.predict(clips)
    refs = direct(tiny.model, [clip.frames for clip in clips])
    assert not np.allclose(outs[0]["depth"], outs[1]["depth"], rtol=1e-3), "each clip its own window"
    out, ref = outs[1], refs[1]
    np.testing.assert_allclose(out["latents"], ref["latents"], atol=1e-5)
    np.testing.assert_allclose(out["depth"], ref["depth"][0], rtol=1e-5)
    np.testing.assert_allclose(out["flow"], ref["flow_2d_backward"], atol=1e-5)
    np.testing.assert_allclose(out["dyn_mask"], ref["dyn_mask"][0], atol=1e-5)  # the logit
    np.testing.assert_allclose(out["camray"][0], ref["camray"], atol=1e-5)  # the raw rays
    assert (out["dyn_mask"] < 0).any(), "logits, not probabilities"
    assert not np.allclose(np.linalg.norm(out["camray"][0, :3], axis=0), 1.0, atol=0.05), "rays not normalized"


@pytest.mark.parametrize("num_frames", [24, 32])
def test_windows_merge_on_every_frame_as_the_released_code_merges_them(tiny, clip32, windows32, num_frames):
    clip = TeacherInput("clip.mp4", clip32.frame_indices[:num_frames], clip32.timestamps[:num_frames],
                        clip32.frames[:num_frames])
    out = tiny.predict([clip])[0]
    starts = list(range(0, num_frames - 8, 8))
    per_window = windows32[:len(starts)]
    assert out["latents"].shape == (4, len(starts) * 2048, TINY.embed_dim)
    assert out["camray"].shape == (len(starts), 6, 16, 16, 16)
    for w, window in enumerate(per_window):
        np.testing.assert_allclose(out["latents"][:, w * 2048:(w + 1) * 2048], window["latents"], atol=1e-5)
        np.testing.assert_allclose(out["camray"][w], window["camray"], atol=1e-5)
    for field, task in (("depth", "depth"), ("flow", "flow_2d_backward"), ("dyn_mask", "dyn_mask")):
        time_first = [np.moveaxis(window[task], 1, 0) for window in per_window]  # [16, C, H, W]
        expected = np.moveaxis(released_merge(field, time_first, starts), 0, 1)
        expected = expected[0] if field in ("depth", "dyn_mask") else expected
        np.testing.assert_allclose(out[field], expected, rtol=1e-4, atol=1e-5, err_msg=field)
    # The merge has work to do: a plain overwrite moves depth by more than the tolerance above.
    overwrite = np.concatenate([per_window[0]["depth"][0]] + [w["depth"][0, 8:] for w in per_window[1:]])
    assert np.abs(overwrite / np.asarray(out["depth"]) - 1).max() > 1e-2


def released_layout(model: L4PModel) -> dict[str, torch.Tensor]:
    """The model's weights under the released file's names: the keys of tests/data/l4p_state_dict.tsv
    (encoder blocks beyond the tiny depth left out) with both layer_rn spellings, plus track_2d keys
    (names from NVlabs/L4P's VideoMAETrack2DSamHead), in a Lightning checkpoint's order of business."""
    weights = model.state_dict()
    out = {}
    for key, _shape, alias_of in released_rows():
        block = re.search(r"video_encoder\.blocks\.(\d+)\.", key)
        if block and int(block[1]) >= TINY.depth:
            continue
        out[key] = weights[alias_of or key]
    for name, shape in (("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", (2, 64)),
                        ("prompt_feature_linear_layer.weight", (8, 8)), ("prompt_feature_linear_layer.bias", (8,)),
                        ("processed_video_mask_token.weight", (1, 8))):
        out[f"l4p_model.task_heads.track_2d.{name}"] = torch.randn(shape)
    return out


def test_a_checkpoint_in_the_released_layout_loads_strictly_and_gives_the_same_outputs(tiny, tmp_path):
    weights = released_layout(tiny.model)
    assert set(normalize_keys(weights)) == set(tiny.model.state_dict()), "the released names, folded"
    assert any(".scratch.layer_rn.0." in k for k in weights) and any(".scratch.layer1_rn." in k for k in weights)
    path = tmp_path / "l4p.ckpt"
    torch.save({"state_dict": weights, "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.4.0"}, path)
    loaded = build_teacher(TeacherConfig(name="l4p-tiny", checkpoint=str(path)))
    clips = [random_clip(16, seed=2), random_clip(16, seed=4)]
    for out, expected in zip(loaded.predict(clips), tiny.predict(clips)):
        for name, array in out.items():
            np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert teacher_identity(TeacherConfig(name="l4p-tiny", checkpoint=str(path)), 16).teacher_id \
        != teacher_identity(TeacherConfig(name="l4p-tiny", seed=3), 16).teacher_id


def test_a_checkpoint_that_does_not_match_is_refused_by_name(tiny, tmp_path):
    weights = released_layout(tiny.model)
    renamed = dict(weights)
    renamed["l4p_model.video_encoder.blocks.0.attn.qkv.weight_renamed"] = renamed.pop(
        "l4p_model.video_encoder.blocks.0.attn.qkv.weight")
    torch.save({"state_dict": renamed}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"(?s)missing.*blocks\.0\.attn\.qkv\.weight.*unexpected.*weight_renamed"):
        build_teacher(TeacherConfig(name="l4p-tiny", checkpoint=str(tmp_path / "bad.ckpt")))
    # The pre-release resampler (time not upsampled) has the shape this project once guessed.
    guessed = dict(weights)
    key = "l4p_model.task_heads.depth.task_head.dpt.act_postprocess.0.1.weight"
    guessed[key] = guessed[key][:, :, :1]
    torch.save({"state_dict": guessed}, tmp_path / "guessed.ckpt")
    with pytest.raises(ValueError, match=r"act_postprocess\.0\.1\.weight: checkpoint \[8, 8, 1, 4, 4\] vs module \[8, 8, 2, 4, 4\]"):
        build_teacher(TeacherConfig(name="l4p-tiny", checkpoint=str(tmp_path / "guessed.ckpt")))
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        build_teacher(TeacherConfig(name="l4p-tiny", checkpoint=str(tmp_path / "nowhere.ckpt")))
    with pytest.raises(ValueError, match="teacher-checkpoint"):
        TeacherConfig(name="l4p")


def test_the_teacher_id_changes_with_what_is_cached(monkeypatch):
    """Same architecture and weights, other outputs (merge rules, transforms): a new id, so old caches
    recompute instead of being mixed with new ones."""
    config = TeacherConfig(name="l4p-tiny")
    before = teacher_identity(config, 16).teacher_id
    monkeypatch.setattr(teacher_module, "OUTPUTS_VERSION", teacher_module.OUTPUTS_VERSION + 1)
    assert teacher_identity(config, 16).teacher_id != before


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
    # ... and as the programs the student's default D_m loads.
    assert sorted(p.name for p in (cache / "teacher").glob("*.pt2")) == [
        f"l4p_head_{field}.pt2" for field in ("camray", "depth", "dyn_mask", "flow")]
