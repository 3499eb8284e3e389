"""The stages of the caching job as Ray tasks and actors: decode (CPU task), teacher (actor, one
model per actor, built inside it, whose outputs are cast and quantized where the teacher computed
them: shards/torch_codecs.py), encode (CPU task: the clip's frames, compression, checksums) and
write + commit (one actor per shard stream, appending bytes only: compression scales with the CPU
tasks, not with the writers).

Failures travel down the chain as values, never as exceptions, so one bad clip becomes one failed
row and the job goes on. A transient failure (pipeline/failures.py) is handed back to the driver,
which retries the clip or records it as `transient`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import ray

from manifests.clips_table import utc_now, write_clips_part
from manifests.schemas import CLIP_FAILED, CLIP_OK, CLIP_TRANSIENT
from pipeline.cache_dir import CacheDir
from pipeline.config import TeacherConfig
from pipeline.sampling import SamplingConfig
from pipeline.sources import ClipRequest
from pipeline.teachers.base import DeviceFault, TeacherError, TeacherInput, TransientTeacherError
from pipeline.timing import Seconds
from shards.base import PackedClip
from shards.codecs import encode_arrays
from shards.formats import open_writer, pack_clip, shard_disk_bytes, shard_filename
from shards.schema import FieldSpec
from shards.store import Store, is_url, join, location
from shards.teacher_fields import CLIP_FIELDS, clip_window_starts
from shards.torch_codecs import encode_outputs


log = logging.getLogger(__name__)

RETRY = "retry"  # a writer's answer for a transient failure it did not record: the driver decides
DEVICE_FAULT_EXIT_CODE = 75  # a teacher actor's process ending on a DeviceFault (EX_TEMPFAIL)


@dataclasses.dataclass(frozen=True)
class Failure:
    stage: str
    error: str
    transient: bool = False  # a fault of the machine, not of the clip: retried


@dataclasses.dataclass(frozen=True)
class Decoded:
    teacher_input: TeacherInput
    frames: np.ndarray  # student frames [T, H, W, 3] uint8


@dataclasses.dataclass(frozen=True)
class Encoded:
    packed: PackedClip  # the clip's bytes for its shard format
    frame_indices: list[int]
    timestamps: list[float]
    window_starts: list[int]
    seconds: Seconds  # decode, teacher, teacher_encode, encode


@ray.remote(num_returns=2)
def decode_clip(request: ClipRequest, sampling: SamplingConfig, teacher_size, frame_size):
    """-> (small status for the driver: a Failure or None and the clip's Seconds so far, payload for
    the teacher: frames at both sizes)."""
    from pipeline.video_reader import VideoReadError, read_clip, resize_frames

    seconds = Seconds()
    if request.read_error:
        return (Failure("hash", request.read_error), seconds), None
    with seconds.timing("decode"):
        try:
            clip = read_clip(request.video_uri, request.sampling_for(sampling))
        except VideoReadError as e:
            return (Failure("decode", str(e)), seconds), None
        teacher_frames = resize_frames(clip.frames, teacher_size)
        frames = teacher_frames if tuple(frame_size) == tuple(teacher_size) else resize_frames(clip.frames, frame_size)
    payload = Decoded(TeacherInput(request.video_uri, clip.frame_indices, clip.timestamps, teacher_frames), frames)
    return (None, seconds), payload


@ray.remote
class TeacherActor:
    """One frozen teacher per actor. Built here, inside the worker, never in the driver.

    Its outputs are cast and quantized to the stored dtypes where the teacher left them (its GPU:
    about 4x fewer bytes leave the device and cross the object store), so the encode tasks only
    compress and checksum. Stateless between calls (the model is frozen), so Ray may restart a dead
    actor and the driver resubmit its clips: a retried clip is written once. After a DeviceFault the
    process exits, so that its restart starts from a fresh CUDA context."""

    def __init__(self, config: TeacherConfig, specs: list[FieldSpec], teacher_class: type | None = None):
        import torch

        from pipeline.teachers.registry import teacher_class as registered

        torch.set_num_threads(max(1, int(config.num_cpus)))
        self.specs = [s for s in specs if s.name not in CLIP_FIELDS]  # what the teacher gives of the stored fields
        self.teacher = (teacher_class or registered(config.name))(config)

    def export(self, directory: str) -> None:
        if not is_url(directory):
            self.teacher.export(directory)
            return
        # To an object store: exported locally, then each file uploaded whole unless already there
        # (the heads are written once per weights).
        store = Store(directory)
        with tempfile.TemporaryDirectory(prefix="p4d-teacher-") as staging:
            self.teacher.export(staging)
            for path in sorted(Path(staging).rglob("*")):
                rel = path.relative_to(staging).as_posix()
                if path.is_file() and not store.exists(rel):
                    store.upload(path, rel)

    def ready(self) -> None:
        """Answers once the actor is up (after a restart: with its model built again)."""

    def predict(self, *payloads: Decoded):
        """-> per clip (its stored teacher arrays or a Failure, its share of the batch's seconds)."""
        import torch

        seconds = Seconds()
        with seconds.timing("teacher"):
            try:
                outputs = self.teacher.predict_each([p.teacher_input for p in payloads])
            except DeviceFault as e:
                log.error("teacher: %s; the process exits, Ray restarts it with a fresh device context", e)
                os._exit(DEVICE_FAULT_EXIT_CODE)
            if torch.cuda.is_available():  # a GPU computes asynchronously: its work ends here, not in the encode
                torch.cuda.synchronize()
        with seconds.timing("teacher_encode"):
            results = [self._encode(o) for o in outputs]
        share = seconds.share(len(payloads))
        results = [(r, share) for r in results]
        return results[0] if len(results) == 1 else tuple(results)

    def _encode(self, output):
        """A clip's teacher outputs as stored (a field that does not fit the schema fails its clip,
        named, instead of corrupting a shard)."""
        if isinstance(output, TeacherError):
            return Failure("teacher", str(output), isinstance(output, TransientTeacherError))
        try:
            return encode_outputs(self.specs, {s.name: output[s.name] for s in self.specs if s.name in output})
        except ValueError as e:
            return Failure("encode", str(e))


@ray.remote
def encode_clip(specs: list[FieldSpec], fmt: str, payload: Decoded, teacher_result, seconds: Seconds):
    """The clip's own fields (frames, timestamps) checked and cast, then the clip packed as its shard
    format stores it (serialized, compressed, checksummed) with the teacher's stored arrays."""
    stored, teacher_seconds = teacher_result
    if isinstance(stored, Failure):
        return stored
    seconds = Seconds(seconds)
    seconds.update(teacher_seconds)
    with seconds.timing("encode"):
        tin = payload.teacher_input
        clip_specs = [s for s in specs if s.name in CLIP_FIELDS]
        try:
            clip = encode_arrays(clip_specs, {"frames": payload.frames, "timestamps": tin.timestamps})
        except ValueError as e:
            return Failure("encode", str(e))
        packed = pack_clip(fmt, specs, {**clip, **stored})
    return Encoded(packed, [int(i) for i in tin.frame_indices], [float(t) for t in tin.timestamps],
                   clip_window_starts(len(tin.timestamps)), seconds)


@ray.remote(num_cpus=0)
class ShardWriterActor:
    """Owns one stream of shards: exactly one writer per shard file. A shard is committed (renamed)
    when full or at finish, and only then is its manifest part written, last."""

    def __init__(self, cache_root: str, fmt: str, specs: list[FieldSpec], clips_per_shard: int,
                 shard_prefix: str, row_defaults: dict, lease_token: str | None = None):
        self.root = location(cache_root)
        # Held until this process ends, however it ends: a rerun waits for it (CacheDir.wait_for_writers).
        self.cache = CacheDir(self.root)
        self.presence = self.cache.hold_as_writer()
        self.lease_token = lease_token  # of a cache on an object store: checked before each manifest part
        self.fmt, self.specs, self.capacity = fmt, specs, clips_per_shard
        self.prefix, self.defaults = shard_prefix, row_defaults
        self.sequence = 0
        self.writer = None
        self.shard_rows: list[dict] = []
        self.failed_rows: list[dict] = []
        self.stats = {"seconds": Seconds(), "bytes": 0, "bytes_on_disk": 0, "shards": []}

    def _row(self, request: ClipRequest, **values) -> dict:
        return {**self.defaults, "cache_key": request.cache_key, "clip_id": request.clip_id,
                "sampling": request.sampling_json(self.defaults["sampling"]),
                "video_uri": request.video_uri, "video_sha256": request.video_sha256,
                "created_at": utc_now(), **values}

    def add(self, request: ClipRequest, result) -> dict:
        if isinstance(result, Failure):
            if result.transient:  # not recorded: the driver retries the clip, or records it (add_failed)
                return {"status": RETRY, "stage": result.stage, "error": result.error}
            return self.add_failed(request, result)
        with self.stats["seconds"].timing("write"):
            if self.writer is None:
                name = f"{self.prefix}-{self.sequence:05d}"
                self.shard_name = name
                self.shard_rel = f"shards/{self.fmt}/{shard_filename(self.fmt, name)}"
                self.writer = open_writer(self.fmt, join(self.root, self.shard_rel), self.specs)
            stored = self.writer.add_packed(request.cache_key, result.packed)
            self.shard_rows.append(self._row(
                request, status=CLIP_OK, format=self.fmt, shard=self.shard_rel, row=stored.row,
                nbytes=stored.nbytes, checksums=stored.checksums, frame_indices=result.frame_indices,
                timestamps=result.timestamps, window_starts=result.window_starts,
            ))
            if len(self.writer) >= self.capacity:
                self._commit()
        self.stats["bytes"] += stored.nbytes
        return {"status": CLIP_OK, "seconds": result.seconds}

    def add_failed(self, request: ClipRequest, failure: Failure) -> dict:
        status = CLIP_TRANSIENT if failure.transient else CLIP_FAILED
        self.failed_rows.append(self._row(request, status=status, stage=failure.stage, error=failure.error))
        return {"status": status, "stage": failure.stage, "error": failure.error}

    def _commit(self) -> None:
        # Order matters: the shard becomes visible first, the manifest part (the proof) last.
        path = self.writer.commit()
        self.stats["bytes_on_disk"] += shard_disk_bytes(path)
        self.cache.check_lease(self.lease_token)
        write_clips_part(self.root, self.shard_name, self.shard_rows + self.failed_rows)
        self.stats["shards"].append(self.shard_rel)
        self.writer, self.shard_rows, self.failed_rows = None, [], []
        self.sequence += 1

    def finish(self) -> dict:
        with self.stats["seconds"].timing("write"):
            if self.writer is not None:
                self._commit()
            if self.failed_rows:
                self.cache.check_lease(self.lease_token)
                write_clips_part(self.root, f"{self.prefix}-failed", self.failed_rows)
                self.failed_rows = []
        return self.stats
