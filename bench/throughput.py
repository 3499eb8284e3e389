"""End-to-end clips/s of the real caching job beside the teacher's forward alone on the same clips.

    .venv/bin/python bench/throughput.py [--clips 48] [--repeats 2] [--teachers l4p-tiny,matched] \
        [--matched-gflop 150] [--format zarr] [--video-size 1280x720 --video-seconds 10]

Teachers: `l4p-tiny` (the tests' model: ~1 s per clip here, little compute per output byte) and
`matched` (bench/matched_teacher.py: outputs of the full L4P shapes, ~29.5 MB raw fp16 per clip,
and --matched-gflop GFLOP of real matmuls per clip, so the job encodes and writes the bytes the
real model's outputs give it; full L4P spends ~380 GFLOP per output MB, minutes per clip on this
CPU: the line "compute per output MB" says how close a run got); `oracle` on request; `l4p`, the
real model, on a GPU node: --teachers l4p --l4p-checkpoint PATH [--l4p-dtype bfloat16] [--num-gpus 1].

A (the job): pipeline.runner.run_job on an in-process Ray (JobConfig with ray.address "local", every
run into a fresh cache directory, default job settings otherwise) over --clips synthetic scenes of 16
frames (320 x 240), or with --video-size over --clips videos of that size and --video-seconds
(bench/source_videos.py: 720p 10 s is what a decoder meets in real data sets). Two rates from its summary:
  end-to-end   clips / seconds.compute_wall: from Ray up to the last shard committed, which includes
               start-up (the teacher's worker process and model build, the first decodes) but NOT
               Ray's own start and shut-down (printed apart as "outside compute_wall").
  steady       clips / (compute_wall - seconds.startup): from the moment the first teacher call could
               run (teacher built, first batch decoded) to the last commit; the drain at the end
               (last encodes, last shard's commit) stays in.

B (the limit, "teacher-only"): the same teacher built in this process with the thread count its
actor uses (torch.set_num_threads(int(teacher.num_cpus)), and OMP_NUM_THREADS for numpy's BLAS, as
Ray sets it in the actor), predicting the same clips back to back, pre-decoded into TeacherInputs
exactly as the job's decode stage does, in the job's batch size; one untimed warm-up batch first.
This is what the job would reach if decode, encode and write were free and fully hidden.

A and B alternate (job, teacher-only, job, teacher-only, ...) per teacher; the ratios A/B are taken
per repetition and their medians quoted. The per-stage seconds per clip (decode, teacher,
teacher_encode = cast + quantize where the teacher is, encode = the clip's frames + pack, i.e.
compress and checksum; write = the writer appending bytes and committing) are the job's own timers
summed over clips and divided by the clips: the stages overlap and
share the cores, so they do not add up to compute_wall, and a stage's time inside the job includes
waiting for a core that another stage holds. "teacher busy" = the teacher's seconds in the job /
the steady span: below 100 % the teacher waited for inputs or shared its core.

The CPU core-seconds per clip per stage are the job's summary.json `core_seconds_per_clip`
(time.process_time of each stage's processes, pipeline/timing.py); the stages that stay on CPUs on a
GPU node (decode, encode, write) times a rate give the cores per GPU that rate takes.

Start-up is a fixed cost per job and the steady state a rate, so end-to-end grows with the job:
rate(N) = N / (startup + N / steady rate). The last table derives from the measured medians the
clips at which end-to-end reaches 90 % of teacher-only (none when the steady ratio is below 0.90).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts every worker with OMP_NUM_THREADS = its CPUs (1 for the default teacher actor), which is
# also what numpy's OpenBLAS reads when it loads; torch.set_num_threads alone would leave this
# process's BLAS (the oracle's matmuls) on all cores and flatter teacher-only ~2x. Set before numpy
# loads. The job's workers inherit it, which changes nothing there: with the default config Ray sets
# 1 for each of them anyway.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")  # the job's progress bar would interleave with the tables

from bench.conditions import median, print_conditions  # noqa: E402
from pipeline.config import JobConfig, OutputConfig, TeacherConfig  # noqa: E402
from pipeline.runner import field_specs, run_job  # noqa: E402
from pipeline.sampling import SamplingConfig  # noqa: E402
from bench.source_videos import FPS, ensure_videos  # noqa: E402
from pipeline.synthetic.dataset import SyntheticConfig, generate_dataset  # noqa: E402
from pipeline.teachers.base import TeacherInput  # noqa: E402
from pipeline.teachers.registry import teacher_class  # noqa: E402
from pipeline.timing import CLIP_STAGES  # noqa: E402
from shards.formats import FORMATS  # noqa: E402
from shards.teacher_fields import L4P_DIM, L4P_HOOKS, PATCH, TOKENS_PER_WINDOW, TUBELET, teacher_shapes  # noqa: E402

NUM_FRAMES = 16
SCENE_SIZE = (320, 240)  # width, height
STAGES = CLIP_STAGES
MATCHED = "matched"
MB = 1e6
# The matched teacher runs under a registered name (the job's config needs one); run_job is handed
# its class, so the name only labels the bench's throw-away caches.
MATCHED_CONFIG_NAME = "l4p-tiny"


@dataclass(frozen=True)
class BenchTeacher:
    label: str
    config: TeacherConfig
    cls: type  # the Teacher subclass the job and the teacher-only run build
    gflop_per_clip: float  # compute per 16-frame clip (one window)


def bench_teacher(name: str, matched_gflop: float, l4p: TeacherConfig | None = None) -> BenchTeacher:
    from bench.l4p_teacher import window_flops
    from bench.matched_teacher import blocks_for, matched_teacher_class, matmul_flops
    from pipeline.teachers.l4p.config import FULL, TINY

    if name == "l4p":  # the real model: its checkpoint, dtype and GPUs from the command line
        return BenchTeacher(name, l4p, teacher_class(name), window_flops(FULL)["total"] / 1e9)
    if name == MATCHED:
        cls = matched_teacher_class(matched_gflop)
        return BenchTeacher(name, TeacherConfig(name=MATCHED_CONFIG_NAME), cls,
                            matmul_flops(blocks_for(matched_gflop)) / 1e9)
    if name == "l4p-tiny":
        gflop = window_flops(TINY)["total"] / 1e9
    else:  # the oracle's latent projections (patch 2 x 14 x 14 x 4 -> 1408, per hook); maps are lookups
        gflop = 2 * TOKENS_PER_WINDOW * TUBELET * PATCH * PATCH * 4 * L4P_DIM * len(L4P_HOOKS) / 1e9
    return BenchTeacher(name, TeacherConfig(name=name), teacher_class(name), gflop)


def raw_fp16_mb(shapes: dict) -> float:
    """Teacher output bytes at fp16, the measure of L4P's ~29.5 MB per clip."""
    return sum(math.prod(shape) for shape in shapes.values()) * 2 / MB


