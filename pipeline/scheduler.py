"""The caching job's compute flow on Ray: decode -> teacher -> encode -> write + commit, overlapped.

The driver holds only small metadata and object references; frames and teacher outputs travel
between workers through Ray's object store. At most `max_inflight` clips are between decode and
write at any time, which bounds memory whatever the size of the data set. Each stage is a method:
`_decode` starts decodes while there is room, `_teach` sends full batches of decoded clips to the
least loaded teacher (their encodes and writes follow as Ray references), `_collect` takes whatever
finished and hands it to the stage that waits for it.

Faults of the machine (pipeline/failures.py) are retried here, clip by clip: a clip that comes back
transient, or whose teacher actor or objects were lost, is decoded again and sent alone, at most
CLIP_ATTEMPTS times, then recorded as `transient`. A teacher actor that died is restarted by Ray (a
DeviceFault makes it exit on purpose); no clip goes to it until it answers again, and one that died
more than TEACHER_MAX_RESTARTS times leaves the pool.
"""
from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from manifests.schemas import CLIP_OK, CLIP_TRANSIENT
from pipeline.cache_dir import DISK_FULL_ERRNOS, TEACHER_DIR, CacheDir, CacheFullError
from pipeline.config import JobConfig
from pipeline.failures import describe, fault_of
from pipeline.source_report import failure_reason
from pipeline.teachers.base import TeacherIdentity
from pipeline.timing import Seconds
from shards.schema import FieldSpec, specs_to_json

log = logging.getLogger(__name__)

# Restarts of one teacher actor (Ray restarts a dead one; its clips are resubmitted by the driver,
# alone). One that dies more often (a broken GPU) leaves the pool; the job stops when none is left.
TEACHER_MAX_RESTARTS = 4
CLIP_ATTEMPTS = 3  # tries of a clip whose failures are all transient, before its `transient` row
FAILURE_EXAMPLES = 3  # per reason in summary.json; the clips table holds every failed row


class TeachersLostError(RuntimeError):
    """Every teacher actor died more often than it may be restarted: no clip can be computed."""


@dataclass
class RunStats:
    computed: int = 0
    ok: int = 0
    failed: int = 0  # every clip that did not end ok ...
    transient: int = 0  # ... of which the machine's fault every time it was tried: the next run retries them
    retries: int = 0  # clip attempts after a transient failure
    teacher_restarts: int = 0
    seconds: Seconds = field(default_factory=Seconds)
    failures_by_reason: Counter = field(default_factory=Counter)
    failure_examples: dict = field(default_factory=dict)  # reason -> the first FAILURE_EXAMPLES failures

    def failures_by_kind(self) -> dict[str, int]:
        return {"input": self.failed - self.transient, "transient": self.transient}

    def add_failure(self, request, stage: str, error: str, transient: bool) -> None:
        self.failed += 1
        self.transient += transient
        reason = failure_reason(f"{stage} (transient)" if transient else stage, error)
        self.failures_by_reason[reason] += 1
        examples = self.failure_examples.setdefault(reason, [])
        if len(examples) < FAILURE_EXAMPLES:
            examples.append({"clip_id": request.clip_id, "video_uri": request.video_uri, "error": error})


