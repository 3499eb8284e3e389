"""Student step time with cached teacher targets (D_m: the light decoders, or the frozen L4P heads as
released), beside the same step without the P4D branch and the same step with the l4p-tiny teacher run
ONLINE inside it; peak memory per rank in each case. Real DeepSpeed ZeRO-3, 2 CPU ranks (gloo).

    .venv/bin/python bench/train_step.py [--repeats 2] [--steps 6] [--warmup 2] [--clips 4] [--cases ...]

The four cases (one `deepspeed --num_gpus 2` launch each, DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1,
alternated A B C D A B C D ... for --repeats rounds):
  cached     the student as configured (D_m: the light decoders): the P4D branch on, L_LD + L_ED against
             the targets read from the cache with the batch (what the trainer does).
  heads      the same with D_m = the frozen DPT heads of the cache's l4p-tiny teacher (branch.decoders
             teacher, the released D_m; the programs written once from CACHE/teacher): what the light
             decoders save is heads / cached. The tiny heads are far cheaper than the released ones:
             the FLOPs of both D_m at full size per sample follow the table.
  no-branch  the same student without the P4D branch (student.model.ablation "tpe": TPE on, branch
             disabled, so no teacher field is read): the branch's overhead is cached / no-branch.
  online     the branch on, but the cache's targets are NOT read: inside the timed step, before the
             student's forward, the l4p-tiny teacher (seeded weights, built in each rank, frozen,
             inference mode, 1 thread like the rank) predicts the targets from the batch's frames, clip
             by clip, as a trainer without a cache must (bench/online_teacher.py, handed to the Trainer
             as its target provider). What the cache saves: online / cached. The teacher is built
             here, in the benchmark: student/ never imports pipeline/.
A separate launch per case, not the three cases interleaved in one engine: the no-branch student is
another module set (ZeRO-3 partitions it differently), and peak memory (a process's max RSS) can only
be told apart per case with one process per case.

The student: configs/train/demo.yaml (tiny random Qwen2.5-VL from student/tiny.py, video 112 x 112,
light decoders, batch 2 per rank, configs/deepspeed/zero3_cpu.json) with the branch's latent width set
to l4p-tiny's (48, 4 hooks); the data: --clips synthetic scenes (16 frames, 160 x 120) cached by the
real caching job with l4p-tiny and the job's default storage into data/bench/train-step/cache-zarr
(git-ignored; reused while its specs match, rebuilt otherwise).

What a rank times, per step (the loop of student/train.py, run in the rank process):
  data   the batch's samples read and decoded from the cache (shards.cache_reader.ClipReader + student.loader.build_sample
         over StudentLoader.epoch_batches, in-process as with num_workers=0: cached reads frames +
         latents + maps, the other two cases frames only) and collated (student.batch.collate)
  step   [online: teacher predict + targets stacked into the batch] + global valid-sample counts
         (all-reduce) + engine forward + backward + optimizer step (student.train.Trainer.step, set
         up by the Trainer itself)
--warmup steps are run untimed first (first-step allocations, ZeRO-3 first gathers). A step's time is
the slower rank's (ranks meet in every collective); per launch the median over its --steps steps;
per case the median over launches. Ratios are taken per round (cases of one round run back to back),
then their median. Peak memory: resource.getrusage(RUSAGE_SELF).ru_maxrss of each rank at the end of
the launch (the whole process: interpreter, torch, DeepSpeed, data, teacher); "after init" is the same
measure taken once the engine is built, before the first step.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.conditions import PROJECT_ROOT, median, print_conditions  # noqa: E402

CASES = ("cached", "heads", "no-branch", "online")
TRAIN_CONFIG = PROJECT_ROOT / "configs" / "train" / "demo.yaml"
SCENE_SIZE = (160, 120)
TEACHER = "l4p-tiny"
LAUNCH_TIMEOUT_S = 900


def overrides(model_dir: Path, cache: Path, out: Path, latent_dim: int, hooks: int) -> list[str]:
    return [f"student.model.path={model_dir}", f"student.branch.latent_dim={latent_dim}",
            f"student.branch.hooks={hooks}", f"data.cache={cache}", "data.num_workers=0",
            f"run.out={out}", "run.export=false"]


# -- the rank ---------------------------------------------------------------------------------------
def rank_main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    import resource
    from dataclasses import replace

    import torch
    import torch.distributed as dist

    from shards.cache_reader import ClipReader
    from shards.teacher_fields import CLIP_FIELDS
    from student.batch import collate
    from student.loader import build_sample
    from student.model import ablation
    from student.train import Trainer
    from student.train_config import load_train_config

    cfg = load_train_config(args.config, args.set)
    if args.case == "no-branch":
        cfg = replace(cfg, student=ablation(cfg.student, "tpe"))
    if args.case == "heads":
        cfg = replace(cfg, student=replace(cfg.student, branch=replace(cfg.student.branch, decoders="teacher")))
    total_steps = args.warmup + args.steps
    fields = cfg.student.needed_fields()
    teacher = None
    if args.case == "online":
        from bench.online_teacher import OnlineTeacherTargets
        from pipeline.config import TeacherConfig

        teacher = OnlineTeacherTargets(cfg.data.cache, TeacherConfig(name=TEACHER), fields)
    # The trainer's own setup; with the teacher online it reads no teacher field and calls it in step().
    trainer = Trainer(replace(cfg, run=replace(cfg.run, max_steps=total_steps)), target_provider=teacher)
    index, model, tokenizer, rank = trainer.index, trainer.model, trainer.tokenizer, trainer.rank
    read_fields = () if args.case == "online" else fields

    order = trainer.loader.epoch_batches(0)
    reader = ClipReader(index.root, (*CLIP_FIELDS, *read_fields))
    rss_after_init = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    init_seconds = time.perf_counter() - started

    records = []
    for step in range(total_steps):
        t0 = time.perf_counter()
        samples = [build_sample(index.records[i], reader, index.root) for i in order[step % len(order)]]
        batch = collate(samples, model.adapter, tokenizer, read_fields)
        t1 = time.perf_counter()
        output = trainer.step(batch)
        t3 = time.perf_counter()
        if step >= args.warmup:
            records.append({"data": t1 - t0, "teacher": teacher.seconds if teacher else 0.0, "step": t3 - t1,
                            "loss": output.loss.item()})
    dist.barrier()
    result = {"rank": rank, "case": args.case, "steps": records, "fields_read": [*CLIP_FIELDS, *read_fields],
              "params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()),
              "rss_after_init_kb": rss_after_init,
              "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              "torch_threads": torch.get_num_threads(), "init_seconds": init_seconds}
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result))


# -- the driver -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(case: str, config: Path, sets: list[str], result: Path, steps: int, warmup: int, log: Path) -> float:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "bench/train_step.py", "--rank-case", case, "--config", str(config), "--result", str(result),
           "--steps", str(steps), "--warmup", str(warmup), *(x for s in sets for x in ("--set", s))]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=LAUNCH_TIMEOUT_S)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{case}: the launch failed (exit {proc.returncode}), log {log}:\n{tail}")
    return time.perf_counter() - start


def summarize(result: Path) -> dict:
    ranks = [json.loads(Path(f"{result}.rank{r}.json").read_text()) for r in (0, 1)]
    steps = list(zip(*(r["steps"] for r in ranks)))
    return {
        "step": median([max(s["step"] for s in per_rank) for per_rank in steps]),
        "data": median([max(s["data"] for s in per_rank) for per_rank in steps]),
        "total": median([max(s["data"] + s["step"] for s in per_rank) for per_rank in steps]),
        "teacher": median([max(s["teacher"] for s in per_rank) for per_rank in steps]),
        "rss_mb": [r["max_rss_kb"] / 1024 for r in ranks],
        "rss_init_mb": [r["rss_after_init_kb"] / 1024 for r in ranks],
        "params": ranks[0]["params"],
        "fields": ranks[0]["fields_read"],
        "threads": ranks[0]["torch_threads"],
        "init": max(r["init_seconds"] for r in ranks),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three launches (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per launch (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--clips", type=int, default=4, help="synthetic clips cached with l4p-tiny (default 4)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    # The rank's own arguments (set by launch()).
    parser.add_argument("--rank-case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(TRAIN_CONFIG), help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_case:
        args.case = args.rank_case
        rank_main(args)
        return
    cases = [c for c in args.cases.split(",") if c]
    if set(cases) - set(CASES) or not cases or args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error(f"--cases from {CASES}; --repeats, --steps >= 1, --warmup >= 0")
    run(args, cases)


def run(args: argparse.Namespace, cases: list[str]) -> None:
    from bench.caches import BENCH_DATA, describe_specs, ensure_cache
    from pipeline.config import TeacherConfig
    from pipeline.teachers.registry import teacher_identity
    from student.config import BranchConfig
    from student.tiny import make_tiny_vlm
    from student.train_config import load_train_config

    work = BENCH_DATA / "train-step"
    print_conditions("bench/train_step.py: student step with cached targets (light D_m or the frozen heads) vs no "
                     "P4D branch vs the teacher online",
                     ["torch", "deepspeed", "transformers", "numpy", "zarr"], BENCH_DATA)
    model_dir = BENCH_DATA / "tiny-qwen2_5_vl"
    if not (model_dir / "config.json").exists():
        make_tiny_vlm("qwen2_5_vl", model_dir)
    t = time.perf_counter()
    cache, reused = ensure_cache("train-step", TEACHER, "zarr", args.clips, SCENE_SIZE)
    if "heads" in cases:
        from pipeline.teachers.l4p.heads_export import export_head_programs

        export_head_programs(cache / "teacher")  # derived from the exported weights: rewritten each run
    shapes = teacher_identity(TeacherConfig(name=TEACHER), 16).shapes
    hooks, _, latent_dim = shapes["latents"]
    sets = overrides(model_dir, cache, work / "run", latent_dim, hooks)
    cfg = load_train_config(TRAIN_CONFIG, sets)
    from student.cache_index import load_cache_index

    index = load_cache_index(cache)
    print(f"cache: {cache} ({'reused' if reused else f'built by the caching job in {time.perf_counter() - t:.0f} s'}), "
          f"{len({r.clip['cache_key'] for r in index.records})} clips, {len(index.records)} samples, "
          f"teacher {index.teacher_id}; stored fields (the job's default storage):")
    for line in describe_specs(index.specs):
        print(f"  {line}")
    s = cfg.student
    print(f"student: {TRAIN_CONFIG.relative_to(PROJECT_ROOT)} + {' '.join(sets[1:5])}: tiny {s.model.adapter} "
          f"({model_dir.name}), video {s.model.video_size[0]}x{s.model.video_size[1]}, {s.model.dtype}, "
          f"branch {s.branch.decoders} decoders (light_hidden {s.branch.light_hidden}), head {s.branch.head}, "
          f"hooks {s.branch.hooks} x latent_dim {s.branch.latent_dim}; loss ld {s.loss.ld_weight} ed {s.loss.ed_weight}")
    print(f"run: 2 ranks x batch {cfg.data.batch_size}, {Path(cfg.run.deepspeed).name} (ZeRO-3), AdamW; "
          f"DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 gloo; teacher online: {TEACHER} {TeacherConfig(name=TEACHER).dtype}, "
          f"outputs {', '.join(f'{k} {chr(120).join(map(str, v))}' for k, v in shapes.items())}")
    print(f"sizes: {args.warmup} untimed + {args.steps} timed steps per launch, {args.repeats} round(s) of "
          f"{' -> '.join(cases)} (one deepspeed launch each)", flush=True)

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for rep in range(args.repeats):
        for case in cases:
            result = logs / f"{case}-{rep}"
            wall = launch(case, TRAIN_CONFIG, sets, result, args.steps, args.warmup, logs / f"{case}-{rep}.log")
            r = summarize(result)
            r["wall"] = wall
            runs[case].append(r)
            print(f"round {rep + 1} {case:<10} step {r['step']:.3f} s (teacher {r['teacher']:.3f})  data "
                  f"{r['data']:.3f} s  data+step {r['total']:.3f} s  max RSS {r['rss_mb'][0]:.0f} / "
                  f"{r['rss_mb'][1]:.0f} MB  (launch {wall:.0f} s, rank start to engine ready {r['init']:.0f} s)", flush=True)

    print(f"\n-- per case: medians over {args.repeats} launch(es) of each launch's median step (the slower rank's)")
    print(f"{'case':<11}{'step s':>9}{'of which':>10}{'data s':>9}{'data+step':>11}{'max RSS MB':>16}"
          f"{'RSS after init':>17}{'params':>10}  fields read")
    print(f"{'':<11}{'':>9}{'teacher':>10}{'':>9}{'s':>11}{'rank0 / rank1':>16}{'rank0 / rank1':>17}")
    for case, rs in runs.items():
        rss = [median([r["rss_mb"][k] for r in rs]) for k in (0, 1)]
        init = [median([r["rss_init_mb"][k] for r in rs]) for k in (0, 1)]
        print(f"{case:<11}{median([r['step'] for r in rs]):>9.3f}{median([r['teacher'] for r in rs]):>10.3f}"
              f"{median([r['data'] for r in rs]):>9.3f}{median([r['total'] for r in rs]):>11.3f}"
              f"{rss[0]:>8.0f} / {rss[1]:<5.0f}{init[0]:>9.0f} / {init[1]:<5.0f}{rs[0]['params']:>10}  "
              f"{','.join(rs[0]['fields'])}")

    def ratio(a: str, b: str, key: str) -> str:
        if a not in runs or b not in runs:
            return "n/a"
        values = [x[key] / y[key] for x, y in zip(runs[a], runs[b])]
        return f"{median(values):.2f} ({' '.join(f'{v:.2f}' for v in values)})"

    print(f"\n-- ratios per round, median (per-round values)")
    print(f"branch overhead   cached / no-branch:  step {ratio('cached', 'no-branch', 'step')}   "
          f"data+step {ratio('cached', 'no-branch', 'total')}")
    print(f"D_m frozen heads / light:  heads / cached:  step {ratio('heads', 'cached', 'step')}   "
          f"data+step {ratio('heads', 'cached', 'total')}")
    print(f"what the cache saves  online / cached:  step {ratio('online', 'cached', 'step')}   "
          f"data+step {ratio('online', 'cached', 'total')}")
    print("(step = [online: teacher] + all-reduce of valid counts + forward + backward + optimizer step; data = read,\n"
          " decode and collate in the rank, as num_workers=0; max RSS = the rank process's high-water mark, "
          "interpreter and libraries included.)")
    print_full_size_dm_flops(BranchConfig().light_hidden)


def print_full_size_dm_flops(light_hidden: int) -> None:
    """D_m's FLOPs per 16-frame sample and step at the released sizes (L4P FULL: 4 hooks x 1408, maps
    224 x 224; the light decoders at the default width), forward and backward, counted by
    FlopCounterMode on the meta device (nothing computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.teachers.l4p.config import FULL
    from pipeline.teachers.l4p.dpt import DPTHead
    from pipeline.teachers.l4p.heads_export import TASK_FIELDS
    from shards.teacher_fields import GRID, MAP_CHANNELS, MAP_SIZE
    from student.p4d import LightMapDecoder

    def counted(module, inputs) -> tuple[float, float]:
        with FlopCounterMode(display=False) as forward:
            out = module(*inputs)
        with FlopCounterMode(display=False) as backward:
            out.float().sum().backward()
        return forward.get_total_flops(), backward.get_total_flops()

    rows = {}
    with torch.device("meta"):
        taps = [torch.empty(1, FULL.num_tokens, FULL.embed_dim, requires_grad=True) for _ in FULL.hooks]
        tokens = torch.empty(1, FULL.num_tokens, len(FULL.hooks) * FULL.embed_dim, requires_grad=True)
        for task, field in TASK_FIELDS.items():
            head = DPTHead(FULL, FULL.heads[task]).requires_grad_(False)  # frozen: input gradients only
            light = LightMapDecoder(tokens.shape[-1], light_hidden, MAP_CHANNELS[field],
                                    GRID if field == "camray" else MAP_SIZE)
            rows[field] = (counted(lambda *t: head(list(t)), taps), counted(lambda t: light(t, 1), [tokens]))
    print(f"\n-- D_m at the released sizes, per 16-frame sample and step (FlopCounterMode on the meta device; "
          f"light_hidden {light_hidden}), TFLOP forward + backward")
    print(f"{'task':10}{'frozen heads':>22}{'light':>22}")
    for field, ((hf, hb), (lf, lb)) in rows.items():
        print(f"{field:10}{hf / 1e12:>11.4f} + {hb / 1e12:<8.4f}{lf / 1e12:>11.4f} + {lb / 1e12:<8.4f}")
    heads = sum(sum(h) for h, _ in rows.values())
    light = sum(sum(lt) for _, lt in rows.values())
    print(f"{'total':10}{heads / 1e12:>19.3f}{light / 1e12:>22.3f}   frozen heads / light = {heads / light:.0f}x")


if __name__ == "__main__":
    main()
