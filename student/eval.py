"""Evaluate an exported student (no P4D branch) on a benchmark held in a cache.

    python student/eval.py --model RUN/export --cache CACHE --bench r4d|sti|vlm4d|vsti|synthetic --out DIR

The benchmark's samples (split "test") and their clips' frames come from the cache the caching job
made of it (`--source r4d=ROOT`, or `python -m pipeline.synthetic.benchmark` + cache_teacher), so the
frames the student sees are the ones training used: 16 sampled frames, their real timestamps for TPE,
region marks drawn at load time. R4D-style questions are prefixed with the video length in seconds,
as R4D's prompt is; generation is greedy. Each answer is parsed (student/scoring.py), scored, and appended to
DIR/predictions.jsonl at once: a rerun skips what is there (resume), a torn last line is redone.
DIR/results.{json,md,png}: accuracy (multiple choice), mean relative accuracy (numeric), and for R4D-style
benchmarks the 12-column table and its bar chart.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (python student/eval.py): import from the project root, and not from student/ itself,
    # whose module names (config, datasets, ...) would shadow installed packages.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from tqdm import tqdm

from shards.atomic import atomic_write_bytes
from shards.local_path import cache_location, local_path
from shards.teacher_fields import CLIP_FIELDS
from student.batch import collate
from student.cache_index import Record, load_cache_index
from student.charts import bar_chart
from student.loader import ClipReader, build_sample
from student.marks import MarkStyle
from student.model import StudentModel, load_tokenizer
from student.scoring import (
    DYNAMIC, STATIC, markdown_table, mean_relative_accuracy, parse_choice, parse_number, r4d_column, r4d_table,
)

log = logging.getLogger("p4d.eval")

BENCH_DATASETS = {"r4d": "r4d", "sti": "stibench", "vlm4d": "vlm4d", "vsti": "vsti_test", "synthetic": "synthetic4d"}
PREDICTIONS = "predictions.jsonl"
LENGTH_PREFIXED = ("r4d", "synthetic")  # benchmarks whose prompt starts with the video length in seconds


def video_length(timestamps) -> float:
    """Seconds the sampled frames span, plus one mean frame interval (the last frame lasts too)."""
    t = [float(x) for x in timestamps]
    if len(t) < 2:
        return 0.0
    return t[-1] - t[0] + (t[-1] - t[0]) / (len(t) - 1)


def question_turns(record: Record, sample: dict, length_prefix: bool) -> list[dict]:
    """The first user turn only (the answer is what the model must produce), prefixed with the video's
    length in seconds where the benchmark's prompt is (R4D-Bench and its synthetic counterpart)."""
    turns = [dict(t) for t in record.conversations if (t.get("role") or t.get("from")) in ("user", "human")]
    if not turns:
        raise ValueError(f"sample {record.sample_id!r} has no user turn")
    turns = turns[:1]
    if length_prefix and "timestamps" in sample:
        key = "content" if "content" in turns[0] else "value"
        turns[0][key] = f"The video is {video_length(sample['timestamps']):.1f} seconds long. " + turns[0][key]
    return turns


def score(text: str, meta: dict) -> dict:
    """-> {"parsed", "score"} for one answer. Numeric rows (metric mean_relative_accuracy) by MRA,
    everything with options by exact choice."""
    if meta.get("metric") == "mean_relative_accuracy":
        value = parse_number(text)
        return {"parsed": value, "score": mean_relative_accuracy(value, float(meta["answer"]))}
    if "options" not in meta:
        raise ValueError("meta has neither options nor a numeric metric: not a scorable benchmark row")
    choice = parse_choice(text, meta["options"])
    return {"parsed": choice, "score": float(choice == meta["answer"])}


def column_of(meta: dict) -> str | None:
    """The R4D column of a row: the synthetic benchmark names it (`category`), R4D names a `task`."""
    if "category" in meta:
        return r4d_column(meta["category"])
    if "task" in meta:
        return r4d_column(meta["task"])
    return None


def read_predictions(path: Path) -> dict[str, dict]:
    """Finished predictions by sample id. A line torn by a crash (the last one) is cut from the file,
    so that the next append starts on a line of its own, and its question is answered again."""
    done, kept = {}, []
    if path.exists():
        text = path.read_text()
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["sample_id"]] = row
            kept.append(line)
        repaired = "".join(line + "\n" for line in kept)
        if repaired != text:
            atomic_write_bytes(path, repaired.encode(), replace=True)
    return done


def summarize(predictions: list[dict], bench: str) -> dict:
    mc = [p for p in predictions if p["metric"] == "accuracy"]
    numeric = [p for p in predictions if p["metric"] == "mean_relative_accuracy"]
    result = {"bench": bench, "n": len(predictions)}
    if mc:
        result["accuracy"] = round(100.0 * sum(p["score"] for p in mc) / len(mc), 2)
        result["unparsed"] = sum(p["parsed"] is None for p in mc)
    if numeric:
        result["mean_relative_accuracy"] = round(100.0 * sum(p["score"] for p in numeric) / len(numeric), 2)
    with_column = [(p["column"], p["score"]) for p in predictions if p.get("column")]
    if with_column:
        result["r4d"] = r4d_table(with_column)
    return result


