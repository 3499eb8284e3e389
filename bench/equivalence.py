"""Training from the cache is training with the teacher: one training run (tiny student, l4p-tiny
teacher, same seed, same data order) made three ways, compared step by step.

    .venv/bin/python bench/equivalence.py [--steps 40] [--clips 6] [--ranks 2]

  online    the teacher computes every batch's targets inside the step (bench/online_teacher.py, the
            Trainer's target provider); the loader reads no teacher field
  lossless  from a cache whose teacher fields are all stored as float32 (no quantization, no codec)
  default   from a cache with the job's default storage (shards/teacher_fields.default_storage:
            int8-token latents, log-depth, fixed-point flow and motion logits, float16 rays)
Both caches are written by the real caching job from the same --clips synthetic scenes, one clip at a
time (teacher batch 1, one clip in flight), so both hold the clips in the same shard rows and the
loader reads them in the same order (checked: the runs must see the same sample ids at every step).
Each variant is the Trainer's own setup, loader and step (student.train.Trainer), DeepSpeed ZeRO-3 on
--ranks CPU ranks, all three in one launch, one after the other.

Printed: per step the loss terms of the three runs side by side; per term the largest relative
difference of each cached run from the online one, and the bound it must keep; the final trainable
parameters' distance, relative to their norm and to the distance the online run moved them.

The bound (per term, per step), derived from the codecs' measured error. Every distillation term is a
mean over its samples of a per-sample mean of penalty(prediction, target) over elements, and the
released penalty (Smooth-L1, beta 1; L1 likewise) is 1-Lipschitz in the target. At equal parameters a
term computed on decoded targets t' instead of exact ones t therefore moves by at most the mean over
the batch's samples of mean_j |t'_j - t_j| (depth: |log(t'_j + eps) - log(t_j + eps)|, the space the
loss compares), which we measure on the very clips of each step: t' read from the default cache, t
from the lossless one (itself equal to the online teacher's output to float rounding: the first check).
Those errors are the ones tests/test_cache_values.py holds within each encoding's stated bound.
At step 0 the parameters are equal and the bound is exact. Later the parameters differ too, because
earlier gradients differed; the bound does not cover that drift (Adam normalizes every coordinate, so
no target error is too small to flip the update of a coordinate whose gradient is near 0), and the
runs printed here show how far below the bound the measured differences stay as steps go on. With
lossless storage nothing differs but float rounding: every term and parameter must agree to FLOAT_RTOL.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.conditions import PROJECT_ROOT, print_conditions  # noqa: E402

VARIANTS = ("online", "lossless", "default")
TEACHER = "l4p-tiny"
TRAIN_CONFIG = PROJECT_ROOT / "configs" / "train" / "demo.yaml"
SCENE_SIZE = (160, 120)
NUM_FRAMES = 16
# float32 rounding accumulated through a forward and a loss: ~100 units of float32's 2**-24.
FLOAT_RTOL = 1e-5
LIPSCHITZ_PENALTIES = ("smooth_l1", "l1")  # 1-Lipschitz in the target (Smooth-L1 with beta 1)
LIPSCHITZ_FORMS = {"depth": ("log",), "flow": ("pixels", "map_side"), "dyn_mask": ("logit",), "camray": ("rays",)}
LAUNCH_TIMEOUT_S = 1800


def storage(variant: str) -> dict:
    """The caching job's output.storage for a cached variant."""
    from shards.schema import FieldStorage
    from shards.teacher_fields import TEACHER_FIELDS, default_storage

    if variant == "default":
        return default_storage()
    return {**default_storage(), **{f: FieldStorage("float32", "none", 0) for f in TEACHER_FIELDS}}


def make_cache(videos: Path, out: Path, variant: str, ray=None) -> dict:
    """Cache `videos` with l4p-tiny and the variant's storage, one clip at a time (a fixed row order)."""
    from pipeline.config import JobConfig, OutputConfig, RayConfig, TeacherConfig
    from pipeline.runner import run_job
    from pipeline.sampling import SamplingConfig

    config = JobConfig(videos=str(videos), out=str(out), sampling=SamplingConfig(num_frames=NUM_FRAMES),
                       teacher=TeacherConfig(name=TEACHER, batch_size=1, num_cpus=1), max_inflight=1,
                       num_writers=1, output=OutputConfig(storage=storage(variant)), ray=ray or RayConfig())
    summary = run_job(config)
    if summary["clips"]["failed"]:
        raise RuntimeError(f"{out}: clips failed: {summary['failures_by_reason']}")
    return summary


