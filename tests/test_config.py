"""The job's configuration (YAML, then --set and the flags that are its shorthands), the per-clip field
specs it implies, and the one-job lock."""
from __future__ import annotations

import pytest

from pipeline.cache_dir import CacheDir, CacheLockedError
from pipeline.cache_teacher import main as cache_main
from pipeline.config import FLAGS, build_parser, load_config
from pipeline.runner import field_specs
from shards.schema import FieldStorage
from shards.teacher_fields import default_storage


def parse(*argv):
    return load_config(build_parser("test").parse_args(list(argv)))


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "videos: /data/v\nsampling: {num_frames: 8, fps: 2.5}\nteacher: {name: l4p-tiny, batch_size: 4}\n"
        "output: {format: wds, frame_size: [112, 160], storage: {depth: {dtype: float32, codec: none}}}\n"
    )
    config = parse("--config", str(path), "--batch-size", "2", "--pad", "true", "--fields", "depth,flow")
    assert config.videos == "/data/v"
    assert (config.sampling.num_frames, config.sampling.fps, config.sampling.pad) == (8, 2.5, True)
    assert (config.teacher.name, config.teacher.batch_size) == ("l4p-tiny", 2)
    assert config.output.format == "wds" and config.output.frame_size == (112, 160)
    assert config.output.fields == ("depth", "flow")
    assert config.output.storage["depth"].dtype == "float32"
    assert config.output.storage["flow"] == default_storage()["flow"], "unnamed fields keep their defaults"


def test_bad_config_names_the_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("teacher: {nmae: oracle}\n")
    with pytest.raises(ValueError, match=r"config\.teacher: unknown key\(s\) \['nmae'\]"):
        parse("--config", str(path))
    with pytest.raises(ValueError, match=r"config\.sampling\.num_frames: cannot read 'many'"):
        parse("--num-frames", "many")
    with pytest.raises(ValueError, match="teacher.name must be one of"):
        parse("--teacher", "l5p")
    with pytest.raises(ValueError, match="output.fields: unknown"):
        parse("--fields", "depth,normals")
    with pytest.raises(ValueError, match=r"max_inflight \(1\) must be >= teacher.batch_size \(2\)"):
        parse("--max-inflight", "1", "--batch-size", "2")


def test_set_reaches_every_key_in_command_line_order():
    config = parse("--batch-size", "2", "--set", "teacher.batch_size=5", "--set", "output.storage.depth.dtype=float32",
                   "--set", "output.storage.depth.codec=none", "--set", "teacher.latent_dim=64")
    assert config.teacher.batch_size == 5 and config.teacher.latent_dim == 64
    # A field's storage named on the command line replaces that field's storage, as in YAML.
    assert config.output.storage["depth"] == FieldStorage("float32", "none")
    assert parse("--set", "teacher.batch_size=5", "--batch-size", "2").teacher.batch_size == 2, "the later wins"


def test_command_line_values_keep_their_text_where_the_key_is_a_string():
    config = parse("--out", "1e3", "--set", "videos=0755", "--samples", "null", "--latent-dim", "null")
    assert (config.out, config.videos) == ("1e3", "0755")
    assert config.samples is None and config.teacher.latent_dim is None
    config = parse("--source", "sat=/data/sat", "--fields", "depth", "--source", "wolf=/data/x")
    assert config.sources == ("sat=/data/sat", "wolf=/data/x") and config.output.fields == ("depth",)


def test_bad_overrides_name_the_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("teacher: oracle\n")
    with pytest.raises(ValueError, match=r"--set teacher.name=\.\.\.: teacher is not a section"):
        parse("--config", str(path), "--set", "teacher.name=l4p")
    with pytest.raises(SystemExit):
        parse("--set", "teacher.batch_size")  # not KEY=VALUE: argparse refuses
    with pytest.raises(ValueError, match=r"config\.teacher\.batch_size: cannot read \{'x': '1'\} as int"):
        parse("--set", "teacher.batch_size.x=1")
    with pytest.raises(ValueError, match=r"config\.output\.storage\.depth: dtype 'float8' not in"):
        parse("--set", "output.storage.depth.dtype=float8")


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser("test").parse_args(["--help"])
    text = capsys.readouterr().out
    for shorthand in FLAGS:
        assert shorthand.flag in text and f"[{shorthand.key}]" in text


def test_field_specs_follow_the_config():
    config = parse("--fields", "depth,camray", "--frame-size", "112x160", "--num-frames", "8")
    shapes = {"latents": (4, 1024, 1408), "depth": (8, 224, 224), "flow": (2, 8, 224, 224),
              "dyn_mask": (8, 224, 224), "camray": (6, 8, 16, 16)}
    specs = {s.name: s for s in field_specs(config, shapes, 8)}
    assert list(specs) == ["frames", "timestamps", "depth", "camray"], "an ED-only cache stores no latents"
    assert specs["frames"].shape == (8, 112, 160, 3) and specs["frames"].dtype == "uint8"
    assert specs["depth"].shape == (8, 224, 224)
    assert (specs["depth"].dtype, specs["depth"].encoding) == (default_storage()["depth"].dtype, default_storage()["depth"].encoding)


def test_a_second_job_on_the_same_cache_refuses(tmp_path, capsys):
    with CacheDir(tmp_path).lock():
        with pytest.raises(CacheLockedError, match="another caching job"):
            with CacheDir(tmp_path).lock():
                pass
        assert cache_main(["--videos", str(tmp_path), "--out", str(tmp_path)]) == 1
    with CacheDir(tmp_path).lock():  # released: the next job may run
        pass
