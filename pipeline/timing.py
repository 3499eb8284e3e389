"""Seconds per stage of the caching job, timed one way everywhere: each clip carries its own across the
Ray stages (decode, teacher, teacher_encode, encode), the writers and the driver keep theirs, and the
summary adds them up.

Two clocks per stage: the wall-clock seconds (under the stage's name) and the CPU seconds of the
process that ran it (under `cpu/<stage>`): time.process_time counts every thread of the process
(decord's, torch's), so they are core-seconds, what a cluster must provision per clip, however the
stages overlap or wait. A GPU stage's CPU seconds are those of its host thread (launches, copies, waits).
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

CPU = "cpu/"
# The stages every written clip goes through, in order (the driver adds its own: hash, compute_wall).
CLIP_STAGES = ("decode", "teacher", "teacher_encode", "encode", "write")


class Seconds(Counter):
    """stage -> seconds (and `cpu/<stage>` -> CPU seconds); `+` and `update` add."""

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        """Adds the seconds the block takes (however it ends) to `stage`, its process's CPU seconds to
        `cpu/<stage>`."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self[stage] += time.perf_counter() - wall
            self[CPU + stage] += time.process_time() - cpu

    def share(self, parts: int) -> Seconds:
        """One of `parts` equal shares (a batch's seconds per clip)."""
        return Seconds({stage: seconds / parts for stage, seconds in self.items()})

    def wall(self) -> dict[str, float]:
        return {stage: seconds for stage, seconds in self.items() if not stage.startswith(CPU)}

    def cpu(self) -> dict[str, float]:
        return {stage.removeprefix(CPU): seconds for stage, seconds in self.items() if stage.startswith(CPU)}
