"""The L4P teacher: what the full model holds and costs per window (computed from the config, not
hard-coded) beside the released model's figures, what a clip stores, and how fast l4p-tiny runs on this
CPU next to the machine's matmul rate.

  python bench/l4p_teacher.py [--repeats 5] [--batch 1]

Read it as: the heads table = parameters and FLOPs of each DPT head for one 16-frame window, counted
three ways (the analytic dpt_flops, torch's FlopCounterMode over a meta-device forward of our module,
and the released model's figure, tests/data/l4p_head_cost.md) with the ratio to the released figure;
bytes table = what one 16-frame clip stores at the default precision; l4p-tiny clips/s = a test-size
model, useful only to compare runs of this machine; GFLOP/s beside the matmul limit says how far the
tiny model's many small ops are from the CPU's peak.
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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.conditions import median, print_conditions  # noqa: E402
from pipeline.config import TeacherConfig  # noqa: E402
from pipeline.teachers.base import TeacherInput  # noqa: E402
from pipeline.teachers.l4p.config import FULL, TASKS, TINY  # noqa: E402
from pipeline.teachers.l4p.dpt import DPTHead, dpt_flops  # noqa: E402
from pipeline.teachers.l4p import model  # noqa: E402
from pipeline.teachers.l4p.encoder import VideoEncoder, encoder_flops  # noqa: E402
from pipeline.teachers.registry import build_teacher  # noqa: E402
from shards.teacher_fields import default_storage, teacher_shapes  # noqa: E402

# The released model (NVlabs/L4P 8701a4b, configs/model.yaml) per head: (unique parameters, FLOPs per
# 16-frame window), measured on the official modules with FlopCounterMode (tests/data/l4p_head_cost.md).
RELEASED_HEADS = {
    "depth": (85_845_889, 2.8386e12),
    "flow_2d_backward": (85_846_018, 2.8388e12),
    "dyn_mask": (85_845_889, 2.8386e12),
    "camray": (82_307_590, 0.2690e12),
}
RELEASED_ENCODER = (1_011_610_752, 4.5777e12)  # parameters, FLOPs through hook 36


def window_flops(config) -> dict[str, float]:
    parts = model.window_flops(config)
    flops = {"encoder (to last hook)": parts.pop("encoder"), **{f"head {task}": f for task, f in parts.items()}}
    flops["total"] = sum(flops.values())
    return flops


def clip_bytes(num_frames: int = 16) -> dict[str, int]:
    storage = default_storage()
    shapes = teacher_shapes(num_frames, len(FULL.hooks), FULL.embed_dim)
    return {name: int(np.prod(shape)) * np.dtype(storage[name].dtype).itemsize for name, shape in shapes.items()}


def counted_head(task: str) -> tuple[int, float]:
    """(parameters, FlopCounterMode FLOPs) of the FULL head, built and run on the meta device."""
    with torch.device("meta"):
        head = DPTHead(FULL, FULL.heads[task])
        taps = [torch.empty(1, FULL.num_tokens, FULL.embed_dim) for _ in FULL.hooks]
        with FlopCounterMode(display=False) as counter:
            head(taps)
    return sum(p.numel() for p in head.parameters()), counter.get_total_flops()


def print_heads() -> None:
    print("\n-- FULL DPT heads per 16-frame window: ours vs the released model (tests/data/l4p_head_cost.md)")
    print(f"{'head':18} {'params':>13} {'released':>13} {'ratio':>7} {'dpt_flops T':>12} {'counted T':>10} "
          f"{'released T':>11} {'ratio':>7}")
    for task in TASKS:
        params, counted = counted_head(task)
        analytic = dpt_flops(FULL, FULL.heads[task])
        ref_params, ref_flops = RELEASED_HEADS[task]
        print(f"{task:18} {params:13,d} {ref_params:13,d} {params / ref_params:7.4f} {analytic / 1e12:12.4f} "
              f"{counted / 1e12:10.4f} {ref_flops / 1e12:11.4f} {analytic / ref_flops:7.4f}")
    with torch.device("meta"):
        params = sum(p.numel() for p in VideoEncoder(FULL).parameters())
    flops = encoder_flops(FULL, FULL.hooks)
    print(f"{'encoder (hook 36)':18} {params:13,d} {RELEASED_ENCODER[0]:13,d} {params / RELEASED_ENCODER[0]:7.4f} "
          f"{flops / 1e12:12.4f} {'':>10} {RELEASED_ENCODER[1] / 1e12:11.4f} {flops / RELEASED_ENCODER[1]:7.4f}")


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
    print_heads()

    print("\n-- bytes per 16-frame clip at FULL shapes, default storage dtypes (before compression)")
    sizes = clip_bytes()
    for name, n in sizes.items():
        print(f"{name:10} {n / 1e6:8.3f} MB")
    print(f"{'total':10} {sum(sizes.values()) / 1e6:8.3f} MB  (all five fields in fp16: 29.5 MB)")

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
