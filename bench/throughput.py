"""End-to-end clips/s of the real caching job beside the teacher's forward alone on the same clips.

    .venv/bin/python bench/throughput.py [--clips 8] [--repeats 2] [--teachers l4p-tiny,oracle] [--format zarr]

A (the job): pipeline.runner.run_job on an in-process Ray (JobConfig with ray.address "local", every
run into a fresh cache directory, default job settings otherwise) over --clips synthetic scenes of 16
frames (320 x 240). Its rate is clips / seconds.compute_wall from the job's summary: the wall time from
Ray being up to the last shard committed, which includes starting the worker processes and building
the teacher inside its actor, but NOT Ray's own start-up and shut-down (~8 s on this kind of machine,
printed separately as "outside compute_wall").

B (the limit): the same teacher built in this process with the thread count its actor uses
(torch.set_num_threads(int(teacher.num_cpus)), and OMP_NUM_THREADS for numpy's BLAS, as Ray sets
it in the actor), predicting the same clips, pre-decoded into
TeacherInputs exactly as the job's decode stage does, in the job's batch size; one untimed warm-up
batch first. This is what the job would reach if decode, encode and write were free and fully hidden.

A and B alternate (job, teacher-only, job, teacher-only, ...) per teacher; the ratio A/B is taken per
repetition and its median quoted. The per-stage seconds per clip (decode, teacher, encode, write) are
the job's own timers summed over clips and divided by the clips: the stages overlap and share the
cores, so they do not add up to compute_wall, and a stage's time inside the job includes waiting for
a core that another stage holds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
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
from pipeline.config import TEACHERS, JobConfig, OutputConfig, TeacherConfig  # noqa: E402
from pipeline.runner import field_specs, run_job  # noqa: E402
from pipeline.sampling import SamplingConfig  # noqa: E402
from pipeline.synthetic.dataset import SyntheticConfig, generate_dataset, scene_name  # noqa: E402
from pipeline.teachers.base import TeacherInput  # noqa: E402
from pipeline.teachers.registry import teacher_identity  # noqa: E402
from shards.formats import FORMATS  # noqa: E402

NUM_FRAMES = 16
SCENE_SIZE = (320, 240)  # width, height
STAGES = ("decode", "teacher", "encode", "write")
MB = 1e6


def job_config(videos: Path, out: Path, teacher: str, fmt: str) -> JobConfig:
    return JobConfig(out=str(out), videos=str(videos), sampling=SamplingConfig(num_frames=NUM_FRAMES),
                     teacher=TeacherConfig(name=teacher), output=OutputConfig(format=fmt))


def decoded_inputs(videos: Path, num_clips: int, config: JobConfig) -> list[TeacherInput]:
    """The clips as the job's decode stage hands them to the teacher."""
    from pipeline.video_reader import read_clip, resize_frames

    size = teacher_identity(config.teacher, NUM_FRAMES).input_size
    inputs = []
    for i in range(num_clips):
        clip = read_clip(videos / "videos" / f"{scene_name(i)}.mp4", config.sampling)
        inputs.append(TeacherInput(clip.video_path, clip.frame_indices, clip.timestamps,
                                   resize_frames(clip.frames, size)))
    return inputs


