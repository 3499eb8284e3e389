"""Seconds per stage of the caching job, timed one way everywhere: each clip carries its own across the
Ray stages (decode, teacher, encode), the writers and the driver keep theirs, and the summary adds
them up."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class Seconds(Counter):
    """stage -> seconds; `+` and `update` add."""

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        """Adds the seconds the block takes (however it ends) to `stage`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self[stage] += time.perf_counter() - start
