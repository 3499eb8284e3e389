"""The caching job's driver: take the cache, plan what is missing (pipeline/sources.py, the manifests),
compute it on Ray (pipeline/scheduler.py) and write the summary."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from configs.dataclass_io import to_dict, to_yaml
from manifests.cache_key import PREPROCESS_VERSION
from manifests.compaction import JOB_MIN_PARTS, compact_clips
from manifests.content_hash import ContentHashes
from manifests.planner import missing_clips, unique_clips
from manifests.samples_table import merge_samples
from manifests.schemas import CLIP_REQUESTS_SCHEMA
from pipeline.cache_dir import CONFIG_FILE, SUMMARY_FILE, TEACHER_DIR, CacheDir
from pipeline.config import JobConfig
from pipeline.datasets.mixture import load_mixture, skipped_summary
from pipeline.scheduler import RunStats, Scheduler
from pipeline.source_report import folder_source, source_reports
from pipeline.sources import attach_cache_keys, build_requests, clip_requests, concat_requests, load_sources
from pipeline.teachers import registry
from pipeline.timing import CLIP_STAGES
from shards.schema import FieldSpec, specs_to_json
from shards.store import is_url
from shards.teacher_fields import CLIP_FIELDS, clip_shapes

log = logging.getLogger(__name__)


def field_specs(config: JobConfig, teacher_shapes: dict, num_frames: int) -> list[FieldSpec]:
    shapes = {**clip_shapes(num_frames, config.output.frame_size), **teacher_shapes}
    names = [*CLIP_FIELDS, *config.output.fields]
    return [FieldSpec.stored_as(n, shapes[n], config.output.storage[n]) for n in names]


# A killed job's writer actors live on until Ray reaps them (seconds); a rerun waits that long at most.
WRITER_EXIT_TIMEOUT_S = 120.0


def resolve_ray_address(address: str) -> str:
    """'local' (an in-process Ray) or the address of the cluster to join; see RayConfig."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or "local"
    if address.startswith(("http://", "https://")):
        raise ValueError(f"Ray address {address!r} is a dashboard address (for `ray job submit`); a job "
                         "joins a cluster by its GCS address host:port (RAY_ADDRESS inside a submitted job)")
    return address


def _check_paths_for_cluster(config: JobConfig) -> None:
    # Under `ray job submit --working-dir` the driver runs in a temporary copy of the project and
    # workers may run on other nodes: a relative path would point into that copy, then vanish.
    paths = [("--out", config.out, config.out), ("--videos", config.videos, config.videos),
             ("--samples", config.samples, config.samples),
             *(("--source", source, source.split("=", 1)[-1]) for source in config.sources)]
    relative = [f"{flag} {value!r}" for flag, value, path in paths
                if path and not os.path.isabs(path) and not is_url(path)]
    if relative:
        raise ValueError(f"on a Ray cluster, paths must be absolute and on a filesystem every node sees: "
                         f"{', '.join(relative)}")