def write_results(out: Path, result: dict, name: str) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {result['bench']}: {result['n']} questions\n"]
    if "accuracy" in result:
        lines.append(f"multiple-choice accuracy: {result['accuracy']:.2f} % ({result['unparsed']} unparsed)\n")
    if "mean_relative_accuracy" in result:
        lines.append(f"mean relative accuracy: {result['mean_relative_accuracy']:.2f} %\n")
    if "r4d" in result:
        lines += ["\n", markdown_table({name: result["r4d"]})]
        columns = ["Avg", "Sta", "Dyn", *STATIC, *DYNAMIC]
        bar_chart(out / "results.png", f"{result['bench']} ({name})", columns,
                  {name: [result["r4d"][c] for c in columns]})
    (out / "results.md").write_text("".join(lines))


def choose_by_likelihood(model: StudentModel, tokenizer, batch, options: dict[str, str]) -> str:
    """The option letter whose token the model finds most likely to start its answer (the
    log-likelihood protocol of multiple-choice harnesses): for students too small or too briefly
    trained to emit the answer format, it still tells which option they prefer."""
    logits = model.next_token_logits(batch)[0]
    ids = {letter: tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in options}
    return max(ids, key=lambda letter: logits[ids[letter]].item())


def answer(model: StudentModel, tokenizer, batch, meta: dict, answer_by: str, max_new_tokens: int) -> str:
    """The student's answer to one question: its most likely option letter (answer_by "likelihood",
    multiple-choice rows), else its greedy generation."""
    if answer_by == "likelihood" and "options" in meta:
        return choose_by_likelihood(model, tokenizer, batch, meta["options"])
    tokens = model.generate(batch, max_new_tokens=max_new_tokens)
    return tokenizer.decode(tokens[0], skip_special_tokens=True)


def evaluate(model_dir: str | Path, cache: str | Path, bench: str, out: str | Path, limit: int | None = None,
             max_new_tokens: int = 16, marks: MarkStyle | None = MarkStyle(), answer_by: str = "generate") -> dict:
    """answer_by "generate": greedy generation, parsed (the benchmarks' protocol); "likelihood":
    multiple-choice rows answered by the most likely option letter (numeric rows still generate)."""
    if answer_by not in ("generate", "likelihood"):
        raise ValueError(f"answer_by must be 'generate' or 'likelihood', got {answer_by!r}")
    if (limit is not None and limit < 1) or max_new_tokens < 1:
        raise ValueError(f"limit and max_new_tokens must be >= 1, got {limit} and {max_new_tokens}")
    if bench not in BENCH_DATASETS:
        raise ValueError(f"--bench must be one of {sorted(BENCH_DATASETS)}, got {bench!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = load_cache_index(cache, split="test", datasets=(BENCH_DATASETS[bench],))
    records = index.records[:limit] if limit else index.records
    model = StudentModel.from_export(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    reader = ClipReader(index.root, CLIP_FIELDS)
    path = out / PREDICTIONS
    done = read_predictions(path)
    todo = [r for r in records if r.sample_id not in done]
    log.info("%s: %d questions, %d already answered in %s", bench, len(records), len(records) - len(todo), path)
    with open(path, "a") as sink:
        for record in tqdm(todo, desc=f"eval {bench}", unit="q"):
            meta = json.loads(record.meta or "{}")
            sample = build_sample(record, reader, index.root, marks)
            prefix = bench in LENGTH_PREFIXED or meta.get("prompt_prefix") == "video_length_seconds"
            sample["conversations"] = question_turns(record, sample, prefix)
            batch = collate([sample], model.adapter, tokenizer, generation=True)
            text = answer(model, tokenizer, batch, meta, answer_by, max_new_tokens)
            row = {"sample_id": record.sample_id, "output": text, "answer_by": answer_by, **score(text, meta),
                   "metric": meta.get("metric", "accuracy"), "column": column_of(meta)}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            done[record.sample_id] = row
    result = summarize([done[r.sample_id] for r in records], bench)
    write_results(out, result, Path(model_dir).name)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=local_path, required=True, help="an exported student (RUN/export)")
    p.add_argument("--cache", type=cache_location, required=True, help="the cache holding the benchmark's clips and samples")
    p.add_argument("--bench", required=True, choices=sorted(BENCH_DATASETS))
    p.add_argument("--out", type=local_path, required=True, help="results directory (reruns resume from its predictions)")
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--no-marks", action="store_true", help="do not draw region marks on the frames")
    p.add_argument("--answer-by", choices=("generate", "likelihood"), default="generate",
                   help="likelihood: the most likely option letter (tiny / briefly trained students)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = evaluate(a.model, a.cache, a.bench, a.out, a.limit, a.max_new_tokens,
                      None if a.no_marks else MarkStyle(), a.answer_by)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
