"""A mixture of datasets cached by one job: each `--source NAME=ROOT` read by its adapter, each
unique clip (video file + span) of every source one clip request, each sample keyed to its clip."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from manifests.cache_key import DIGEST, hex_digests
from manifests.content_hash import ContentHashes
from manifests.planner import unique_clips
from manifests.schemas import CLIP_REQUESTS_SCHEMA, SAMPLES_SCHEMA
from pipeline.datasets.common import CLIP
from pipeline.datasets.registry import parse_source, read_dataset
from pipeline.sources import build_requests, concat_requests

log = logging.getLogger(__name__)


@dataclass
class SourceRead:
    """What one source of the job gave: its samples, the rows it left out, the clips it needs."""

    label: str  # "robofac=/data/RoboFAC", "videos=/data/clips"
    samples: int = 0
    image_only: int = 0  # samples that need no clip (SAT): usable whatever the clips do
    skipped: list[dict] = field(default_factory=list)  # {dataset, file, row, field, reason}
    # its clips' cache_keys (binary(32)); one may repeat (the same bytes under two names: one clip)
    keys: pa.Array | pa.ChunkedArray = field(default_factory=lambda: pa.array([], DIGEST))


@dataclass
class Mixture:
    requests: pa.Table  # one row per unique clip (CLIP_REQUESTS_SCHEMA, with the span columns if a clip has one)
    samples: pa.Table
    sources: list[SourceRead]

    @property
    def skipped(self) -> list[dict]:
        return [s for source in self.sources for s in source.skipped]


def load_mixture(sources: tuple[str, ...], media_dir: Path, lenient: bool, sampling: dict, teacher_id: str,
                 output_spec: str, hashes: ContentHashes | None = None) -> Mixture:
    """hashes: the remembered content hashes (the runner passes the cache's, so unchanged videos are
    not re-read)."""
    requests = [CLIP_REQUESTS_SCHEMA.empty_table()]
    rows, reads = [], []
    for source in (parse_source(s) for s in sources):
        result = read_dataset(source, lenient, media_dir)
        clips = sorted({r[CLIP] for r in result.rows if r[CLIP] is not None}, key=lambda c: (str(c.path), c.span or ()))
        table = build_requests([str(c.path) for c in clips], source.root, sampling, teacher_id, output_spec, hashes,
                               spans=[c.span for c in clips])
        keys = dict(zip(clips, hex_digests(table["cache_key"]).to_pylist()))
        requests.append(table.set_column(1, CLIP_REQUESTS_SCHEMA.field("clip_id"),
                                         pc.binary_join_element_wise(source.name, table["clip_id"], "/")))
        for row in result.rows:
            clip = row.pop(CLIP)
            row["cache_key"] = None if clip is None else keys[clip]
        rows += result.rows
        reads.append(SourceRead(source.label, len(result.rows), sum(r["cache_key"] is None for r in result.rows),
                                result.skipped, table["cache_key"]))
        log.info("source %s: %d samples, %d clips, %d rows skipped", source.label, len(result.rows), len(clips),
                 len(result.skipped))
    ids = Counter(r["sample_id"] for r in rows)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise ValueError(f"sample_id {repeated[0]!r} appears {ids[repeated[0]]} times across the sources")
    # The same bytes under two datasets are one clip.
    return Mixture(unique_clips(concat_requests(requests)), pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), reads)


def skipped_summary(mixture: Mixture | None) -> dict:
    """The samples part of summary.json: rows per dataset and every skipped row with its reason."""
    if mixture is None:
        return {"rows": {}, "skipped": 0, "skipped_by_reason": {}, "skipped_rows": []}
    skipped = mixture.skipped
    reasons = Counter(f"{s['dataset']}: field {s['field']!r}" for s in skipped)
    rows = Counter(mixture.samples["dataset"].to_pylist())
    return {"rows": dict(rows), "skipped": len(skipped), "skipped_by_reason": dict(reasons), "skipped_rows": skipped}
