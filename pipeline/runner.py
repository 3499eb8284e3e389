"""The caching job's driver: plan -> decode -> teacher -> encode -> write -> commit, overlapped.

The driver holds only small metadata and object references; frames and teacher outputs travel
between workers through Ray's object store. At most `max_inflight` clips are between decode and
write at any time, which bounds memory whatever the size of the data set.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml
from tqdm import tqdm

from manifests.cache_key import PREPROCESS_VERSION
from manifests.compaction import JOB_MIN_PARTS, compact_clips
from manifests.content_hash import ContentHashes
from manifests.dataclass_io import to_dict
from manifests.planner import missing_clips, unique_clips
from manifests.samples_table import merge_samples
from manifests.schemas import CLIP_REQUESTS_SCHEMA
from pipeline.cache_dir import CONFIG_FILE, SUMMARY_FILE, TEACHER_DIR, CacheDir
from pipeline.config import JobConfig
from pipeline.datasets.mixture import load_mixture, skipped_summary
from pipeline.sources import attach_cache_keys, build_requests, clip_requests, load_sources
from pipeline.teachers import registry
from shards.schema import FieldSpec, specs_to_json

log = logging.getLogger(__name__)


def field_specs(config: JobConfig, teacher_shapes: dict, num_frames: int) -> list[FieldSpec]:
    height, width = config.output.frame_size
    shapes = {"frames": (num_frames, height, width, 3), "timestamps": (num_frames,), **teacher_shapes}
    names = ["frames", "timestamps", *config.output.fields]
    return [FieldSpec(n, shapes[n], **asdict(config.output.storage[n])) for n in names]


# A teacher actor whose process dies (OOM, a lost node, a kill) is restarted and its pending calls,
# the in-flight batch included, are resubmitted by Ray: predict has no side effect, so a retried
# batch yields each clip once. A clip that kills its actor every time ends the job after this many.
TEACHER_MAX_RESTARTS = 3
# A killed job's writer actors live on until Ray reaps them (seconds); a rerun waits that long at most.
WRITER_EXIT_TIMEOUT_S = 120.0
FAILURE_EXAMPLES = 3  # per reason in summary.json; the clips table holds every failed row
_NUMBER = re.compile(r"\d+(\.\d+)?")
# What a full disk looks like from a writer: no space, quota exceeded, a file size limit.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CacheFullError(RuntimeError):
    """The cache directory took no more bytes; what was committed before is intact."""


def failure_reason(stage: str, error: str) -> str:
    """The kind of a failure, for grouping: its stage and its text up to the first colon (reasons are
    written as '<kind>: <details naming the file>'), numbers replaced by N ('decoding failed at
    frame 23' and '... frame 7' are one kind)."""
    kind = _NUMBER.sub("N", error.split(":", 1)[0].strip())
    return f"{stage}: {kind[:100]}"


@dataclass
class RunStats:
    computed: int = 0
    ok: int = 0
    failed: int = 0
    seconds: Counter = field(default_factory=Counter)
    failures_by_reason: Counter = field(default_factory=Counter)
    failure_examples: dict = field(default_factory=dict)  # reason -> the first FAILURE_EXAMPLES failures

    def add_failure(self, request, stage: str, error: str) -> None:
        reason = failure_reason(stage, error)
        self.failures_by_reason[reason] += 1
        examples = self.failure_examples.setdefault(reason, [])
        if len(examples) < FAILURE_EXAMPLES:
            examples.append({"clip_id": request.clip_id, "video_uri": request.video_uri, "error": error})


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
    relative = [f"{flag} {value!r}" for flag, value, path in paths if path and not os.path.isabs(path)]
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
    cache = CacheDir(Path(config.out).resolve())
    with cache.lock():
        cache.create()
        cache.wait_for_writers(WRITER_EXIT_TIMEOUT_S)
        cache.clean()
        identity = (teacher_class or registry.teacher_class(config.teacher.name)).identity(
            config.teacher, config.sampling.num_frames)
        specs = field_specs(config, identity.shapes, config.sampling.num_frames)
        spec_json = specs_to_json(specs)
        sampling = asdict(config.sampling)
        (cache.root / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        (cache.root / TEACHER_DIR / "identity.json").write_text(
            json.dumps({"teacher_id": identity.teacher_id, "config": to_dict(config.teacher),
                        "preprocess_version": PREPROCESS_VERSION}, indent=2))

        requests, mixture, hash_seconds = CLIP_REQUESTS_SCHEMA.empty_table(), None, 0.0
        # Unchanged videos (same path, size, mtime) are not re-read: their hashes are remembered.
        hashes = ContentHashes.of_cache(cache.root)
        if config.videos is not None or not config.sources:
            root, videos, samples, samples_path = load_sources(config.videos, config.samples)
            t_hash = time.perf_counter()
            requests = build_requests(videos, root, sampling, identity.teacher_id, spec_json, hashes)
            hash_seconds = time.perf_counter() - t_hash
            if samples is not None:
                keyed = attach_cache_keys(samples, samples_path, root, requests)
                merge_samples(cache.root, keyed)
                log.info("samples: %d rows joined to clips -> %s", keyed.num_rows, cache.samples_path)
        if config.sources:
            t_hash = time.perf_counter()
            # Image-only samples (SAT) get their images written under the cache root.
            mixture = load_mixture(config.sources, cache.root, config.lenient, sampling, identity.teacher_id,
                                   spec_json, hashes)
            hash_seconds += time.perf_counter() - t_hash
            requests = unique_clips(pa.concat_tables([requests, mixture.requests]))
            merge_samples(cache.root, mixture.samples)
        hashes.save()

        wanted = requests.num_rows
        todo = clip_requests(missing_clips(requests, cache.root, config.retry_failed))
        del requests  # planning's columns (~170 bytes a clip): not held while the clips are computed
        log.info("plan: %d clips wanted, %d already cached, %d to compute", wanted, wanted - len(todo), len(todo))
        stats = RunStats()
        stats.seconds["hash"] = hash_seconds
        writer_stats = []
        if todo:
            writer_stats = _compute(config, address, cache, identity, specs, spec_json, todo, stats,
                                    teacher_class)
        # The parts this run committed, folded with earlier ones once there are enough (see compaction.py).
        compaction = compact_clips(cache.root, min_parts=JOB_MIN_PARTS)

        summary = {
            "cache": str(cache.root.resolve()),
            "format": config.output.format,
            "teacher": config.teacher.name,
            "teacher_id": identity.teacher_id,
            "clips": {"wanted": wanted, "already_cached": wanted - len(todo),
                      "computed": stats.computed, "ok": stats.ok, "failed": stats.failed},
            "failures_by_reason": dict(stats.failures_by_reason.most_common()),
            "failure_examples": stats.failure_examples,
            "samples": skipped_summary(mixture),
            "shards_written": [s for w in writer_stats for s in w["shards"]],
            "manifest_compaction": compaction.summary(),
            "bytes_written": sum(w["bytes"] for w in writer_stats),
            "bytes_on_disk": sum(w["bytes_on_disk"] for w in writer_stats),
            "seconds": {k: round(v, 3) for k, v in sorted(stats.seconds.items())},
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "clips_per_second": round(stats.computed / max(stats.seconds["compute_wall"], 1e-9), 3),
        }
        (cache.root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
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


def _writer_result(ray, ref, cache: CacheDir):
    """ray.get of a writer call, a full disk turned into CacheFullError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            raise CacheFullError(
                f"the cache's disk is full: {cause} (writing {cache.root}). Committed shards and their "
                "manifest parts are intact, clips in flight were not recorded; free space and rerun "
                "(only what is missing is computed)"
            ) from e
        raise


def _compute(config, address, cache, identity, specs, spec_json, todo, stats, teacher_class) -> list[dict]:
    import ray

    from pipeline.stages import ShardWriterActor, TeacherActor, decode_clip, encode_clip

    connected = _init_ray(config, address)
    t0 = time.perf_counter()
    teachers, writers = [], []
    try:
        tcfg = config.teacher
        teachers = [TeacherActor.options(num_cpus=tcfg.num_cpus, num_gpus=tcfg.num_gpus,
                                         max_restarts=TEACHER_MAX_RESTARTS,
                                         max_task_retries=TEACHER_MAX_RESTARTS).remote(tcfg, teacher_class)
                    for _ in range(tcfg.num_actors)]
        # Exported once per run by the first actor: a student's explicit distillation may use them.
        # Not awaited here: the teacher's start (a worker process, the model build: seconds) then
        # overlaps the writers' and decoders' start and the first decodes instead of preceding them.
        # An actor runs its calls in submission order, so the first predict queues behind it; the
        # loop below takes its result (its error ends the job) and notes when the teacher was ready.
        exporting = teachers[0].export.remote(str(cache.root / TEACHER_DIR))
        teacher_ready = first_batch = None
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        defaults = {"teacher_id": identity.teacher_id, "sampling": json.dumps(asdict(config.sampling), sort_keys=True),
                    "fields": spec_json}
        writers = [ShardWriterActor.remote(str(cache.root), config.output.format, specs,
                                           config.output.clips_per_shard, f"{run_id}-w{i}", defaults)
                   for i in range(config.num_writers)]
        max_inflight = config.max_inflight or 2 * tcfg.batch_size * tcfg.num_actors + 2
        pending = deque(todo)
        decoding: dict = {}  # status ref -> (request, payload ref)
        ready: list = []  # (request, payload ref, decode seconds) awaiting a teacher batch
        writing: dict = {}  # write-result ref -> request
        load = [0] * len(teachers)
        inflight = 0
        clip_no = 0
        bar = tqdm(total=len(todo), desc=f"cache ({tcfg.name} -> {config.output.format})", unit="clip")

        def to_writer(request, value):
            nonlocal clip_no
            writer = writers[clip_no % len(writers)]
            clip_no += 1
            return writer.add.remote(request, value)

        while pending or decoding or ready or writing:
            while pending and inflight < max_inflight:
                request = pending.popleft()
                status, payload = decode_clip.remote(request, config.sampling, identity.input_size,
                                                     config.output.frame_size)
                decoding[status] = (request, payload)
                inflight += 1
            flush = not pending and not decoding
            while len(ready) >= tcfg.batch_size or (flush and ready):
                first_batch = first_batch or time.perf_counter()
                batch, ready = ready[: tcfg.batch_size], ready[tcfg.batch_size:]
                actor = min(range(len(teachers)), key=load.__getitem__)
                load[actor] += len(batch)
                outs = teachers[actor].predict.options(num_returns=len(batch)).remote(*[b[1] for b in batch])
                outs = [outs] if len(batch) == 1 else outs
                for (request, payload, dsec), out in zip(batch, outs):
                    encoded = encode_clip.remote(specs, config.output.format, payload, out, dsec)
                    writing[to_writer(request, encoded)] = (request, actor)
            waiting = list(decoding) + list(writing) + ([exporting] if teacher_ready is None else [])
            if not waiting:
                continue
            done, _ = ray.wait(waiting, num_returns=1)
            done += ray.wait([r for r in waiting if r not in done], num_returns=len(waiting) - 1, timeout=0)[0] \
                if len(waiting) > 1 else []
            for ref in done:
                if ref == exporting:
                    ray.get(ref)
                    teacher_ready = time.perf_counter()
                elif ref in decoding:
                    request, payload = decoding.pop(ref)
                    status = ray.get(ref)
                    if status["failure"] is None:
                        ready.append((request, payload, status["seconds"]))
                    else:
                        writing[writers[0].add_failed.remote(request, status["failure"])] = (request, None)
                else:
                    request, actor = writing.pop(ref)
                    result = _writer_result(ray, ref, cache)
                    inflight -= 1
                    if actor is not None:
                        load[actor] -= 1
                    stats.computed += 1
                    if result["status"] == "ok":
                        stats.ok += 1
                        stats.seconds.update(result["seconds"])
                    else:
                        stats.failed += 1
                        stats.add_failure(request, result["stage"], result["error"])
                        log.warning("failed %s (%s): %s", request.clip_id, result["stage"], result["error"])
                    bar.update(1)
                    bar.set_postfix(ok=stats.ok, failed=stats.failed)
        bar.close()
        if teacher_ready is None:  # every clip failed before reaching the teacher
            ray.get(exporting)
            teacher_ready = time.perf_counter()
        # Start-up: from Ray up to the moment the first teacher call could run (its worker started,
        # the model built, the first batch decoded); the rest of compute_wall is the steady state.
        stats.seconds["startup"] = max(teacher_ready, first_batch or teacher_ready) - t0
        finishing = [w.finish.remote() for w in writers]
        writer_stats = [_writer_result(ray, ref, cache) for ref in finishing]
        stats.seconds["write"] = sum(w["write_seconds"] for w in writer_stats)
        stats.seconds["compute_wall"] = time.perf_counter() - t0
        return writer_stats
    finally:
        # Ended now, not when their handles are collected: on a shared cluster they would hold CPUs,
        # and a live writer holds the writers' lock that the next run waits for.
        for actor in [*teachers, *writers]:
            ray.kill(actor)
        if connected:
            ray.shutdown()
