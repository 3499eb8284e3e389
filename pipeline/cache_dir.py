"""The cache directory: its layout, the single-job lock, and the clean-up that makes a rerun after
a crash finish the job (temporaries and shards without a manifest part are garbage)."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.compute as pc

from manifests.clips_table import CLIPS_DIR, read_clips_table
from manifests.samples_table import SAMPLES_FILE
from shards.atomic import remove_temporaries
from shards.formats import FORMATS

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
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
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def shards_dir(self, fmt: str) -> Path:
        return self.root / "shards" / fmt

    @property
    def clips_dir(self) -> Path:
        return self.root / CLIPS_DIR

    @property
    def samples_path(self) -> Path:
        return self.root / SAMPLES_FILE

    def create(self) -> None:
        for fmt in FORMATS:
            self.shards_dir(fmt).mkdir(parents=True, exist_ok=True)
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        (self.root / TEACHER_DIR).mkdir(exist_ok=True)

    @contextmanager
    def lock(self):
        """One job per cache directory: a second one refuses instead of corrupting it."""
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
        process ends (the kernel drops it even on SIGKILL). Keep the returned file referenced."""
        f = open(self.root / WRITERS_LOCK_FILE, "a+")
        fcntl.flock(f, fcntl.LOCK_SH)
        return f

    def wait_for_writers(self, timeout: float) -> None:
        """Wait until no shard writer of an earlier (killed) job is alive; raises after `timeout` s."""
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
        removed = remove_temporaries(self.root)
        referenced = set(pc.unique(read_clips_table(self.root, ("shard",))["shard"]).drop_null().to_pylist())
        for fmt in FORMATS:
            directory = self.shards_dir(fmt)
            if not directory.exists():
                continue
            for shard in directory.iterdir():
                rel = shard.relative_to(self.root).as_posix()
                if rel not in referenced:
                    shutil.rmtree(shard) if shard.is_dir() else shard.unlink()
                    removed.append(shard)
        for path in removed:
            log.info("removed leftover of an interrupted run: %s", path)
        return removed