def overrides(model_dir: Path, steps: int) -> list[str]:
    from pipeline.config import TeacherConfig
    from pipeline.teachers.registry import teacher_identity

    hooks, _, latent_dim = teacher_identity(TeacherConfig(name=TEACHER), NUM_FRAMES).shapes["latents"]
    return [f"student.model.path={model_dir}", f"student.branch.latent_dim={latent_dim}",
            f"student.branch.hooks={hooks}", "data.num_workers=0", f"run.max_steps={steps}", "run.export=false"]


# -- the rank ---------------------------------------------------------------------------------------
def rank_main(args: argparse.Namespace) -> None:
    """Every variant in turn: the Trainer's setup, `steps` steps from its loader, the final weights."""
    import gc
    from dataclasses import replace

    import numpy as np
    import torch.distributed as dist

    from bench.online_teacher import OnlineTeacherTargets
    from pipeline.config import TeacherConfig
    from student.train import Trainer
    from student.train_config import load_train_config

    out = Path(args.result)
    caches = dict(item.split("=", 1) for item in args.cache)
    for variant in args.variants:
        cache = caches["default" if variant == "online" else variant]
        cfg = load_train_config(args.config, [*args.set, f"data.cache={cache}", f"run.out={out / variant}"])
        provider = OnlineTeacherTargets(cache, TeacherConfig(name=TEACHER), cfg.student.needed_fields()) \
            if variant == "online" else None
        trainer = Trainer(cfg, target_provider=provider)
        names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        if variant == args.variants[0]:
            np.savez(out / f"initial.rank{trainer.rank}.npz", **trainer_weights(trainer, names))
        steps, stream = [], iter(trainer.loader)
        while trainer.steps_done < trainer.max_steps:
            batch = next(stream)
            output = trainer.step(batch)
            steps.append({"samples": batch.sample_ids, "loss": float(output.loss),
                          "terms": {k: float(v) for k, v in output.terms.items()}})
        np.savez(out / f"{variant}.rank{trainer.rank}.npz", **trainer_weights(trainer, names))
        (out / f"{variant}.rank{trainer.rank}.json").write_text(json.dumps({"steps": steps}))
        dist.barrier()
        del trainer, provider
        gc.collect()


def trainer_weights(trainer, names: list[str]) -> dict:
    """The trainable weights, gathered from their ZeRO-3 partitions (every rank takes part)."""
    full = trainer.engine._zero3_consolidated_16bit_state_dict() \
        if trainer.engine.zero_optimization_partition_weights() else trainer.engine.module.state_dict()
    return {n: full[n].float().numpy() for n in names} if trainer.rank == 0 else {}


# -- the comparison ---------------------------------------------------------------------------------
def load_runs(result: Path, ranks: int) -> dict[str, list[dict]]:
    """variant -> per step {"samples": every rank's sample ids, "loss", "terms"}: a run's value of a term
    is the mean of its ranks' values (each rank divides by the global valid count / world)."""
    runs = {}
    for variant in VARIANTS:
        per_rank = [json.loads((result / f"{variant}.rank{r}.json").read_text())["steps"] for r in range(ranks)]
        runs[variant] = [{"samples": [s for r in step for s in r["samples"]],
                          "loss": sum(r["loss"] for r in step) / ranks,
                          "terms": {k: sum(r["terms"][k] for r in step) / ranks for k in step[0]["terms"]}}
                         for step in zip(*per_rank)]
    return runs


def check_same_order(runs: dict[str, list[dict]]) -> None:
    reference = [s["samples"] for s in runs["online"]]
    for variant, steps in runs.items():
        if [s["samples"] for s in steps] != reference:
            raise RuntimeError(f"{variant} read its samples in another order than online: not the same run")


