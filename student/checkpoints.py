"""Training checkpoints that count only when complete, and what resuming one may change.

DeepSpeed writes a checkpoint as many files (per-rank ZeRO partitions, the model states with our
client state: step and the loader position). A kill in the middle leaves a partial directory, and
DeepSpeed's own `latest` file may already point at it. So a checkpoint counts only once rank 0 has
written RUN/checkpoints/<tag>/complete (atomically, after a barrier that follows every rank's save);
resume takes the newest complete one and ignores the rest, which pruning later removes.

The marker also records the run (run_record): world size, per-rank batch, gradient accumulation, the
global batch, the settings that fix the sample stream and a digest of the manifest rows it reads.
plan_resume compares them with the resuming run: a resume is exact (the same global sample sequence,
on any number of ranks) or refused, naming the difference.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from configs.dataclass_io import to_dict
from shards.atomic import atomic_write_bytes, commit_temporary, remove_temporaries, temporary_path

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


def read_marker(directory: Path, tag: str) -> dict:
    """What mark_complete wrote: the step, the loader position and the run's record (run_record)."""
    return json.loads((directory / tag / MARKER).read_text())


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


# -- what a checkpoint's run was, and whether resuming it is exact ----------------------------------

class ResumeRefusedError(ValueError):
    """Resuming a checkpoint would not continue its run exactly (another seed, another cache, ...)."""


# Data settings that do not change which sample a global position holds, nor what is read for it:
# where the cache lies (its rows are compared by digest), loader processes, and the batch sizes (the
# global batch is kept through gradient accumulation, see plan_resume).
_NOT_STREAM = ("data.cache", "data.num_workers", "data.batch_size", "data.global_batch")


def stream_settings(cfg) -> dict:
    """The run's settings that fix its sample stream and what is drawn from each sample, flattened to
    dotted keys: the seeds and the data selection (datasets, split, weights, shuffle buffer, marks,
    augmentation, ...)."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif prefix not in _NOT_STREAM:
            flat[prefix] = value

    walk("data", to_dict(cfg.data))
    flat["run.seed"] = cfg.run.seed
    return flat


def manifests_digest(records) -> str:
    """sha256 of the manifest rows a run reads, in the index's order: each sample and the clip (cache
    key, shard, row) it reads. The sample order is computed from them, so an equal digest is an equal
    stream; a cache's own bytes behind a cache key never change (same key, same bytes)."""
    digest = hashlib.sha256()
    for r in records:
        clip = (None, None, None) if r.clip is None else (r.clip["cache_key"], r.clip["shard"], r.clip["row"])
        digest.update(json.dumps([r.sample_id, r.dataset, *clip]).encode())
    return digest.hexdigest()


def run_record(cfg, world: int, accumulation: int, digest: str) -> dict:
    """What `mark_complete` records of the run beside its position (read back by plan_resume)."""
    batch = cfg.data.batch_size
    return {"world_size": world, "batch_size": batch, "accumulation": accumulation,
            "global_batch": world * batch * accumulation, "stream": stream_settings(cfg), "manifests": digest}


@dataclass(frozen=True)
class ResumePlan:
    accumulation: int  # passes per optimizer step on this run's ranks
    universal: bool  # the partitions were saved by another number of ranks: load a universal copy
    notes: tuple[str, ...] = ()  # what the log must say (a changed world, a global batch not kept, ...)


def plan_resume(marker: dict | None, cfg, world: int, digest: str, where: str) -> ResumePlan:
    """How this run (cfg on `world` ranks, reading rows of `digest`) continues the run of the checkpoint
    whose marker (read_marker) is `marker` (None: a fresh run). Exact where it can be: the same global sample order from the saved
    global position, the saved global batch kept through gradient accumulation where the new ranks x
    batch divide it (the log says so where it does not). A difference that changes the stream (a seed,
    the data selection, the cache's rows, an explicitly other global batch) is refused, naming it,
    unless cfg.run.allow_changed_resume."""
    if marker is None:
        return ResumePlan(cfg.data.accumulation(world), universal=False)
    saved = marker.get("run")
    if saved is None:
        raise ResumeRefusedError(f"{where}: the checkpoint records no run (written before checkpoints did): "
                                 "resuming it exactly cannot be checked; start a new run.out")
    now = stream_settings(cfg)
    differences = [f"{key} is {saved['stream'].get(key, '(absent)')!r} in the checkpoint, {now.get(key, '(absent)')!r} now"
                   for key in sorted(set(now) | set(saved["stream"])) if now.get(key) != saved["stream"].get(key)]
    if digest != saved["manifests"]:
        differences.append(f"the cache's rows differ (manifests digest {saved['manifests'][:12]} in the checkpoint, "
                           f"{digest[:12]} now: another cache, or samples or clips changed since)")
    wanted = cfg.data.global_batch or saved["global_batch"]
    if wanted != saved["global_batch"]:
        differences.append(f"data.global_batch is {saved['global_batch']} in the checkpoint, {wanted} now")
    notes = []
    if differences:
        if not cfg.run.allow_changed_resume:
            raise ResumeRefusedError(f"{where}: resuming would not continue the run exactly: {'; '.join(differences)}. "
                                     "Undo the change, or set run.allow_changed_resume=true to resume anyway")
        notes.append(f"resuming with changes (run.allow_changed_resume): {'; '.join(differences)}")
    per_pass = cfg.data.batch_size * world
    accumulation = max(1, round(wanted / per_pass))
    if accumulation * per_pass != wanted:
        notes.append(f"the global batch {wanted} cannot be kept with {cfg.data.batch_size} samples x {world} ranks: "
                     f"steps now take {accumulation * per_pass} samples ({accumulation} passes); the sample order "
                     "goes on from the same global position")
    elif (world, cfg.data.batch_size) != (saved["world_size"], saved["batch_size"]):
        notes.append(f"saved by {saved['world_size']} ranks x {saved['batch_size']} samples x {saved['accumulation']} "
                     f"passes, resumed on {world} ranks x {cfg.data.batch_size} x {accumulation}: the global batch "
                     f"{wanted} is kept, the same samples in the same steps")
    return ResumePlan(accumulation, universal=world != saved["world_size"], notes=tuple(notes))


UNIVERSAL = "universal"  # inside a checkpoint's directory: its partitions merged, loadable by any number of ranks


def universal_copy(directory: Path, tag: str) -> Path:
    """The checkpoint `tag` in DeepSpeed's universal format (its ZeRO partitions merged per parameter,
    loadable on any number of ranks: `checkpoint.load_universal`), made once, atomically, inside the
    checkpoint's directory (pruned with it). DeepSpeed's own converter, in a process of its own."""
    final = directory / tag / UNIVERSAL
    if final.is_dir():
        return final
    remove_temporaries(directory / tag)  # a conversion killed earlier
    temp = temporary_path(final)
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                    str(directory / tag), "--output_folder", str(temp)], check=True, capture_output=True)
    return commit_temporary(temp, final)
