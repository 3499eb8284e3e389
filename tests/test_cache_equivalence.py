"""Training from the cache is training with the teacher (bench/equivalence.py, small): one run of a tiny
student with the l4p-tiny teacher computing its targets inside each step, from a cache storing every
teacher field as float32, and from a cache with the job's default (lossy) storage; same seed, same data
order, the Trainer's own setup, loader and step, DeepSpeed ZeRO-3 on 1 CPU rank.

Lossless storage changes nothing: every loss term at every step and the final weights agree with the
online run to float tolerance. Default storage moves each distillation term by no more than the bound
derived from the codecs' measured error on the step's own clips (bench/equivalence.py: the penalty is
1-Lipschitz in its target, so at equal parameters a term moves by at most the mean |decoded - exact|);
at step 0 the parameters are equal and the bound is exact."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.equivalence import (
    FLOAT_RTOL, TRAIN_CONFIG, absolute_differences, check_same_order, launch, load_runs, make_cache, overrides,
    parameter_distance, relative_differences, target_error_bounds,
)
from conftest import copy_scenes
from student.tiny import make_tiny_vlm
from student.train_config import load_train_config

SCENES = ["scene_0000", "scene_0001"]
STEPS = 3


@pytest.fixture(scope="module")
def runs(synthetic_set, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("equivalence")
    copy_scenes(synthetic_set, root / "scenes", SCENES)
    samples = pq.read_table(synthetic_set / "samples.parquet")
    videos = [f"videos/{name}.mp4" for name in SCENES]
    pq.write_table(samples.filter(pc.is_in(samples["video"], value_set=pa.array(videos))),
                   root / "scenes" / "samples.parquet")
    caches = {}
    for variant in ("lossless", "default"):
        caches[variant] = root / f"cache-{variant}"
        make_cache(root / "scenes", caches[variant], variant)
    sets = [*overrides(make_tiny_vlm("qwen2_5_vl", root / "vlm"), STEPS), "student.model.video_size=[56,56]"]
    launch(1, TRAIN_CONFIG, sets, caches, root / "runs", root / "launch.log")
    runs = load_runs(root / "runs", ranks=1)
    cfg = load_train_config(TRAIN_CONFIG, sets).student
    return runs, target_error_bounds(cfg, caches["default"], caches["lossless"], runs["online"]), root / "runs"


def test_the_three_runs_read_the_same_samples_in_the_same_order(runs):
    steps, _, _ = runs
    check_same_order(steps)
    assert len(steps["online"]) == STEPS
    assert set(steps["online"][0]["terms"]) == {"ce", "ld", "ed_depth", "ed_flow", "ed_dyn_mask", "ed_camray"}


def test_lossless_storage_trains_as_the_teacher_online_to_float_tolerance(runs):
    steps, _, result = runs
    for k, step in enumerate(relative_differences(steps, "lossless")):
        assert max(step.values()) <= FLOAT_RTOL, (k, step)
    assert parameter_distance(result, "lossless")["relative_to_update"] <= FLOAT_RTOL


def test_default_storage_moves_every_term_within_the_codecs_bound(runs):
    steps, bounds, result = runs
    differences = absolute_differences(steps, "default")
    assert differences[0]["ce"] <= FLOAT_RTOL * steps["online"][0]["terms"]["ce"]  # equal parameters at step 0
    for k, (difference, bound) in enumerate(zip(differences, bounds)):
        for term, limit in bound.items():
            assert difference[term] <= limit, f"step {k} {term}: moved {difference[term]:.3g}, bound {limit:.3g}"
    # The default storage is lossy (the bound is not 0) and the weights end apart, but close.
    assert bounds[0]["ld"] > 0 and bounds[0]["ed_depth"] > 0
    assert 0 < parameter_distance(result, "default")["relative_to_norm"] < 1e-3
