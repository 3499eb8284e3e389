"""Resume exact or refused (student/stream.py, student/checkpoints.py): a rank's share of the global
sample order by global position, what a checkpoint records of its run, and what a resume may change.
The real 2-rank ZeRO-3 run killed and resumed on 1 rank is in test_train.py."""
from __future__ import annotations

from dataclasses import replace

import pytest

from student.cache_index import Record
from student.checkpoints import ResumeRefusedError, manifests_digest, plan_resume, run_record
from student.stream import rank_batches
from student.train_config import TrainConfig

DIGEST = "ab" * 32


def positions(batches) -> list[list[int]]:
    return [list(b) for b in batches]


def test_a_rank_takes_its_share_of_each_step_by_global_position():
    # 22 samples, 2 per rank and pass, global batch 4: 5 steps (positions 0-19), 20 and 21 left out.
    assert positions(rank_batches(22, 0, 2, 2, 1)) == [[0, 1], [4, 5], [8, 9], [12, 13], [16, 17]]
    assert positions(rank_batches(22, 1, 2, 2, 1)) == [[2, 3], [6, 7], [10, 11], [14, 15], [18, 19]]
    assert positions(rank_batches(22, 0, 1, 2, 2)) == [[p, p + 1] for p in range(0, 20, 2)]
    assert positions(rank_batches(22, 0, 1, 2, 1)) == [[p, p + 1] for p in range(0, 22, 2)]  # global batch 2
    # From a saved global position: the steps go on there.
    assert positions(rank_batches(22, 1, 2, 2, 1, start=8)) == [[10, 11], [14, 15], [18, 19]]
    assert positions(rank_batches(22, 0, 1, 2, 2, start=16)) == [[16, 17], [18, 19]]
    assert rank_batches(22, 0, 1, 2, 2, start=20) == [] and rank_batches(22, 0, 2, 2, 1, start=30) == []