class TeacherAlone:
    """The teacher in this process, as its actor builds and runs it."""

    def __init__(self, config: TeacherConfig, inputs: list[TeacherInput]):
        import torch

        from pipeline.teachers.registry import build_teacher

        self.torch, self.config, self.inputs = torch, config, inputs
        self.threads = max(1, int(config.num_cpus))
        if str(self.threads) != os.environ["OMP_NUM_THREADS"]:
            raise ValueError(f"teacher num_cpus {config.num_cpus}: this bench pins BLAS to "
                             f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} threads at start-up")
        torch.set_num_threads(self.threads)
        self.teacher = build_teacher(config)
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
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips of 16 frames (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated repetitions of A and B (default 2)")
    parser.add_argument("--teachers", default="l4p-tiny,oracle",
                        help=f"comma-separated, from {', '.join(TEACHERS)} (default l4p-tiny,oracle)")
    parser.add_argument("--format", default="zarr", choices=FORMATS, help="shard format of the job (default zarr)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where scenes and caches go (default: a temporary dir on /tmp, removed at the end)")
    args = parser.parse_args(argv)
    teachers = [t for t in args.teachers.split(",") if t]
    unknown = sorted(set(teachers) - set(TEACHERS))
    if unknown or not teachers:
        parser.error(f"--teachers: unknown {unknown}; known {list(TEACHERS)}")
    if args.clips < 1 or args.repeats < 1:
        parser.error("--clips and --repeats must be >= 1")

    workdir = Path(tempfile.mkdtemp(prefix="p4d-bench-throughput-", dir=args.workdir))
    try:
        run(workdir, args.clips, args.repeats, teachers, args.format)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(workdir: Path, num_clips: int, repeats: int, teachers: list[str], fmt: str) -> None:
    print_conditions("bench/throughput.py: caching job clips/s vs the teacher alone",
                     ["ray", "torch", "numpy", "zarr", "webdataset", "decord"], workdir)
    videos = workdir / "scenes"
    generate_dataset(videos, SyntheticConfig(num_scenes=num_clips, seed=0, num_frames=NUM_FRAMES,
                                             width=SCENE_SIZE[0], height=SCENE_SIZE[1]),
                     workers=min(num_clips, os.cpu_count() or 1))
    print(f"sizes: {num_clips} synthetic clips of {NUM_FRAMES} frames ({SCENE_SIZE[0]}x{SCENE_SIZE[1]} H.264), "
          f"format {fmt}, {repeats} repetitions alternated (job, teacher-only, job, teacher-only, ...)")

    configs, alone = {}, {}
    for name in teachers:
        config = job_config(videos, workdir / "unused", name, fmt)
        configs[name] = config
        identity = teacher_identity(config.teacher, NUM_FRAMES)
        specs = field_specs(config, identity.shapes, NUM_FRAMES)
        t, ray_cfg = config.teacher, config.ray
        print(f"  {name}: outputs {', '.join(f'{k} {chr(120).join(map(str, v))}' for k, v in identity.shapes.items())}"
              f" = {sum(s.nbytes for s in specs) / MB:.2f} MB/clip stored before compression")
        print(f"  {name}: job settings: batch_size {t.batch_size}, {t.num_actors} teacher actor(s) x "
              f"{t.num_cpus:g} CPU / {t.num_gpus:g} GPU, ray num_cpus {ray_cfg.num_cpus or 'all'}, "
              f"object store {ray_cfg.object_store_mb} MB, clips_per_shard {config.output.clips_per_shard}, "
              f"max_inflight {config.max_inflight or 'auto'}, {config.num_writers} writer(s)")
        alone[name] = TeacherAlone(t, decoded_inputs(videos, num_clips, config))
        print(f"  {name}: teacher-only in this process with torch threads = int(num_cpus) = {alone[name].threads}, "
              f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (BLAS), as in its actor")

    runs: dict[str, list[dict]] = {name: [] for name in teachers}
    run_no = 0
    for rep in range(repeats):
        for name in teachers:
            run_no += 1
            out = workdir / f"cache-{run_no}"
            summary = run_job(job_config(videos, out, name, fmt))
            shutil.rmtree(out, ignore_errors=True)
            clips = summary["clips"]
            if clips["ok"] != num_clips:
                raise RuntimeError(f"{name}: job computed {clips} (failures {summary['failures']})")
            teacher_seconds = alone[name].seconds()
            seconds = summary["seconds"]
            record = {
                "job_rate": num_clips / seconds["compute_wall"],
                "alone_rate": num_clips / teacher_seconds,
                "outside": summary["wall_seconds"] - seconds["compute_wall"],
                "wall_rate": num_clips / summary["wall_seconds"],
                "alone_per_clip": teacher_seconds / num_clips,
                "compute_wall_per_clip": seconds["compute_wall"] / num_clips,
                **{f"{s}_per_clip": seconds[s] / num_clips for s in STAGES},
            }
            record["ratio"] = record["job_rate"] / record["alone_rate"]
            runs[name].append(record)
            print(f"rep {rep + 1} {name:<9} job {record['job_rate']:.3f} clips/s (compute_wall "
                  f"{seconds['compute_wall']:.2f} s, wall {summary['wall_seconds']:.2f} s)   teacher-only "
                  f"{record['alone_rate']:.3f} clips/s ({teacher_seconds:.2f} s)   ratio {record['ratio']:.3f}")

    print(f"\n-- seconds per clip inside the job (median of {repeats}; stages overlap, each timed in its worker)")
    print(f"{'teacher':<10}" + "".join(f"{s:>9}" for s in STAGES) + f"{'sum':>9}{'compute_wall':>14}"
          f"{'teacher-only':>14}")
    for name, records in runs.items():
        stage = [median([r[f"{s}_per_clip"] for r in records]) for s in STAGES]
        print(f"{name:<10}" + "".join(f"{v:>9.3f}" for v in stage) + f"{sum(stage):>9.3f}"
              + f"{median([r['compute_wall_per_clip'] for r in records]):>14.3f}"
              + f"{median([r['alone_per_clip'] for r in records]):>14.3f}")

    print(f"\n-- clips/s (median of {repeats}); ratio = job / teacher-only, per repetition, then median")
    print(f"{'teacher':<10}{'job (compute_wall)':>20}{'teacher-only':>14}{'ratio':>8}{'ratios':>16}"
          f"{'job incl. Ray start':>21}{'outside compute_wall':>22}")
    for name, records in runs.items():
        ratios = [r["ratio"] for r in records]
        print(f"{name:<10}{median([r['job_rate'] for r in records]):>20.3f}"
              f"{median([r['alone_rate'] for r in records]):>14.3f}{median(ratios):>8.3f}"
              f"{' '.join(f'{x:.2f}' for x in ratios):>16}{median([r['wall_rate'] for r in records]):>21.3f}"
              f"{median([r['outside'] for r in records]):>20.1f} s")
    print("(job rate = clips / summary seconds.compute_wall, which excludes Ray's start-up and shut-down; "
          "'outside compute_wall' is\n that start-up, shut-down, hashing and planning; 'job incl. Ray start' = "
          "clips / the job's whole wall time.)")


if __name__ == "__main__":
    main()
