"""L4P's DPT heads against the released model: the full config's keys and shapes (tests/data/
l4p_state_dict.tsv), every intermediate shape, parameters and FLOPs (tests/data/l4p_head_cost.md), the
forward as documented there, the output transforms, and the heads-only export a student uses."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from bench.l4p_teacher import RELEASED_HEADS
from pipeline.teachers.l4p import encoder as encoder_module
from pipeline.teachers.l4p.checkpoint import load_strict, normalize_keys
from pipeline.teachers.l4p.config import FULL, TASKS, TINY, config_from_dict
from pipeline.teachers.l4p.dpt import DPTHead, apply_output_transform, dpt_flops
from pipeline.teachers.l4p.heads_export import (
    META_FILE, WEIGHTS_FILE, export_head_programs, export_heads, load_heads,
)
from pipeline.teachers.l4p.model import L4PModel, heads_state_dict

KEY_LIST = Path(__file__).parent / "data" / "l4p_state_dict.tsv"
HEAD_PREFIX = "l4p_model.task_heads.{}.task_head.dpt."


def released_rows() -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, alias_of) of every row of the released key list."""
    lines = [line.rstrip("\n").split("\t") for line in KEY_LIST.read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == ["key", "shape", "numel", "alias_of"]
    return [(key, tuple(int(n) for n in shape.split("x")) if shape else (), alias)
            for key, shape, _numel, alias in lines[1:]]


def released_totals() -> dict[str, int]:
    """Unique parameters per part, from the key list's header ("#   depth   85,845,889  (68 keys...")."""
    found = re.findall(r"^#\s+(video_encoder|depth|flow_2d_backward|dyn_mask|camray)\s+([\d,]+)\s+\(",
                       KEY_LIST.read_text(), re.M)
    return {part: int(number.replace(",", "")) for part, number in found}


@pytest.fixture(scope="module")
def full_model():
    with torch.device("meta"):
        return L4PModel(FULL)


def test_full_model_has_the_released_keys_and_shapes(full_model):
    rows = released_rows()
    assert len(rows) == 796
    aliases = {key: target for key, _, target in rows if target}
    assert len(aliases) == 16  # scratch.layer_rn.0-3 of four heads
    # The loader folds each alias onto the key it names, as the key list says.
    for alias, target in aliases.items():
        assert list(normalize_keys({alias: torch.zeros(1)})) == [target]
    released = {key: shape for key, shape, target in rows if not target}
    ours = {key: tuple(tensor.shape) for key, tensor in full_model.state_dict().items()}
    assert sorted(set(released) - set(ours)) == [] and sorted(set(ours) - set(released)) == []
    assert {k: (released[k], ours[k]) for k in ours if released[k] != ours[k]} == {}


def test_full_model_loads_the_released_layout_strictly_with_the_released_counts(full_model):
    # Every key of the released file, both layer_rn spellings and a track_2d key included, as
    # zero-stride CPU tensors: a real strict load of 1.35 B parameters without 5.4 GB of memory.
    zero = torch.zeros(())
    state = {key: zero.expand(shape) for key, shape, _ in released_rows()}
    state["l4p_model.task_heads.track_2d.prompt_feature_linear_layer.weight"] = zero.expand(704, 704)
    with torch.device("meta"):
        model = L4PModel(FULL)
    load_strict(model, state)
    assert not any(p.is_meta for p in model.parameters())
    totals = released_totals()
    assert set(totals) == {"video_encoder", *TASKS}
    assert sum(p.numel() for p in model.l4p_model.video_encoder.parameters()) == totals["video_encoder"]
    for task in TASKS:
        assert sum(p.numel() for p in model.head(task).parameters()) == totals[task] == RELEASED_HEADS[task][0], task


@pytest.mark.parametrize("task", TASKS)
def test_head_flops_equal_torchs_count_and_the_released_figure(full_model, task):
    head = full_model.head(task)
    with torch.device("meta"):
        taps = [torch.empty(1, FULL.num_tokens, FULL.embed_dim) for _ in FULL.hooks]
    with FlopCounterMode(display=False) as counter:
        head(taps)
    counted = dpt_flops(FULL, FULL.heads[task])
    assert counted == counter.get_total_flops()
    released = RELEASED_HEADS[task][1]  # given to 4 decimals of a TFLOP
    assert round(counted / 1e12, 4) == pytest.approx(released / 1e12, abs=1e-9), (counted, released)


# tests/data/l4p_head_cost.md, "Shape trace": the output of each stage for one window (batch 1).
DENSE_TRACE = {
    "act_postprocess.0": (256, 16, 64, 64), "act_postprocess.1": (512, 16, 32, 32),
    "act_postprocess.2": (1024, 8, 16, 16), "act_postprocess.3": (1024, 4, 8, 8),
    "scratch.layer1_rn": (256, 16, 64, 64), "scratch.layer2_rn": (256, 16, 32, 32),
    "scratch.layer3_rn": (256, 8, 16, 16), "scratch.layer4_rn": (256, 4, 8, 8),
    "scratch.refinenet4": (256, 8, 16, 16), "scratch.refinenet3": (256, 16, 32, 32),
    "scratch.refinenet2": (256, 16, 64, 64), "scratch.refinenet1": (256, 16, 128, 128),
    "head1": (128, 16, 128, 128), "head2": (1, 16, 224, 224),
}
CAMRAY_TRACE = {
    "act_postprocess.0": (256, 16, 16, 16), "act_postprocess.1": (512, 16, 16, 16),
    "act_postprocess.2": (1024, 8, 16, 16), "act_postprocess.3": (1024, 4, 8, 8),
    "scratch.layer1_rn": (256, 16, 16, 16), "scratch.layer2_rn": (256, 16, 16, 16),
    "scratch.layer3_rn": (256, 8, 16, 16), "scratch.layer4_rn": (256, 4, 8, 8),
    "scratch.refinenet4": (256, 8, 16, 16), "scratch.refinenet3": (256, 16, 16, 16),
    "scratch.refinenet2": (256, 16, 16, 16), "scratch.refinenet1": (256, 16, 16, 16),
    "head1": (128, 16, 16, 16), "head2": (6, 16, 16, 16),
}


@pytest.mark.parametrize("task, trace", [("depth", DENSE_TRACE), ("camray", CAMRAY_TRACE)])
def test_every_stage_has_the_released_shape(full_model, task, trace):
    head = full_model.head(task)
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = tuple(output.shape[1:])
        return hook

    handles = [head.get_submodule(name).register_forward_hook(record(name)) for name in trace]
    with torch.device("meta"):
        head([torch.empty(1, FULL.num_tokens, FULL.embed_dim) for _ in FULL.hooks])
    for handle in handles:
        handle.remove()
    # refinenet4's output is cut to layer3_rn's (t, h) after the block: a no-op at these shapes.
    assert shapes == trace


def documented_forward(weights: dict[str, torch.Tensor], taps: list[torch.Tensor], config, head) -> torch.Tensor:
    """A DPT head written from tests/data/l4p_head_cost.md and L4P's resampler rule with functional ops
    on the state dict: the second implementation the module is checked against."""
    def w(name):
        return weights[name + ".weight"], weights.get(name + ".bias")

    def unit(x, name):
        y = F.conv3d(F.relu(x), *w(name + ".conv1"), padding=1)
        return x + F.conv3d(F.relu(y), *w(name + ".conv2"), padding=1)

    levels = []
    for i, (x, log2) in enumerate(zip(taps, head.resample_log2)):
        x = x.transpose(1, 2).reshape(x.shape[0], -1, *config.grid)
        x = F.conv3d(x, *w(f"act_postprocess.{i}.0"))
        if min(log2) < 0:
            stride = [2**-f for f in log2]
            x = F.conv3d(x, *w(f"act_postprocess.{i}.1"), stride=stride, padding=[s // 2 for s in stride])
        elif max(log2) > 0:
            x = F.conv_transpose3d(x, *w(f"act_postprocess.{i}.1"), stride=[2**f for f in log2])
        levels.append(F.conv3d(x, weights[f"scratch.layer{i + 1}_rn.weight"], padding=1))
    path = None
    for i in (4, 3, 2, 1):
        block = f"scratch.refinenet{i}"
        x = levels[3] if path is None else path + unit(levels[i - 1], block + ".resConfUnit1")
        x = F.interpolate(unit(x, block + ".resConfUnit2"), scale_factor=head.fusion_scale[i - 1],
                          mode="trilinear", align_corners=True)
        path = F.conv3d(x, *w(block + ".out_conv"))
    x = F.conv3d(path, *w("head1.0"), padding=1)
    x = F.interpolate(x, size=(config.num_frames, head.size, head.size), mode="trilinear", align_corners=True)
    return F.conv3d(F.relu(F.conv3d(x, *w("head2.0"), padding=1)), *w("head2.2"))


def tokens(config, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, config.num_tokens, config.embed_dim, generator=g) for _ in config.hooks]


@pytest.mark.parametrize("task", ["flow_2d_backward", "camray"])
def test_tiny_head_computes_the_documented_forward(task):
    torch.manual_seed(0)
    head = DPTHead(TINY, TINY.heads[task]).eval()
    with torch.no_grad():  # random biases are tiny at init: make every term count
        for p in head.parameters():
            p.normal_(0, 0.3 / max(1, p[0].numel()) ** 0.5)
    taps = tokens(TINY, batch=2)
    with torch.no_grad():
        out = head(taps)
        expected = documented_forward(head.state_dict(), taps, TINY, TINY.heads[task])
    channels, size = TINY.heads[task].channels, TINY.heads[task].size
    assert out.shape == (2, channels, TINY.num_frames, size, size)
    assert expected.std() > 1e-2
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_output_transforms_are_the_released_ones():
    raw = torch.randn(2, 6, 4, 5, 5)
    torch.testing.assert_close(apply_output_transform("depth", raw[:, :1]), raw[:, :1].exp())
    for task in ("flow_2d_backward", "dyn_mask", "camray"):  # the logit and the raw rays, as distilled
        assert apply_output_transform(task, raw) is raw
    with pytest.raises(ValueError, match="unknown L4P task"):
        apply_output_transform("track_2d", raw)


def test_head_configs_reject_impossible_factors():
    bad = dataclasses.replace(TINY.heads["depth"], resample_log2=((1, -1, 0),) * 4)
    with pytest.raises(ValueError, match="up or down in every axis"):
        DPTHead(TINY, bad)
    with pytest.raises(ValueError, match="exactly 4 taps"):
        DPTHead(TINY, dataclasses.replace(bad, fusion_scale=((1, 1, 1),) * 3))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return L4PModel(TINY).eval()


def test_tiny_model_has_the_full_models_module_tree(tiny_model, full_model):
    """l4p-tiny runs every code path of the full model: the same keys, only fewer encoder blocks."""
    def names(model):
        return {re.sub(r"blocks\.\d+\.", "blocks.N.", k) for k in model.state_dict()}

    assert names(tiny_model) == names(full_model)
    assert set(heads_state_dict(tiny_model)) == {k for k in tiny_model.state_dict() if k.startswith("l4p_model.task_heads.")}


def test_forward_gives_hooked_latents_and_transformed_maps(tiny_model):
    video = torch.randn(1, 3, TINY.num_frames, TINY.img_size, TINY.img_size)
    with torch.no_grad():
        out = tiny_model(video, tasks=("depth", "camray"))
        features = tiny_model.l4p_model.video_encoder(video, TINY.hooks)
    assert list(out) == ["latents", "depth", "camray"]
    taps = [features[i] for i in TINY.hooks]
    torch.testing.assert_close(out["latents"], torch.stack(taps, 1))
    with torch.no_grad():
        torch.testing.assert_close(out["depth"], tiny_model.head("depth")(taps).exp())
        torch.testing.assert_close(out["camray"], tiny_model.head("camray")(taps))
    with pytest.raises(KeyError, match="no head for task"):
        tiny_model(video, tasks=("track_2d",))


def test_heads_export_round_trip_without_the_encoder(tiny_model, tmp_path, monkeypatch):
    directory = export_heads(tiny_model, TINY, tmp_path / "heads")
    stored = load_file(str(directory / WEIGHTS_FILE))
    assert stored.keys() == heads_state_dict(tiny_model).keys()

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("load_heads built the video encoder")

    monkeypatch.setattr(encoder_module.VideoEncoder, "__init__", no_encoder)
    config, heads = load_heads(directory)
    assert config == TINY
    assert list(heads) == list(TASKS)
    assert not any(p.requires_grad for p in heads.parameters()) and not heads.training
    for task in TASKS:
        ours, exported = tiny_model.head(task).state_dict(), heads[task].state_dict()
        assert ours.keys() == exported.keys() and all(torch.equal(ours[k], exported[k]) for k in ours), task
    taps = tokens(TINY, seed=3)
    with torch.no_grad():
        assert torch.equal(heads["camray"](taps), tiny_model.head("camray")(taps))


def test_head_programs_follow_the_weights_they_were_made_from(tiny_model, tmp_path):
    """The caching job writes the programs the student loads once per weights: an unchanged export keeps
    them, new weights replace each field's program when it is next asked for (a stale program would
    decode with the old heads)."""
    directory = export_heads(tiny_model, TINY, tmp_path / "heads")
    paths = export_head_programs(directory, fields=("depth", "camray"))
    written = {p: p.stat().st_mtime_ns for p in paths}
    assert export_head_programs(directory, fields=("depth", "camray")) == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == written, "an unchanged export was rewritten"
    torch.manual_seed(1)
    other = L4PModel(TINY).eval()
    export_heads(other, TINY, directory)
    export_head_programs(directory, fields=("depth",))
    (camray,) = export_head_programs(directory, fields=("camray",))  # its program predates the new weights
    taps = tokens(TINY, seed=4)
    with torch.no_grad():
        program = torch.export.load(str(camray)).module()
        torch.testing.assert_close(program(*taps), other.head("camray")(taps))


def test_config_survives_json():
    for config in (FULL, TINY):
        assert config_from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({**dataclasses.asdict(TINY), "extra": 1})


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
        model.head("depth").head1[0].weight.add_(1.0)
    export_heads(model, TINY, tmp_path)
    _, heads = load_heads(tmp_path)
    assert torch.equal(heads["depth"].head1[0].weight, model.head("depth").head1[0].weight), "new heads are written"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
