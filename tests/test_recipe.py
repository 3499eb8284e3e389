"""The released 4D-RGPT recipe: this project's defaults and its preset (configs/train/4drgpt.yaml) pinned
against the recipe's values as docs/distillation.md states them (its source: the released run script
and P4D code); the ablation rows derived from the preset; D_4DP's initialization and resize as
released; the total loss as the released weighted sum through the frozen heads; and the preset
training 2 steps on 2 CPU ranks (DeepSpeed ZeRO-3, bf16) from a cache of the tiny L4P teacher,
its heads as D_m."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT
from configs.dataclass_io import to_dict
from student.config import BranchConfig, StudentConfig
from student.model import StudentModel, ablation
from student.p4d import LatentDecoder
from student.train_config import DataConfig, RunConfig, TrainConfig, load_train_config

PRESET = ROOT / "configs" / "train" / "4drgpt.yaml"
# The released recipe, key by key, as docs/distillation.md states it ("The P4D branch", "The released
# recipe"); test_docs_state_the_recipe_pinned_here reads the numbers back from that page.
RELEASED = {
    "student.loss.ld_weight": 0.01,
    "student.loss.task_weights": {"depth": 0.1, "flow": 0.001, "dyn_mask": 0.01, "camray": 1e-5},
    "student.loss.ed_weight": 1.0,  # the released total has one weight per task and no other factor
    "student.loss.ld_kind": "smooth_l1",
    "student.loss.ed_kind": "smooth_l1",
    "student.loss.ed_forms": {"depth": "log", "flow": "pixels", "dyn_mask": "logit", "camray": "rays"},
    "student.model.freeze_vision": True,
    "student.model.freeze_projector": True,
    "student.model.gradient_checkpointing": True,
    "student.tpe.placement": "before_projector",
    "student.branch.decoders": "teacher",
    "student.branch.head": "linear",
    "student.branch.layer": -1,
    "student.branch.hooks": 4,
    "student.branch.latent_dim": 1408,
    "optim.lr": 1e-5,
    "optim.warmup_ratio": 0.03,
    "optim.weight_decay": 0.0,
    "data.global_batch": 1024,
    "data.num_frames": 16,
    "data.datasets": ("sat", "vsti", "robofac", "wolf"),
    "run.epochs": 10,
    "run.max_steps": None,
    "run.deepspeed": "configs/deepspeed/zero3_bf16.json",
}
WEIGHTS = RELEASED["student.loss.task_weights"]


def value(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# -- the recipe -------------------------------------------------------------------------------------
def test_docs_state_the_recipe_pinned_here():
    text = " ".join((ROOT / "docs" / "distillation.md").read_text().split())
    number = r"([0-9.e-]+)"
    weights = re.search(rf"ld_weight {number}; ed_weights depth {number}, flow_2d_backward {number}, "
                        rf"dyn_mask {number}, camray {number}", text)
    assert weights, "docs/distillation.md no longer states the released weights"
    stated = [float(x) for x in weights.groups()]
    tasks = ("depth", "flow", "dyn_mask", "camray")
    assert stated == [RELEASED["student.loss.ld_weight"], *(WEIGHTS[t] for t in tasks)]
    schedule = re.search(rf"lr {number} with a cosine schedule and {number} % warmup, weight decay {number}, bf16, "
                         rf"DeepSpeed ZeRO-3, gradient checkpointing, global batch {number}, {number} epochs, "
                         rf"{number} frames; data mixture SAT \+ VSTI-Bench \+ RoboFAC \+ Wolf", text)
    assert schedule, "docs/distillation.md no longer states the released schedule"
    lr, warmup, decay, batch, epochs, frames = (float(x) for x in schedule.groups())
    assert (lr, warmup / 100, decay, batch, epochs, frames) == (
        RELEASED["optim.lr"], RELEASED["optim.warmup_ratio"], RELEASED["optim.weight_decay"],
        RELEASED["data.global_batch"], RELEASED["run.epochs"], RELEASED["data.num_frames"])
    for phrase in ("Frozen: the vision tower, the multimodal projector and the teacher",
                   "Smooth-L1 (beta 1, mean) for L_LD and every L_ED term",
                   "depth as log(x + 1e-8) on both sides, flow in raw pixels, dyn_mask as raw logits, camray as "
                   "the raw 6-channel rays",
                   "SAME FROZEN L4P DPT heads", "one Linear(hidden -> 1408) per hooked teacher layer",
                   "blocks 14, 21, 28, 36", "LLM's last hidden state",
                   "between the vision encoder and the projector"):
        assert phrase in text, phrase


def test_the_defaults_are_the_released_recipe():
    defaults = TrainConfig()
    for key, released in RELEASED.items():
        assert value(defaults, key) == released, key
    ds = json.loads((ROOT / RELEASED["run.deepspeed"]).read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True


def test_the_preset_is_the_defaults():
    assert to_dict(load_train_config(PRESET)) == to_dict(TrainConfig())


def test_ablation_rows_derive_from_the_preset():
    preset = load_train_config(PRESET).student
    rows = {name: ablation(preset, name) for name in ("baseline", "tpe", "ld", "ed", "ld_ed")}
    assert rows["ld_ed"] == preset
    assert not rows["baseline"].tpe.enabled and not rows["baseline"].branch.enabled
    assert rows["tpe"].tpe == preset.tpe and not rows["tpe"].branch.enabled
    assert rows["ld"].loss == replace(preset.loss, ed_weight=0.0) and rows["ld"].map_tasks() == ()
    assert rows["ed"].loss == replace(preset.loss, ld_weight=0.0) and not rows["ed"].uses_latents()
    assert rows["ed"].map_tasks() == ("depth", "flow", "dyn_mask", "camray")
    # The CPU ablation's config (just ablation) changes sizes only: each of its rows has the preset's
    # TPE and losses (its oracle cache has no L4P heads, so its D_m is the light one).
    small = load_train_config(ROOT / "configs" / "train" / "ablation.yaml").student
    for name, row in rows.items():
        mine = ablation(small, name)
        assert (mine.tpe, mine.loss, mine.branch.enabled) == (row.tpe, row.loss, row.branch.enabled), name
    assert replace(small.branch, latent_dim=preset.branch.latent_dim, decoders=preset.branch.decoders,
                   light_hidden=preset.branch.light_hidden) == preset.branch


def test_a_cache_of_other_clip_lengths_is_refused():
    from student.cache_index import CacheMismatchError

    DataConfig().check_frames(Path("CACHE"), 16)
    DataConfig(num_frames=None).check_frames(Path("CACHE"), 32)
    with pytest.raises(CacheMismatchError, match="CACHE: clips of 32 frames, data.num_frames is 16"):
        DataConfig().check_frames(Path("CACHE"), 32)


def test_global_batch_and_epochs_make_the_passes_and_steps():
    assert DataConfig(batch_size=2, global_batch=1024).accumulation(world=8) == 64
    assert DataConfig(batch_size=2, global_batch=None).accumulation(world=8) == 1
    with pytest.raises(ValueError, match="data.global_batch 1024 is not a multiple of data.batch_size 3 x 8 ranks"):
        DataConfig(batch_size=3).accumulation(world=8)
    assert RunConfig(epochs=10).steps(batches_per_epoch=25, accumulation=4) == 63  # ceil(250 / 4)
    assert RunConfig(epochs=0.5).steps(batches_per_epoch=8, accumulation=1) == 4
    assert RunConfig(epochs=10, max_steps=7).steps(batches_per_epoch=25, accumulation=4) == 7


# -- D_4DP as released -------------------------------------------------------------------------------
def test_d4dp_linear_starts_from_normal_0_0_1_and_zero_bias():
    torch.manual_seed(0)
    decoder = LatentDecoder(64, BranchConfig(latent_dim=48))
    for head in decoder.heads:
        w = head.weight.detach()
        assert head.bias.abs().max().item() == 0.0
        # 3072 draws: the sample std is within 5 % of 0.1 (its own spread is ~1.3 %); PyTorch's default
        # uniform(+-1/sqrt(64)) init would give 0.072 and never exceed 0.125.
        assert w.std().item() == pytest.approx(0.1, rel=0.05) and abs(w.mean().item()) < 0.01
        assert w.abs().max().item() > 0.3


@pytest.mark.parametrize("side", [32, 27, 4])
def test_d4dp_resizes_each_frame_grid_as_torchvision_antialiased_bilinear(side):
    """torchvision's Resize (bilinear, antialias) matches PIL's bilinear resize, which serves as the
    reference here: each channel of each slot's grid resized to 16 x 16 by PIL."""
    channels = 3
    decoder = LatentDecoder(channels, BranchConfig(hooks=1, latent_dim=channels))
    with torch.no_grad():  # the head made the identity: what comes out is the resized grid
        decoder.heads[0].weight.copy_(torch.eye(channels))
    grid = np.random.default_rng(side).standard_normal((1, 2, side, side, channels)).astype(np.float32)
    grid = torch.from_numpy(grid)
    slot_index = torch.tensor([1, 0])
    with torch.no_grad():
        out = decoder(grid, slot_index)[0, 0].reshape(2, 16, 16, channels)
    for k, slot in enumerate(slot_index.tolist()):
        for c in range(channels):
            pil = Image.fromarray(grid[0, slot, :, :, c].numpy(), mode="F").resize((16, 16), Image.BILINEAR)
            np.testing.assert_allclose(out[k, :, :, c].numpy(), np.asarray(pil), rtol=0, atol=1e-5)


