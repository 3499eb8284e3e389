"""TPE where the method puts it (docs/distillation.md: E_V -> TPE -> E_P -> LLM) or, as an option, after the
projector: what reaches the LLM (its inputs_embeds, caught at its input) for two clips with identical
frames and different timestamps, during training (the student with its P4D branch) and at inference
(the export without it, as student/eval.py loads it), against a reference composed in this test from
the model's own modules and the sinusoid written out."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from student.batch import collate
from student.config import BranchConfig, ModelConfig, StudentConfig, TPEConfig
from student.model import StudentModel, load_tokenizer
from student.tiny import make_tiny_vlm

ADAPTERS = {"qwen2_5_vl": (112, 112), "llava_onevision": (56, 56)}
PLACEMENTS = ("before_projector", "after_projector")
T = 16
LATE = 3.0  # seconds the second clip starts later; same frame intervals (Qwen's rotary time is relative)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {a: make_tiny_vlm(a, root / a, seed=2) for a in ADAPTERS}


def sinusoid(t: float, dim: int) -> torch.Tensor:
    """pe[2i] = sin(t / 10000^(2i / dim)), pe[2i + 1] = cos(t / 10000^(2i / dim)), written out."""
    pe = []
    for i in range(dim // 2):
        angle = t / 10000 ** (2 * i / dim)
        pe += [math.sin(angle), math.cos(angle)]
    return torch.tensor(pe)


def clip(shift: float) -> dict:
    frames = np.random.default_rng(5).integers(0, 255, (T, 40, 64, 3), dtype=np.uint8)
    return {"sample_id": f"clip+{shift}", "frames": frames, "timestamps": np.arange(T) / 8.0 + shift,
            "window_starts": [0], "targets": {},
            "conversations": [{"role": "user", "content": "<video>\nWhat moved?"},
                              {"role": "assistant", "content": "the cube"}]}


def llm_input(model: StudentModel, batch, generate: bool) -> torch.Tensor:
    """The inputs_embeds rows of the video tokens as the LLM receives them (training forward or generate)."""
    caught = []
    hook = model.base.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: caught.append(kwargs["inputs_embeds"].detach()), with_kwargs=True)
    with torch.no_grad():
        if generate:
            model.generate(batch, max_new_tokens=1)
        else:
            model(batch)
    hook.remove()
    rows = batch.input_ids[0] == model.adapter.video_token_id
    return caught[0][0, rows]


def qwen_reference(model: StudentModel, inp, placement: str) -> torch.Tensor:
    """Each temporal slot (a frame pair) through the vision tower as a video of its own (attention never
    crosses slots), then the merger on the blocks' output + the slot's encoding (before) or the
    encoding added to the merged tokens (after). The blocks' rows come out window-reordered; the
    order back is found by matching the merger's rows to the tower's own merged output."""
    visual = model.base.model.visual
    gt, gh, gw = inp.meta["grid_thw"]
    per_slot = gh * gw
    out, reordered = [], False
    for s in range(gt):
        res = visual(inp.pixels[s * per_slot:(s + 1) * per_slot], grid_thw=torch.tensor([[1, gh, gw]]))
        blocks, merged = res.last_hidden_state, res.pooler_output
        order = torch.cdist(merged, visual.merger(blocks)).argmin(dim=1)
        torch.testing.assert_close(visual.merger(blocks)[order], merged)
        reordered |= not torch.equal(order, torch.arange(len(order)))
        t = float(inp.slot_times[s])
        if placement == "before_projector":
            out.append(visual.merger(blocks + sinusoid(t, blocks.shape[-1]))[order])
        else:
            out.append(merged + sinusoid(t, merged.shape[-1]))
    assert reordered, "the tiny tower's windows must reorder rows, or the test misses that trap"
    return torch.cat(out)


def llava_reference(model: StudentModel, inp, placement: str) -> torch.Tensor:
    """SigLIP's last hidden state per frame (+ its encoding before the projector), the projector, the
    model's 2 x 2 pooling (+ the encoding after it), then the video's closing image_newline."""
    m = model.base.model
    feats = m.vision_tower(inp.pixels, output_hidden_states=True).hidden_states[-1]
    times = [float(t) for t in inp.slot_times]
    if placement == "before_projector":
        feats = feats + torch.stack([sinusoid(t, feats.shape[-1]) for t in times])[:, None]
    tokens = m.apply_pooling(m.multi_modal_projector(feats))
    if placement == "after_projector":
        tokens = tokens + torch.stack([sinusoid(t, tokens.shape[-1]) for t in times])[:, None]
    return torch.cat([tokens.flatten(0, 1), m.image_newline[None]])


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_timestamps_reach_the_llm_where_tpe_is_placed_with_and_without_the_branch(model_dirs, adapter, placement,
                                                                                 tmp_path):
    config = StudentConfig(
        model=ModelConfig(adapter=adapter, path=str(model_dirs[adapter]), video_size=ADAPTERS[adapter]),
        tpe=TPEConfig(placement=placement), branch=BranchConfig(latent_dim=8, decoders="light", light_hidden=8),
    )
    torch.manual_seed(0)
    student = StudentModel.from_config(config).eval()
    tok = load_tokenizer(model_dirs[adapter])
    exported = StudentModel.from_export(student.export(tmp_path / "export", tok)).eval()
    assert student.branch is not None and exported.branch is None
    assert exported.config.tpe == student.config.tpe

    reference = qwen_reference if adapter == "qwen2_5_vl" else llava_reference
    seen = {}
    for shift in (0.0, LATE):
        training = collate([clip(shift)], student.adapter, tok)
        inference = collate([clip(shift)], exported.adapter, tok, generation=True)
        seen[shift] = llm_input(student, training, generate=False)
        # The export (no branch), as eval loads it, hands the LLM exactly what training did.
        torch.testing.assert_close(llm_input(exported, inference, generate=True), seen[shift], rtol=0, atol=1e-6)
        with torch.no_grad():
            expected = reference(student, training.videos[0], placement)
        torch.testing.assert_close(seen[shift], expected, rtol=1e-4, atol=1e-5)
    assert (seen[0.0] - seen[LATE]).abs().max() > 1e-3, "a clip 3 s later must reach the LLM differently"

    # TPE off: the same two clips are the same to the LLM.
    off = StudentModel(replace(config, tpe=TPEConfig(enabled=False, placement=placement)), student.base,
                       student.adapter).eval()
    early, late = (llm_input(off, collate([clip(s)], off.adapter, tok), generate=False) for s in (0.0, LATE))
    torch.testing.assert_close(early, late, rtol=0, atol=0)


def test_an_export_from_before_placements_existed_keeps_tpe_after_the_projector(model_dirs, tmp_path):
    """p4d_student.json written before tpe.placement existed: that student was trained with TPE after the
    projector, and must run so at inference."""
    import json

    from student.model import STUDENT_META

    adapter = "llava_onevision"
    config = StudentConfig(model=ModelConfig(adapter=adapter, path=str(model_dirs[adapter])),
                           branch=BranchConfig(enabled=False))
    directory = StudentModel.from_config(config).export(tmp_path / "old", load_tokenizer(model_dirs[adapter]))
    meta = json.loads((directory / STUDENT_META).read_text())
    meta["tpe"].pop("placement")
    (directory / STUDENT_META).write_text(json.dumps(meta))
    assert StudentModel.from_export(directory).config.tpe.placement == "after_projector"


def test_an_unknown_placement_is_refused():
    with pytest.raises(ValueError, match="tpe.placement must be one of"):
        TPEConfig(placement="inside_llm")
