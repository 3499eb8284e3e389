"""Shared fixtures: a small synthetic data set made by the project's own generator, the real-world
videos of tests/data/videos, and one in-process Ray for the tests that run the caching job."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# PyAV before decord in every test process: decord bundles its own FFmpeg, and when it is loaded
# first PyAV's libvpx encoders fail to open ("avcodec_open2('libvpx', {}) returned 22"), whatever
# test module imported decord earlier. The tests write VP8 / VP9 files; the pipeline never encodes.
import av  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TEST_VIDEOS = ROOT / "tests" / "data" / "videos"  # real-world files, see its README

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Small scenes at a non-224 resolution, so the teacher-resolution resampling is exercised.
SCENE_FRAMES = 16
SCENE_SIZE = (160, 120)  # width, height


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """4 synthetic scenes of 16 frames with ground truth and samples (never modify: copy)."""
    from pipeline.synthetic.dataset import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("synthetic")
    width, height = SCENE_SIZE
    generate_dataset(out, SyntheticConfig(num_scenes=4, seed=7, num_frames=SCENE_FRAMES, width=width, height=height))
    return out


def copy_scenes(src: Path, dst: Path, names: list[str]) -> None:
    """Copy scenes (video + ground-truth sidecar) of a synthetic set into dst/videos."""
    (dst / "videos").mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".mp4", ".gt.npz"):
            shutil.copy(src / "videos" / f"{name}{suffix}", dst / "videos" / f"{name}{suffix}")


@pytest.fixture(scope="session")
def ray_session():
    """One in-process Ray for the whole session; the job reuses it instead of starting its own."""
    import ray

    from pipeline.runner import project_pythonpath

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=1 << 30,
             runtime_env={"env_vars": {"PYTHONPATH": project_pythonpath()}}, log_to_driver=False)
    yield
    ray.shutdown()
