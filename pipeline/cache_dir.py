"""The cache directory: its layout, the single-job lock, and the clean-up that makes a rerun after
a crash finish the job (temporaries and shards without a manifest part are garbage)."""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.compute as pc

from manifests.clips_table import CLIPS_DIR, read_clips_table
from manifests.samples_table import SAMPLES_FILE
from shards.atomic import remove_temporaries
from shards.formats import FORMATS
from shards.store import Store

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
LEASE_FILE = ".lease"  # the lock of a cache on an object store (CacheLease)
# A lease outlives a killed job by at most this long (pipeline.config.JobConfig.lease_seconds).
LEASE_SECONDS = 600.0
# Held (shared) by every live shard writer: on a cluster a writer actor outlives its killed driver
# until Ray reaps it, and a rerun must not start writing, nor clean, while it may still commit.
WRITERS_LOCK_FILE = ".writers.lock"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
TEACHER_DIR = "teacher"
# What a full disk looks like from a writer: no space, quota exceeded, a file size limit.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CacheLockedError(RuntimeError):
    pass


class CacheFullError(RuntimeError):
    """The cache directory took no more bytes; what was committed before is intact."""


class CacheDir:
    """A cache's root: a local (or shared-filesystem) directory, or an object-store URL (shards.store)."""

    def __init__(self, root: str | Path):
        self.store = Store(root)
        self.root = self.store.root
        self.lease_token: str | None = None  # while this process holds the lease of a cache on a store

    def shards_dir(self, fmt: str) -> Path | str:
        return self.store.path(f"shards/{fmt}")

    @property
    def clips_dir(self) -> Path | str:
        return self.store.path(CLIPS_DIR)

    @property
    def samples_path(self) -> Path | str:
        return self.store.path(SAMPLES_FILE)

    def has_clips_table(self) -> bool:
        """Whether the clips table's folder exists (on an object store: holds an object)."""
        return self.clips_dir.is_dir() if self.store.is_local else bool(self.store.children(CLIPS_DIR.as_posix()))

    def create(self) -> None:
        if not self.store.is_local:
            return  # an object store has no directories: a prefix exists once an object is under it
        for fmt in FORMATS:
            self.shards_dir(fmt).mkdir(parents=True, exist_ok=True)
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        (self.root / TEACHER_DIR).mkdir(exist_ok=True)

    def lock(self, lease_seconds: float = LEASE_SECONDS):
        """One job per cache: a second one refuses instead of corrupting it. A flock on a filesystem;
        on an object store a lease object (CacheLease) of `lease_seconds`."""
        return self._flock() if self.store.is_local else self._lease(lease_seconds)

    @contextmanager
    def _lease(self, seconds: float):
        lease = CacheLease(self.store, seconds)
        with lease.held():
            self.lease_token = lease.token
            try:
                yield
            finally:
                self.lease_token = None

    def check_lease(self, token: str | None) -> None:
        """Raise CacheLockedError unless the lease of token `token` is still current (None: a cache on a
        filesystem, whose writers are waited for instead). A writer calls it before a manifest part: a
        killed job's writer that outlived its lease must not commit into a rerun's cache."""
        if token is None:
            return
        current = CacheLease(self.store).current()
        if current is None or current["token"] != token or current["expires_at"] <= time.time():
            raise CacheLockedError(f"{self.store}: this job's lease expired or was taken over ({current}); "
                                   "its writers stop before committing")

    @contextmanager
    def _flock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise CacheLockedError(
                    f"another caching job ({holder}) is writing {self.root}; wait for it or use "
                    "another --out"
                ) from None
            f.seek(0)
            f.truncate()
            # The host too: on a shared filesystem the holder may run on another node.
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def hold_as_writer(self):
        """Called by each shard writer: an open file holding a shared lock until the writer's
        process ends (the kernel drops it even on SIGKILL). Keep the returned file referenced.
        None on an object store, which has no such lock (README: a rerun must not start while a
        killed job's writers may still run)."""
        if not self.store.is_local:
            return None
        f = open(self.root / WRITERS_LOCK_FILE, "a+")
        fcntl.flock(f, fcntl.LOCK_SH)
        return f

    def wait_for_writers(self, timeout: float) -> None:
        """Wait until no shard writer of an earlier (killed) job is alive; raises after `timeout` s.
        Nothing to wait on for an object store (hold_as_writer)."""
        if not self.store.is_local:
            return
        with open(self.root / WRITERS_LOCK_FILE, "a+") as f:
            deadline = time.monotonic() + timeout
            waited = False
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CacheLockedError(
                            f"shard writers of an interrupted job still hold {f.name} after {timeout:.0f} s; "
                            "stop that job's Ray workers, then rerun"
                        ) from None
                    if not waited:
                        log.info("waiting for the shard writers of an interrupted job to exit (%s)", f.name)
                        waited = True
                    time.sleep(0.2)
            fcntl.flock(f, fcntl.LOCK_UN)

    def clean(self) -> list[Path]:
        """Remove what a crashed job left: temporaries anywhere, and committed shards that no
        manifest part references (a crash between the shard rename and its manifest part)."""
        # An object store has no temporaries (a shard is uploaded under its final name): only orphans.
        removed = remove_temporaries(self.root) if self.store.is_local else []
        referenced = set(pc.unique(read_clips_table(self.root, ("shard",))["shard"]).drop_null().to_pylist())
        for fmt in FORMATS:
            for rel in self.store.children(f"shards/{fmt}"):
                if rel not in referenced:
                    self.store.delete(rel)
                    removed.append(self.store.path(rel))
        for path in removed:
            log.info("removed leftover of an interrupted run: %s", path)
        return removed


