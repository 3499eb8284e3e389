"""The student: adapters, TPE, the P4D branch, losses, masking and the export without the branch.

Tiny random Qwen2.5-VL and LLaVA-OneVision models are written as real from_pretrained directories by
student/tiny.py (no download), so loading, forward, generate and save go through stock transformers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from student.adapters import build_adapter
from student.batch import collate
from student.config import BranchConfig, LossConfig, ModelConfig, StudentConfig
from student.model import StudentModel, ablation, load_tokenizer
from student.prompt import IGNORE, encode_conversation
from student.tiny import make_tiny_vlm
from student.tpe import timestamp_encoding

ADAPTERS = ("qwen2_5_vl", "llava_onevision")
FIELDS = ("latents", "depth", "flow", "dyn_mask", "camray")
LATENT_DIM = 24
T = 16


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {a: make_tiny_vlm(a, root / a, seed=1) for a in ADAPTERS}


def student_config(model_dir, adapter, freeze_projector=True, **loss) -> StudentConfig:
    return StudentConfig(
        model=ModelConfig(adapter=adapter, path=str(model_dir), video_size=(112, 112),
                          freeze_projector=freeze_projector),
        branch=BranchConfig(latent_dim=LATENT_DIM, decoders="light", light_hidden=16),
        loss=LossConfig(**loss),
    )


def build(model_dirs, adapter, seed=0, freeze_projector=True, **loss):
    torch.manual_seed(seed)  # the branch's random init
    model = StudentModel.from_config(student_config(model_dirs[adapter], adapter, freeze_projector, **loss))
    return model, load_tokenizer(model_dirs[adapter])


def video_sample(seed=0, shift=0.0, fields=FIELDS, frames=None):
    rng = np.random.default_rng(seed)
    targets = {
        "latents": rng.standard_normal((4, 2048, LATENT_DIM)).astype(np.float32),
        "depth": rng.uniform(0.5, 8.0, (T, 224, 224)).astype(np.float32),
        "flow": (3 * rng.standard_normal((2, T, 224, 224))).astype(np.float32),
        "dyn_mask": rng.uniform(0, 1, (T, 224, 224)).astype(np.float32),
        "camray": rng.standard_normal((1, 6, 16, 16, 16)).astype(np.float32),
    }
    return {
        "sample_id": f"video-{seed}",
        "conversations": [{"role": "user", "content": "<video>\nHow far did the cube move?"},
                          {"role": "assistant", "content": "About 2 m."}],
        "frames": rng.integers(0, 255, (T, 48, 64, 3), dtype=np.uint8) if frames is None else frames,
        "timestamps": np.arange(T) / 8.0 + shift,
        "window_starts": [0],
        "targets": {k: v for k, v in targets.items() if k in fields},
    }


def image_sample(seed=5):
    rng = np.random.default_rng(seed)
    return {
        "sample_id": f"image-{seed}",
        "conversations": [{"from": "human", "value": "<image>\nIs the cup left of the plate?"},
                          {"from": "gpt", "value": "Yes."}],
        "images": [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)],
    }


def projector_and_llm(model: StudentModel) -> dict[str, torch.nn.Parameter]:
    """One projector weight and one LLM weight of the base VLM (released: the LLM trains, the projector not)."""
    named = dict(model.base.named_parameters())
    projector = next(n for n in named if "merger" in n or "multi_modal_projector" in n)
    llm = next(n for n in named if "language_model.layers.0.mlp" in n)
    return {"projector": named[projector], "llm": named[llm]}


# -- inputs ---------------------------------------------------------------------------------------
def test_qwen_pixels_match_the_transformers_image_processor(model_dirs):
    """The patch layout is the one Qwen2-VL's own processor produces (its PIL image processor needs no
    torchvision); same size, so no resampling difference: bit-identical."""
    from transformers import AutoConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    adapter = build_adapter("qwen2_5_vl", AutoConfig.from_pretrained(model_dirs["qwen2_5_vl"]), None, (112, 168))
    image = np.random.default_rng(0).integers(0, 255, (112, 168, 3), dtype=np.uint8)
    hf = Qwen2VLImageProcessorPil(min_pixels=112 * 168, max_pixels=112 * 168, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)(images=[image], return_tensors="pt")
    mine = adapter.prepare_image(image)
    assert tuple(hf["image_grid_thw"][0].tolist()) == mine.meta["grid_thw"]
    torch.testing.assert_close(mine.pixels, hf["pixel_values"], rtol=0, atol=1e-6)


def test_prompt_labels_only_the_answer(model_dirs):
    tok = load_tokenizer(model_dirs["qwen2_5_vl"])
    turns = [{"role": "user", "content": "<video>What moved?"}, {"role": "assistant", "content": "the red cube"}]
    enc = encode_conversation(tok, turns, [("video", [7, 7, 7])])
    learned = [t for t in enc.labels if t != IGNORE]
    assert tok.decode(learned) == "the red cube<|im_end|>"
    assert enc.input_ids.count(7) == 3 and len(enc.input_ids) == len(enc.labels)
    with pytest.raises(ValueError, match="2 <video>/<image> placeholders but the sample has 1 media"):
        encode_conversation(tok, [{"role": "user", "content": "<video><image>?"}], [("video", [7])])


def test_timestamp_encoding_is_the_sinusoid():
    t = torch.tensor([0.0, 1.5])
    pe = timestamp_encoding(t, 6)
    i = torch.arange(3, dtype=torch.float64)
    expected = torch.stack([torch.sin(1.5 / 10000 ** (2 * i / 6)), torch.cos(1.5 / 10000 ** (2 * i / 6))], 1)
    torch.testing.assert_close(pe[1], expected.flatten().float())
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 3))


# -- losses and gradients -------------------------------------------------------------------------
TERMS = {
    "ce": dict(ld_weight=0.0, ed_weight=0.0),
    "ld": dict(ce_weight=0.0, ed_weight=0.0),
    "ed_depth": dict(ce_weight=0.0, ld_weight=0.0, task_weights={"depth": 1.0}),
    "ed_flow": dict(ce_weight=0.0, ld_weight=0.0, task_weights={"flow": 1.0}),
    "ed_dyn_mask": dict(ce_weight=0.0, ld_weight=0.0, task_weights={"dyn_mask": 1.0}),
    "ed_camray": dict(ce_weight=0.0, ld_weight=0.0, task_weights={"camray": 1.0}),
}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_each_loss_alone_reaches_the_llm_and_the_projector_only_when_it_trains(model_dirs, adapter):
    for term, loss in TERMS.items():
        for freeze_projector in (True, False):
            model, tok = build(model_dirs, adapter, freeze_projector=freeze_projector, **loss)
            batch = collate([video_sample()], model.adapter, tok, FIELDS)
            out = model(batch)
            assert out.loss.item() > 0, term
            out.loss.backward()
            parts = projector_and_llm(model)
            assert parts["llm"].grad is not None and parts["llm"].grad.abs().sum() > 0, f"{term}: no gradient to the LLM"
            projector = model.adapter.projector_parameters(model.base)
            assert parts["projector"] in projector
            if freeze_projector:  # released: frozen
                assert all(p.grad is None and not p.requires_grad for p in projector), term
            else:
                assert parts["projector"].grad.abs().sum() > 0, f"{term} sends no gradient to the projector"
            frozen = model.adapter.vision_parameters(model.base)
            assert not set(map(id, frozen)) & set(map(id, projector)), "the tower's parameters exclude the projector"
            assert all(p.grad is None for p in frozen), "the vision encoder is frozen"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_total_is_the_cross_entropy_when_every_p4d_weight_is_zero(model_dirs, adapter):
    model, tok = build(model_dirs, adapter, ld_weight=0.0, ed_weight=0.0)
    out = model(collate([video_sample(), image_sample()], model.adapter, tok, FIELDS))
    assert model.branch is not None  # the branch still runs (ZeRO-3 uniform step) ...
    assert out.loss.item() == out.terms["ce"].item()  # ... and adds exactly nothing


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_mixed_batch_step_masks_the_image_sample(model_dirs, adapter):
    model, tok = build(model_dirs, adapter)
    batch = collate([video_sample(), image_sample()], model.adapter, tok, FIELDS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in projector_and_llm(model).items()}
    out = model(batch)
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss)
    assert set(out.per_sample) == {"ld", "ed_depth", "ed_flow", "ed_dyn_mask", "ed_camray"}
    for term, values in out.per_sample.items():
        assert values[1].item() == 0.0 and not out.valid[term][1], term  # the image-only row
        assert values[0].item() > 0.0 and out.valid[term][0], term
    parts = projector_and_llm(model)
    assert not torch.equal(parts["llm"].detach(), before["llm"]), "the LLM did not train"
    assert torch.equal(parts["projector"].detach(), before["projector"]), "the projector is frozen (released)"


def test_a_field_that_was_not_cached_is_masked(model_dirs):
    model, tok = build(model_dirs, "qwen2_5_vl")
    with_depth, without = video_sample(0), video_sample(1, fields=("latents", "flow", "dyn_mask", "camray"))
    out = model(collate([with_depth, without], model.adapter, tok, FIELDS))
    assert out.valid["ed_depth"].tolist() == [True, False]
    assert out.per_sample["ed_depth"][1].item() == 0.0
    assert out.valid["ld"].tolist() == [True, True]
    # The masked mean is over valid samples only: the batch value is sample 0's own.
    assert out.terms["ed_depth"].item() == pytest.approx(out.per_sample["ed_depth"][0].item(), rel=1e-6)


def test_a_clip_windowed_otherwise_than_the_contract_is_refused(model_dirs):
    model, tok = build(model_dirs, "qwen2_5_vl")
    with pytest.raises(ValueError, match=r"'video-0': teacher windows start at \[0, 8\], not at \[0\]"):
        collate([{**video_sample(0), "window_starts": [0, 8]}], model.adapter, tok, FIELDS)


# -- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_export_drops_the_branch_and_generates_the_same_tokens(model_dirs, adapter, tmp_path):
    model, tok = build(model_dirs, adapter)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(collate([video_sample(), image_sample()], model.adapter, tok, FIELDS)).loss.backward()
    optimizer.step()  # export trained weights, not the ones on disk
    model.eval()

    exported = model.export(tmp_path / "export", tok)
    base_class = model.adapter.model_class
    plain, info = base_class.from_pretrained(exported, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    n_base = sum(p.numel() for p in base_class(plain.config).parameters())
    assert sum(p.numel() for p in plain.parameters()) == n_base
    assert sum(p.numel() for p in model.parameters()) > n_base  # the branch was attached before

    prompt = collate([video_sample(7)], model.adapter, tok, generation=True)
    with_branch = model.generate(prompt, max_new_tokens=8)
    reloaded = StudentModel.from_export(exported).eval()
    assert reloaded.branch is None
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=8), with_branch)
    image_prompt = collate([image_sample()], model.adapter, tok, generation=True)
    assert torch.equal(reloaded.generate(image_prompt, max_new_tokens=8), model.generate(image_prompt, max_new_tokens=8))


def test_ablation_rows():
    base = StudentConfig()
    rows = {name: ablation(base, name) for name in ("baseline", "tpe", "ld", "ed", "ld_ed")}
    assert not rows["baseline"].tpe.enabled and not rows["baseline"].branch.enabled
    assert rows["tpe"].tpe.enabled and not rows["tpe"].branch.enabled
    assert rows["ld"].uses_latents() and rows["ld"].map_tasks() == ()
    assert not rows["ed"].uses_latents() and rows["ed"].map_tasks() == ("depth", "flow", "dyn_mask", "camray")
    assert rows["ld_ed"].uses_latents() and rows["ld_ed"].loss.ed_weight == base.loss.ed_weight


def test_the_configured_penalties_and_forms_reach_the_terms(model_dirs):
    """Not the released forms: MSE for L_LD, L1 for L_ED, flow over the map side, motion as a BCE; each
    term against its formula written out on the branch's own predictions."""
    model, tok = build(model_dirs, "qwen2_5_vl", ld_kind="mse", ed_kind="l1",
                       ed_forms={"flow": "map_side", "dyn_mask": "bce"}, task_weights={"depth": 1.0, "flow": 1.0, "dyn_mask": 1.0, "camray": 1.0})
    sample = video_sample()
    batch = collate([sample], model.adapter, tok, FIELDS)
    terms = model(batch).terms
    pred = {k: v[0].double() for k, v in model.predict_maps(batch).items()}
    t = {k: torch.from_numpy(v).double() for k, v in sample["targets"].items()}
    p = t["dyn_mask"].sigmoid()
    by_hand = {
        "ld": ((pred["latents"] - t["latents"]) ** 2).mean(),
        "ed_depth": ((pred["depth"].exp() + 1e-8).log() - (t["depth"] + 1e-8).log()).abs().mean(),
        "ed_flow": ((pred["flow"] - t["flow"]) / 224).abs().mean(),
        "ed_dyn_mask": (p * torch.nn.functional.softplus(-pred["dyn_mask"])
                        + (1 - p) * torch.nn.functional.softplus(pred["dyn_mask"])).mean(),
        "ed_camray": (pred["camray"] - t["camray"]).abs().mean(),
    }
    for term, expected in by_hand.items():
        assert terms[term].item() == pytest.approx(expected.item(), rel=1e-5), term
