"""What every benchmark prints beside its figures: the machine, the library versions, and medians.

A figure is only comparable with another one measured under the same conditions, so each benchmark
prints them first; its own sizes (clips, shapes, repetitions) it prints itself.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1e6 * 1.024
    except OSError:
        pass
    return float("nan")


def filesystem(path: str | os.PathLike) -> str:
    """The mount (device, type) holding `path`: write rates mean little without it."""
    path = os.path.realpath(path)
    best = ("?", "?", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[2]):
                best = (device, kind, mount)
    except OSError:
        pass
    return f"{best[0]} ({best[1]}) mounted at {best[2] or '?'}"


def versions(packages: list[str]) -> str:
    found = []
    for name in packages:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join([f"python {platform.python_version()}", *found])


def machine_lines(packages: list[str], workdir: str | os.PathLike | None = None) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"machine: {usable} usable cores ({os.cpu_count()} logical), CPU {cpu_model()}, "
        f"{memory_gb():.1f} GB RAM, {platform.system()} {platform.release()}, no GPU used",
        f"versions: {versions(packages)}",
    ]
    if workdir is not None:
        lines.append(f"work dir: {workdir} on {filesystem(workdir)}")
    return lines


def print_conditions(title: str, packages: list[str], workdir: str | os.PathLike | None = None) -> None:
    print(f"== {title}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    for line in machine_lines(packages, workdir):
        print(line)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