def target_error_bounds(student_config, default_cache: Path, lossless_cache: Path,
                        steps: list[dict]) -> list[dict[str, float]]:
    """Per step, per distillation term: the mean over the step's video samples of the per-sample mean
    |decoded - exact| target error (the module docstring's bound on the term's change at equal
    parameters); "total" weights them as the loss does."""
    import numpy as np

    from shards.cache_reader import ClipReader
    from student.cache_index import load_cache_index
    from student.losses import DEPTH_EPS

    loss = student_config.loss
    if loss.ld_kind not in LIPSCHITZ_PENALTIES or loss.ed_kind not in LIPSCHITZ_PENALTIES:
        raise ValueError(f"the bound needs a penalty 1-Lipschitz in its target {LIPSCHITZ_PENALTIES}, "
                         f"got ld_kind {loss.ld_kind!r}, ed_kind {loss.ed_kind!r}")
    terms = student_config.distilled_terms()
    for _, field in terms:
        if field != "latents" and loss.ed_forms[field] not in LIPSCHITZ_FORMS[field]:
            raise ValueError(f"no bound for the {field} form {loss.ed_forms[field]!r}")
    fields = tuple(f for _, f in terms)
    readers = {}
    for name, cache in (("decoded", default_cache), ("exact", lossless_cache)):
        index = load_cache_index(cache, split=None)
        readers[name] = ({r.sample_id: r.clip for r in index.records}, ClipReader(index.root, fields))
    per_sample: dict[str, dict[str, float]] = {}

    def errors(sample_id: str) -> dict[str, float]:
        if sample_id not in per_sample:
            (clips, reader), (exact_clips, exact_reader) = readers["decoded"], readers["exact"]
            decoded, exact = reader.read(clips[sample_id]), exact_reader.read(exact_clips[sample_id])
            out = {}
            for name, field in terms:
                a, b = decoded[field].astype(np.float64), exact[field].astype(np.float64)
                if field == "depth":
                    valid = b > 0
                    out[name] = float(np.abs(np.log(a[valid] + DEPTH_EPS) - np.log(b[valid] + DEPTH_EPS)).mean())
                else:
                    out[name] = float(np.abs(a - b).mean() / (a.shape[-1] if loss.ed_forms.get(field) == "map_side"
                                                               else 1.0))
            per_sample[sample_id] = out
        return per_sample[sample_id]

    weights = {name: loss.ld_weight if field == "latents" else loss.ed_weight * loss.task_weights[field]
               for name, field in terms}
    bounds = []
    for step in steps:
        videos = [s for s in step["samples"] if readers["decoded"][0].get(s) is not None]
        bound = {name: float(np.mean([errors(s)[name] for s in videos])) if videos else 0.0 for name, _ in terms}
        bound["total"] = sum(weights[name] * bound[name] for name, _ in terms)
        bounds.append(bound)
    return bounds


def relative_differences(runs: dict[str, list[dict]], variant: str) -> list[dict[str, float]]:
    """Per step, per term (and "total"): |variant - online| / |online|."""
    out = []
    for mine, ref in zip(runs[variant], runs["online"]):
        values = {**mine["terms"], "total": mine["loss"]}
        reference = {**ref["terms"], "total": ref["loss"]}
        out.append({k: abs(values[k] - reference[k]) / max(abs(reference[k]), 1e-30) for k in reference})
    return out


def absolute_differences(runs: dict[str, list[dict]], variant: str) -> list[dict[str, float]]:
    out = []
    for mine, ref in zip(runs[variant], runs["online"]):
        values = {**mine["terms"], "total": mine["loss"]}
        out.append({k: abs(values[k] - v) for k, v in {**ref["terms"], "total": ref["loss"]}.items()})
    return out


def parameter_distance(result: Path, variant: str) -> dict[str, float]:
    """The final trainable weights of `variant` against online's: ||a - b|| / ||b|| and / ||b - b0||."""
    import numpy as np

    with np.load(result / f"{variant}.rank0.npz") as a, np.load(result / "online.rank0.npz") as b, \
            np.load(result / "initial.rank0.npz") as b0:
        diff = sum(float(((a[k].astype(np.float64) - b[k]) ** 2).sum()) for k in b.files)
        norm = sum(float((b[k].astype(np.float64) ** 2).sum()) for k in b.files)
        moved = sum(float(((b[k].astype(np.float64) - b0[k]) ** 2).sum()) for k in b.files)
    return {"relative_to_norm": (diff / norm) ** 0.5, "relative_to_update": (diff / moved) ** 0.5}


