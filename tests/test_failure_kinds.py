"""Failure kinds (pipeline/failures.py): only what belongs to the input becomes a failed row; out of
memory, a poisoned CUDA context, a failed NCCL communicator, a lost actor are retried, and a clip the
machine fails every time ends `transient`, which the next run retries. Produced by a fault-injecting
teacher that only the tests can name (the CLI's registry does not know it)."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import ray
import torch
import torch.distributed as dist

from conftest import SCENE_FRAMES, SCENE_SIZE
from manifests.clips_table import current_clips, duplicate_ok_keys, read_clips_table
from pipeline import cache_teacher
from pipeline.failures import Fault, fault_of
from pipeline.runner import run_job
from pipeline.teachers.base import DeviceFault, TeacherError, TeacherInput, TransientTeacherError
from pipeline.teachers.oracle import OracleTeacher
from shards.cache_reader import read_cached_clip

# The teachers below travel to Ray's workers by value: this module is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# The messages as torch writes them (pipeline/failures.py names where each comes from).
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB memory in use.")
ILLEGAL_ACCESS = ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                  "asynchronously reported at some other API call, so the stacktrace below might be incorrect.")
DEVICE_ASSERT = "CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."
NCCL = ("NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, unhandled cuda error (run with "
        "NCCL_DEBUG=INFO for details), NCCL version 2.21.5\nncclUnhandledCudaError: Call to CUDA function failed.")


# -- the kinds, by type and message -----------------------------------------------------------------

@ray.remote(max_retries=0)
def _crash() -> None:
    os._exit(1)


@ray.remote(max_restarts=0)
class _Mortal:
    def die(self) -> None:
        os._exit(1)


def test_each_error_is_classified_as_the_libraries_report_it(ray_session):
    assert fault_of(torch.OutOfMemoryError(CUDA_OOM)) is Fault.MEMORY
    assert fault_of(RuntimeError(CUDA_OOM)) is Fault.MEMORY  # torch < 1.13
    assert fault_of(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                 "memory: you tried to allocate 2097152000 bytes.")) is Fault.MEMORY
    assert fault_of(torch.AcceleratorError(ILLEGAL_ACCESS)) is Fault.DEVICE
    assert fault_of(RuntimeError(ILLEGAL_ACCESS)) is Fault.DEVICE  # torch < 2.8
    assert fault_of(RuntimeError(DEVICE_ASSERT)) is Fault.DEVICE
    assert fault_of(RuntimeError("CUDA error: out of memory")) is Fault.DEVICE  # a CUDA call, not the allocator
    assert fault_of(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, "
                                 "k, &alpha, a, lda, b, ldb, &beta, c, ldc)`")) is Fault.DEVICE
    assert fault_of(dist.DistBackendError(NCCL)) is Fault.DEVICE
    # Real Ray failures: a worker that died under its task, an actor that died. (An object whose owner
    # died is detected asynchronously: a get may still find the local copy, so it is classified below
    # from the error Ray raises then, not raced for.)
    for ref in (_crash.remote(), _Mortal.remote().die.remote()):
        with pytest.raises(ray.exceptions.RayError) as lost:
            ray.get(ref)
        assert fault_of(lost.value) is Fault.LOST, repr(lost.value)
    assert fault_of(ray.exceptions.NodeDiedError("node 10.0.0.7 died")) is Fault.LOST
    assert fault_of(ray.exceptions.OwnerDiedError("ff" * 28, None, "own()")) is Fault.LOST
    assert fault_of(ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")) \
        is Fault.LOST
    # What remote code raised is classified by its cause: the clip's fault stays the clip's.
    assert fault_of(ray.exceptions.RayTaskError("predict", "tb", torch.OutOfMemoryError(CUDA_OOM))) is Fault.MEMORY
    assert fault_of(ray.exceptions.RayTaskError("predict", "tb", ValueError("odd frame count"))) is Fault.INPUT
    assert fault_of(ValueError("decoding failed at frame 3")) is Fault.INPUT
    assert fault_of(KeyError("depth")) is Fault.INPUT


# -- the teacher: split, transient, device fault ----------------------------------------------------

def _clip(name: str) -> TeacherInput:
    return TeacherInput(f"/videos/{name}.mp4", None, None, None)


class _Scripted(OracleTeacher):
    """Raises per clip name: `oom_batch` only in a batch of several, `oom` always, `bad` (the clip's
    own fault) always, `assert` a device-side assert."""

    def __init__(self):
        self.calls = []

    def predict(self, clips):
        names = [Path(c.video_path).stem for c in clips]
        self.calls.append(names)
        if (len(clips) > 1 and "oom_batch" in names) or "oom" in names:
            raise torch.OutOfMemoryError(CUDA_OOM)
        if "bad" in names:
            raise ValueError("the clip's depth is undefined")
        if "assert" in names:
            raise RuntimeError(DEVICE_ASSERT)
        return [{"clip": n} for n in names]


def test_predict_each_splits_a_batch_out_of_memory_and_tells_kinds_apart(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    teacher = _Scripted()
    out = teacher.predict_each([_clip("a"), _clip("oom_batch"), _clip("oom"), _clip("bad")])
    assert teacher.calls == [["a", "oom_batch", "oom", "bad"], ["a"], ["oom_batch"], ["oom"], ["bad"]], \
        "the batch once, then each clip alone, once"
    assert emptied == [1], "the cache released once, before the clips run alone"
    assert out[0] == {"clip": "a"} and out[1] == {"clip": "oom_batch"}
    assert type(out[2]) is TransientTeacherError and "OutOfMemoryError: CUDA out of memory." in str(out[2])
    assert type(out[3]) is TeacherError and str(out[3]) == "ValueError: the clip's depth is undefined"

    with pytest.raises(DeviceFault, match="device-side assert triggered"):
        _Scripted().predict_each([_clip("a"), _clip("assert")])
    # A batch of one is not split again.
    single = _Scripted()
    assert type(single.predict_each([_clip("oom")])[0]) is TransientTeacherError and len(single.calls) == 1


# -- a caching job meeting every kind ---------------------------------------------------------------

def faulty_teacher(marks: Path) -> type:
    """The oracle, with a fault per scene; a fault `once` happens on the first try only (a mark file
    remembers it across processes: the actor's restarts)."""

    class FaultyTeacher(OracleTeacher):
        def predict(self, clips):
            for clip in clips:
                scene = Path(clip.video_path).stem
                if scene == "scene_0000" and len(clips) > 1:
                    raise torch.OutOfMemoryError(CUDA_OOM)
                if scene == "scene_0001" and self._first(scene):
                    raise torch.AcceleratorError(ILLEGAL_ACCESS)
                if scene == "scene_0002" and not (marks / "healed").exists():
                    raise torch.OutOfMemoryError(CUDA_OOM)
                if scene == "scene_0003":
                    raise ValueError("the clip's depth is undefined: every frame is black")
                if scene == "scene_0004" and self._first(scene):
                    raise dist.DistBackendError(NCCL)
                if scene == "scene_0005" and self._first(scene):
                    os.kill(os.getpid(), signal.SIGKILL)  # the actor's process lost, as to a node's OOM killer
            return super().predict(clips)

        @staticmethod
        def _first(scene: str) -> bool:
            try:
                (marks / scene).open("x").close()
                return True
            except FileExistsError:
                return False

    return FaultyTeacher


@pytest.fixture(scope="module")
def six_scenes(tmp_path_factory) -> Path:
    from pipeline.synthetic.dataset import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("six")
    width, height = SCENE_SIZE
    generate_dataset(out, SyntheticConfig(num_scenes=6, seed=11, num_frames=SCENE_FRAMES, width=width, height=height))
    return out / "videos"


def test_a_job_retries_the_machines_faults_and_fails_only_the_inputs(six_scenes, ray_session, tmp_path,
                                                                     monkeypatch, caplog):
    marks = tmp_path / "marks"
    marks.mkdir()
    cache = tmp_path / "cache"
    teacher = faulty_teacher(marks)
    # The CLI as a user runs it, with the fault-injecting teacher put in its place.
    monkeypatch.setattr(cache_teacher, "run_job", functools.partial(run_job, teacher_class=teacher))
    argv = ["--videos", str(six_scenes), "--out", str(cache), "--teacher", "oracle", "--latent-dim", "16",
            "--format", "wds", "--batch-size", "2", "--clips-per-shard", "2", "--max-inflight", "4"]
    with caplog.at_level(logging.INFO):
        code = cache_teacher.main(argv)
    assert code == cache_teacher.TRANSIENT_EXIT_CODE
    assert {p.name for p in marks.iterdir()} == {"scene_0001", "scene_0004", "scene_0005"}, "each fault happened"

    rows = read_clips_table(cache).to_pylist()
    assert not duplicate_ok_keys(read_clips_table(cache))
    by_scene = {Path(r["video_uri"]).stem: r for r in rows}
    assert len(rows) == len(by_scene) == 6, "one row per clip: nothing written twice, nothing lost"
    assert {s: r["status"] for s, r in by_scene.items()} == {
        "scene_0000": "ok", "scene_0001": "ok", "scene_0002": "transient", "scene_0003": "failed",
        "scene_0004": "ok", "scene_0005": "ok"}
    assert by_scene["scene_0002"]["error"].startswith("OutOfMemoryError: CUDA out of memory.")
    assert by_scene["scene_0003"]["error"] == "ValueError: the clip's depth is undefined: every frame is black"
    for scene in ("scene_0000", "scene_0001", "scene_0004", "scene_0005"):
        read_cached_clip(cache, by_scene[scene], ["depth"])  # written whole: its checksums verify

    summary = json.loads((cache / "summary.json").read_text())
    assert summary["clips"] == {"wanted": 6, "already_cached": 0, "computed": 6, "ok": 4, "failed": 2}
    assert summary["failures_by_kind"] == {"input": 1, "transient": 1}
    assert summary["failures_by_reason"] == {"teacher (transient): OutOfMemoryError": 1, "teacher: ValueError": 1}
    # Three deaths (illegal memory access, NCCL, SIGKILL); the clips in flight then are tried again, the
    # clip out of memory twice more (CLIP_ATTEMPTS = 3 tries).
    assert summary["retries"]["teacher_restarts"] >= 3 and summary["retries"]["clips"] >= 3 + 2
    final = caplog.records[-1].getMessage()
    assert "4 ok, 2 failed (" in final and "): 1 by their input, 1 transient (retried by the next run)" in final, final

    # The next run retries the transient clip by default, not the input's failure.
    (marks / "healed").touch()
    monkeypatch.setattr(cache_teacher, "run_job", functools.partial(run_job, teacher_class=teacher))
    assert cache_teacher.main(argv) == 0
    summary = json.loads((cache / "summary.json").read_text())
    assert summary["clips"] == {"wanted": 6, "already_cached": 5, "computed": 1, "ok": 1, "failed": 0}
    current = {Path(r["video_uri"]).stem: r["status"] for r in current_clips(read_clips_table(cache)).values()}
    assert current == {"scene_0000": "ok", "scene_0001": "ok", "scene_0002": "ok", "scene_0003": "failed",
                       "scene_0004": "ok", "scene_0005": "ok"}
