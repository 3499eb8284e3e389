"""What a training run can use from a cache: samples joined to their cached clips, checked first.

Reads CACHE/manifests (the clips table and the samples table), refuses a cache that does not match
what the config asks (teacher id; a stored field the losses need that is missing or has another
shape / dtype than expected), and returns one record per usable sample. Image-only samples (no
`video`) are records without a clip. A video sample whose clip failed or is missing is skipped and
counted with its reason: nothing is dropped silently.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from manifests.clips_table import current_clips, read_clips_table
from manifests.samples_table import SAMPLES_FILE, read_samples
from shards.schema import FieldSpec, specs_from_json
from shards.store import exists, join, location
from shards.teacher_fields import CLIP_FIELDS, teacher_shapes


# What training reads of a clip's manifest row (the loader, shards.cache_reader.ClipReader, the checks
# below); created_at picks a clip's current row. Not its video, sampling or timestamps: at 10M clips the
# whole table does not fit in memory.
INDEX_COLUMNS = ("cache_key", "clip_id", "status", "stage", "error", "teacher_id", "format", "shard", "row", "fields",
                 "checksums", "frame_indices", "window_starts", "created_at")

# Benchmarks: their rows are test data whatever split a table gives them (the caching job's
# evaluation sources, pipeline/datasets/registry.py, and the synthetic benchmark). Listed here, not
# imported: the student never imports pipeline/ (tests/test_training_selection.py keeps the two in step).
EVALUATION_DATASETS = ("r4d", "stibench", "vlm4d", "vsti_test", "synthetic4d")


class CacheMismatchError(ValueError):
    """The cache was made for another teacher or stores fields differently than the config expects."""


class EvaluationDataError(ValueError):
    """A training selection that would train on test rows or on a benchmark."""


def refuse_evaluation_data(samples: list[dict], datasets: tuple[str, ...], where: str) -> None:
    """Refuse a training selection that names a benchmark or holds a row of split `test` or of a
    benchmark; the message names each such dataset and split with its row count."""
    named = sorted(set(datasets) & set(EVALUATION_DATASETS))
    found = Counter((s["dataset"], s["split"]) for s in samples
                    if s["split"] == "test" or s["dataset"] in EVALUATION_DATASETS)
    if named or found:
        what = [f"dataset {n} (a benchmark)" for n in named] + [
            f"{n} rows of dataset {d} split {sp!r}" for (d, sp), n in sorted(found.items())]
        raise EvaluationDataError(
            f"{where}: the training selection holds evaluation data: {'; '.join(what)}. Select split 'train' and "
            "training datasets (data.split, data.datasets), or set data.allow_evaluation_data: true to train on "
            "them on purpose")


@dataclass(frozen=True)
class Record:
    sample_id: str
    dataset: str
    conversations: tuple  # ({"role", "content"}, ...)
    regions: tuple  # REGION structs as dicts
    images: tuple[str, ...]  # image paths relative to the cache's image root
    meta: str | None  # JSON: answers, options, question type (what an evaluator scores against)
    clip: dict | None  # the clip's manifest row, its INDEX_COLUMNS (and the caller's clip_columns) only

    @property
    def shard(self) -> str | None:
        return None if self.clip is None else self.clip["shard"]


@dataclass
class CacheIndex:
    root: Path | str  # a path, or an object-store URL
    records: list[Record]
    teacher_id: str | None
    specs: dict[str, FieldSpec]  # stored field -> spec (one spec per field across the cache)
    skipped: Counter = field(default_factory=Counter)  # reason -> samples

    def datasets(self) -> list[str]:
        return sorted({r.dataset for r in self.records})


def load_cache_index(
    cache: str | Path,
    split: str | None = "train",  # None: every split
    datasets: tuple[str, ...] = (),
    teacher_id: str | None = None,
    needed: tuple[str, ...] = (),
    field_dtypes: dict[str, str] | None = None,
    training: bool = False,
    clip_columns: tuple[str, ...] = (),
) -> CacheIndex:
    """`needed`: teacher fields the enabled losses read; `field_dtypes`: the stored dtype the config
    expects per field (a run tuned for fp16 latents must not silently train on int8 ones); `training`:
    refuse a selection holding evaluation data (refuse_evaluation_data); `clip_columns`: manifest
    columns beyond INDEX_COLUMNS a tool needs in each record's clip (the probes: video_uri)."""
    root = location(cache)
    samples_path = join(root, SAMPLES_FILE.as_posix())
    if not exists(samples_path):
        raise FileNotFoundError(f"{root} holds no samples table ({SAMPLES_FILE}): not a p4d cache, or nothing cached yet")
    samples = read_samples(samples_path).to_pylist()
    wanted = [s for s in samples if (split is None or s["split"] == split) and (not datasets or s["dataset"] in datasets)]
    clips = current_clips(read_clips_table(root, (*INDEX_COLUMNS, *clip_columns), convert=rows_of_keys({s["cache_key"] for s in wanted})))
    if training:
        refuse_evaluation_data(wanted, datasets, str(root))
    unknown = set(datasets) - {s["dataset"] for s in samples}
    if unknown:
        raise ValueError(f"{root}: no samples of dataset(s) {sorted(unknown)} "
                         f"(the cache has {sorted({s['dataset'] for s in samples})})")
    records, skipped, specs, teacher_ids = [], Counter(), {}, set()
    for s in wanted:
        clip = None
        if s["video"] is not None:
            clip = clips.get(s["cache_key"]) if s["cache_key"] else None
            if clip is None:
                skipped["video not cached"] += 1
                continue
            if clip["status"] != "ok":
                skipped[f"clip failed: {clip['stage']}"] += 1
                continue
            teacher_ids.add(clip["teacher_id"])
            for spec in specs_from_json(clip["fields"]):
                if specs.setdefault(spec.name, spec) != spec:
                    raise CacheMismatchError(
                        f"{root}: field {spec.name!r} is stored two ways ({specs[spec.name]} and {spec}, "
                        f"clip {clip['clip_id']}); train on one storage config per cache"
                    )
        records.append(Record(
            sample_id=s["sample_id"], dataset=s["dataset"], conversations=tuple(s["conversations"]),
            regions=tuple(s["regions"] or ()), images=tuple(s["images"] or ()), meta=s["meta"], clip=clip,
        ))
    if not records:
        raise ValueError(f"{root}: no usable {split!r} samples (skipped: {dict(skipped) or 'none'})")

    if len(teacher_ids) > 1:
        raise CacheMismatchError(f"{root}: clips from several teachers {sorted(teacher_ids)}; select one")
    found = next(iter(teacher_ids), None)
    if teacher_id and found and found != teacher_id:
        raise CacheMismatchError(f"{root}: cached by teacher {found!r}, the config asks for {teacher_id!r}")
    if found is not None:
        _check_fields(root, specs, needed, field_dtypes or {})
    return CacheIndex(root, records, found, specs, skipped)


