"""A mixture of datasets cached by one job: each `--source name=PATH` read by its adapter, each
unique video of every source one clip request, each sample keyed to its clip."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from manifests.cache_key import hex_digests
from manifests.content_hash import ContentHashes
from manifests.planner import unique_clips
from manifests.schemas import CLIP_REQUESTS_SCHEMA, SAMPLES_SCHEMA
from pipeline.datasets.registry import parse_source, read_dataset
from pipeline.sources import build_requests

log = logging.getLogger(__name__)


@dataclass
class Mixture:
    requests: pa.Table  # CLIP_REQUESTS_SCHEMA, one row per unique clip
    samples: pa.Table
    skipped: list[dict]  # {dataset, file, row, field, reason}
    rows: dict[str, int]  # samples per dataset


def load_mixture(sources: tuple[str, ...], media_dir: Path, lenient: bool, sampling: dict, teacher_id: str,
                 output_spec: str, hashes: ContentHashes | None = None) -> Mixture:
    """hashes: the remembered content hashes (the runner passes the cache's, so unchanged videos are
    not re-read)."""
    requests = [CLIP_REQUESTS_SCHEMA.empty_table()]
    rows, skipped, counts = [], [], Counter()
    for name, root in (parse_source(s) for s in sources):
        result = read_dataset(name, root, lenient, media_dir)
        base = root.resolve()
        videos = sorted({str(base / r["video"]) for r in result.rows if r["video"] is not None})
        table = build_requests(videos, base, sampling, teacher_id, output_spec, hashes)
        keys = dict(zip(table["video_uri"].to_pylist(), hex_digests(table["cache_key"]).to_pylist()))
        requests.append(table.set_column(1, CLIP_REQUESTS_SCHEMA.field("clip_id"),
                                        pc.binary_join_element_wise(name, table["clip_id"], "/")))
        for row in result.rows:
            if row["video"] is not None:
                row["cache_key"] = keys[str(base / row["video"])]
        rows += result.rows
        skipped += result.skipped
        counts[name] += len(result.rows)
        log.info("source %s (%s): %d samples, %d videos, %d rows skipped", name, root, len(result.rows),
                 len(videos), len(result.skipped))
    ids = Counter(r["sample_id"] for r in rows)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise ValueError(f"sample_id {repeated[0]!r} appears {ids[repeated[0]]} times across the sources")
    # The same bytes under two datasets are one clip.
    return Mixture(unique_clips(pa.concat_tables(requests)), pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA),
                   skipped, dict(counts))


def skipped_summary(mixture: Mixture | None) -> dict:
    """The samples part of summary.json: rows per dataset and every skipped row with its reason."""
    if mixture is None:
        return {"rows": {}, "skipped": 0, "skipped_by_reason": {}, "skipped_rows": []}
    reasons = Counter(f"{s['dataset']}: field {s['field']!r}" for s in mixture.skipped)
    return {"rows": mixture.rows, "skipped": len(mixture.skipped), "skipped_by_reason": dict(reasons),
            "skipped_rows": mixture.skipped}