class Scheduler:
    """Computes the clips of one run on a connected Ray (pipeline/stages.py's tasks and actors)."""

    def __init__(self, config: JobConfig, cache: CacheDir, identity: TeacherIdentity, specs: list[FieldSpec],
                 stats: RunStats, teacher_class: type | None = None):
        self.config, self.cache, self.identity, self.specs = config, cache, identity, specs
        self.stats, self.teacher_class = stats, teacher_class
        teacher = config.teacher
        self.max_inflight = config.max_inflight or 2 * teacher.batch_size * teacher.num_actors + 2
        self.pending: deque = deque()  # requests not decoded yet
        self.ready: list = []  # (request, payload ref, Seconds) decoded, awaiting a teacher batch
        self.alone: deque = deque()  # like `ready`, clips being retried: each runs alone on an idle actor
        self.retried: set[str] = set()  # cache_keys tried before in this run
        self.failed_tries: Counter = Counter()  # cache_key -> tries failed by the machine's fault, counted
        self.lone: dict[int, str] = {}  # teacher actor -> the clip it runs alone
        self.waiting: dict = {}  # Ray reference -> (the stage that takes its result, its arguments)
        self.decoding = 0  # decodes in flight
        self.inflight = 0  # clips between the start of their decode and their written row
        self.restarting: set[int] = set()  # teacher actors that died, until they answer again
        self.gone: set[int] = set()  # teacher actors dead for good (restarts spent)
        self.teacher_ready = self.first_batch = None  # perf_counter times

    def run(self, todo: list) -> list[dict]:
        """Compute every clip of `todo`, then commit what the writers hold; returns their stats."""
        import ray

        start = time.perf_counter()
        self.teachers, self.writers = [], []
        try:
            self._start_actors()
            self.pending.extend(todo)
            self.bar = tqdm(total=len(todo), desc=f"cache ({self.config.teacher.name} -> {self.config.output.format})",
                            unit="clip")
            while self.pending or self.inflight:
                self._decode()
                self._teach()
                self._collect()
            self.bar.close()
            if self.teacher_ready is None:  # every clip failed before reaching the teacher
                ray.get(self.exporting)
                self.teacher_ready = time.perf_counter()
            # Start-up: from Ray up to the moment the first teacher call could run (its worker started,
            # the model built, the first batch decoded); the rest of compute_wall is the steady state.
            self.stats.seconds["startup"] = max(self.teacher_ready, self.first_batch or self.teacher_ready) - start
            writer_stats = [self._writer_result(ref) for ref in [w.finish.remote() for w in self.writers]]
            for w in writer_stats:
                self.stats.seconds.update(w["seconds"])
            return writer_stats
        finally:
            # Ended now, not when their handles are collected: on a shared cluster they would hold CPUs,
            # and a live writer holds the writers' lock that the next run waits for.
            for actor in [*self.teachers, *self.writers]:
                ray.kill(actor)

    def _start_actors(self) -> None:
        from pipeline.stages import ShardWriterActor, TeacherActor

        teacher = self.config.teacher
        self.teachers = [TeacherActor.options(num_cpus=teacher.num_cpus, num_gpus=teacher.num_gpus,
                                              max_restarts=TEACHER_MAX_RESTARTS,
                                              max_task_retries=0).remote(teacher, self.specs, self.teacher_class)
                         for _ in range(teacher.num_actors)]
        self.load = [0] * len(self.teachers)  # clips sent to each teacher and not written yet
        # Exported once per run by the first actor: a student's explicit distillation may use them.
        # Not awaited here: the teacher's start (a worker process, the model build: seconds) then
        # overlaps the writers' and decoders' start and the first decodes instead of preceding them.
        # An actor runs its calls in submission order, so the first predict queues behind it; its
        # result (its error ends the job) says when the teacher was ready.
        self.exporting = self.teachers[0].export.remote(str(self.cache.store.path(TEACHER_DIR)))
        self.waiting[self.exporting] = (self._exported, ())
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        row_defaults = {"teacher_id": self.identity.teacher_id, "fields": specs_to_json(self.specs),
                        "sampling": json.dumps(asdict(self.config.sampling), sort_keys=True)}
        output = self.config.output
        self.writers = [ShardWriterActor.remote(str(self.cache.root), output.format, self.specs, output.clips_per_shard,
                                                f"{run_id}-w{i}", row_defaults, self.cache.lease_token)
                        for i in range(self.config.num_writers)]
        self.next_writer = itertools.cycle(self.writers)
        self.writer_ids = {w._actor_id.hex() for w in self.writers}

    # -- the stages ----------------------------------------------------------------------------------
    def _decode(self) -> None:
        from pipeline.stages import decode_clip

        while self.pending and self.inflight < self.max_inflight:
            request = self.pending.popleft()
            status, payload = decode_clip.remote(request, self.config.sampling, self.identity.input_size,
                                                 self.config.output.frame_size)
            self.waiting[status] = (self._decoded, (request, payload))
            self.decoding += 1
            self.inflight += 1

    def _decoded(self, status, request, payload) -> None:
        import ray

        self.decoding -= 1
        try:
            failure, seconds = ray.get(status)
        except Exception as e:  # Ray retried the task already; a fault of the machine is retried here too
            self.inflight -= 1
            self._retry(request, self._transient(e, request, None, "decode"))
            return
        if failure is None:
            (self.alone if request.cache_key in self.retried else self.ready).append((request, payload, seconds))
        else:
            self.waiting[self.writers[0].add_failed.remote(request, failure)] = (self._written, (request, None))

    def _teach(self) -> None:
        # A clip being retried runs alone on an actor with nothing else in flight, so that if the actor
        # dies then, the clip is why; while such clips wait, the least loaded actor takes no batch (it drains).
        while self.alone and (up := self._up()):
            actor = min(up, key=self.load.__getitem__)
            if self.load[actor]:
                break
            item = self.alone.popleft()
            self.lone[actor] = item[0].cache_key
            self._send([item], actor)
        size = self.config.teacher.batch_size
        last = not self.pending and not self.decoding  # no more clips will arrive: a short batch goes too
        while (actors := self._batch_actors()) and (len(self.ready) >= size or (last and self.ready)):
            batch, self.ready = self.ready[:size], self.ready[size:]
            self._send(batch, min(actors, key=self.load.__getitem__))

    def _up(self) -> list[int]:
        """Teacher actors alive and not running a clip alone."""
        down = self.restarting | self.gone | set(self.lone)
        return [k for k in range(len(self.teachers)) if k not in down]

    def _batch_actors(self) -> list[int]:
        up = self._up()
        draining = min(up, key=self.load.__getitem__) if self.alone and up else None
        return [k for k in up if k != draining]

    def _send(self, batch: list, actor: int) -> None:
        from pipeline.stages import encode_clip

        self.first_batch = self.first_batch or time.perf_counter()
        self.load[actor] += len(batch)
        outs = self.teachers[actor].predict.options(num_returns=len(batch)).remote(*[b[1] for b in batch])
        for (request, payload, seconds), out in zip(batch, [outs] if len(batch) == 1 else outs):
            encoded = encode_clip.remote(self.specs, self.config.output.format, payload, out, seconds)
            self.waiting[next(self.next_writer).add.remote(request, encoded)] = (self._written, (request, actor))

    def _written(self, ref, request, actor) -> None:
        from pipeline.stages import RETRY

        try:
            result = self._writer_result(ref)
        except Exception as e:  # nothing was written: what failed upstream of the writer (a lost teacher...)
            result = self._transient(e, request, actor, "teacher")
        self.inflight -= 1
        if actor is not None:
            self.load[actor] -= 1
            if self.lone.get(actor) == request.cache_key:
                del self.lone[actor]
        if result["status"] == RETRY:
            self._retry(request, result)
            return
        self.stats.computed += 1
        if result["status"] == CLIP_OK:
            self.stats.ok += 1
            self.stats.seconds.update(result["seconds"])
        else:
            transient = result["status"] == CLIP_TRANSIENT
            self.stats.add_failure(request, result["stage"], result["error"], transient)
            log.warning("%s %s (%s): %s", "transient failure of" if transient else "failed", request.clip_id,
                        result["stage"], result["error"])
        self.bar.update(1)
        self.bar.set_postfix(ok=self.stats.ok, failed=self.stats.failed, transient=self.stats.transient)

    def _transient(self, error: Exception, request, actor: int | None, stage: str) -> dict:
        """A failure that reached the driver as an exception, as a RETRY result, if it is the machine's
        fault; anything else (a dead writer, whose uncommitted clips are lost with it; a bug) is raised.
        A clip lost with its teacher actor while sharing it with others may not be why the actor died:
        that try is not counted against it (`charged`)."""
        import ray

        from pipeline.stages import RETRY

        lost_actor = error.actor_id if isinstance(error, ray.exceptions.RayActorError) else None
        if lost_actor in self.writer_ids or not fault_of(error).transient:
            raise error
        charged = True
        if actor is not None and lost_actor == self.teachers[actor]._actor_id.hex():
            self._await_restart(actor, error)
            charged = self.lone.get(actor) == request.cache_key
        return {"status": RETRY, "stage": stage, "error": describe(error), "charged": charged}

    def _retry(self, request, result: dict) -> None:
        """Decode the clip again and send it alone, or record it as transient once CLIP_ATTEMPTS tries
        failed by the machine's fault."""
        from pipeline.stages import Failure

        key = request.cache_key
        self.retried.add(key)
        self.failed_tries[key] += result.get("charged", True)
        if self.failed_tries[key] < CLIP_ATTEMPTS:
            self.stats.retries += 1
            log.warning("retrying %s (%d of %d tries failed) after %s: %s", request.clip_id, self.failed_tries[key],
                        CLIP_ATTEMPTS, result["stage"], result["error"])
            self.pending.appendleft(request)
            return
        failure = Failure(result["stage"], result["error"], transient=True)
        self.inflight += 1
        self.waiting[self.writers[0].add_failed.remote(request, failure)] = (self._written, (request, None))

    def _await_restart(self, actor: int, error: Exception) -> None:
        """No clip goes to a dead teacher actor until it answers again (Ray restarts it)."""
        if actor in self.restarting or actor in self.gone:
            return
        self.restarting.add(actor)
        self.stats.teacher_restarts += 1
        log.warning("teacher actor %d died (%s); waiting for Ray to restart it", actor, describe(error))
        answer = self.teachers[actor].ready.options(max_task_retries=-1).remote()
        self.waiting[answer] = (self._restarted, (actor,))

    def _restarted(self, ref, actor: int) -> None:
        import ray

        self.restarting.discard(actor)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as e:
            self.gone.add(actor)
            log.error("teacher actor %d is gone (%d restarts spent): %s", actor, TEACHER_MAX_RESTARTS, describe(e))
            if len(self.gone) == len(self.teachers):
                raise TeachersLostError(f"every teacher actor died more than {TEACHER_MAX_RESTARTS} times (the "
                                        f"last: {describe(e)}); committed clips are kept, rerun to compute the rest") from e
            return
        log.info("teacher actor %d is back", actor)

    def _exported(self, ref) -> None:
        import ray

        ray.get(ref)
        self.teacher_ready = time.perf_counter()

    def _collect(self) -> None:
        """Wait for at least one result, then hand every finished one to its stage."""
        import ray

        if not self.waiting:
            return
        refs = list(self.waiting)
        done, rest = ray.wait(refs, num_returns=1)
        if rest:
            done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in done:
            stage, args = self.waiting.pop(ref)
            stage(ref, *args)

    def _writer_result(self, ref):
        """ray.get of a writer call, a full disk turned into CacheFullError."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause
            if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
                raise CacheFullError(
                    f"the cache's disk is full: {cause} (writing {self.cache.root}). Committed shards and their "
                    "manifest parts are intact, clips in flight were not recorded; free space and rerun "
                    "(only what is missing is computed)"
                ) from e
            raise
