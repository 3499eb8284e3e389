"""The paper's ablation, rerun: rows of baseline, +TPE, +LD, +ED, +LD+ED trained from the SAME cache
(the teacher ran once for all), with equal steps, per seed, then read by 4D probes and scored on the
synthetic region-level 4D benchmark.

    python student/ablation.py --config configs/train/ablation.yaml --bench-cache data/bench-cache \\
        --train-data data/train --bench-data data/bench --out data/ablation [--rows ...] [--seeds ...]

Per (row, seed): student/train.py (torchrun, the real trainer; a rerun resumes from its complete
checkpoint, and keeps the runs whose result.json it finished under the same config) with the row's
switches (student.model.ablation); then the exported student, frozen, read by the 4D probes
(student/probes.py: per-region depth, depth order, speed and direction of motion, camera motion; fitted
on the training scenes, scored on the held-out benchmark scenes against the generator's exact ground
truth) beside their blind control (the same probes on the student shown black frames); and evaluated by
student/eval.py (answering by option likelihood: a tiny student trained for minutes does not emit
"B. ..." yet, so free generation would score every row 0).

Results: OUT/ablation.{json,md,png}: per row the mean and sample standard deviation over seeds, each
probe of each row tested against the baseline's seeds by Welch's t-test (two-sided; Holm's correction
over the table's tests beside it), the differences beyond seed noise said in words; a row whose answers
collapse to one letter is flagged instead of given a benchmark accuracy that looks like a result.
OUT/ablation-runs.json keeps every run's scores.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections import Counter
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
from student.charts import bar_chart
from student.eval import PREDICTIONS, evaluate
from student.model import ablation
from student.probes import PROBES, probe_student
from student.scoring import R4D_COLUMNS
from student.train_config import load_train_config

log = logging.getLogger("p4d.ablation")
ROWS = ("baseline", "tpe", "ld", "ed", "ld_ed")
# `just ablation`'s default, sized from measured run times to ~60 CPU minutes (README, evidence): a run
# (250 steps, 60 benchmark questions, the probes seeing and blind) took 8 min for the baseline and 10 for
# +LD+ED on the 2-core machine shared with other jobs (the baseline trains in 2 of them when idle, 5
# shared): the two rows that answer whether P4D moves 4D perception in, with 4 seeds
# (the fewest with which Welch's test sees a difference of ~2.5 seed standard deviations); +TPE, the
# row that tells TPE from distillation, adds ~6 min per seed (--rows).
DEFAULT_ROWS = ("baseline", "ld_ed")
DEFAULT_SEEDS = (0, 1, 2, 3)
DEFAULT_EVAL_LIMIT = 60  # questions of the benchmark per run: enough to see a one-letter collapse
BLIND = "_blind"  # suffix of a probe's control: the same probe on the student shown black frames
PROBE_COLUMNS = (*PROBES, *(f"{p}{BLIND}" for p in PROBES))  # the probes (student/probes.py), their controls
ALPHA = 0.05
COLLAPSE_SHARE = 0.9  # a run whose answers are >= 90 % one letter has collapsed
PROBE_LEGEND = ("Probes (student/probes.py): ridge probes on the frozen student's last-layer features at "
                "each region's visual tokens, fitted on the training scenes, scored on the held-out benchmark "
                "scenes against the generator's exact ground truth. depth_r2, speed_r2, camera_r2: R^2 (1 "
                "perfect, 0 the mean); order_acc (chance 0.5), direction_acc (4 classes): accuracy. "
                "*_blind: the same probe on "
                "the student shown black frames (it knows where and when a region is, not what it shows).")
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


def answer_collapse(predictions: Path) -> tuple[str, float] | None:
    """(letter, share of the answers) when one letter makes at least COLLAPSE_SHARE of a run's
    multiple-choice answers: its accuracy is then the share of that letter among the right answers,
    not a reading of the videos."""
    letters = Counter()
    for line in predictions.read_text().splitlines():
        row = json.loads(line)
        if row.get("parsed") and len(row["parsed"]) == 1:
            letters[row["parsed"]] += 1
    if not letters:
        return None
    letter, count = letters.most_common(1)[0]
    share = count / sum(letters.values())
    return (letter, share) if share >= COLLAPSE_SHARE else None


def summarize(results: dict[str, list[dict]]) -> dict:
    """{row: [per-seed result]} -> {row: {metric: (mean, sample std over seeds)}}."""
    out = {}
    for row, runs in results.items():
        metrics = {}
        for key in (*R4D_COLUMNS, *PROBE_COLUMNS):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                metrics[key] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        out[row] = metrics
    return out


def welch(results: dict[str, list[dict]], metrics=PROBES, reference: str = "baseline") -> dict:
    """{row: {metric: two-sided Welch p of the row's seeds against the reference row's}} (None when a
    side has fewer than 2 values or neither varies)."""
    from scipy.stats import ttest_ind

    out = {}
    base = results.get(reference, [])
    for row, runs in results.items():
        if row == reference:
            continue
        out[row] = {}
        for key in metrics:
            a = [r[key] for r in runs if r.get(key) is not None]
            b = [r[key] for r in base if r.get(key) is not None]
            p = float(ttest_ind(a, b, equal_var=False).pvalue) if len(a) > 1 and len(b) > 1 else float("nan")
            out[row][key] = None if np.isnan(p) else p
    return out


def holm(pvalues: dict[str, dict[str, float | None]], alpha: float = ALPHA) -> set[tuple[str, str]]:
    """The (row, metric) tests rejected by Holm's step-down procedure at family-wise level alpha."""
    tests = sorted((p, row, key) for row, ps in pvalues.items() for key, p in ps.items() if p is not None)
    rejected = set()
    for i, (p, row, key) in enumerate(tests):
        if p > alpha / (len(tests) - i):
            break
        rejected.add((row, key))
    return rejected


