"""The L4P teacher: what the full model costs per window and stores per clip (computed from the
config, not hard-coded), and how fast l4p-tiny runs on this CPU next to the machine's matmul rate.

  python bench/l4p_teacher.py [--repeats 5] [--batch 1]

Read it as: FLOPs table = the work a GPU does per 16-frame window (encoder up to the last hook, every
head); bytes table = what one 16-frame clip stores at the default precision; l4p-tiny clips/s = a
test-size model, useful only to compare runs of this machine; GFLOP/s beside the matmul limit says
how far the tiny model's many small ops are from the CPU's peak.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.conditions import median, print_conditions  # noqa: E402
from pipeline.config import TeacherConfig  # noqa: E402
from pipeline.teachers.base import TeacherInput  # noqa: E402
from pipeline.teachers.l4p.config import FULL, TASKS, TINY  # noqa: E402
from pipeline.teachers.l4p.dpt import dpt_flops  # noqa: E402
from pipeline.teachers.l4p.encoder import encoder_flops  # noqa: E402
from pipeline.teachers.registry import build_teacher  # noqa: E402
from shards.teacher_fields import default_storage, teacher_shapes  # noqa: E402


def window_flops(config) -> dict[str, float]:
    flops = {"encoder (to last hook)": encoder_flops(config, config.hooks)}
    for task in TASKS:
        flops[f"head {task}"] = dpt_flops(config, config.task_channels[task], config.task_size[task])
    flops["total"] = sum(flops.values())
    return flops


def clip_bytes(num_frames: int = 16) -> dict[str, int]:
    storage = default_storage()
    shapes = teacher_shapes(num_frames, len(FULL.hooks), FULL.embed_dim)
    return {name: int(np.prod(shape)) * np.dtype(storage[name].dtype).itemsize for name, shape in shapes.items()}


def matmul_gflops(seconds: float = 1.0) -> float:
    a = torch.randn(1024, 1024)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        done += 1
    return done * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=1, help="16-frame clips per predict call")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print_conditions("bench/l4p_teacher.py: L4P cost from the config, l4p-tiny speed", ["torch", "numpy"])
    print(f"torch threads: {torch.get_num_threads()}")

    print("\n-- FLOPs per 16-frame window (2 x multiply-adds, from the config)")
    print(f"{'part':28} {'FULL TFLOP':>11} {'TINY GFLOP':>11}")
    full, tiny = window_flops(FULL), window_flops(TINY)
    for part in full:
        print(f"{part:28} {full[part] / 1e12:11.3f} {tiny[part] / 1e9:11.3f}")
    print(f"(docs/teacher.md: encoder ~5.1 TFLOP through all 40 blocks = {encoder_flops(FULL) / 1e12:.3f} here; "
          "~2.8 TFLOP per head: the inferred DPT resamplers come out lower, see dpt.py)")

    print("\n-- bytes per 16-frame clip at FULL shapes, default storage dtypes (before compression)")
    sizes = clip_bytes()
    for name, n in sizes.items():
        print(f"{name:10} {n / 1e6:8.3f} MB")
    print(f"{'total':10} {sum(sizes.values()) / 1e6:8.3f} MB  (docs/teacher.md: ~29.5 MB in fp16)")

    teacher = build_teacher(TeacherConfig(name="l4p-tiny"))
    rng = np.random.default_rng(0)
    clips = [TeacherInput("bench.mp4", np.arange(16), np.arange(16) / 30,
                          rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)) for _ in range(args.batch)]
    teacher.predict(clips)  # warm-up
    seconds, limits = [], []
    for _ in range(args.repeats):  # alternated: model, matmul limit, model, ...
        start = time.perf_counter()
        teacher.predict(clips)
        seconds.append((time.perf_counter() - start) / args.batch)
        limits.append(matmul_gflops(0.5))
    per_clip = median(seconds)
    achieved = tiny["total"] / per_clip / 1e9
    limit = median(limits)
    print(f"\n-- l4p-tiny on this CPU, batch {args.batch}, median of {args.repeats}")
    print(f"{per_clip:.3f} s per 16-frame clip = {1 / per_clip:.2f} clips/s; {achieved:.1f} GFLOP/s counted "
          f"vs fp32 1024^3 matmul {limit:.1f} GFLOP/s ({achieved / limit:.0%} of it)")
    print(f"FULL at that matmul rate would take {full['total'] / (limit * 1e9):.0f} s per window on this CPU")


if __name__ == "__main__":
    main()