def rows_of_keys(keys: set[str | None]):
    """A read_clips_table convert that keeps only the rows of `keys`: the clips the selected samples
    point at, not the whole table."""
    wanted = pa.array(sorted(k for k in keys if k is not None), pa.string())
    return lambda rows, where: rows.filter(pc.is_in(rows["cache_key"], value_set=wanted))


def _check_fields(root: Path, specs: dict[str, FieldSpec], needed, field_dtypes: dict[str, str]) -> None:
    missing = [f for f in (*CLIP_FIELDS, *needed) if f not in specs]
    if missing:
        raise CacheMismatchError(
            f"{root}: the enabled losses need field(s) {missing} the cache does not store "
            f"(it stores {sorted(specs)}); turn those losses off or recache with them"
        )
    for name, dtype in field_dtypes.items():
        if name in specs and specs[name].dtype != dtype:
            raise CacheMismatchError(
                f"{root}: field {name!r} is stored as {specs[name].dtype}, the config expects {dtype}"
            )


def check_shapes(root: Path, specs: dict[str, FieldSpec], needed, hooks: int, latent_dim: int) -> None:
    """The stored teacher shapes must be what the P4D branch predicts."""
    expect = teacher_shapes(specs["frames"].shape[0], hooks, latent_dim)
    for name in needed:
        if tuple(specs[name].shape) != expect[name]:
            raise CacheMismatchError(
                f"{root}: field {name!r} has shape {tuple(specs[name].shape)} per clip, the student's branch "
                f"predicts {expect[name]} (branch.hooks / branch.latent_dim or the sampling differ)"
            )


def record_summary(index: CacheIndex) -> str:
    per_dataset = Counter(r.dataset for r in index.records)
    video = sum(r.clip is not None for r in index.records)
    text = (f"{len(index.records)} samples ({video} video, {len(index.records) - video} image-only) from "
            f"{json.dumps(dict(sorted(per_dataset.items())))}; teacher {index.teacher_id}")
    if index.skipped:
        text += f"; skipped {json.dumps(dict(index.skipped))}"
    return text
