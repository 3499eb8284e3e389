"""The caching job on a real Ray cluster: `ray start --head`, then `ray job submit --working-dir .`,
as a user runs it. The test starts its own head (own ports, own short temp dir) and stops exactly
that head's processes: a bare `ray stop` would kill every Ray of the machine, other people's included."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from manifests.clips_table import current_clips, duplicate_ok_keys, read_clips_table
from pipeline.config import JobConfig
from pipeline.runner import resolve_ray_address, run_job
from shards.cache_reader import read_cached_clip

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A one-node Ray cluster of its own: `ray start --head --block` in a new session, so that every
    process it starts is its descendant (or names its temp dir), and can be found and stopped."""

    def __init__(self):
        # Short: Ray's unix socket paths live under it and must stay under ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="p4d-ray-", dir="/tmp")
        self.home = Path(self.temp_dir) / "home"
        self.home.mkdir()
        self.dashboard_port = _free_port()
        self.env = {
            **os.environ,
            # The job's bare `python` is the first on the PATH of the shell that started the cluster.
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A ~/.ray/auth_token of an earlier Ray makes the dashboard demand a token: this cluster
            # and its CLI calls get a HOME of their own instead (nothing of the real ~/.ray is touched).
            "HOME": str(self.home),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")
        # Every listening port is chosen here, so this head collides with no other Ray on the machine.
        cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
               "--temp-dir", self.temp_dir, "--port", str(_free_port()),
               "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
               "--ray-client-server-port", str(_free_port()),
               "--dashboard-agent-listen-port", str(_free_port()),
               "--object-store-memory", str(512 << 20), "--disable-usage-stats"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self._wait_until_up(timeout=120)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self._log_text()}")
            try:
                urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the dashboard did not answer within {timeout} s: {self._log_text()}")

    def _log_text(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text()[-3000:]

    def processes(self) -> list[psutil.Process]:
        """The head's processes: descendants of `ray start`, and any process naming or working in
        its temp dir (a worker whose parent died is re-parented, but keeps its --session-dir)."""
        found = {}
        try:
            root = psutil.Process(self.proc.pid)
            found = {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter():
            try:
                if any(self.temp_dir in arg for arg in p.cmdline()) or p.cwd().startswith(self.temp_dir):
                    found.setdefault(p.pid, p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return list(found.values())

    def stop(self) -> None:
        """SIGKILL exactly this head's processes (a test cluster has nothing to drain), then its files."""
        for _ in range(3):  # a process may fork a child while its siblings are being killed
            victims = self.processes()
            if not victims:
                break
            for p in victims:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(victims, timeout=10)
        self.proc.wait(timeout=10)
        self.log.close()
        left = self.processes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"processes of the test cluster survived: {left}"


@pytest.fixture(scope="module")
def cluster():
    head = LocalCluster()
    try:
        yield head
    finally:
        head.stop()


def _wait_for_job(cluster: LocalCluster, submission_id: str, timeout: float) -> tuple[str, str]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    deadline = time.monotonic() + timeout
    status = client.get_job_status(submission_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get_job_status(submission_id)
    logs = client.get_job_logs(submission_id)
    if not status.is_terminal():
        client.stop_job(submission_id)
    return ("TIMEOUT" if not status.is_terminal() else str(JobStatus(status).value)), logs


def test_job_submit_caches_on_the_cluster_it_was_submitted_to(cluster, synthetic_set, tmp_path):
    """`ray job submit --working-dir .` runs the job in a copy of the project on the cluster; the job
    joins that cluster (RAY_ADDRESS) and writes to the absolute cache path."""
    out = tmp_path / "cache"
    submitted = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT),
         "--submission-id", "p4d-cluster-test", "--no-wait", "--",
         "python", "pipeline/cache_teacher.py", "--videos", str(synthetic_set), "--out", str(out),
         "--teacher", "oracle", "--latent-dim", "16", "--format", "zarr", "--batch-size", "2",
         "--clips-per-shard", "2"],
        env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    status, logs = _wait_for_job(cluster, "p4d-cluster-test", timeout=240)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "Ray: joined the cluster at" in logs, "the job ran on the cluster, not on an in-process Ray"
    assert "done: 4 clips wanted, 0 already cached, 4 ok, 0 failed" in logs

    table = read_clips_table(out)
    rows = current_clips(table)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    assert not duplicate_ok_keys(table)
    for row in rows.values():
        assert read_cached_clip(out, row, ["depth", "timestamps"])["depth"].shape == (16, 224, 224)


def test_auto_address_follows_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_ray_address("auto") == "local", "no cluster named: an in-process Ray"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_ray_address("auto") == "10.0.0.5:6379", "a submitted job joins its cluster"
    assert resolve_ray_address("local") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ValueError, match="dashboard address"):
        resolve_ray_address("auto")


def test_cluster_job_refuses_relative_paths(monkeypatch, tmp_path):
    """Under `ray job submit --working-dir`, a relative path would land in the job's temporary copy."""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="paths must be absolute.*--out 'cache'"):
        run_job(JobConfig(videos=str(tmp_path), out="cache"))
    assert not (tmp_path / "cache").exists(), "refused before touching anything"
    with pytest.raises(ValueError, match="--source 'wolf=data/wolf'"):
        run_job(JobConfig(sources=("wolf=data/wolf",), out=str(tmp_path / "cache")))
