"""The distillation losses are exact means over the GLOBAL batch: a real 2-rank DeepSpeed ZeRO-3 step
(gloo, CPU) whose ranks hold unequal numbers of samples with teacher targets gives the same loss and
the same updated weights as a 1-rank step on the two ranks' samples together.

DeepSpeed averages the ranks' gradients, so each rank must divide its masked sum by the valid count of
all ranks / world size: with local counts, a rank holding 1 valid sample would weigh it as much as
the other rank's 2 together. Driven through the trainer's command line (`deepspeed student/train.py`)
and judged by what it writes: each rank's logged loss (RUN/batches-rank<r>.jsonl) and the exported
weights."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from conftest import ROOT, copy_scenes
from manifests.clips_table import current_clips, read_clips_table
from manifests.samples_table import SAMPLES_FILE, write_samples
from manifests.schemas import SAMPLES_SCHEMA
from pipeline.config import JobConfig, OutputConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from student.tiny import make_tiny_vlm

LATENT_DIM = 16
SCENES = ["scene_0000", "scene_0001", "scene_0002"]  # + 1 image-only sample: 4 samples, 3 with targets
# Loss weights this small keep every gradient far below AdamW's eps (1e-8), where its first step,
# lr * g / (|g| + eps), is lr / eps * g to within |g| / eps: the updated weights then show the
# gradient's values, not only its signs. lr = 1 lifts those updates far above float32's resolution.
WEIGHT = 1e-9
LR = 1.0


@pytest.fixture(scope="module")
def cache(synthetic_set, ray_session, tmp_path_factory):
    """3 clips with one question each and 1 image-only question (no teacher targets)."""
    root = tmp_path_factory.mktemp("cross-rank")
    copy_scenes(synthetic_set, root, SCENES)
    out = root / "cache"
    run_job(JobConfig(videos=str(root / "videos"), out=str(out), sampling=SamplingConfig(num_frames=16),
                      teacher=TeacherConfig(name="oracle", latent_dim=LATENT_DIM), output=OutputConfig(format="wds")))
    clips = sorted((r for r in current_clips(read_clips_table(out)).values() if r["status"] == "ok"),
                   key=lambda r: r["clip_id"])
    assert len(clips) == len(SCENES)
    (out / "images").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(out / "images/0.png")
    rows = [{"sample_id": f"video/{i}", "dataset": "synthetic", "split": "train", "video": Path(c["video_uri"]).name,
             "cache_key": c["cache_key"], "images": None, "regions": None, "meta": None,
             "conversations": [{"role": "user", "content": "<video>\nWhat moves?"},
                               {"role": "assistant", "content": f"object {i}"}]}
            for i, c in enumerate(clips)]
    rows.append({"sample_id": "image/0", "dataset": "sat", "split": "train", "video": None, "cache_key": None,
                 "images": ["images/0.png"], "regions": None, "meta": None,
                 "conversations": [{"role": "user", "content": "<image>\nWhich is closer?"},
                                   {"role": "assistant", "content": "A"}]})
    write_samples(out / SAMPLES_FILE, pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_one_step(cache: Path, model_dir: Path, out: Path, ranks: int, batch_size: int) -> Path:
    config = out.with_suffix(".json")
    config.write_text(json.dumps({
        "student": {"model": {"adapter": "qwen2_5_vl", "path": str(model_dir), "video_size": [56, 56]},
                    "branch": {"latent_dim": LATENT_DIM, "decoders": "light", "light_hidden": 16},
                    # The answer tokens' cross-entropy is a mean over each rank's own tokens (not
                    # the subject here): off, so the loss is the distillation terms alone.
                    "loss": {"ce_weight": 0.0, "ld_weight": WEIGHT, "ed_weight": WEIGHT,
                             "task_weights": {"depth": 1.0, "flow": 1.0, "dyn_mask": 1.0, "camray": 1.0}}},
        "data": {"cache": str(cache), "datasets": [], "batch_size": batch_size, "global_batch": None,
                 "num_workers": 0, "shuffle_buffer": 4},
        "optim": {"lr": LR, "warmup_ratio": 0.0},
        "run": {"out": str(out), "max_steps": 1, "checkpoint_every": 1,
                "deepspeed": str(ROOT / "configs/deepspeed/zero3_cpu.json")},
    }))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port",
               str(free_port()), "student/train.py", "--config", str(config)]
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    return out


def logged_step(run: Path, rank: int) -> dict:
    (record,) = [json.loads(line) for line in (run / f"batches-rank{rank}.jsonl").read_text().splitlines()]
    return record


def weights(model_dir: Path) -> dict[str, np.ndarray]:
    """A saved student's weights as the stock class loads them (the export is a plain checkpoint)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)
    return {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}


def test_two_ranks_with_unequal_valid_counts_step_as_one_rank_on_their_union(cache, tmp_path):
    model_dir = make_tiny_vlm("qwen2_5_vl", tmp_path / "tiny")
    two = train_one_step(cache, model_dir, tmp_path / "two-ranks", ranks=2, batch_size=2)
    one = train_one_step(cache, model_dir, tmp_path / "one-rank", ranks=1, batch_size=4)

    ranks = [logged_step(two, r) for r in (0, 1)]
    union = logged_step(one, 0)
    assert sorted(ranks[0]["samples"] + ranks[1]["samples"]) == sorted(union["samples"]), \
        "the 1-rank batch is the 2 ranks' batches together"
    with_targets = [sum(s.startswith("video/") for s in r["samples"]) for r in ranks]
    assert sorted(with_targets) == [1, 2], "unequal valid counts per rank"

    # DeepSpeed steps on the mean of the ranks' losses: it must be the 1-rank loss of all samples.
    # Same weights, same samples; only float32 summation order differs (~1e-7 relative).
    assert np.mean([r["loss"] for r in ranks]) == pytest.approx(union["loss"], rel=1e-5)

    start = weights(model_dir)
    two_rank, one_rank = ({k: v - start[k] for k, v in weights(run / "export").items()} for run in (two, one))
    trained = [k for k, update in one_rank.items() if np.abs(update).max() > 0]
    assert trained, "the step changed the weights"
    for name in trained:
        a, b = two_rank[name], one_rank[name]
        # Each run rounds every updated weight to float32 (half an ulp each), and the gradients agree
        # to float32 summation order (1e-5 of the update, as the loss above). Without the global
        # counts the updates differ by ~50 % here.
        rounding = np.linalg.norm(np.spacing(np.abs(start[name] + b).astype(np.float32)))
        assert np.linalg.norm(a - b) <= rounding + 1e-5 * np.linalg.norm(b), (
            f"{name}: the 2-rank update differs from the 1-rank one by {np.linalg.norm(a - b) / np.linalg.norm(b):.2%}")