# -- the total through the frozen heads ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_heads(tmp_path_factory):
    """The tiny L4P teacher's heads, exported as the caching job exports them, as programs."""
    from pipeline.teachers.l4p.config import TINY
    from pipeline.teachers.l4p.heads_export import export_head_programs, export_heads
    from pipeline.teachers.l4p.model import L4PModel

    torch.manual_seed(0)
    directory = export_heads(L4PModel(TINY).eval(), TINY, tmp_path_factory.mktemp("heads") / "teacher")
    export_head_programs(directory)
    return directory, TINY.embed_dim


def test_heads_that_cannot_decode_the_branch_are_refused(tiny_heads, tmp_path):
    from student.teacher_heads import FrozenTeacherHeads

    heads, width = tiny_heads
    with pytest.raises(ValueError, match=f"take {width}-wide latents, student.branch.latent_dim is 1408"):
        FrozenTeacherHeads(heads, ("depth",), 1408)
    (tmp_path / "teacher").mkdir()  # what an oracle cache has: no heads
    with pytest.raises(FileNotFoundError, match="holds no exported L4P heads.*student.branch.decoders=light"):
        FrozenTeacherHeads(tmp_path / "teacher", ("depth",), width)


def smooth_l1_mean(diff: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """Smooth-L1 (beta 1) written out, averaged over the kept elements."""
    a = diff.abs()
    per = torch.where(a < 1, 0.5 * a * a, a - 0.5)
    return float(per.mean() if keep is None else per[keep].mean())


def test_the_total_is_the_released_weighted_sum_through_the_frozen_heads(tiny_heads, tmp_path):
    from student.batch import collate
    from student.model import load_tokenizer
    from student.tiny import make_tiny_vlm

    heads, width = tiny_heads
    model_dir = make_tiny_vlm("qwen2_5_vl", tmp_path / "vlm")
    defaults = StudentConfig()
    config = replace(defaults, model=replace(defaults.model, path=str(model_dir), video_size=(56, 56)),
                     branch=replace(defaults.branch, latent_dim=width, teacher_heads=str(heads)))
    torch.manual_seed(0)
    model = StudentModel.from_config(config)
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 8.0, (16, 224, 224)).astype(np.float32)
    depth[:, :20] = 0.0  # pixels without depth
    targets = {"latents": rng.standard_normal((4, 2048, width)).astype(np.float32), "depth": depth,
               "flow": (3 * rng.standard_normal((2, 16, 224, 224))).astype(np.float32),
               "dyn_mask": (2 * rng.standard_normal((16, 224, 224))).astype(np.float32),
               "camray": rng.standard_normal((1, 6, 16, 16, 16)).astype(np.float32)}
    sample = {"sample_id": "v", "frames": rng.integers(0, 255, (16, 56, 56, 3), dtype=np.uint8),
              "timestamps": np.arange(16) / 10, "window_starts": [0], "targets": targets,
              "conversations": [{"role": "user", "content": "<video>?"}, {"role": "assistant", "content": "x"}]}
    batch = collate([sample], model.adapter, load_tokenizer(model_dir), tuple(targets))
    out = model(batch)
    pred = {k: v[0].double() for k, v in model.predict_maps(batch).items()}
    t = {k: torch.from_numpy(v).double() for k, v in targets.items()}
    has_depth = t["depth"] > 0
    by_hand = {
        "ld": smooth_l1_mean(pred["latents"] - t["latents"]),
        "ed_depth": smooth_l1_mean((pred["depth"].exp() + 1e-8).log() - (t["depth"] + 1e-8).log(), has_depth),
        "ed_flow": smooth_l1_mean(pred["flow"] - t["flow"]),
        "ed_dyn_mask": smooth_l1_mean(pred["dyn_mask"] - t["dyn_mask"]),
        "ed_camray": smooth_l1_mean(pred["camray"] - t["camray"]),
    }
    for term, expected in by_hand.items():
        assert out.terms[term].item() == pytest.approx(expected, rel=1e-5), term
    total = out.terms["ce"].item() + RELEASED["student.loss.ld_weight"] * by_hand["ld"] + sum(
        WEIGHTS[task] * by_hand[f"ed_{task}"] for task in WEIGHTS)
    assert out.loss.item() == pytest.approx(total, rel=1e-6)