# -- the driver -------------------------------------------------------------------------------------
def launch(ranks: int, config: Path, sets: list[str], caches: dict[str, Path], result: Path, log: Path,
           variants=VARIANTS) -> None:
    """One launch of `ranks` CPU ranks (torchrun) running every variant in turn (rank_main)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    result.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc_per_node={ranks}",
           "--master_addr", "127.0.0.1", f"--master_port={port}", str(PROJECT_ROOT / "bench" / "equivalence.py"),
           "--rank-run", "--config", str(config), "--result", str(result),
           *(x for s in sets for x in ("--set", s)), *(x for k, v in caches.items() for x in ("--cache", f"{k}={v}")),
           "--variants", *variants]
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=LAUNCH_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"the launch failed (exit {proc.returncode}), log {log}:\n{log.read_text()[-3000:]}")


def report(runs: dict[str, list[dict]], bounds: list[dict[str, float]], distances: dict[str, dict]) -> bool:
    """Print the curves, the largest differences and the verdicts; True when every check holds."""
    names = [*runs["online"][0]["terms"], "total"]
    print("\n-- per step: " + ", ".join(f"{n} online / lossless / default" for n in names[:1]) + " (every term:)")
    for k in range(len(runs["online"])):
        cells = []
        for n in names:
            get = (lambda s, n=n: s["loss"] if n == "total" else s["terms"][n])
            cells.append(f"{n} {get(runs['online'][k]):.6g}/{get(runs['lossless'][k]):.6g}/{get(runs['default'][k]):.6g}")
        print(f"step {k:>3}  " + "  ".join(cells))
    ok = True
    lossless, default = relative_differences(runs, "lossless"), relative_differences(runs, "default")
    absolute = absolute_differences(runs, "default")
    print(f"\n-- per term over {len(bounds)} steps: largest |cached - online| / |online|; default: its largest "
          "|difference| / bound, at step 0 (equal parameters) and over all steps")
    print(f"{'term':<14}{'lossless':>12}{'default':>12}{'bound at 0':>12}{'diff/bound 0':>14}{'max diff/bound':>16}")
    for n in names:
        worst_lossless = max(d[n] for d in lossless)
        ratios = [a[n] / b[n] if b.get(n) else (0.0 if a[n] == 0 else float("inf")) for a, b in zip(absolute, bounds)]
        if n == "ce":
            ratios = [0.0 for _ in ratios]
        ok &= worst_lossless <= FLOAT_RTOL and max(ratios) <= 1.0
        bound0 = f"{bounds[0][n]:.3e}" if n in bounds[0] else "-"
        print(f"{n:<14}{worst_lossless:>12.2e}{max(d[n] for d in default):>12.2e}{bound0:>12}"
              f"{ratios[0]:>14.3f}{max(ratios):>16.3f}")
    print("\n-- final trainable weights vs online: ||cached - online|| / ||online||, and / ||online - initial||")
    for variant, d in distances.items():
        print(f"{variant:<10}{d['relative_to_norm']:>12.3e}{d['relative_to_update']:>12.3e}")
    ok &= distances["lossless"]["relative_to_update"] <= FLOAT_RTOL
    print(f"\nlossless agrees with online to float tolerance ({FLOAT_RTOL:g}) and default keeps its bound: "
          f"{'yes' if ok else 'NO'}")
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--clips", type=int, default=6, help="synthetic clips cached twice (default 6)")
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks (default 2)")
    # The rank's own arguments (set by launch()).
    parser.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(TRAIN_CONFIG), help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--cache", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_run:
        rank_main(args)
        return
    if args.steps < 1 or args.clips < 2 or args.ranks < 1:
        parser.error("--steps >= 1, --clips >= 2, --ranks >= 1")
    sys.exit(0 if run(args) else 1)


def run(args: argparse.Namespace) -> bool:
    import shutil

    from bench.caches import BENCH_DATA, ensure_scenes
    from pipeline.config import RayConfig
    from student.tiny import make_tiny_vlm
    from student.train_config import load_train_config

    work = BENCH_DATA / "equivalence"
    print_conditions("bench/equivalence.py: one training run with the teacher online, from a lossless cache and "
                     "from the default cache", ["torch", "deepspeed", "transformers", "numpy", "zarr"], BENCH_DATA)
    model_dir = BENCH_DATA / "tiny-qwen2_5_vl"
    if not (model_dir / "config.json").exists():
        make_tiny_vlm("qwen2_5_vl", model_dir)
    videos = ensure_scenes(work / "scenes", args.clips, SCENE_SIZE)
    caches = {}
    for variant in ("lossless", "default"):
        caches[variant] = work / f"cache-{variant}"
        shutil.rmtree(caches[variant], ignore_errors=True)
        t = time.perf_counter()
        make_cache(videos, caches[variant], variant, RayConfig(address="local"))
        print(f"cache {variant}: {caches[variant]} ({args.clips} clips, {time.perf_counter() - t:.0f} s)", flush=True)
    sets = overrides(model_dir, args.steps)
    cfg = load_train_config(TRAIN_CONFIG, sets)
    s = cfg.student
    print(f"student: {TRAIN_CONFIG.relative_to(PROJECT_ROOT)} + {' '.join(sets[1:])}: tiny {s.model.adapter}, "
          f"branch {s.branch.decoders} decoders, loss ld {s.loss.ld_weight} ({s.loss.ld_kind}) ed {s.loss.task_weights} "
          f"({s.loss.ed_kind}); lr {cfg.optim.lr}; {args.ranks} rank(s) x batch {cfg.data.batch_size}, "
          f"{args.steps} steps, seed {cfg.run.seed}", flush=True)
    result = work / "runs"
    shutil.rmtree(result, ignore_errors=True)
    t = time.perf_counter()
    launch(args.ranks, TRAIN_CONFIG, sets, caches, result, work / "launch.log")
    print(f"three runs in one launch: {time.perf_counter() - t:.0f} s")
    runs = load_runs(result, args.ranks)
    check_same_order(runs)
    bounds = target_error_bounds(s, caches["default"], caches["lossless"], runs["online"])
    distances = {v: parameter_distance(result, v) for v in ("lossless", "default")}
    return report(runs, bounds, distances)


if __name__ == "__main__":
    main()
