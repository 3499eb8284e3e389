"""What kind of fault an exception of the caching job is, which decides what happens to the clip.

Only a fault of the INPUT (the clip itself: an undecodable video, too few frames, a teacher output the
clip makes invalid) becomes a failed row, which reruns keep. Every other kind belongs to the machine
and is retried: the clip may well succeed on another try, another batch, another actor or node.

  INPUT   a failed row (status `failed`), not retried unless --retry-failed
  MEMORY  out of memory: a batch is split into single clips (Teacher.predict_each), a clip is retried
  DEVICE  the process's GPU state can no longer be trusted (a sticky CUDA error corrupts the CUDA
          context: every later kernel of the process fails; an NCCL communicator, once failed, is
          aborted): the teacher actor's process exits, Ray restarts it, its clips are retried
  LOST    a worker, an actor, an object or a node went away: the clip is retried
A clip whose retries all end in a machine fault is recorded with status `transient`, which the next
run retries by default.

On CPU no real CUDA error can be raised, so faults are told apart the way torch and Ray report them:
by exception type first, then by the message text that the libraries write (sources named below).
"""
from __future__ import annotations

import enum


class Fault(enum.Enum):
    INPUT = "input"
    MEMORY = "memory"
    DEVICE = "device"
    LOST = "lost"

    @property
    def transient(self) -> bool:
        return self is not Fault.INPUT


# torch: c10/cuda/CUDAException.cpp (c10_cuda_check_implementation) writes "CUDA error: " +
# cudaGetErrorString(err) for every failed CUDA runtime call and, since torch 2.8, raises it as
# torch.AcceleratorError (a RuntimeError before). The CUDA runtime's strings of the sticky errors that
# matter here: cudaErrorIllegalAddress "an illegal memory access was encountered", cudaErrorAssert
# "device-side assert triggered", cudaErrorLaunchFailure "unspecified launch failure",
# cudaErrorECCUncorrectable "uncorrectable ECC error encountered"; all begin "CUDA error: ". cuBLAS and
# cuDNN report a kernel that failed as CUBLAS_STATUS_EXECUTION_FAILED / CUDNN_STATUS_EXECUTION_FAILED
# (aten/src/ATen/cuda/CUDABlas.cpp, aten/src/ATen/cudnn/Exceptions.h).
# NCCL: torch/csrc/distributed/c10d/NCCLUtils.hpp (C10D_NCCL_CHECK) raises
# torch.distributed.DistBackendError("NCCL error in: <file>:<line>, <ncclGetErrorString>..."), and
# ProcessGroupNCCL's watchdog "Watchdog caught collective operation timeout".
_DEVICE_TEXT = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_EXECUTION_FAILED",
                "CUDNN_STATUS_EXECUTION_FAILED", "NCCL error", "NCCL communicator", "Watchdog caught collective")
# torch: c10/cuda/CUDACachingAllocator.cpp raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError)
# "CUDA out of memory. Tried to allocate ..."; torch < 1.13 raised it as a RuntimeError with the same
# text. cuBLAS failing to allocate its workspace: CUBLAS_STATUS_ALLOC_FAILED. A CPU tensor:
# c10/core/impl/alloc_cpu.cpp "DefaultCPUAllocator: can't allocate memory".
_MEMORY_TEXT = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "DefaultCPUAllocator: can't allocate memory")


def _ray_lost_types() -> tuple[type, ...]:
    """ray/exceptions.py: what a task's or an actor call's result raises when the machine, not the
    code, failed. RayActorError covers ActorDiedError and ActorUnavailableError (an actor restarting or
    unreachable); ObjectLostError covers OwnerDiedError and the reconstruction failures; Ray's
    OutOfMemoryError is its memory monitor killing a worker."""
    import ray.exceptions as rex

    return (rex.RayActorError, rex.ObjectLostError, rex.NodeDiedError, rex.WorkerCrashedError,
            rex.LocalRayletDiedError, rex.OutOfMemoryError, rex.ObjectStoreFullError, rex.OutOfDiskError,
            rex.ObjectFetchTimedOutError)


def fault_of(error: BaseException) -> Fault:
    """The kind of `error` (an exception raised in the teacher, or by ray.get in the driver)."""
    import ray.exceptions as rex
    import torch
    import torch.distributed as dist

    # A RayTaskError wraps what the remote code raised; the Ray types it also derives from (for an
    # error that came from upstream, e.g. RayTaskError(ActorUnavailableError)) are checked first.
    if isinstance(error, _ray_lost_types()):
        return Fault.LOST
    if isinstance(error, rex.RayTaskError) and error.cause is not None and error.cause is not error:
        return fault_of(error.cause)
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return Fault.MEMORY
    text = str(error)
    if isinstance(error, (torch.AcceleratorError, dist.DistBackendError)) or any(t in text for t in _DEVICE_TEXT):
        return Fault.DEVICE
    if any(t in text for t in _MEMORY_TEXT):
        return Fault.MEMORY
    return Fault.INPUT


def describe(error: BaseException) -> str:
    """The reason recorded for a clip: the exception's type and its first line (a CUDA error's message
    goes on with pages of advice); for an error Ray passed on, the error it passed on."""
    import ray.exceptions as rex

    cause = getattr(error, "cause", None)
    if isinstance(error, rex.RayTaskError) and isinstance(cause, BaseException) and cause is not error:
        return describe(cause)
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''}"