def write_report(out: Path, summary: dict, seeds: list[int], steps: int, pvalues: dict | None = None,
                 collapsed: dict[str, list] | None = None) -> None:
    """ablation.md / .json / .png: the probe table with Welch marks against the baseline, what is beyond
    seed noise, then the benchmark (or, for rows whose answers collapse to one letter, a flag)."""
    pvalues, collapsed = pvalues or {}, collapsed or {}
    survivors = holm(pvalues)
    lines = [f"# Ablation: {len(seeds)} seeds {seeds}, {steps} steps each, mean ± std over seeds\n\n",
             "## 4D probes of the frozen student (held-out benchmark scenes)\n\n"]
    seeing = [c for c in PROBE_COLUMNS if not c.endswith(BLIND)]
    lines += ["| row | " + " | ".join(seeing) + " | " + " | ".join(f"{c}{BLIND}" for c in seeing) + " |\n",
              "|---|" + "---|" * (2 * len(seeing)) + "\n"]

    def cell(row: str, key: str) -> str:
        m = summary[row].get(key)
        if m is None:
            return "-"
        p = pvalues.get(row, {}).get(key)
        mark = "" if p is None else "**" if p < 0.01 else "*" if p < ALPHA else ""
        mark += " †" if (row, key) in survivors else ""
        return f"{m[0]:.3f} ± {m[1]:.3f}{mark}"

    for row in summary:
        lines.append(f"| {row} | " + " | ".join(cell(row, c) for c in seeing) + " | "
                     + " | ".join(cell(row, f"{c}{BLIND}") for c in seeing) + " |\n")
    lines.append(f"\n{PROBE_LEGEND}\nMarks: Welch's t-test of the row's seeds against the baseline's, two-sided: "
                 f"* p < {ALPHA:g}, ** p < 0.01; † also rejected by Holm's correction over all "
                 f"{sum(p is not None for ps in pvalues.values() for p in ps.values())} tests of the table.\n")
    beyond = [f"{row} {key} ({'higher' if summary[row][key][0] > summary['baseline'][key][0] else 'lower'}, "
              f"p = {p:.3g})" for row, ps in pvalues.items() for key, p in ps.items()
              if p is not None and p < ALPHA and key in summary.get("baseline", {})]
    lines.append("\n**Beyond seed noise against the baseline (Welch p < 0.05):** "
                 + (", ".join(beyond) if beyond else "none") + ".\n")
    lines.append("**Of those, after Holm's correction:** "
                 + (", ".join(f"{r} {k}" for r, k in sorted(survivors)) if survivors else "none") + ".\n")
    above = [f"{row} {c}" for row, m in summary.items() for c in seeing
             if c in m and f"{c}{BLIND}" in m and m[c][0] > m[f"{c}{BLIND}"][0]]
    lines.append("**Above the blind control (mean over seeds):** " + (", ".join(above) if above else "none")
                 + ".\n")

    lines.append("\n## Synthetic 4D benchmark (multiple choice, answered by option likelihood)\n\n")
    for row, flags in collapsed.items():
        hit = [f for f in flags if f]
        if hit:
            lines.append(f"- **{row}: answers collapse to one letter** in {len(hit)} of {len(flags)} seeds ("
                         + ", ".join(f"{letter} {100 * share:.0f} %" for letter, share in hit)
                         + "): its accuracy is that letter's share of the right answers, not a reading of the "
                         "videos.\n")
    shown = [row for row in summary if not any(collapsed.get(row, []))]
    if shown:
        lines += ["\n| row | " + " | ".join(R4D_COLUMNS) + " |\n", "|---|" + "---|" * len(R4D_COLUMNS) + "\n"]
        for row in shown:
            m = summary[row]
            lines.append(f"| {row} | " + " | ".join(f"{m[c][0]:.1f} ± {m[c][1]:.1f}" if c in m else "-"
                                                    for c in R4D_COLUMNS) + " |\n")
    else:
        lines.append("\nNo row answers the benchmark other than by one letter: no accuracy table.\n")
    (out / "ablation.md").write_text("".join(lines))
    (out / "ablation.json").write_text(json.dumps({"summary": summary, "welch_p": pvalues,
                                                   "holm_rejected": sorted(survivors), "collapsed": collapsed},
                                                  indent=2) + "\n")
    series = {row: [max(0.0, 100 * m[c][0]) if c in m else None for c in seeing] for row, m in summary.items()}
    errors = {row: [100 * m[c][1] if c in m else None for c in seeing] for row, m in summary.items()}
    if "baseline" in summary:
        series["blind control (baseline)"] = [max(0.0, 100 * summary["baseline"][f"{c}{BLIND}"][0])
                                              if f"{c}{BLIND}" in summary["baseline"] else None for c in seeing]
    bar_chart(out / "ablation.png", f"4D probes on held-out scenes x 100 (R2 below 0 drawn at 0), {len(seeds)} seeds",
              seeing, series, errors=errors)


