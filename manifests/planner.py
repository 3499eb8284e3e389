"""Planning: of the clips a job wants, which are not cached yet."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from manifests.schemas import CLIP_OK, CLIP_TRANSIENT

T = TypeVar("T")


def plan_missing(
    wanted: Iterable[T], key_of, status: Mapping[str, str], retry_failed: bool = False
) -> list[T]:
    """Clips of `wanted` whose cache_key is not done, each key once, in input order.

    status: cache_key -> status of its current row (clips_table.current_status).
    Done = an ok row, or a failed row unless retry_failed: most failures are deterministic (a
    corrupt file stays corrupt), and a repaired video has new bytes, hence a new key. A transient
    row (the machine failed the clip, not the clip itself) is never done.
    """
    todo, seen = [], set()
    for clip in wanted:
        key = key_of(clip)
        if key in seen:
            continue
        seen.add(key)
        state = status.get(key)
        if state is None or state == CLIP_TRANSIENT or (retry_failed and state != CLIP_OK):
            todo.append(clip)
    return todo