def full_l4p_gflop_per_mb() -> float:
    from bench.l4p_teacher import window_flops
    from pipeline.teachers.l4p.config import FULL

    return window_flops(FULL)["total"] / 1e9 / raw_fp16_mb(teacher_shapes(NUM_FRAMES))


def clips_for_ratio(target: float, startup: float, alone_rate: float, steady_ratio: float) -> str:
    """The job size N from which N / (startup + N / steady_rate) >= target x alone_rate."""
    if steady_ratio <= target:
        return "never (steady below)"
    return f"{math.ceil(target * alone_rate * startup / (1 - target / steady_ratio))} clips"


def job_config(videos: Path, out: Path, teacher: TeacherConfig, fmt: str) -> JobConfig:
    return JobConfig(out=str(out), videos=str(videos), sampling=SamplingConfig(num_frames=NUM_FRAMES),
                     teacher=teacher, output=OutputConfig(format=fmt))


def decoded_inputs(videos: Path, num_clips: int, config: JobConfig, input_size) -> list[TeacherInput]:
    """The clips as the job's decode stage hands them to the teacher."""
    from pipeline.video_reader import read_clip, resize_frames

    inputs = []
    for path in sorted(videos.rglob("*.mp4"))[:num_clips]:
        clip = read_clip(path, config.sampling)
        inputs.append(TeacherInput(clip.video_path, clip.frame_indices, clip.timestamps,
                                   resize_frames(clip.frames, input_size)))
    return inputs


