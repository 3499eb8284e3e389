"""Inputs the project does not support are refused loudly, naming the reason, before anything is
written: URLs where only a path can work (videos are read by decord from files; runs and exports are
local; pathlib would quietly turn 's3://bucket/x' into the local folder 's3:/bucket/x'), cache URLs of
no usable object store, and option values that would otherwise crash mid-job or silently mean
something else. Caches on object stores themselves: test_object_store.py."""
from __future__ import annotations

import logging
import re
import sys

import pytest

from conftest import TEST_VIDEOS
from pipeline.cache_teacher import main as cache_main
from pipeline.config import build_parser, load_config
from shards.local_path import ONLY_CACHES, VIDEOS_STAY_LOCAL
from student.config import LossConfig
from student.train_config import load_train_config

URL_REFUSED = "URLs are not supported here"
NO_STORE = "nosuch:// has no usable fsspec filesystem here"


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path, monkeypatch):
    """Every command runs in an empty folder, so anything it wrote (e.g. ./s3:/bucket) shows."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("flags, named", [
    (["--out", "file:///tmp/cache"], "out 'file:///tmp/cache': give a local path as a plain path"),
    (["--out", "nosuch://bucket/cache"], f"out 'nosuch://bucket/cache': {NO_STORE}"),
    (["--out", "cache", "--videos", "gs://bucket/videos"],
     f"videos 'gs://bucket/videos': gs:// {URL_REFUSED} ({VIDEOS_STAY_LOCAL})"),
    (["--out", "cache", "--samples", "s3://bucket/samples.parquet"],
     f"samples 's3://bucket/samples.parquet': s3:// {URL_REFUSED} ({VIDEOS_STAY_LOCAL})"),
    (["--out", "cache", "--source", "robofac=s3://bucket/robofac"],
     f"source 'robofac' 's3://bucket/robofac': s3:// {URL_REFUSED} ({VIDEOS_STAY_LOCAL})"),
])
def test_the_caching_job_refuses_a_url_and_writes_nothing(flags, named, in_empty_folder, caplog):
    with caplog.at_level(logging.ERROR):
        code = cache_main(["--videos", str(TEST_VIDEOS), "--teacher", "l4p-tiny", *flags])
    assert code == 1
    assert named in caplog.text
    assert list(in_empty_folder.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("module, argv, flag, named", [
    ("student.inspect_cache", ["nosuch://bucket/cache"], "argument cache", NO_STORE),
    ("pipeline.synthetic.dataset", ["--out", "s3://bucket/set", "--scenes", "1"], "argument --out", ONLY_CACHES),
    ("pipeline.synthetic.benchmark", ["--out", "s3://bucket/bench", "--scenes", "1"], "argument --out", ONLY_CACHES),
    ("pipeline.teachers.l4p.heads_export", ["s3://bucket/cache/teacher"], "argument directory", ONLY_CACHES),
    ("student.tiny", ["--out", "s3://bucket/tiny"], "argument --out", ONLY_CACHES),
    ("student.eval", ["--model", "m", "--cache", "nosuch://bucket/cache", "--bench", "synthetic", "--out", "o"],
     "argument --cache", NO_STORE),
    ("student.eval", ["--model", "hf://org/model", "--cache", "c", "--bench", "synthetic", "--out", "o"],
     "argument --model", ONLY_CACHES),
    ("student.ablation", ["--config", "c.yaml", "--bench-cache", "b", "--out", "s3://bucket/ablation"],
     "argument --out", ONLY_CACHES),
])
def test_the_other_commands_refuse_a_url_and_write_nothing(module, argv, flag, named, in_empty_folder, monkeypatch,
                                                          capsys):
    main = __import__(module, fromlist=["main"]).main
    monkeypatch.setattr(sys, "argv", [module, *argv])  # as its console runs it
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2, "argparse's usage error"
    err = capsys.readouterr().err
    assert f"{flag}: " in err and named in err
    assert list(in_empty_folder.iterdir()) == []


@pytest.mark.parametrize("override, named", [
    ("run.out=s3://bucket/run", f"run.out 's3://bucket/run': s3:// {URL_REFUSED} ({ONLY_CACHES})"),
    ("data.cache=nosuch://bucket/cache", f"data.cache 'nosuch://bucket/cache': {NO_STORE}"),
])
def test_the_trainer_refuses_a_url(override, named, in_empty_folder):
    (in_empty_folder / "train.yaml").write_text("run:\n  max_steps: 1\n")
    with pytest.raises(ValueError, match=re.escape(named)):
        load_train_config(in_empty_folder / "train.yaml", [override])


@pytest.mark.parametrize("flags, named", [
    (["--num-writers", "0"], "num_writers and max_inflight must be >= 1"),  # crashed mid-job (no writer)
    (["--max-inflight", "0"], "num_writers and max_inflight must be >= 1"),  # silently meant the default
    (["--frame-size", "0x224"], "output.frame_size must be HxW with both >= 1"),
    (["--fields", "depth,depth"], "output.fields: each field once"),
    (["--num-gpus", "-1"], "teacher.num_gpus and teacher.num_cpus must be >= 0"),
])
def test_job_options_that_cannot_work_are_refused(flags, named):
    with pytest.raises(ValueError, match=named):
        load_config(build_parser("test").parse_args(["--out", "cache", *flags]))


def test_negative_loss_weights_and_empty_eval_limits_are_refused(tmp_path):
    from student.eval import evaluate

    with pytest.raises(ValueError, match=r"loss weights must be >= 0.*'flow': -0.1"):
        LossConfig(task_weights={"depth": 1.0, "flow": -0.1})
    with pytest.raises(ValueError, match=r"loss weights must be >= 0.*'ld_weight': -1"):
        LossConfig(ld_weight=-1)
    # --limit 0 used to mean "every question"; --max-new-tokens 0 scored empty answers.
    with pytest.raises(ValueError, match="limit and max_new_tokens must be >= 1"):
        evaluate(tmp_path, tmp_path, "synthetic", tmp_path / "out", limit=0)
    with pytest.raises(ValueError, match="limit and max_new_tokens must be >= 1"):
        evaluate(tmp_path, tmp_path, "synthetic", tmp_path / "out", max_new_tokens=0)
