"""The paper's ablation, rerun: baseline, +TPE, +LD, +ED, +LD+ED trained from the SAME cache (the
teacher ran once for all five), with equal steps and seeds, then scored on the synthetic region-level
4D benchmark and on a depth probe.

    python student/ablation.py --config configs/train/ablation.yaml --bench-cache data/bench-cache \\
        --seeds 0 1 2 --out data/ablation [--ranks 2]

Per (row, seed): student/train.py (torchrun, the real trainer; a rerun resumes from its complete
checkpoint) with the row's switches (student.model.ablation), the exported student evaluated by
student/eval.py (by default answering by option likelihood: a tiny student trained for minutes does not
emit "B. ..." yet, so free generation would score every row 0), and a depth probe: the
exported student frozen, a fresh D_4DP + depth decoder trained for --probe-steps on the training
cache's depth maps, then its error against the benchmark clips' depth (the oracle's cached depth IS
the ground truth of the synthetic scenes). The probe asks the same question of every row (how much
metric depth its LLM features carry), whether or not the row trained an ED head; its control, the
same probe on the student shown black frames, says what typical depth maps alone score.

Results: OUT/ablation.{json,md,png}, mean and spread (standard deviation) over seeds per row. With tiny
random students on CPU, differences are mostly noise: the table says so when the spread covers them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (python student/ablation.py): import from the project root, and not from
    # student/ itself, whose module names (config, datasets, ...) would shadow installed packages.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

from configs.dataclass_io import to_yaml
from shards.local_path import local_path
from shards.teacher_fields import CLIP_FIELDS
from student.batch import collate
from student.cache_index import load_cache_index
from student.charts import bar_chart
from student.config import BranchConfig, LossConfig
from student.eval import evaluate
from student.loader import ClipReader, build_sample
from student.model import StudentModel, ablation, load_tokenizer
from student.scoring import R4D_COLUMNS
from student.train_config import load_train_config

log = logging.getLogger("p4d.ablation")
ROWS = ("baseline", "tpe", "ld", "ed", "ld_ed")
PROBE_COLUMNS = ("depth_absrel", "depth_absrel_blind")  # the depth probe and its blind control
PROJECT = Path(__file__).resolve().parent.parent


def train_row(config_path: Path, overrides: list[str], ranks: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           str(PROJECT / "student" / "train.py"), "--config", str(config_path)]
    for item in overrides:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, env=env, cwd=PROJECT)


def _depth_samples(cache: Path, blind: bool) -> list[dict]:
    index = load_cache_index(cache, split=None, needed=("depth",))
    records = [r for r in index.records if r.clip is not None]
    reader = ClipReader(index.root, (*CLIP_FIELDS, "depth"))
    # One sample per clip: the probe is about the video, not the questions.
    seen, out = set(), []
    for r in records:
        if r.clip["cache_key"] not in seen:
            seen.add(r.clip["cache_key"])
            sample = build_sample(r, reader, index.root)
            if blind:
                sample["frames"] = np.zeros_like(sample["frames"])
            out.append(sample)
    return out


def depth_probe(export: Path, train_cache: Path, test_cache: Path, steps: int, seed: int, latent_dim: int,
                lr: float = 1e-3, blind: bool = False) -> float:
    """AbsRel (mean |d - d*| / d* over pixels with depth) of a depth probe on the frozen student,
    trained on `train_cache`'s clips and scored on `test_cache`'s.

    blind: the control. Every clip is shown to the student as black frames, so the probe's input
    carries nothing of the scene and it can learn only depth maps typical of the training clips; a
    probe that reads depth from the student's features must beat it on held-out clips."""
    torch.manual_seed(seed)
    exported = StudentModel.from_export(export)
    config = replace(
        exported.config,
        branch=BranchConfig(latent_dim=latent_dim, tasks=("depth",), decoders="light", light_hidden=64),
        loss=LossConfig(ce_weight=0.0, ld_weight=0.0, ed_weight=1.0, task_weights={"depth": 1.0}),
    )
    probe = StudentModel(config, exported.base, exported.adapter)
    for p in probe.base.parameters():
        p.requires_grad_(False)
    tokenizer = load_tokenizer(export)
    train, test = _depth_samples(train_cache, blind), _depth_samples(test_cache, blind)
    optimizer = torch.optim.AdamW([p for p in probe.branch.parameters()], lr=lr)
    rng = np.random.default_rng(seed)
    probe.train()
    for _ in range(steps):
        batch = collate([train[int(rng.integers(len(train)))]], probe.adapter, tokenizer, ("depth",))
        loss = probe(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.eval()
    errors = []
    with torch.no_grad():
        for sample in test:
            batch = collate([sample], probe.adapter, tokenizer, ("depth",))
            pred = probe.predict_maps(batch)["depth"].exp()
            truth = batch.targets["depth"]
            valid = truth > 0
            errors.append(((pred - truth).abs()[valid] / truth[valid]).mean().item())
    return float(np.mean(errors))


def summarize(results: dict[str, list[dict]]) -> dict:
    """{row: [per-seed result]} -> {row: {metric: (mean, std)}}."""
    out = {}
    for row, runs in results.items():
        metrics = {}
        for key in (*R4D_COLUMNS, *PROBE_COLUMNS):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                metrics[key] = (float(np.mean(values)), float(np.std(values)))
        out[row] = metrics
    return out


def write_report(out: Path, summary: dict, seeds: list[int], steps: int) -> None:
    columns = [*R4D_COLUMNS, *PROBE_COLUMNS]
    lines = [f"# Ablation: {len(seeds)} seeds {seeds}, {steps} steps each, mean ± std over seeds\n\n",
             "| row | " + " | ".join(columns) + " |\n", "|---|" + "---|" * len(columns) + "\n"]
    for row, metrics in summary.items():
        cells = [f"{metrics[c][0]:.1f} ± {metrics[c][1]:.1f}" if c in metrics and c not in PROBE_COLUMNS
                 else f"{metrics[c][0]:.3f} ± {metrics[c][1]:.3f}" if c in metrics else "-" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |\n")
    lines.append("\nDepth probe AbsRel on the benchmark's clips (lower is better); depth_absrel_blind is its control, "
                 "the same probe on the student shown black frames: a row's features carry depth only where "
                 "depth_absrel is below it. Reads depth: " + ", ".join(
                     f"{row} {'yes' if m['depth_absrel'][0] < m['depth_absrel_blind'][0] else 'no'}"
                     for row, m in summary.items() if {"depth_absrel", "depth_absrel_blind"} <= set(m)) + "\n")
    base = summary.get("baseline", {}).get("Avg")
    if base:
        lines.append("\nWithin noise (|mean - baseline mean| <= the larger std of the two), Avg: ")
        lines.append(", ".join(
            f"{row} {'yes' if abs(m['Avg'][0] - base[0]) <= max(m['Avg'][1], base[1]) else 'no'}"
            for row, m in summary.items() if row != "baseline" and "Avg" in m) + "\n")
    (out / "ablation.md").write_text("".join(lines))
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    shown = ["Avg", "Sta", "Dyn"]
    bar_chart(out / "ablation.png", f"synthetic 4D benchmark, {len(seeds)} seeds", shown,
              {row: [m.get(c, (None,))[0] for c in shown] for row, m in summary.items()},
              errors={row: [m.get(c, (None, None))[1] for c in shown] for row, m in summary.items()})


def run(config_path: Path, bench_cache: Path, out: Path, seeds: list[int], rows: list[str], ranks: int,
        probe_steps: int, eval_limit: int | None, answer_by: str = "likelihood") -> dict:
    base_cfg = load_train_config(config_path)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {row: [] for row in rows}
    for seed in seeds:
        for row in rows:
            run_dir = out / f"{row}-seed{seed}"
            student = ablation(base_cfg.student, row)
            cfg_path = run_dir / "train.yaml"
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg = replace(base_cfg, student=student, run=replace(base_cfg.run, out=str(run_dir / "train"), seed=seed),
                          data=replace(base_cfg.data, seed=seed))
            cfg_path.write_text(to_yaml(cfg))
            log.info("row %s seed %d: training %d steps", row, seed, cfg.run.max_steps)
            train_row(cfg_path, [], ranks)
            export = run_dir / "train" / "export"
            scores = evaluate(export, bench_cache, "synthetic", run_dir / f"eval-{answer_by}", limit=eval_limit,
                              answer_by=answer_by)
            result = {**scores.get("r4d", {}), "accuracy": scores.get("accuracy")}
            for key, blind in (("depth_absrel", False), ("depth_absrel_blind", True)):
                result[key] = depth_probe(export, Path(cfg.data.cache), bench_cache, probe_steps, seed,
                                          base_cfg.student.branch.latent_dim, blind=blind)
            (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
            results[row].append(result)
    summary = summarize(results)
    write_report(out, summary, seeds, base_cfg.run.max_steps)
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML shared by every row (its student section is the +LD+ED row)")
    p.add_argument("--bench-cache", type=local_path, required=True, help="cache of the synthetic benchmark (held-out seeds)")
    p.add_argument("--out", type=local_path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--answer-by", choices=("generate", "likelihood"), default="likelihood",
                   help="how eval answers (student/eval.py); tiny CPU students rarely emit the answer format")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(Path(a.config), a.bench_cache, a.out, a.seeds, a.rows, a.ranks, a.probe_steps, a.eval_limit,
        a.answer_by)
    print((a.out / "ablation.md").read_text())


if __name__ == "__main__":
    main()