class TeacherAlone:
    """The teacher in this process, as its actor builds and runs it."""

    def __init__(self, teacher: BenchTeacher, inputs: list[TeacherInput]):
        import torch

        config = teacher.config
        self.torch, self.config, self.inputs = torch, config, inputs
        self.threads = max(1, int(config.num_cpus))
        if str(self.threads) != os.environ["OMP_NUM_THREADS"]:
            raise ValueError(f"teacher num_cpus {config.num_cpus}: this bench pins BLAS to "
                             f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} threads at start-up")
        torch.set_num_threads(self.threads)
        self.teacher = teacher.cls(config)
        self.teacher.predict_each(inputs[: config.batch_size])  # warm-up, untimed

    def seconds(self) -> float:
        self.torch.set_num_threads(self.threads)
        size = self.config.batch_size
        start = time.perf_counter()
        for i in range(0, len(self.inputs), size):
            outputs = self.teacher.predict_each(self.inputs[i: i + size])
            failed = [o for o in outputs if isinstance(o, Exception)]
            if failed:
                raise RuntimeError(f"teacher-only run failed: {failed[0]}")
        if self.torch.cuda.is_available():  # a GPU teacher's outputs are computed asynchronously
            self.torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--clips", type=int, default=48,
                        help="synthetic clips of 16 frames (default 48: enough that the job's start-up, a few "
                             "seconds, weighs on end-to-end as little as in a real job)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated repetitions of A and B (default 2)")
    known = ("l4p-tiny", "oracle", MATCHED, "l4p")
    parser.add_argument("--teachers", default=f"l4p-tiny,{MATCHED}",
                        help=f"comma-separated, from {', '.join(known)} (default l4p-tiny,{MATCHED})")
    parser.add_argument("--matched-gflop", type=float, default=150.0,
                        help="GFLOP per clip of the matched teacher (default 150, ~2.5 s here; full L4P "
                             "~11200)")
    parser.add_argument("--l4p-checkpoint", default=None,
                        help="teacher l4p (the real model, on a GPU node): its 5.7 GB .ckpt or .safetensors")
    parser.add_argument("--l4p-dtype", default="bfloat16", help="teacher l4p: inference dtype (default bfloat16)")
    parser.add_argument("--num-gpus", type=float, default=1.0,
                        help="teacher l4p: GPUs of its actor (default 1; the teacher-only leg uses cuda alike)")
    parser.add_argument("--format", default="zarr", choices=FORMATS, help="shard format of the job (default zarr)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where scenes and caches go (default: a temporary dir on /tmp, removed at the end)")
    parser.add_argument("--video-size", type=size_arg, default=None, metavar="WxH",
                        help="source videos of this size and --video-seconds, 30 fps (bench/source_videos.py) "
                             "instead of the synthetic scenes (320x240, 16 frames); e.g. 1280x720. Not for oracle")
    parser.add_argument("--video-seconds", type=float, default=10.0, help="with --video-size (default 10)")
    args = parser.parse_args(argv)
    teachers = [t for t in args.teachers.split(",") if t]
    unknown = sorted(set(teachers) - set(known))
    if unknown or not teachers:
        parser.error(f"--teachers: unknown {unknown}; known {list(known)}")
    if args.clips < 1 or args.repeats < 1:
        parser.error("--clips and --repeats must be >= 1")
    if args.video_size and "oracle" in teachers:
        parser.error("--video-size: the oracle knows the synthetic scenes only")
    l4p = None
    if "l4p" in teachers:
        if not args.l4p_checkpoint:
            parser.error("--teachers l4p needs --l4p-checkpoint PATH (the real model's weights)")
        l4p = TeacherConfig(name="l4p", checkpoint=str(Path(args.l4p_checkpoint).resolve()), dtype=args.l4p_dtype,
                            num_gpus=args.num_gpus)

    workdir = Path(tempfile.mkdtemp(prefix="p4d-bench-throughput-", dir=args.workdir))
    try:
        run(workdir, args.clips, args.repeats, [bench_teacher(t, args.matched_gflop, l4p) for t in teachers],
            args.format, args.video_size, args.video_seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# The stages that run on CPUs whatever the teacher's device: what a GPU node must feed per clip.
CPU_SIDE = ("decode", "encode", "write")
RATES = (5, 10, 20, 35)  # clips/s per GPU: bench/gpu_check.py's range for full L4P on an H100 / H200


def print_core_seconds(runs: dict[str, list[dict]]) -> None:
    """CPU core-seconds per clip per stage (the job's summary.json) and the cores they take per clip/s."""
    repeats = len(next(iter(runs.values())))
    print(f"\n-- CPU core-seconds per clip (median of {repeats}; time.process_time of each stage's processes, "
          "summary.json core_seconds_per_clip)")
    print(f"{'teacher':<10}" + "".join(f"{s:>16}" for s in STAGES) + f"{'CPU side':>10}")
    for name, records in runs.items():
        core = {s: median([r["core"][s] for r in records]) for s in STAGES}
        print(f"{name:<10}" + "".join(f"{core[s]:>16.4f}" for s in STAGES)
              + f"{sum(core[s] for s in CPU_SIDE):>10.4f}")
    print(f"(CPU side = {' + '.join(CPU_SIDE)}: the stages that stay on CPUs on a GPU node; teacher and "
          "teacher_encode ran on this CPU here,\n on a GPU node they are the GPU's host thread.) Cores per GPU at "
          "R clips/s = R x CPU side:")
    print(f"{'teacher':<10}" + "".join(f"{f'{rate} clips/s':>12}" for rate in RATES))
    for name, records in runs.items():
        side = sum(median([r["core"][s] for r in records]) for s in CPU_SIDE)
        print(f"{name:<10}" + "".join(f"{rate * side:>12.1f}" for rate in RATES))


def size_arg(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def run(workdir: Path, num_clips: int, repeats: int, teachers: list[BenchTeacher], fmt: str,
        video_size: tuple[int, int] | None = None, video_seconds: float = 10.0) -> None:
    print_conditions("bench/throughput.py: caching job clips/s vs the teacher alone",
                     ["ray", "torch", "numpy", "zarr", "webdataset", "decord"], workdir)
    videos = workdir / "scenes"
    if video_size:
        ensure_videos(videos, num_clips, video_size, video_seconds)
        source = f"{video_size[0]}x{video_size[1]} {video_seconds:g} s {FPS} fps H.264 videos (bench/source_videos.py)"
    else:
        generate_dataset(videos, SyntheticConfig(num_scenes=num_clips, seed=0, num_frames=NUM_FRAMES,
                                                 width=SCENE_SIZE[0], height=SCENE_SIZE[1]),
                         workers=min(num_clips, os.cpu_count() or 1))
        source = f"synthetic scenes of {NUM_FRAMES} frames ({SCENE_SIZE[0]}x{SCENE_SIZE[1]} H.264)"
    print(f"sizes: {num_clips} clips of {NUM_FRAMES} frames from {source}, format {fmt}, {repeats} repetitions "
          "alternated (job, teacher-only, job, teacher-only, ...)")
    full_ratio = full_l4p_gflop_per_mb()
    print(f"full L4P: {full_ratio:.0f} GFLOP per output MB (raw fp16), the ratio `matched` aims at")

    alone = {}
    for teacher in teachers:
        name, t = teacher.label, teacher.config
        config = job_config(videos, workdir / "unused", t, fmt)
        identity = teacher.cls.identity(t, NUM_FRAMES)
        specs = field_specs(config, identity.shapes, NUM_FRAMES)
        raw = raw_fp16_mb(identity.shapes)
        ray_cfg = config.ray
        print(f"  {name}: outputs {', '.join(f'{k} {chr(120).join(map(str, v))}' for k, v in identity.shapes.items())}"
              f" = {raw:.2f} MB/clip raw fp16, {sum(s.nbytes for s in specs) / MB:.2f} MB/clip stored before "
              f"compression (frames included)")
        print(f"  {name}: compute per output MB {teacher.gflop_per_clip / raw:.2f} GFLOP "
              f"({teacher.gflop_per_clip:.1f} GFLOP per clip) = 1/{full_ratio * raw / teacher.gflop_per_clip:.0f} "
              f"of full L4P's {full_ratio:.0f}")
        print(f"  {name}: job settings: batch_size {t.batch_size}, {t.num_actors} teacher actor(s) x "
              f"{t.num_cpus:g} CPU / {t.num_gpus:g} GPU, ray num_cpus {ray_cfg.num_cpus or 'all'}, "
              f"object store {ray_cfg.object_store_mb} MB, clips_per_shard {config.output.clips_per_shard}, "
              f"max_inflight {config.max_inflight or 'auto'}, {config.num_writers} writer(s)")
        alone[name] = TeacherAlone(teacher, decoded_inputs(videos, num_clips, config, identity.input_size))
        print(f"  {name}: teacher-only in this process with torch threads = int(num_cpus) = {alone[name].threads}, "
              f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (BLAS), as in its actor")

    runs: dict[str, list[dict]] = {t.label: [] for t in teachers}
    run_no = 0
    for rep in range(repeats):
        for teacher in teachers:
            name = teacher.label
            run_no += 1
            out = workdir / f"cache-{run_no}"
            summary = run_job(job_config(videos, out, teacher.config, fmt), teacher.cls)
            shutil.rmtree(out, ignore_errors=True)
            clips = summary["clips"]
            if clips["ok"] != num_clips:
                raise RuntimeError(f"{name}: job computed {clips} (failures {summary['failures_by_reason']})")
            teacher_seconds = alone[name].seconds()
            seconds = summary["seconds"]
            steady = seconds["compute_wall"] - seconds["startup"]
            record = {
                "job_rate": num_clips / seconds["compute_wall"],
                "steady_rate": num_clips / steady,
                "alone_rate": num_clips / teacher_seconds,
                "startup": seconds["startup"],
                "busy": seconds["teacher"] / steady,
                "outside": summary["wall_seconds"] - seconds["compute_wall"],
                "wall_rate": num_clips / summary["wall_seconds"],
                "alone_per_clip": teacher_seconds / num_clips,
                "compute_wall_per_clip": seconds["compute_wall"] / num_clips,
                **{f"{s}_per_clip": seconds[s] / num_clips for s in STAGES},
                "core": summary["core_seconds_per_clip"],
            }
            record["ratio"] = record["job_rate"] / record["alone_rate"]
            record["steady_ratio"] = record["steady_rate"] / record["alone_rate"]
            runs[name].append(record)
            print(f"rep {rep + 1} {name:<9} job {record['job_rate']:.3f} clips/s (compute_wall "
                  f"{seconds['compute_wall']:.2f} s, start-up {seconds['startup']:.2f} s, wall "
                  f"{summary['wall_seconds']:.2f} s)   teacher-only {record['alone_rate']:.3f} clips/s "
                  f"({teacher_seconds:.2f} s)   ratio {record['ratio']:.3f}, steady {record['steady_ratio']:.3f}")

    print(f"\n-- seconds per clip inside the job (median of {repeats}; stages overlap, each timed in its worker)")
    print(f"{'teacher':<10}" + "".join(f"{s:>16}" for s in STAGES) + f"{'sum':>9}{'compute_wall':>14}"
          f"{'teacher-only':>14}{'start-up s':>12}{'teacher busy':>14}")
    for name, records in runs.items():
        stage = [median([r[f"{s}_per_clip"] for r in records]) for s in STAGES]
        print(f"{name:<10}" + "".join(f"{v:>16.3f}" for v in stage) + f"{sum(stage):>9.3f}"
              + f"{median([r['compute_wall_per_clip'] for r in records]):>14.3f}"
              + f"{median([r['alone_per_clip'] for r in records]):>14.3f}"
              + f"{median([r['startup'] for r in records]):>12.2f}"
              + f"{median([r['busy'] for r in records]):>14.0%}")

    print(f"\n-- clips/s (median of {repeats}); ratio = job / teacher-only, per repetition, then median")
    print(f"{'teacher':<10}{'teacher-only':>14}{'end-to-end':>12}{'ratio':>8}{'ratios':>17}"
          f"{'steady':>9}{'ratio':>8}{'ratios':>17}{'incl. Ray start':>17}{'outside':>10}")
    for name, records in runs.items():
        ratios, steady = [r["ratio"] for r in records], [r["steady_ratio"] for r in records]
        print(f"{name:<10}{median([r['alone_rate'] for r in records]):>14.3f}"
              f"{median([r['job_rate'] for r in records]):>12.3f}{median(ratios):>8.3f}"
              f"{' '.join(f'{x:.2f}' for x in ratios):>17}"
              f"{median([r['steady_rate'] for r in records]):>9.3f}{median(steady):>8.3f}"
              f"{' '.join(f'{x:.2f}' for x in steady):>17}"
              f"{median([r['wall_rate'] for r in records]):>17.3f}{median([r['outside'] for r in records]):>8.1f} s")
    print_core_seconds(runs)
    print(f"\n-- derived from the medians above: rate(N) = N / (start-up + N / steady rate)")
    print(f"{'teacher':<10}{'start-up s':>12}{'steady ratio':>14}{'end-to-end >= 0.90 from':>26}")
    for name, records in runs.items():
        startup, steady = median([r["startup"] for r in records]), median([r["steady_ratio"] for r in records])
        alone_rate = median([r["alone_rate"] for r in records])
        print(f"{name:<10}{startup:>12.2f}{steady:>14.3f}{clips_for_ratio(0.9, startup, alone_rate, steady):>26}")
    print("(end-to-end = clips / seconds.compute_wall (start-up included, Ray's own start excluded); steady = "
          "clips / (compute_wall - seconds.startup),\n from the first teacher call to the last commit; "
          "'incl. Ray start' = clips / the job's whole wall time; 'outside' = Ray start-up and\n shut-down, "
          "hashing and planning. Target: ratio >= 0.90.)")


if __name__ == "__main__":
    main()