def run_job(config: JobConfig, teacher_class: type | None = None) -> dict:
    """Run the caching job; returns the summary written to CACHE/summary.json.

    teacher_class: a Teacher subclass to run instead of the registry's for config.teacher.name (a
    benchmark's stand-in teacher, bench/matched_teacher.py); its identity names the cache entries."""
    wall = time.perf_counter()
    address = resolve_ray_address(config.ray.address)
    if address != "local":
        _check_paths_for_cluster(config)
    cache = CacheDir(config.out if is_url(config.out) else Path(config.out).resolve())
    with cache.lock(config.lease_seconds):
        cache.create()
        cache.wait_for_writers(WRITER_EXIT_TIMEOUT_S)
        cache.clean()
        identity = (teacher_class or registry.teacher_class(config.teacher.name)).identity(
            config.teacher, config.sampling.num_frames)
        specs = field_specs(config, identity.shapes, config.sampling.num_frames)
        spec_json = specs_to_json(specs)
        sampling = asdict(config.sampling)
        cache.store.write_bytes(CONFIG_FILE, to_yaml(config).encode(), replace=True)
        cache.store.write_bytes(f"{TEACHER_DIR}/identity.json", json.dumps(
            {"teacher_id": identity.teacher_id, "config": to_dict(config.teacher),
             "preprocess_version": PREPROCESS_VERSION}, indent=2).encode(), replace=True)

        requests, mixture, stats, sources = CLIP_REQUESTS_SCHEMA.empty_table(), None, RunStats(), []
        # Unchanged videos (same path, size, mtime) are not re-read: their hashes are remembered.
        hashes = ContentHashes.of_cache(cache.root)
        if config.videos is not None or not config.sources:
            root, videos, samples, samples_path = load_sources(config.videos, config.samples)
            with stats.seconds.timing("hash"):
                requests = build_requests(videos, root, sampling, identity.teacher_id, spec_json, hashes)
            if samples is not None:
                keyed = attach_cache_keys(samples, samples_path, root, requests)
                merge_samples(cache.root, keyed)
                log.info("samples: %d rows joined to clips -> %s", keyed.num_rows, cache.samples_path)
            sources.append(folder_source(root, requests["cache_key"], 0 if samples is None else samples.num_rows))
        if config.sources:
            # Image-only samples (SAT) get their images written under the cache root.
            with stats.seconds.timing("hash"):
                mixture = load_mixture(config.sources, cache.root, config.lenient, sampling, identity.teacher_id,
                                       spec_json, hashes)
            requests = unique_clips(concat_requests([requests, mixture.requests]))
            merge_samples(cache.root, mixture.samples)
            sources += mixture.sources
        hashes.save()

        wanted = requests.num_rows
        todo = clip_requests(missing_clips(requests, cache.root, config.retry_failed))
        del requests  # planning's columns (~170 bytes a clip): not held while the clips are computed
        log.info("plan: %d clips wanted, %d already cached, %d to compute", wanted, wanted - len(todo), len(todo))
        writer_stats = []
        if todo:
            writer_stats = _compute(config, address, cache, identity, specs, todo, stats, teacher_class)
        # The parts this run committed, folded with earlier ones once there are enough (see compaction.py).
        compaction = compact_clips(cache.root, min_parts=JOB_MIN_PARTS)

        core = stats.seconds.cpu()
        summary = {
            "cache": str(cache.root),
            "format": config.output.format,
            "teacher": config.teacher.name,
            "teacher_id": identity.teacher_id,
            "clips": {"wanted": wanted, "already_cached": wanted - len(todo),
                      "computed": stats.computed, "ok": stats.ok, "failed": stats.failed},
            "failures_by_kind": stats.failures_by_kind(),
            "failures_by_reason": dict(stats.failures_by_reason.most_common()),
            "failure_examples": stats.failure_examples,
            "retries": {"clips": stats.retries, "teacher_restarts": stats.teacher_restarts},
            "samples": skipped_summary(mixture),
            "sources": source_reports(sources, cache.root),
            "shards_written": [s for w in writer_stats for s in w["shards"]],
            "manifest_compaction": compaction.summary(),
            "bytes_written": sum(w["bytes"] for w in writer_stats),
            "bytes_on_disk": sum(w["bytes_on_disk"] for w in writer_stats),
            "seconds": {k: round(v, 3) for k, v in sorted(stats.seconds.wall().items())},
            # CPU seconds of each stage's processes (pipeline/timing.py), and per clip written: the cores a
            # cluster needs per clip/s (README, "Running on a cluster").
            "core_seconds": {k: round(v, 3) for k, v in sorted(core.items())},
            "core_seconds_per_clip": {k: round(core.get(k, 0.0) / max(stats.ok, 1), 4) for k in CLIP_STAGES},
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "clips_per_second": round(stats.computed / max(stats.seconds["compute_wall"], 1e-9), 3),
        }
        cache.store.write_bytes(SUMMARY_FILE, json.dumps(summary, indent=2).encode(), replace=True)
        return summary


def _init_ray(config: JobConfig, address: str) -> bool:
    """Start an in-process Ray ('local') or join the cluster at `address`; returns whether we
    connected (and so must disconnect)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray 2.60 otherwise writes ~/.ray/auth_token, after which `ray job submit` to any later local
    # cluster fails with "Missing authentication token".
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address="local", include_dashboard=False, num_cpus=config.ray.num_cpus,
                 object_store_memory=config.ray.object_store_mb << 20, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": project_pythonpath()}})
        log.info("Ray: started in-process (%s)", ray.cluster_resources())
    else:
        # Under `ray job submit` the job's runtime env (--working-dir) is inherited by its workers.
        ray.init(address=address)
        log.info("Ray: joined the cluster at %s (%s)", address, ray.cluster_resources())
    return True


def project_pythonpath() -> str:
    """Workers import the project's packages from the same checkout as the driver."""
    project = str(Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return f"{project}{os.pathsep}{rest}" if rest else project


def _compute(config: JobConfig, address: str, cache: CacheDir, identity, specs: list[FieldSpec], todo: list,
             stats: RunStats, teacher_class: type | None) -> list[dict]:
    import ray

    connected = _init_ray(config, address)
    try:
        with stats.seconds.timing("compute_wall"):
            return Scheduler(config, cache, identity, specs, stats, teacher_class).run(todo)
    finally:
        if connected:
            ray.shutdown()
