"""L4P's DPT heads: structure and cost of the full head, output shapes and transforms, checkpoint key
names, and the heads-only export a student uses for explicit distillation."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.teachers.l4p import encoder as encoder_module
from pipeline.teachers.l4p.config import FULL, TASKS, TINY
from pipeline.teachers.l4p.dpt import DPTHead, apply_output_transform, dpt_flops
from pipeline.teachers.l4p.heads_export import META_FILE, WEIGHTS_FILE, export_heads, load_heads
from pipeline.teachers.l4p.model import L4PModel, heads_state_dict

HEAD_PREFIX = "l4p_model.task_heads.{}.task_head.dpt."


def expected_head_params(config, out_channels: int) -> int:
    """The head's parameters counted by hand from the structure in dpt.py's docstring."""
    e, (c0, c1, c2, c3), f, hid = config.embed_dim, config.dpt_channels, config.dpt_features, config.head_hidden
    embed = sum(e * c + c for c in (c0, c1, c2, c3))
    resample = (16 * c0 * c0 + c0) + (4 * c1 * c1 + c1) + (27 * c3 * c3 + c3)  # tap 2 is Identity
    layer_rn = sum(27 * c * f for c in (c0, c1, c2, c3))  # bias-free
    unit = 2 * (27 * f * f + f)
    refine = 4 * (2 * unit) + 4 * (f * f + f)  # refinenet4's resConfUnit1 is registered, never run
    head = (27 * f * hid + hid) + (27 * hid * hid + hid) + (hid * out_channels + out_channels)
    return embed + resample + layer_rn + refine + head


def tokens(config, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, config.num_tokens, config.embed_dim, generator=g) for _ in config.hooks]


def test_full_head_builds_on_meta_with_the_counted_parameters():
    with torch.device("meta"):
        head = DPTHead(FULL, out_channels=1, out_size=224)
    count = sum(p.numel() for p in head.parameters())
    print(f"FULL DPT head: {count / 1e6:.2f} M params, {dpt_flops(FULL, 1, 224) / 1e12:.2f} TFLOP/window "
          f"(camray at 16: {dpt_flops(FULL, 6, 16) / 1e12:.2f} TFLOP)")
    assert count == expected_head_params(FULL, 1)
    # docs/teacher.md says ~86 M: the inferred parts (resampler kernels) give ~3% fewer (83.7 M); a gap beyond
    # 10% would mean a wrong guess at a big module (e.g. tap 3's 28 M conv).
    assert abs(count - 86e6) / 86e6 < 0.10


@pytest.mark.parametrize("out_channels, out_size", [(1, 224), (6, 16)])
def test_dpt_flops_equals_a_count_of_the_convs_that_run(out_channels, out_size):
    with torch.device("meta"):
        head = DPTHead(FULL, out_channels, out_size)
        taps = [torch.empty(1, FULL.num_tokens, FULL.embed_dim) for _ in FULL.hooks]
    flops = []

    def count(module, inputs, output):
        if isinstance(module, nn.ConvTranspose3d):  # every input voxel scatters a full kernel
            macs = inputs[0][0].numel() * module.out_channels * math.prod(module.kernel_size)
        else:
            macs = output[0].numel() * module.in_channels * math.prod(module.kernel_size)
        flops.append(2 * macs)

    for m in head.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            m.register_forward_hook(count)
    head(taps)
    assert sum(flops) == dpt_flops(FULL, out_channels, out_size)


def test_tiny_heads_output_shapes_and_transforms():
    torch.manual_seed(0)
    taps = tokens(TINY, batch=2)
    for task in TASKS:
        head = DPTHead(TINY, TINY.task_channels[task], TINY.task_size[task])
        with torch.no_grad():
            raw = head(taps)
        size = TINY.task_size[task]
        assert raw.shape == (2, TINY.task_channels[task], TINY.num_frames, size, size), task
        assert torch.isfinite(raw).all(), task
        out = apply_output_transform(task, raw)
        assert out.shape == raw.shape, task
        if task == "depth":
            assert (out > 0).all()
            torch.testing.assert_close(out, raw.exp())
        elif task == "camray":
            assert size == 16
            check_plucker(raw, out)
        else:
            assert torch.equal(out, raw), task  # flow in 224-px units, dyn_mask stays a logit
    with pytest.raises(ValueError, match="unknown L4P task"):
        apply_output_transform("track_2d", raw)


def check_plucker(raw, out):
    d_raw, m_raw, d, m = raw[:, :3], raw[:, 3:], out[:, :3], out[:, 3:]
    assert not torch.allclose(d_raw.norm(dim=1), torch.ones(()), atol=1e-2)  # the transform has work to do
    torch.testing.assert_close(d.norm(dim=1), torch.ones_like(d[:, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close((d * m).sum(1), torch.zeros_like(d[:, 0]), atol=1e-5, rtol=0)
    # Same ray: the point of the line closest to the origin, d x m / |d|^2, does not move.
    closest = lambda d, m: torch.cross(d, m, dim=1) / (d * d).sum(1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(closest(d, m), closest(d_raw, m_raw), atol=1e-4, rtol=1e-4)


def test_camray_transform_keeps_the_ray_of_an_unnormalized_pair():
    g = torch.Generator().manual_seed(1)
    raw = torch.cat([3 * torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)], 1)
    check_plucker(raw, apply_output_transform("camray", raw))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return L4PModel(TINY).eval()


def test_state_dict_keys_follow_the_checkpoint_layout(tiny_model):
    keys = list(tiny_model.state_dict())
    allowed = ("l4p_model.video_encoder.",) + tuple(HEAD_PREFIX.format(t) for t in TASKS)
    assert [k for k in keys if not k.startswith(allowed)] == []
    for task in TASKS:
        p = HEAD_PREFIX.format(task)
        for name in ("act_postprocess.0.0.weight", "act_postprocess.0.1.weight", "act_postprocess.3.1.weight",
                     "scratch.layer1_rn.weight", "scratch.layer4_rn.weight",
                     "scratch.refinenet1.resConfUnit1.conv1.weight", "scratch.refinenet4.resConfUnit2.conv1.weight",
                     "scratch.refinenet4.out_conv.weight", "head1.weight", "head2.0.weight", "head2.2.weight"):
            assert p + name in keys, p + name
        assert p + "act_postprocess.2.1.weight" not in keys  # tap 2's resampler is an Identity
        assert p + "scratch.layer1_rn.bias" not in keys
    assert any(k.startswith("l4p_model.video_encoder.blocks.") for k in keys)
    heads = heads_state_dict(tiny_model)
    assert set(heads) == {k for k in keys if k.startswith("l4p_model.task_heads.")}


def test_forward_gives_hooked_latents_and_transformed_maps(tiny_model):
    video = torch.randn(1, 3, TINY.num_frames, TINY.img_size, TINY.img_size)
    with torch.no_grad():
        out = tiny_model(video)
        features = tiny_model.l4p_model.video_encoder(video, TINY.hooks)
    assert set(out) == {"latents", *TASKS}
    assert out["latents"].shape == (1, len(TINY.hooks), TINY.num_tokens, TINY.embed_dim)
    taps = [features[i] for i in TINY.hooks]
    torch.testing.assert_close(out["latents"], torch.stack(taps, 1))
    for task in TASKS:
        size = TINY.task_size[task]
        assert out[task].shape == (1, TINY.task_channels[task], TINY.num_frames, size, size), task
        with torch.no_grad():
            torch.testing.assert_close(out[task], apply_output_transform(task, tiny_model.head(task)(taps)))
    assert list(tiny_model(video, tasks=("camray",))) == ["latents", "camray"]
    with pytest.raises(KeyError, match="no head for task"):
        tiny_model(video, tasks=("track_2d",))


def test_heads_export_round_trip_without_the_encoder(tiny_model, tmp_path, monkeypatch):
    directory = export_heads(tiny_model, TINY, tmp_path / "heads")
    stored = load_file(str(directory / WEIGHTS_FILE))
    assert stored.keys() == heads_state_dict(tiny_model).keys()
    assert not any("video_encoder" in k for k in stored)

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("load_heads built the video encoder")

    monkeypatch.setattr(encoder_module.VideoEncoder, "__init__", no_encoder)
    config, heads = load_heads(directory)
    assert config == TINY
    assert list(heads) == list(TASKS)
    assert not any(p.requires_grad for p in heads.parameters()) and not heads.training
    taps = tokens(TINY, seed=3)
    with torch.no_grad():
        for task in TASKS:
            assert torch.equal(heads[task](taps), tiny_model.head(task)(taps)), task


def test_heads_export_rejects_a_mismatched_config_and_tampered_weights(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="different config"):
        export_heads(tiny_model, dataclasses.replace(TINY, head_hidden=4), tmp_path / "bad")
    directory = export_heads(tiny_model, TINY, tmp_path / "heads")
    weights = load_file(str(directory / WEIGHTS_FILE))
    key = next(iter(weights))
    weights[key] = weights[key] + 1
    save_file(weights, str(directory / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="does not hold the weights"):
        load_heads(directory)
    (directory / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="not an L4P heads export"):
        load_heads(directory)


def test_an_identical_export_is_not_rewritten_a_changed_one_is(tmp_path):
    torch.manual_seed(0)
    model = L4PModel(TINY)
    export_heads(model, TINY, tmp_path)
    first = (tmp_path / WEIGHTS_FILE).stat().st_mtime_ns
    export_heads(model, TINY, tmp_path)
    assert (tmp_path / WEIGHTS_FILE).stat().st_mtime_ns == first, "same heads: the file is left alone"
    with torch.no_grad():
        model.head("depth").head1.weight.add_(1.0)
    export_heads(model, TINY, tmp_path)
    _, heads = load_heads(tmp_path)
    assert torch.equal(heads["depth"].head1.weight, model.head("depth").head1.weight), "new heads are written"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
