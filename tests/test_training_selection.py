"""Training never sees evaluation data by accident: a selection that holds split-test rows or a
benchmark is refused with the datasets named, unless the config opts in."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from manifests.samples_table import SAMPLES_FILE, write_samples
from manifests.schemas import SAMPLES_SCHEMA
from pipeline.datasets.registry import EVALUATION_DATASETS as PIPELINE_EVALUATION
from student.cache_index import EVALUATION_DATASETS, EvaluationDataError, load_cache_index, refuse_evaluation_data
from student.eval import BENCH_DATASETS
from student.train_config import load_train_config


def row(sample_id: str, dataset: str, split: str) -> dict:
    """An image-only sample (no clip needed to index it)."""
    return {"sample_id": sample_id, "dataset": dataset, "split": split, "video": None, "cache_key": None,
            "images": ["images/x.png"], "conversations": [{"role": "user", "content": "<image>\nQ?"},
                                                           {"role": "assistant", "content": "A"}],
            "regions": None, "meta": json.dumps({})}


def test_a_selection_with_test_rows_or_a_benchmark_is_refused_by_name():
    clean = [row("sat/train/0", "sat", "train"), row("robofac/1", "robofac", "train")]
    refuse_evaluation_data(clean, (), "CACHE")  # training data passes
    with pytest.raises(EvaluationDataError, match=r"CACHE: .* 2 rows of dataset sat split 'test'"):
        refuse_evaluation_data(clean + [row(f"sat/test/{i}", "sat", "test") for i in range(2)], (), "CACHE")
    # A benchmark's rows labelled `train` (what the VSTI-Bench adapter once did) are still a benchmark's.
    with pytest.raises(EvaluationDataError, match=r"1 rows of dataset vsti_test split 'train'"):
        refuse_evaluation_data(clean + [row("vsti_test/1", "vsti_test", "train")], (), "CACHE")
    with pytest.raises(EvaluationDataError, match=r"dataset stibench \(a benchmark\)"):
        refuse_evaluation_data([], ("robofac", "stibench"), "CACHE")


def test_the_trainer_index_refuses_unless_the_config_opts_in(tmp_path):
    rows = [row("sat/train/0", "sat", "train"), row("sat/test/0", "sat", "test"), row("r4d/1", "r4d", "test")]
    write_samples(tmp_path / SAMPLES_FILE, pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA))
    assert [r.sample_id for r in load_cache_index(tmp_path, training=True).records] == ["sat/train/0"]
    with pytest.raises(EvaluationDataError, match=r"1 rows of dataset r4d split 'test'; 1 rows of dataset sat"):
        load_cache_index(tmp_path, split=None, training=True)
    with pytest.raises(EvaluationDataError, match=r"dataset r4d \(a benchmark\)"):
        load_cache_index(tmp_path, split="test", datasets=("r4d",), training=True)
    assert len(load_cache_index(tmp_path, split=None, training=False).records) == 3, "evaluation reads them"

    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{cache: {tmp_path}}}\n")
    assert load_train_config(config).data.allow_evaluation_data is False
    assert load_train_config(config, ["data.allow_evaluation_data=true"]).data.allow_evaluation_data is True


def test_the_benchmark_lists_agree_across_the_wall():
    """student/ cannot import pipeline/: its list of benchmarks is its own, kept equal here to the caching
    job's evaluation sources (plus the synthetic benchmark) and to what eval.py scores."""
    assert set(EVALUATION_DATASETS) == {*PIPELINE_EVALUATION, "synthetic4d"}
    assert set(BENCH_DATASETS.values()) == set(EVALUATION_DATASETS)


def test_the_index_reads_only_the_columns_and_rows_training_needs(tmp_path, monkeypatch):
    """At 10M clips the whole clips table does not fit: the index reads INDEX_COLUMNS of the rows of the
    selected samples' clips only (history included, so a clip's current row is still its ok one)."""
    import datetime as dt

    from manifests.clips_table import write_clips_part
    from shards.schema import FieldSpec, specs_to_json
    from student import cache_index

    key = {name: name * 64 for name in "abcd"}
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    fields = specs_to_json([FieldSpec("frames", (4, 8, 8, 3), "uint8"), FieldSpec("timestamps", (4,), "float64")])
    clip = {"clip_id": "c", "video_uri": "/v.mp4", "sampling": "{}", "teacher_id": "t", "created_at": created,
            "fields": fields}
    write_clips_part(tmp_path, "s0", [
        {**clip, "cache_key": key["a"], "status": "failed", "stage": "decode", "error": "e"},
        {**clip, "cache_key": key["a"], "status": "ok", "shard": "shards/zarr/s0.zarr", "row": 3, "format": "zarr"},
        {**clip, "cache_key": key["b"], "status": "failed", "stage": "decode", "error": "e"},
        {**clip, "cache_key": key["c"], "status": "ok", "shard": "shards/zarr/s0.zarr", "row": 1, "format": "zarr"},
        {**clip, "cache_key": key["d"], "status": "ok", "shard": "shards/zarr/s0.zarr", "row": 2, "format": "zarr"},
    ])
    video = {**row("x", "robofac", "train"), "images": None, "video": "v.mp4"}
    rows = [{**video, "sample_id": "robofac/a", "cache_key": key["a"]},
            {**video, "sample_id": "robofac/b", "cache_key": key["b"]},
            {**video, "sample_id": "robofac/c", "cache_key": key["c"], "split": "val"},  # not selected
            row("sat/train/0", "sat", "train")]
    write_samples(tmp_path / SAMPLES_FILE, pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA))
    read, real = [], cache_index.read_clips_table

    def spy(*args, **kwargs):
        read.append(real(*args, **kwargs))
        return read[-1]

    monkeypatch.setattr(cache_index, "read_clips_table", spy)
    index = load_cache_index(tmp_path)
    monkeypatch.undo()
    assert read[0].column_names == list(cache_index.INDEX_COLUMNS)
    # Not the per-clip columns training never reads (the largest: the sampling JSON, 16+ timestamps, the path).
    assert {"video_uri", "video_sha256", "sampling", "timestamps", "nbytes"}.isdisjoint(read[0].column_names)
    assert sorted(read[0]["cache_key"].to_pylist()) == [key["a"], key["a"], key["b"]]
    records = {r.sample_id: r for r in index.records}
    assert sorted(records) == ["robofac/a", "sat/train/0"] and index.skipped == {"clip failed: decode": 1}
    assert (records["robofac/a"].clip["status"], records["robofac/a"].shard, records["robofac/a"].clip["row"]) == (
        "ok", "shards/zarr/s0.zarr", 3)
