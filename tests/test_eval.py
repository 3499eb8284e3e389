"""student/eval.py end to end: the held-out synthetic benchmark cached by the oracle, an exported tiny
student (no branch), answers parsed and scored, the R4D table, results files, and resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import JobConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from pipeline.synthetic.benchmark import benchmark_config, generate_benchmark
from pipeline.synthetic.dataset import write_video
from pipeline.synthetic.ground_truth import load_ground_truth
from student.cache_index import load_cache_index
from student.config import BranchConfig, ModelConfig, StudentConfig
from student.eval import PREDICTIONS, evaluate
from student.model import StudentModel, load_tokenizer
from student.scoring import R4D_COLUMNS, parse_choice
from student.tiny import make_tiny_vlm

LIMIT = 6
PROBE_STEPS = 40


@pytest.fixture(scope="module")
def bench_cache(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    generate_benchmark(root / "data", benchmark_config(2, num_frames=16, width=160, height=120))
    run_job(JobConfig(videos=str(root / "data"), out=str(root / "cache"), sampling=SamplingConfig(num_frames=16),
                      teacher=TeacherConfig(name="oracle", latent_dim=16)))
    return root / "cache"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    model_dir = make_tiny_vlm("llava_onevision", root / "vlm")
    config = StudentConfig(model=ModelConfig(adapter="llava_onevision", path=str(model_dir)),
                           branch=BranchConfig(enabled=False))
    return StudentModel.from_config(config).export(root / "export", load_tokenizer(model_dir))


def test_eval_scores_every_answer_and_writes_the_r4d_table(bench_cache, exported, tmp_path):
    result = evaluate(exported, bench_cache, "synthetic", tmp_path, limit=LIMIT)
    rows = [json.loads(line) for line in (tmp_path / PREDICTIONS).read_text().splitlines()]
    assert len(rows) == LIMIT == result["n"]
    samples = {r.sample_id: r for r in load_cache_index(bench_cache, split="test").records}
    for row in rows:
        meta = json.loads(samples[row["sample_id"]].meta)
        assert row["parsed"] == parse_choice(row["output"], meta["options"])
        assert row["score"] == float(row["parsed"] == meta["answer"])
        assert row["column"] == meta["category"]
    assert result["accuracy"] == pytest.approx(100 * sum(r["score"] for r in rows) / LIMIT, abs=0.01)
    assert set(R4D_COLUMNS) <= set(result["r4d"])
    assert (tmp_path / "results.md").read_text().startswith("# synthetic:")
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_eval_resumes_from_partial_predictions(bench_cache, exported, tmp_path):
    evaluate(exported, bench_cache, "synthetic", tmp_path, limit=LIMIT)
    path = tmp_path / PREDICTIONS
    lines = path.read_text().splitlines()
    kept = json.loads(lines[1])
    kept["output"] = "SENTINEL: kept, not regenerated"
    # A crash mid-write leaves a torn last line; the rest of the work is missing.
    path.write_text(lines[0] + "\n" + json.dumps(kept) + "\n" + lines[2][: len(lines[2]) // 2])
    evaluate(exported, bench_cache, "synthetic", tmp_path, limit=LIMIT)
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.setdefault(row["sample_id"], []).append(row)
    assert len(rows) == LIMIT and all(len(v) == 1 for v in rows.values())  # nothing answered twice
    assert rows[kept["sample_id"]][0]["output"] == kept["output"]


def depth_shaded_cache(scenes: Path, out: Path) -> Path:
    """A copy of synthetic scenes whose frames show their exact depth as grey levels (near = bright,
    one fixed scale for every scene), cached by the oracle (its depth is the scenes' exact depth)."""
    shutil.copytree(scenes, out / "scenes")
    for video in sorted((out / "scenes" / "videos").glob("*.mp4")):
        truth = load_ground_truth(video)
        grey = np.clip(255 * 2.0 / truth.depth, 0, 255).round().astype(np.uint8)  # depths here: 2 to 12 m
        write_video(video, np.repeat(grey[..., None], 3, axis=-1), 1 / float(truth.timestamps[1] - truth.timestamps[0]))
    run_job(JobConfig(videos=str(out / "scenes"), out=str(out / "cache"), sampling=SamplingConfig(num_frames=16),
                      teacher=TeacherConfig(name="oracle", latent_dim=16)))
    return out / "cache"


def test_depth_probe_on_held_out_clips_beats_a_probe_blind_to_the_video(synthetic_set, bench_cache, exported,
                                                                        tmp_path):
    """The ablation's depth probe: a fresh depth decoder on the frozen exported student, trained on the
    training scenes, scored on the benchmark's (other seeds) against their exact depth. The frames show
    depth as grey levels, so the student's features carry it whatever its (random) weights: a probe
    that reads them learns depth that holds on held-out clips. The control sees black frames: it can
    learn only depth maps typical of the training clips, and must do worse."""
    from student.ablation import depth_probe

    train = depth_shaded_cache(synthetic_set, tmp_path / "train")
    held_out = depth_shaded_cache(bench_cache.parent / "data", tmp_path / "held-out")
    probe = dict(steps=PROBE_STEPS, seed=0, latent_dim=16, lr=1e-2)
    seen = depth_probe(exported, train, held_out, **probe)
    blind = depth_probe(exported, train, held_out, **probe, blind=True)
    print(f"depth probe AbsRel on held-out clips: {seen:.3f} seeing the video, {blind:.3f} blind")
    assert 0 < seen < blind


def test_ablation_report_gives_mean_spread_and_noise_verdicts(tmp_path):
    from student.ablation import summarize, write_report

    per_seed = {
        "baseline": [{"Avg": 40.0, "depth_absrel": 0.5}, {"Avg": 44.0, "depth_absrel": 0.4}],
        "ld_ed": [{"Avg": 60.0, "depth_absrel": 0.2, "depth_absrel_blind": 0.5},
                  {"Avg": 62.0, "depth_absrel": 0.3, "depth_absrel_blind": 0.4}],
        "tpe": [{"Avg": 43.0}, {"Avg": 45.0}],
    }
    summary = summarize(per_seed)
    assert summary["baseline"]["Avg"] == (42.0, 2.0)  # mean, population std over seeds
    assert summary["ld_ed"]["depth_absrel"] == pytest.approx((0.25, 0.05))
    write_report(tmp_path, summary, seeds=[0, 1], steps=10)
    text = (tmp_path / "ablation.md").read_text()
    assert "| ld_ed | 61.0 ± 1.0 |" in text
    assert "ld_ed no" in text and "tpe yes" in text  # 61 vs 42 is beyond the spread; 44 vs 42 is not
    assert "| 0.250 ± 0.050 | 0.450 ± 0.050 |" in text and "Reads depth: ld_ed yes\n" in text
    assert json.loads((tmp_path / "ablation.json").read_text())["tpe"]["Avg"] == [44.0, 1.0]
    assert (tmp_path / "ablation.png").stat().st_size > 1000


class KnownLogits(torch.nn.Module):
    """A stand-in student whose outputs are fixed: next-token logits that rank the tokens of
    PREFERENCE first to last (all others below), and a generation of GENERATED."""

    def __init__(self, adapter, tokenizer):
        super().__init__()
        self.adapter, self.tokenizer = adapter, tokenizer
        self.logits = torch.full((1, len(tokenizer)), -100.0)
        for rank, text in enumerate(PREFERENCE):
            self.logits[0, first_token(tokenizer, text)] = 10.0 - rank

    def next_token_logits(self, batch):
        return self.logits

    def generate(self, batch, max_new_tokens):
        return torch.tensor([self.tokenizer(GENERATED, add_special_tokens=False)["input_ids"][:max_new_tokens]])


# "Z" (no option's letter) first: the choice must come from the question's own options.
PREFERENCE = ("Z", "C", "A", "D", "B")
GENERATED = "I would say the answer is (B), nothing else."  # every row has options A and B


def first_token(tokenizer, text: str) -> int:
    return tokenizer(text, add_special_tokens=False)["input_ids"][0]


def expected_letter(tokenizer, options: dict[str, str]) -> str:
    """The option whose trained answer ("B. text", the prompt's format) starts with the most likely token."""
    firsts = {first_token(tokenizer, f"{letter}. {text}"): letter for letter, text in options.items()}
    return next(firsts[first_token(tokenizer, t)] for t in PREFERENCE if first_token(tokenizer, t) in firsts)


@pytest.mark.parametrize("answer_by", ["likelihood", "generate"])
def test_answers_follow_a_model_whose_logits_are_known(bench_cache, exported, tmp_path, monkeypatch, answer_by):
    """Each multiple-choice row is answered with the option the stand-in prefers (by its logits, or by
    parsing its generation), scored against the row's answer, and summed into the accuracy."""
    from student import eval as student_eval

    tokenizer = load_tokenizer(exported)
    known = KnownLogits(StudentModel.from_export(exported).adapter, tokenizer)
    monkeypatch.setattr(student_eval.StudentModel, "from_export", lambda *a, **k: known)
    result = evaluate(exported, bench_cache, "synthetic", tmp_path, limit=LIMIT, answer_by=answer_by,
                      max_new_tokens=len(GENERATED))

    metas = {r.sample_id: json.loads(r.meta) for r in load_cache_index(bench_cache, split="test").records}
    rows = [json.loads(line) for line in (tmp_path / PREDICTIONS).read_text().splitlines()]
    assert len(rows) == LIMIT
    for row in rows:
        meta = metas[row["sample_id"]]
        chosen = expected_letter(tokenizer, meta["options"]) if answer_by == "likelihood" else "B"
        assert row["output"] == (chosen if answer_by == "likelihood" else GENERATED)
        assert row["parsed"] == chosen and row["score"] == float(chosen == meta["answer"])
    right = sum(row["score"] for row in rows)
    assert result["accuracy"] == pytest.approx(100 * right / LIMIT, abs=0.005)
    assert 0 < right < LIMIT, "the rows include right and wrong choices"
