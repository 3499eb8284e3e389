"""Caches the trainer benchmarks read, built by the real caching job and kept under data/bench/.

A cache is reused when its clips manifest records exactly the field specs the job would write today
(pipeline.runner.field_specs of the job's default storage config): after a change of the default
storage (another codec, another precision) the old cache is removed and the job rebuilds it, so a
benchmark always measures what the job writes now.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench.conditions import PROJECT_ROOT

BENCH_DATA = PROJECT_ROOT / "data" / "bench"
NUM_FRAMES = 16


def job_config(videos: Path, out: Path, teacher: str, fmt: str, clips_per_shard: int | None = None):
    from pipeline.config import JobConfig, OutputConfig, RayConfig, TeacherConfig
    from pipeline.sampling import SamplingConfig

    output = OutputConfig(format=fmt) if clips_per_shard is None else \
        OutputConfig(format=fmt, clips_per_shard=clips_per_shard)
    return JobConfig(out=str(out), videos=str(videos), sampling=SamplingConfig(num_frames=NUM_FRAMES),
                     teacher=TeacherConfig(name=teacher), output=output, ray=RayConfig(address="local"))


def expected_specs(config) -> list:
    from pipeline.runner import field_specs
    from pipeline.teachers.registry import teacher_identity

    identity = teacher_identity(config.teacher, NUM_FRAMES)
    return field_specs(config, identity.shapes, NUM_FRAMES)


def manifest_specs(cache: Path) -> dict | None:
    """field -> FieldSpec as the clips manifest records it; None if the cache is missing or has failures."""
    from student.cache_index import load_cache_index

    summary = cache / "summary.json"
    if not summary.exists():
        return None
    try:
        index = load_cache_index(cache)
    except (FileNotFoundError, ValueError):
        return None
    if index.skipped or json.loads(summary.read_text())["clips"]["failed"]:
        return None
    return index.specs


def ensure_scenes(directory: Path, num_clips: int, size: tuple[int, int]) -> Path:
    """Synthetic scenes of NUM_FRAMES frames (width, height = size), generated once."""
    from pipeline.synthetic.dataset import SyntheticConfig, generate_dataset

    wanted = SyntheticConfig(num_scenes=num_clips, seed=0, num_frames=NUM_FRAMES, width=size[0], height=size[1])
    described = directory / "scenes.json"
    if described.exists() and json.loads(described.read_text())["config"] == _plain(wanted):
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    generate_dataset(directory, wanted, workers=min(num_clips, os.cpu_count() or 1))
    return directory


def _plain(config) -> dict:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config)))


def ensure_cache(name: str, teacher: str, fmt: str, num_clips: int, scene_size: tuple[int, int],
                 clips_per_shard: int | None = None) -> tuple[Path, bool]:
    """data/bench/<name>/cache-<fmt>, cached by `teacher` with the job's default storage.
    Returns (cache dir, whether it was reused)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TQDM_DISABLE", "1")
    base = BENCH_DATA / name
    videos = ensure_scenes(base / "scenes", num_clips, scene_size)
    cache = base / f"cache-{fmt}"
    config = job_config(videos, cache, teacher, fmt, clips_per_shard)
    want = {s.name: s for s in expected_specs(config)}
    have = manifest_specs(cache)
    if have == want and len(_clip_keys(cache)) == num_clips:
        return cache, True
    shutil.rmtree(cache, ignore_errors=True)
    from pipeline.runner import run_job

    summary = run_job(config)
    if summary["clips"]["ok"] != num_clips:
        raise RuntimeError(f"{cache}: the job cached {summary['clips']} (failures {summary['failures_by_reason']})")
    return cache, False


def _clip_keys(cache: Path) -> set[str]:
    from student.cache_index import load_cache_index

    return {r.clip["cache_key"] for r in load_cache_index(cache).records if r.clip is not None}


def describe_specs(specs: dict) -> list[str]:
    """One line per stored field: dtype, encoding (+ step), codec, per-clip shape."""
    lines = []
    for name, s in specs.items():
        encoding = s.encoding + (f" step {s.step:g}" if s.step else "")
        codec = s.codec + (f"-{s.level}" if s.codec != "none" else "")
        lines.append(f"{name:<10} {s.dtype:<8} {encoding:<26} {codec:<10} {' x '.join(map(str, s.shape))}")
    return lines
