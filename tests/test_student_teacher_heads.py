"""D_m option "teacher": the frozen L4P heads reach the student as torch.export programs (data, not an
import of pipeline/), decode its latents exactly as the teacher's own heads do, pass gradient back to
the LLM, and stay out of the trainable parameters."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.teachers.l4p.config import TINY
from pipeline.teachers.l4p.heads_export import export_head_programs, export_heads
from pipeline.teachers.l4p.model import L4PModel
from student.batch import collate
from student.config import BranchConfig, LossConfig, ModelConfig, StudentConfig
from student.model import StudentModel, load_tokenizer
from student.teacher_heads import FrozenTeacherHeads
from student.tiny import make_tiny_vlm

FIELDS = ("depth", "camray")


def test_teacher_heads_decode_like_the_teacher_and_train_the_student(tmp_path):
    torch.manual_seed(0)
    teacher = L4PModel(TINY).eval()
    export_heads(teacher, TINY, tmp_path / "teacher")
    written = export_head_programs(tmp_path / "teacher", FIELDS)
    assert sorted(p.name for p in written) == ["l4p_head_camray.pt2", "l4p_head_depth.pt2"]

    heads = FrozenTeacherHeads(tmp_path / "teacher", FIELDS, TINY.embed_dim)
    latents = torch.randn(1, 4, 2 * TINY.num_tokens, TINY.embed_dim)  # two windows
    decoded = {field: heads(field, latents, windows=2) for field in FIELDS}
    for w in range(2):
        taps = [latents[0, h, w * TINY.num_tokens:(w + 1) * TINY.num_tokens][None] for h in range(4)]
        with torch.no_grad():  # raw outputs: log depth and the raw rays, the student's prediction space
            for field in FIELDS:
                torch.testing.assert_close(decoded[field][0, w], teacher.head(field)(taps)[0], rtol=1e-4, atol=1e-5)

    model_dir = make_tiny_vlm("qwen2_5_vl", tmp_path / "vlm")
    config = StudentConfig(
        model=ModelConfig(adapter="qwen2_5_vl", path=str(model_dir), video_size=(56, 56)),
        branch=BranchConfig(latent_dim=TINY.embed_dim, decoders="teacher", teacher_heads=str(tmp_path / "teacher"),
                            tasks=FIELDS),
        loss=LossConfig(ce_weight=0.0, ld_weight=0.0, task_weights={"depth": 1.0, "camray": 1.0}),
    )
    model = StudentModel.from_config(config)
    assert not any("head" in n and "dpt" in n for n, _ in model.named_parameters())
    rng = np.random.default_rng(0)
    sample = {
        "sample_id": "v", "conversations": [{"role": "user", "content": "<video>?"}, {"role": "assistant", "content": "x"}],
        "frames": rng.integers(0, 255, (16, 56, 56, 3), dtype=np.uint8), "timestamps": np.arange(16) / 10,
        "window_starts": [0],
        "targets": {"depth": rng.uniform(1, 3, (16, 224, 224)).astype(np.float32),
                    "camray": rng.standard_normal((1, 6, 16, 16, 16)).astype(np.float32)},
    }
    out = model(collate([sample], model.adapter, load_tokenizer(model_dir), FIELDS))
    out.loss.backward()
    llm = dict(model.base.named_parameters())["model.language_model.layers.0.mlp.up_proj.weight"]
    assert llm.grad is not None and llm.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.branch.teacher_heads.programs["depth"].parameters())
