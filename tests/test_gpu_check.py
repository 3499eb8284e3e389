"""bench/gpu_check.py --tiny: the GPU check's every part (teacher alone, the torch codecs where the
teacher is, the caching job with its core-seconds, student steps with cached targets and with the
teacher online) runs on the CPU at tiny sizes, so the command a GPU node runs cannot rot."""
from __future__ import annotations

import sys

import numpy as np
import torch

from conftest import ROOT
from pipeline.timing import CLIP_STAGES

sys.path.insert(0, str(ROOT))
from bench.gpu_check import Sizes, main, student_model  # noqa: E402


def test_gpu_check_tiny_runs_every_part(ray_session, tmp_path, capsys):
    results = main(["--tiny", "--workdir", str(tmp_path)])
    assert not results["errors"], results["errors"]
    assert results["codecs"] == {"checked": 2 * 5, "differ": []}, "5 teacher fields of 2 clips, bit for bit"
    assert results["teacher"]["clips_per_s"] > 0
    job = results["job"]
    assert job["summary"]["clips"]["ok"] == 2 and job["steady"] >= job["end_to_end"] > 0
    assert set(job["core"]) == set(CLIP_STAGES) and all(job["core"][s] > 0 for s in CLIP_STAGES), job["core"]
    student = results["student"]
    assert student["decoders"] == "teacher", "the recipe's D_m: the frozen L4P heads the job exported"
    for kind in ("cached", "online"):
        assert student[kind]["step_s"] > 0 and np.isfinite(student[kind]["losses"]).all(), kind
    # Both steps train on the same targets: the cached ones are the teacher's, to within their storage.
    errors = student["target_error"]
    assert set(errors) == {"latents", "depth", "flow", "dyn_mask", "camray"}
    for name, (error, scale) in errors.items():
        assert scale > 0 and error <= (0.05 if name == "latents" else 0.01) * scale + 1 / 32, (name, error, scale)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| torch codecs where the teacher is vs numpy (10 fields) | bit for bit |" in table
    assert table in capsys.readouterr().out.replace("\r", "") + "\n"


def test_the_student_of_the_gpu_check_has_qwen2_5_vl_7bs_widths(tmp_path):
    """Built on the meta device (no memory): the full-size student's config as the GPU run builds it
    (its D_m the light decoders: the frozen heads are the job's files, loaded the same way as --tiny's)."""
    from student.tiny import make_tiny_vlm

    sizes = Sizes(clips=1, video_size=(1280, 720), video_seconds=10.0, batch_size=4, steps=1, student_batch=2,
                  student_layers=2, tiny=False)
    model, _ = student_model(sizes, make_tiny_vlm("qwen2_5_vl", tmp_path / "qwen"), None, torch.device("meta"))
    text = model.base.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads,
            text.num_hidden_layers, text.vocab_size) == (3584, 18944, 28, 4, 2, 152064)
    assert model.base.config.vision_config.out_hidden_size == 3584 and model.branch is not None
    assert next(model.parameters()).dtype == torch.float32  # no GPU here: the check builds bfloat16 on one