class CacheLease:
    """The one-job lock of a cache on an object store: the object CACHE/.lease naming its holder and
    an expiry, created with a conditional put (S3's If-None-Match: *), so of two jobs starting at once
    exactly one creates it. The other refuses, naming the holder, until the lease expires; an expired
    lease (its job was killed) is deleted and the create retried, once.

    Limits: a store that ignores If-None-Match lets two jobs start together; taking over an expired
    lease is delete-then-create, so two jobs taking the same expired lease at once are told apart by
    the create (one wins); a job paused longer than the lease (a frozen VM) loses it without knowing.
    """

    def __init__(self, store: Store, seconds: float = LEASE_SECONDS):
        # Renewed every seconds / 3 while the job runs.
        self.store, self.seconds = store, seconds
        self.token = secrets.token_hex(8)
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"

    def _record(self) -> bytes:
        return json.dumps({"holder": self.holder, "token": self.token,
                           "expires_at": time.time() + self.seconds}).encode()

    def current(self) -> dict | None:
        try:
            return json.loads(self.store.read_bytes(LEASE_FILE))
        except FileNotFoundError:
            return None

    def acquire(self) -> None:
        for attempt in range(2):
            try:
                self.store.write_bytes(LEASE_FILE, self._record())
                return
            except FileExistsError:
                current = self.current()
                if current is not None and current["expires_at"] > time.time():
                    expires = dt.datetime.fromtimestamp(current["expires_at"], dt.timezone.utc)
                    raise CacheLockedError(
                        f"another caching job ({current['holder']}) is writing {self.store} (its lease "
                        f"{self.store.path(LEASE_FILE)} expires at {expires:%Y-%m-%d %H:%M:%S} UTC unless "
                        "renewed); wait for it or use another --out") from None
                if attempt == 0 and current is not None:
                    log.warning("taking over the expired lease of %s (%s)", current["holder"], self.store)
                    self.store.delete(LEASE_FILE)
        raise CacheLockedError(f"{self.store}: another job took the expired lease meanwhile")

    def renew(self) -> None:
        """Push the expiry on, unless the lease is no longer ours (then raise: stop writing)."""
        current = self.current()
        if current is None or current["token"] != self.token:
            raise CacheLockedError(f"{self.store}: this job's lease was taken over ({current})")
        self.store.write_bytes(LEASE_FILE, self._record(), replace=True)

    def release(self) -> None:
        current = self.current()
        if current is not None and current["token"] == self.token:
            self.store.delete(LEASE_FILE)

    @contextmanager
    def held(self):
        self.acquire()
        stop = threading.Event()

        def keep_renewed():
            while not stop.wait(self.seconds / 3):
                try:
                    self.renew()
                except Exception:  # logged: the job's writes go on, the next rerun sees the state
                    log.exception("could not renew the lease on %s", self.store)

        renewer = threading.Thread(target=keep_renewed, name="cache-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            self.release()