@pytest.mark.parametrize("length", [37, 64])
def test_any_world_size_reads_the_same_samples_in_the_same_steps(length):
    """Global batch 8, 2 per rank: 1 rank x 4 passes, 2 x 2, 4 x 1 give each step the same positions."""
    def steps(world: int) -> list[set[int]]:
        accumulation = 8 // (2 * world)
        per_rank = [rank_batches(length, r, world, 2, accumulation) for r in range(world)]
        return [{p for batches in per_rank for b in batches[s * accumulation:(s + 1) * accumulation] for p in b}
                for s in range(len(per_rank[0]) // accumulation)]

    expected = [set(range(8 * s, 8 * s + 8)) for s in range(length // 8)]
    assert steps(1) == steps(2) == steps(4) == expected


def config(**data) -> TrainConfig:
    cfg = TrainConfig()
    return replace(cfg, data=replace(cfg.data, **{"batch_size": 2, "global_batch": None, **data}))


def marker(cfg: TrainConfig, world: int, accumulation: int = 1, digest: str = DIGEST) -> dict:
    return {"step": 4, "loader": {"epoch": 0, "position": 16}, "run": run_record(cfg, world, accumulation, digest)}


def test_a_resume_on_fewer_ranks_keeps_the_global_batch_through_accumulation():
    cfg = config()
    assert plan_resume(None, cfg, 2, DIGEST, "ckpt") == plan_resume(marker(cfg, 2), cfg, 2, DIGEST, "ckpt")
    fresh = plan_resume(None, cfg, 2, DIGEST, "ckpt")
    assert (fresh.accumulation, fresh.universal, fresh.notes) == (1, False, ())

    on_one = plan_resume(marker(cfg, 2), cfg, 1, DIGEST, "ckpt")
    assert (on_one.accumulation, on_one.universal) == (2, True)
    assert on_one.notes == ("saved by 2 ranks x 2 samples x 1 passes, resumed on 1 ranks x 2 x 2: the global batch 4 "
                            "is kept, the same samples in the same steps",)
    # 8 ranks x 2 x 4 passes = 64; on 3 ranks no whole number of passes makes 64: said, not refused.
    on_three = plan_resume(marker(cfg, 8, accumulation=4), cfg, 3, DIGEST, "ckpt")
    assert on_three.accumulation == 11 and on_three.universal
    assert on_three.notes == ("the global batch 64 cannot be kept with 2 samples x 3 ranks: steps now take 66 samples "
                              "(11 passes); the sample order goes on from the same global position",)
    # Another per-rank batch on the same ranks: the global batch kept too.
    bigger = plan_resume(marker(cfg, 2, accumulation=2), config(batch_size=4), 2, DIGEST, "ckpt")
    assert (bigger.accumulation, bigger.universal) == (1, False)


@pytest.mark.parametrize("change, named", [
    (lambda c: replace(c, data=replace(c.data, seed=1)), "data.seed is 0 in the checkpoint, 1 now"),
    (lambda c: replace(c, run=replace(c.run, seed=7)), "run.seed is 0 in the checkpoint, 7 now"),
    (lambda c: replace(c, data=replace(c.data, datasets=("sat",))),
     "data.datasets is ['sat', 'vsti', 'robofac', 'wolf'] in the checkpoint, ['sat'] now"),
    (lambda c: replace(c, data=replace(c.data, weights={"sat": 0.5})),
     "data.weights.sat is '(absent)' in the checkpoint, 0.5 now"),
    (lambda c: replace(c, data=replace(c.data, shuffle_buffer=8)), "data.shuffle_buffer is 64 in the checkpoint, 8 now"),
    (lambda c: replace(c, data=replace(c.data, global_batch=8)), "data.global_batch is 4 in the checkpoint, 8 now"),
])
def test_a_resume_that_would_change_the_stream_is_refused_naming_the_change(change, named):
    cfg = config()
    saved = marker(cfg, 2)
    changed = change(cfg)
    with pytest.raises(ResumeRefusedError, match="run.allow_changed_resume=true") as refused:
        plan_resume(saved, changed, 2, DIGEST, "RUN/checkpoints/step-00000004")
    assert str(refused.value).startswith("RUN/checkpoints/step-00000004: resuming would not continue the run exactly")
    assert named in str(refused.value)
    allowed = replace(changed, run=replace(changed.run, allow_changed_resume=True))
    assert named in plan_resume(saved, allowed, 2, DIGEST, "ckpt").notes[0]


def test_a_resume_on_another_cache_or_an_old_checkpoint_is_refused():
    cfg = config()
    with pytest.raises(ResumeRefusedError, match="the cache's rows differ \\(manifests digest abababababab in the "
                                                 "checkpoint, cdcdcdcdcdcd now"):
        plan_resume(marker(cfg, 2), cfg, 2, "cd" * 32, "ckpt")
    with pytest.raises(ResumeRefusedError, match="records no run"):
        plan_resume({"step": 4, "loader": {"epoch": 0, "batch": 8}}, cfg, 2, DIGEST, "ckpt")


def test_the_manifests_digest_covers_what_the_order_is_computed_from():
    def record(sample: str, shard: str | None = "shards/wds/a.tar", row: int = 0) -> Record:
        clip = None if shard is None else {"cache_key": f"key-{sample}", "shard": shard, "row": row}
        return Record(sample, "synthetic", (), (), (), None, clip)

    base = manifests_digest([record("a"), record("b", row=1), record("c", shard=None)])
    assert base == manifests_digest([record("a"), record("b", row=1), record("c", shard=None)])
    for other in ([record("a"), record("b", row=2), record("c", shard=None)],  # a clip rewritten elsewhere
                  [record("a"), record("b", shard="shards/wds/b.tar", row=1), record("c", shard=None)],
                  [record("b", row=1), record("a"), record("c", shard=None)],  # another order of rows
                  [record("a"), record("b", row=1)]):  # a sample fewer
        assert manifests_digest(other) != base
