"""Training checkpoints that count only when complete.

DeepSpeed writes a checkpoint as many files (per-rank ZeRO partitions, the model states with our
client state: step and the loader position). A kill in the middle leaves a partial directory, and
DeepSpeed's own `latest` file may already point at it. So a checkpoint counts only once rank 0 has
written RUN/checkpoints/<tag>/complete (atomically, after a barrier that follows every rank's save);
resume takes the newest complete one and ignores the rest, which pruning later removes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from shards.atomic import atomic_write_bytes

MARKER = "complete"
PREFIX = "step-"


def tag_for(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def complete_tags(directory: Path) -> list[str]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob(f"{PREFIX}*") if (p / MARKER).is_file())


def latest_complete(directory: Path) -> str | None:
    tags = complete_tags(directory)
    return tags[-1] if tags else None


def mark_complete(directory: Path, tag: str, state: dict) -> None:
    atomic_write_bytes(directory / tag / MARKER, json.dumps(state, indent=2).encode(), replace=True)


def prune(directory: Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` complete checkpoints, and incomplete ones older than the
    newest complete (a crashed save); returns the removed tags."""
    complete = complete_tags(directory)
    if not complete:
        return []
    keep_tags = set(complete[-keep:])
    removed = []
    for path in sorted(directory.glob(f"{PREFIX}*")):
        if path.name not in keep_tags and path.name < complete[-1]:
            shutil.rmtree(path)
            removed.append(path.name)
    return removed
