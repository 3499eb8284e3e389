"""The caching job's driver: plan -> decode -> teacher -> encode -> write -> commit, overlapped.

The driver holds only small metadata and object references; frames and teacher outputs travel
between workers through Ray's object store. At most `max_inflight` clips are between decode and
write at any time, which bounds memory whatever the size of the data set.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from manifests.cache_key import PREPROCESS_VERSION
from manifests.clips_table import current_clips, read_clips_table
from manifests.planner import plan_missing
from manifests.samples_table import merge_samples
from pipeline.cache_dir import CONFIG_FILE, SUMMARY_FILE, TEACHER_DIR, CacheDir
from pipeline.config import JobConfig, to_dict
from pipeline.sources import attach_cache_keys, build_requests, load_sources
from pipeline.teachers.registry import teacher_identity
from shards.schema import FieldSpec, specs_to_json

log = logging.getLogger(__name__)


def field_specs(config: JobConfig, teacher_shapes: dict, num_frames: int) -> list[FieldSpec]:
    height, width = config.output.frame_size
    shapes = {"frames": (num_frames, height, width, 3), "timestamps": (num_frames,), **teacher_shapes}
    names = ["frames", "timestamps", *config.output.fields]
    return [FieldSpec(n, shapes[n], **asdict(config.output.storage[n])) for n in names]


def failure_reason(error: str) -> str:
    """The kind of a failure, for grouping: its text up to the first colon (reasons are written
    as '<kind>: <details naming the file>')."""
    return error.split(":", 1)[0].strip()


@dataclass
class RunStats:
    computed: int = 0
    ok: int = 0
    failed: int = 0
    seconds: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)


def run_job(config: JobConfig) -> dict:
    """Run the caching job; returns the summary written to CACHE/summary.json."""
    wall = time.perf_counter()
    cache = CacheDir(config.out)
    with cache.lock():
        cache.create()
        cache.clean()
        identity = teacher_identity(config.teacher, config.sampling.num_frames)
        specs = field_specs(config, identity.shapes, config.sampling.num_frames)
        spec_json = specs_to_json(specs)
        sampling = asdict(config.sampling)
        (cache.root / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        (cache.root / TEACHER_DIR / "identity.json").write_text(
            json.dumps({"teacher_id": identity.teacher_id, "config": to_dict(config.teacher),
                        "preprocess_version": PREPROCESS_VERSION}, indent=2))

        root, videos, samples, samples_path = load_sources(config.videos, config.samples)
        t_hash = time.perf_counter()
        requests = build_requests(videos, root, sampling, identity.teacher_id, spec_json)
        hash_seconds = time.perf_counter() - t_hash
        if samples is not None:
            keyed = attach_cache_keys(samples, samples_path, root, {r.video_uri: r.cache_key for r in requests})
            merge_samples(cache.root, keyed)
            log.info("samples: %d rows joined to clips -> %s", keyed.num_rows, cache.samples_path)

        current = current_clips(read_clips_table(cache.root))
        todo = plan_missing(requests, lambda r: r.cache_key, current, config.retry_failed)
        log.info("plan: %d clips wanted, %d already cached, %d to compute",
                 len(requests), len(requests) - len(todo), len(todo))
        stats = RunStats()
        stats.seconds["hash"] = hash_seconds
        writer_stats = []
        if todo:
            writer_stats = _compute(config, cache, identity, specs, spec_json, todo, stats)

        summary = {
            "cache": str(cache.root.resolve()),
            "format": config.output.format,
            "teacher": config.teacher.name,
            "teacher_id": identity.teacher_id,
            "clips": {"wanted": len(requests), "already_cached": len(requests) - len(todo),
                      "computed": stats.computed, "ok": stats.ok, "failed": stats.failed},
            "failures_by_reason": dict(Counter(failure_reason(f["error"]) for f in stats.failures)),
            "failures": stats.failures,
            "shards_written": [s for w in writer_stats for s in w["shards"]],
            "bytes_written": sum(w["bytes"] for w in writer_stats),
            "bytes_on_disk": sum(w["bytes_on_disk"] for w in writer_stats),
            "seconds": {k: round(v, 3) for k, v in sorted(stats.seconds.items())},
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "clips_per_second": round(stats.computed / max(stats.seconds["compute_wall"], 1e-9), 3),
        }
        (cache.root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        return summary


def _init_ray(config: JobConfig) -> bool:
    """Start an in-process Ray ('local') or join a cluster; returns whether we started it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray 2.60 otherwise writes ~/.ray/auth_token, after which `ray job submit` to any later local
    # cluster fails with "Missing authentication token".
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    if config.ray.address == "local":
        ray.init(address="local", include_dashboard=False, num_cpus=config.ray.num_cpus,
                 object_store_memory=config.ray.object_store_mb << 20, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": project_pythonpath()}})
    else:
        ray.init(address=config.ray.address)
    return True


def project_pythonpath() -> str:
    """Workers import the project's packages from the same checkout as the driver."""
    project = str(Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return f"{project}{os.pathsep}{rest}" if rest else project


def _compute(config, cache, identity, specs, spec_json, todo, stats) -> list[dict]:
    import ray

    from pipeline.stages import ShardWriterActor, TeacherActor, decode_clip, encode_clip

    started = _init_ray(config)
    t0 = time.perf_counter()
    try:
        tcfg = config.teacher
        teachers = [TeacherActor.options(num_cpus=tcfg.num_cpus, num_gpus=tcfg.num_gpus,
                                         max_restarts=1, max_task_retries=1).remote(tcfg)
                    for _ in range(tcfg.num_actors)]
        # Exported once per run by the first actor: a student's explicit distillation may use them.
        ray.get(teachers[0].export.remote(str(cache.root / TEACHER_DIR)))
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
                batch, ready = ready[: tcfg.batch_size], ready[tcfg.batch_size:]
                actor = min(range(len(teachers)), key=load.__getitem__)
                load[actor] += len(batch)
                outs = teachers[actor].predict.options(num_returns=len(batch)).remote(*[b[1] for b in batch])
                outs = [outs] if len(batch) == 1 else outs
                for (request, payload, dsec), out in zip(batch, outs):
                    encoded = encode_clip.remote(specs, payload, out, dsec)
                    writing[to_writer(request, encoded)] = (request, actor)
            waiting = list(decoding) + list(writing)
            if not waiting:
                continue
            done, _ = ray.wait(waiting, num_returns=1)
            done += ray.wait([r for r in waiting if r not in done], num_returns=len(waiting) - 1, timeout=0)[0] \
                if len(waiting) > 1 else []
            for ref in done:
                if ref in decoding:
                    request, payload = decoding.pop(ref)
                    status = ray.get(ref)
                    if status["failure"] is None:
                        ready.append((request, payload, status["seconds"]))
                    else:
                        writing[writers[0].add_failed.remote(request, status["failure"])] = (request, None)
                else:
                    request, actor = writing.pop(ref)
                    result = ray.get(ref)
                    inflight -= 1
                    if actor is not None:
                        load[actor] -= 1
                    stats.computed += 1
                    if result["status"] == "ok":
                        stats.ok += 1
                        stats.seconds.update(result["seconds"])
                    else:
                        stats.failed += 1
                        stats.failures.append({"clip_id": request.clip_id, "video_uri": request.video_uri,
                                               "stage": result["stage"], "error": result["error"]})
                        log.warning("failed %s (%s): %s", request.clip_id, result["stage"], result["error"])
                    bar.update(1)
                    bar.set_postfix(ok=stats.ok, failed=stats.failed)
        bar.close()
        writer_stats = ray.get([w.finish.remote() for w in writers])
        stats.seconds["write"] = sum(w["write_seconds"] for w in writer_stats)
        stats.seconds["compute_wall"] = time.perf_counter() - t0
        return writer_stats
    finally:
        if started:
            ray.shutdown()
