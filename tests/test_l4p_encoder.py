"""The L4P video encoder (VideoMAEv2 ViT-g/14) and the loading of weights in the official key layout."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipeline.teachers.l4p.checkpoint import load_state_dict_file, load_strict, normalize_keys, state_dict_sha256
from pipeline.teachers.l4p.config import FULL, TINY
from pipeline.teachers.l4p.encoder import VideoEncoder, encoder_flops

PREFIX = "l4p_model.video_encoder."
DPT = "l4p_model.task_heads.depth.task_head.dpt.scratch."


def tiny_encoder(seed: int) -> VideoEncoder:
    """TINY encoder with every tensor random (q_bias and v_bias included), distinct per seed."""
    torch.manual_seed(seed)
    encoder = VideoEncoder(TINY).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0.0, 0.2)
    return encoder


def tiny_video(batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, 3, TINY.num_frames, TINY.img_size, TINY.img_size)


def reference_pos_embed(n: int, dim: int) -> torch.Tensor:
    return torch.tensor(
        [[(math.sin if j % 2 == 0 else math.cos)(p / 10000 ** (2 * (j // 2) / dim)) for j in range(dim)]
         for p in range(n)]
    )


def test_full_config_builds_on_meta_with_released_parameter_count():
    with torch.device("meta"):
        encoder = VideoEncoder(FULL)
    assert all(t.is_meta for t in [*encoder.parameters(), *encoder.buffers()])
    # 1_011_610_752 = patch embed (3*2*14*14*1408 + 1408 = 1_657_216)
    #   + 40 blocks x 25_248_768 (2 LayerNorms 2*2816, qkv 1408*4224, q/v bias 2*1408,
    #     proj 1408*1408 + 1408, fc1 1408*6144 + 6144, fc2 6144*1408 + 1408)
    #   + final norm 2816.
    count = sum(p.numel() for p in encoder.parameters())
    assert count == 1_011_610_752  # the released encoder's (tests/data/l4p_state_dict.tsv)
    assert "pos_embed" not in encoder.state_dict()
    assert encoder.pos_embed.shape == (FULL.num_tokens, FULL.embed_dim) == (2048, 1408)
    # Shapes through the full-size blocks (head dim 88) without computing anything.
    with torch.device("meta"):
        out = encoder(torch.empty(1, 3, 16, 224, 224), levels=FULL.hooks)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (1, 2048, 1408) for k in (14, 21, 28, 36)}


def test_full_flops_match_reference_figure():
    # The released encoder per window (tests/data/l4p_head_cost.md, to 4 decimals of a TFLOP): 5.0856
    # through all 40 blocks, 4.5777 through hook 36, where the dense heads' last tap is.
    flops = encoder_flops(FULL)
    assert round(flops / 1e12, 4) == pytest.approx(5.0856, abs=1e-9)
    assert encoder_flops(FULL, [40]) == flops
    assert round(encoder_flops(FULL, FULL.hooks) / 1e12, 4) == pytest.approx(4.5777, abs=1e-9)


def test_tiny_output_shapes_and_only_asked_levels():
    encoder = tiny_encoder(1)
    with torch.no_grad():
        out = encoder(tiny_video(), levels=[0, 2, TINY.depth])
    assert set(out) == {0, 2, TINY.depth}
    for feature in out.values():
        assert feature.shape == (2, TINY.num_tokens, TINY.embed_dim) == (2, 2048, 48)


def test_level_semantics_against_manual_run():
    encoder = tiny_encoder(2)
    video = tiny_video()
    levels = list(range(TINY.depth + 1))
    with torch.no_grad():
        out = encoder(video, levels)
        tokens = encoder.patch_embed.proj(video).flatten(2).transpose(1, 2)  # (t, h, w) row-major
        x = tokens + reference_pos_embed(TINY.num_tokens, TINY.embed_dim)
        torch.testing.assert_close(out[0], x)
        for i, block in enumerate(encoder.blocks, start=1):
            x = block(x)
            expected = encoder.norm(x) if i == TINY.depth else x
            torch.testing.assert_close(out[i], expected)


def test_block_matches_videomae_attention():
    """q and v carry learned biases, k none; softmax(q k^T / sqrt(head_dim)) v; pre-norm residuals."""
    block = tiny_encoder(3).blocks[0]
    torch.manual_seed(1)
    x = torch.randn(2, 10, TINY.embed_dim)
    heads, dim = TINY.num_heads, TINY.embed_dim
    with torch.no_grad():
        h = block.norm1(x)
        wq, wk, wv = block.attn.qkv.weight.chunk(3)
        split = lambda t: t.reshape(2, 10, heads, dim // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(h @ wq.T + block.attn.q_bias), split(h @ wk.T), split(h @ wv.T + block.attn.v_bias)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        y = x + block.attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, dim))
        y = y + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(y))))
        torch.testing.assert_close(block(x), y)


def test_low_levels_do_not_run_later_blocks():
    encoder = tiny_encoder(4)
    calls = []
    encoder.blocks[-1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        encoder(tiny_video(1), levels=[0, 1])
        assert calls == []
        encoder(tiny_video(1), levels=[TINY.depth])
    assert calls == [1]


@pytest.mark.parametrize(
    "shape", [(1, 3, 16, 224, 196), (1, 3, 8, 224, 224), (1, 1, 16, 224, 224), (3, 16, 224, 224)]
)
def test_wrong_input_size_is_rejected(shape):
    with pytest.raises(ValueError, match="224"):
        tiny_encoder(5)(torch.zeros(shape), levels=[1])


@pytest.mark.parametrize("levels", [[], [-1], [TINY.depth + 1], [1.0]])
def test_bad_levels_are_rejected(levels):
    with pytest.raises(ValueError, match="level"):
        tiny_encoder(5)(tiny_video(1), levels=levels)


def lightning_checkpoint(encoder: VideoEncoder) -> dict:
    state = {PREFIX + k: v.clone() for k, v in encoder.state_dict().items()}
    state["l4p_model.task_heads.track_2d.decoder.weight"] = torch.randn(4, 4)
    state["l4p_model.task_heads.track_2d.decoder.bias"] = torch.randn(4)
    return {"state_dict": state, "epoch": 7, "global_step": 1000}


def test_lightning_checkpoint_round_trip(tmp_path):
    original, fresh = tiny_encoder(10), tiny_encoder(11)
    video = tiny_video(1)
    levels = [0, 2, TINY.depth]
    with torch.no_grad():
        assert not torch.allclose(original(video, levels)[2], fresh(video, levels)[2])
    path = tmp_path / "l4p.ckpt"
    torch.save(lightning_checkpoint(original), path)
    load_strict(fresh, load_state_dict_file(path), prefix=PREFIX)
    with torch.no_grad():
        expected, got = original(video, levels), fresh(video, levels)
    for level in levels:
        assert torch.equal(got[level], expected[level])


def test_safetensors_round_trip(tmp_path):
    original, fresh = tiny_encoder(12), tiny_encoder(13)
    path = tmp_path / "l4p.safetensors"
    save_file(lightning_checkpoint(original)["state_dict"], str(path))
    weights = load_state_dict_file(path)
    load_strict(fresh, weights, prefix=PREFIX)
    video = tiny_video(1)
    with torch.no_grad():
        assert torch.equal(fresh(video, [TINY.depth])[TINY.depth], original(video, [TINY.depth])[TINY.depth])
    # The teacher id does not depend on the file format.
    assert state_dict_sha256(weights) == state_dict_sha256(lightning_checkpoint(original)["state_dict"])


def test_meta_built_encoder_loads_by_assignment():
    original = tiny_encoder(14)
    with torch.device("meta"):
        fresh = VideoEncoder(TINY)
    load_strict(fresh, lightning_checkpoint(original)["state_dict"], prefix=PREFIX)
    assert not any(t.is_meta for t in [*fresh.parameters(), *fresh.buffers()])
    video = tiny_video(1)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(video, [0, 3])[3], original(video, [0, 3])[3])


def test_mismatched_keys_are_listed():
    state = lightning_checkpoint(tiny_encoder(15))["state_dict"]
    state[PREFIX + "blocks.1.attn.qkv.weights"] = state.pop(PREFIX + "blocks.1.attn.qkv.weight")
    with pytest.raises(ValueError) as info:
        load_strict(tiny_encoder(16), state, prefix=PREFIX)
    message = str(info.value)
    assert re.search(r"missing: \['blocks\.1\.attn\.qkv\.weight'\]", message)
    assert re.search(r"unexpected: \['blocks\.1\.attn\.qkv\.weights'\]", message)


def test_shape_mismatch_names_both_shapes():
    state = lightning_checkpoint(tiny_encoder(15))["state_dict"]
    state[PREFIX + "norm.weight"] = torch.ones(50)
    with pytest.raises(ValueError, match=r"norm\.weight: checkpoint \[50\] vs module \[48\]"):
        load_strict(tiny_encoder(16), state, prefix=PREFIX)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nowhere" / "l4p.ckpt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_state_dict_file(path)


def test_unreadable_file_names_path(tmp_path):
    for name in ("junk.ckpt", "junk.safetensors"):
        path = tmp_path / name
        path.write_text("not a checkpoint")
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_state_dict_file(path)


def test_track_2d_head_is_dropped_and_nothing_else():
    state = {"l4p_model.task_heads.track_2d.w": torch.zeros(1), "l4p_model.task_heads.depth.x": torch.zeros(1),
             "other.track_2d.y": torch.zeros(1)}
    assert set(normalize_keys(state)) == {"l4p_model.task_heads.depth.x", "other.track_2d.y"}


def test_layer_rn_aliases():
    a, b = torch.randn(4, 4, 3, 3, 3), torch.randn(4, 4, 3, 3, 3)
    alias_only = normalize_keys({DPT + "layer_rn.0.weight": a, DPT + "layer_rn.3.weight": b})
    assert set(alias_only) == {DPT + "layer1_rn.weight", DPT + "layer4_rn.weight"}
    assert alias_only[DPT + "layer4_rn.weight"] is b

    both = normalize_keys({DPT + "layer1_rn.weight": a, DPT + "layer_rn.0.weight": a.clone()})
    assert list(both) == [DPT + "layer1_rn.weight"]
    assert torch.equal(both[DPT + "layer1_rn.weight"], a)

    canonical_only = normalize_keys({DPT + "layer2_rn.weight": a})
    assert list(canonical_only) == [DPT + "layer2_rn.weight"]

    with pytest.raises(ValueError, match=re.escape(DPT + "layer_rn.1.weight")):
        normalize_keys({DPT + "layer2_rn.weight": a, DPT + "layer_rn.1.weight": b})


def test_weights_hash_sees_every_byte_and_ignores_order():
    state = lightning_checkpoint(tiny_encoder(17))["state_dict"]
    digest = state_dict_sha256(state)
    assert state_dict_sha256(dict(reversed(list(state.items())))) == digest
    changed = dict(state)
    changed[PREFIX + "norm.bias"] = state[PREFIX + "norm.bias"].clone()
    changed[PREFIX + "norm.bias"][5] += 1e-3
    assert state_dict_sha256(changed) != digest
    assert state_dict_sha256({**state, PREFIX + "norm.bias": state[PREFIX + "norm.bias"].double()}) != digest


_payload_runs: list[str] = []


def _payload() -> dict:
    _payload_runs.append("ran")
    return {}


class Payload:
    """Unpickling this runs _payload: what an untrusted checkpoint could do with arbitrary code."""

    def __reduce__(self):
        return _payload, ()


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    checkpoint = lightning_checkpoint(tiny_encoder(18))
    checkpoint["callbacks"] = Payload()
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(path)
    assert _payload_runs == []
    # The file itself is valid: without weights_only the payload would have run.
    torch.load(path, map_location="cpu", weights_only=False)
    assert _payload_runs == ["ran"]