def run(config_path: Path, bench_cache: Path, out: Path, seeds: list[int], rows: list[str], ranks: int,
        eval_limit: int | None, train_data: Path, bench_data: Path,
        answer_by: str = "likelihood") -> dict:
    base_cfg = load_train_config(config_path)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {row: [] for row in rows}
    collapsed: dict[str, list] = {row: [] for row in rows}
    for seed in seeds:
        for row in rows:
            run_dir = out / f"{row}-seed{seed}"
            student = ablation(base_cfg.student, row)
            cfg_path = run_dir / "train.yaml"
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg = replace(base_cfg, student=student, run=replace(base_cfg.run, out=str(run_dir / "train"), seed=seed),
                          data=replace(base_cfg.data, seed=seed))
            result_path = run_dir / "result.json"
            if result_path.exists() and cfg_path.exists() and cfg_path.read_text() == to_yaml(cfg):
                result = json.loads(result_path.read_text())  # a rerun keeps the runs it finished
            else:
                cfg_path.write_text(to_yaml(cfg))
                log.info("row %s seed %d: training %d steps", row, seed, cfg.run.max_steps)
                train_row(cfg_path, [], ranks)
                export = run_dir / "train" / "export"
                scores = evaluate(export, bench_cache, "synthetic", run_dir / f"eval-{answer_by}", limit=eval_limit,
                                  answer_by=answer_by)
                result = {**scores.get("r4d", {}), "accuracy": scores.get("accuracy")}
                for blind in (False, True):
                    scores = probe_student(export, cfg.data.cache, train_data, bench_cache, bench_data, blind=blind)
                    result.update({f"{k}{BLIND if blind else ''}": v for k, v in scores.items()})
                result_path.write_text(json.dumps(result, indent=2) + "\n")
            results[row].append(result)
            collapsed[row].append(answer_collapse(run_dir / f"eval-{answer_by}" / PREDICTIONS))
    summary = summarize(results)
    write_report(out, summary, seeds, base_cfg.run.max_steps, welch(results), collapsed)
    (out / "ablation-runs.json").write_text(json.dumps(results, indent=2) + "\n")
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML shared by every row (its student section is the +LD+ED row)")
    p.add_argument("--bench-cache", type=local_path, required=True, help="cache of the synthetic benchmark (held-out seeds)")
    p.add_argument("--train-data", type=local_path, required=True,
                   help="the training scenes' folder (its region_truth.parquet: the probes' training truth)")
    p.add_argument("--bench-data", type=local_path, required=True,
                   help="the benchmark scenes' folder (its region_truth.parquet: the probes' test truth)")
    p.add_argument("--out", type=local_path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROWS)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--eval-limit", type=int, default=DEFAULT_EVAL_LIMIT,
                   help="benchmark questions per run (0: all)")
    p.add_argument("--answer-by", choices=("generate", "likelihood"), default="likelihood",
                   help="how eval answers (student/eval.py); tiny CPU students rarely emit the answer format")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if "baseline" not in a.rows:
        p.error("--rows must hold baseline: every row is tested against it")
    run(Path(a.config), a.bench_cache, a.out, a.seeds, a.rows, a.ranks, a.eval_limit or None,
        a.train_data, a.bench_data, a.answer_by)
    print((a.out / "ablation.md").read_text())


if __name__ == "__main__":
    main()
