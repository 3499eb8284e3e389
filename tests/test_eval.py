"""student/eval.py end to end: the held-out synthetic benchmark cached by the oracle, an exported tiny
student (no branch), answers parsed and scored, the R4D table, results files, and resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.config import JobConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from pipeline.synthetic.benchmark import benchmark_config, generate_benchmark
from student.cache_index import load_cache_index
from student.config import BranchConfig, ModelConfig, StudentConfig
from student.eval import PREDICTIONS, evaluate
from student.model import StudentModel, load_tokenizer
from student.scoring import R4D_COLUMNS, parse_choice
from student.tiny import make_tiny_vlm

LIMIT = 6


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