# -- the preset, trained ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def l4p_tiny_cache(synthetic_set, ray_session, tmp_path_factory):
    """The synthetic scenes cached by the tiny L4P teacher (the job exports its heads to CACHE/teacher),
    the heads turned into programs as the README says."""
    from pipeline.config import JobConfig, TeacherConfig
    from pipeline.runner import run_job
    from pipeline.sampling import SamplingConfig
    from pipeline.teachers.l4p.heads_export import export_head_programs

    out = tmp_path_factory.mktemp("l4p-tiny-cache")
    summary = run_job(JobConfig(videos=str(synthetic_set), out=str(out), sampling=SamplingConfig(num_frames=16),
                                teacher=TeacherConfig(name="l4p-tiny")))
    assert summary["clips"]["ok"] == 4
    export_head_programs(out / "teacher")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_preset_trains_two_steps_on_two_cpu_ranks_through_the_tiny_heads(l4p_tiny_cache, tmp_path):
    """configs/train/4drgpt.yaml as it is (bf16 ZeRO-3, TPE before the projector, the frozen heads as D_m,
    the released losses and weights), sized down only: a tiny student, the tiny teacher's latent width,
    1 sample per pass and a global batch of 4, so each of the 2 steps accumulates 2 passes per rank."""
    from student.tiny import make_tiny_vlm

    model_dir = make_tiny_vlm("qwen2_5_vl", tmp_path / "vlm")
    run = tmp_path / "run"
    sets = [f"student.model.path={model_dir}", "student.model.video_size=[56, 56]", "student.branch.latent_dim=48",
            f"data.cache={l4p_tiny_cache}", "data.datasets=[]", "data.batch_size=1", "data.global_batch=4",
            "data.num_workers=0", "run.max_steps=2", f"run.out={run}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               "student/train.py", "--config", str(PRESET), *(x for s in sets for x in ("--set", s))]
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:]

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["student"]["branch"]["decoders"] == "teacher"
    assert saved["student"]["branch"]["teacher_heads"] == str(l4p_tiny_cache / "teacher")
    passes = {r: [json.loads(line) for line in (run / f"batches-rank{r}.jsonl").read_text().splitlines()]
              for r in (0, 1)}
    for r in (0, 1):
        assert [p["step"] for p in passes[r]] == [1, 1, 2, 2], "2 passes per optimizer step"
    samples = [s for r in (0, 1) for p in passes[r] for s in p["samples"]]
    assert len(samples) == len(set(samples)) == 8

    # Rank 0's log line of each step: the total is the released weighted sum of the terms it lists.
    lines = re.findall(r"step (\d) loss (\S+) ce (\S+) ld (\S+) ed_depth (\S+) ed_flow (\S+) ed_dyn_mask (\S+) "
                       r"ed_camray (\S+) \|", done.stdout)
    assert [int(line[0]) for line in lines] == [1, 2]
    for _, loss, ce, ld, *ed in lines:
        ed = dict(zip(("depth", "flow", "dyn_mask", "camray"), map(float, ed)))
        assert all(v > 0 for v in ed.values()), ed
        total = float(ce) + RELEASED["student.loss.ld_weight"] * float(ld) + sum(WEIGHTS[t] * ed[t] for t in ed)
        assert float(loss) == pytest.approx(total, rel=1e-5)
    exported = StudentModel.from_export(run / "export")
    assert exported.config.tpe.placement == "before_projector" and exported.branch is None
