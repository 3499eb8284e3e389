"""The trainer: the cache checks, the streaming loader (rank / worker split, mixture, resumable
position), and real 2-rank DeepSpeed ZeRO-3 runs (gloo on CPU) that are killed and resumed; the wall
between student/ and pipeline/ is in test_layering.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from conftest import ROOT
from configs.dataclass_io import config_from_args
from manifests.samples_table import SAMPLES_FILE, read_samples, write_samples
from pipeline.config import JobConfig, OutputConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from student.cache_index import CacheMismatchError, load_cache_index
from student.loader import StudentLoader
from student.model import StudentModel, load_tokenizer
from student.stream import epoch_order
from student.tiny import make_tiny_vlm
from student.train_config import DataConfig, TrainConfig, load_train_config

LATENT_DIM = 16
IMAGE_SAMPLES = 6


def add_image_samples(cache: Path, n: int) -> None:
    """Image-only samples (SAT-like: no clip, SFT loss only) with their pictures under the cache."""
    (cache / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(cache / "images" / f"{i}.png")
        rows.append({
            "sample_id": f"sat/{i}", "dataset": "sat", "split": "train", "video": None, "cache_key": None,
            "images": [f"images/{i}.png"], "regions": None, "meta": None,
            "conversations": [{"role": "user", "content": "<image>\nWhich is closer, A or B?"},
                              {"role": "assistant", "content": "A"}],
        })
    table = read_samples(cache / SAMPLES_FILE)
    write_samples(cache / SAMPLES_FILE, pa.concat_tables([table, pa.Table.from_pylist(rows, schema=table.schema)]))


@pytest.fixture(scope="module")
def train_cache(synthetic_set, ray_session, tmp_path_factory):
    """The 4 synthetic scenes cached by the oracle (WebDataset, 1 clip per shard) + image samples."""
    out = tmp_path_factory.mktemp("train-cache")
    summary = run_job(JobConfig(
        videos=str(synthetic_set), out=str(out), sampling=SamplingConfig(num_frames=16),
        teacher=TeacherConfig(name="oracle", latent_dim=LATENT_DIM),
        output=OutputConfig(format="wds", clips_per_shard=1),
    ))
    assert summary["clips"]["ok"] == 4
    add_image_samples(out, IMAGE_SAMPLES)
    return out


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return make_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen")


def loader_for(cache, model_dir, rank=0, world=1, fields=("latents", "depth"), accumulation=1, **data):
    from transformers import AutoConfig

    from student.adapters import build_adapter

    index = load_cache_index(cache, needed=fields)
    cfg = DataConfig(cache=str(cache), **{"batch_size": 2, "num_workers": 0, "shuffle_buffer": 8, **data})
    adapter = build_adapter("qwen2_5_vl", AutoConfig.from_pretrained(model_dir), model_dir, (56, 56))
    return StudentLoader(index, cfg, rank, world, adapter, load_tokenizer(model_dir), fields, accumulation=accumulation)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


# -- cache checks --------------------------------------------------------------------------------
def test_a_cache_from_another_teacher_or_storage_is_refused(train_cache):
    index = load_cache_index(train_cache, needed=("latents",))
    assert index.teacher_id.startswith("oracle:")
    with pytest.raises(CacheMismatchError, match="cached by teacher 'oracle:.*the config asks for 'l4p:abc'"):
        load_cache_index(train_cache, teacher_id="l4p:abc")
    with pytest.raises(CacheMismatchError, match="field 'latents' is stored as int8, the config expects float16"):
        load_cache_index(train_cache, field_dtypes={"latents": "float16"})


def test_a_field_the_losses_need_but_the_cache_lacks_is_refused(synthetic_set, ray_session, tmp_path):
    run_job(JobConfig(videos=str(synthetic_set), out=str(tmp_path), sampling=SamplingConfig(num_frames=16),
                      teacher=TeacherConfig(name="oracle", latent_dim=LATENT_DIM),
                      output=OutputConfig(fields=("depth",))))
    with pytest.raises(CacheMismatchError, match=r"need field\(s\) \['flow'\] the cache does not store"):
        load_cache_index(tmp_path, needed=("depth", "flow"))


# -- the loader ----------------------------------------------------------------------------------
def test_ranks_get_disjoint_equal_slices_and_workers_do_not_change_the_stream(train_cache, tiny_qwen):
    epoch = [loader_for(train_cache, tiny_qwen, rank, 2).epoch_batches(0) for rank in (0, 1)]
    assert len(epoch[0]) == len(epoch[1]) > 0
    flat = [i for rank in epoch for b in rank for i in b]
    assert len(flat) == len(set(flat))  # nothing read twice in an epoch (all weights are 1)

    def ids(loader, n):
        return [b.sample_ids for b in take(iter(loader), n)]

    serial = ids(loader_for(train_cache, tiny_qwen, 1, 2, num_workers=0), 5)
    assert ids(loader_for(train_cache, tiny_qwen, 1, 2, num_workers=2), 5) == serial


def test_one_rank_with_accumulation_reads_the_steps_of_two_ranks(train_cache, tiny_qwen):
    """Global batch 4: 2 ranks x 2 samples, or 1 rank x 2 samples x 2 passes: each step the same samples,
    each drawn the same view (augmentation is seeded by the global position, not by a rank's batch)."""
    from student.augment import AugmentConfig

    two = [loader_for(train_cache, tiny_qwen, rank, 2).epoch_batches(0) for rank in (0, 1)]
    one = loader_for(train_cache, tiny_qwen, 0, 1, accumulation=2).epoch_batches(0)
    assert len(one) == 2 * len(two[0]) > 0
    assert [two[0][s] + two[1][s] for s in range(len(two[0]))] == [one[2 * s] + one[2 * s + 1] for s in range(len(two[0]))]

    flips = dict(fields=("flow",), weights={"sat": 0.0}, draw_marks=False, augment=AugmentConfig(hflip_prob=0.5))
    steps = 3

    def flows(batches) -> dict[str, object]:
        return {sid: b.targets["flow"][k] for b in batches for k, sid in enumerate(b.sample_ids)}

    on_two = {**flows(take(iter(loader_for(train_cache, tiny_qwen, 0, 2, **flips)), steps)),
              **flows(take(iter(loader_for(train_cache, tiny_qwen, 1, 2, **flips)), steps))}
    on_one = flows(take(iter(loader_for(train_cache, tiny_qwen, 0, 1, accumulation=2, **flips)), 2 * steps))
    assert on_two.keys() == on_one.keys() and len(on_one) == 4 * steps
    assert all(torch_equal(on_two[sid], on_one[sid]) for sid in on_one)


def test_loader_state_round_trip_gives_the_same_next_batches(train_cache, tiny_qwen):
    """torchtitan's test: read N batches, save the state, rebuild, the next batches are identical
    (across the epoch boundary too); rank 1 of 2, so the global position counts both ranks' samples."""
    reference = loader_for(train_cache, tiny_qwen, 1, 2, num_workers=2)
    per_epoch = len(reference.epoch_batches(0))
    stream = iter(reference)
    take(stream, per_epoch - 2)
    state = reference.state_dict()
    expected = [b.sample_ids for b in take(stream, 4)]
    resumed = loader_for(train_cache, tiny_qwen, 1, 2, num_workers=2)
    resumed.load_state_dict(state)
    got = take(iter(resumed), 4)
    assert [b.sample_ids for b in got] == expected
    assert resumed.state_dict() == {"epoch": 1, "position": 8}  # 2 passes of 2 ranks x 2 samples into epoch 1


def test_mixture_weights_repeat_and_subsample(train_cache):
    index = load_cache_index(train_cache)
    datasets = [r.dataset for r in index.records]
    n_video, n_image = datasets.count("synthetic"), datasets.count("sat")
    order = epoch_order(index.records, {"sat": 2.0, "synthetic": 0.5}, seed=0, epoch=0, buffer=4)
    picked = [index.records[i].dataset for i in order]
    assert picked.count("sat") == 2 * n_image
    assert picked.count("synthetic") == round(0.5 * n_video)
    other_epoch = epoch_order(index.records, {"synthetic": 0.5}, seed=0, epoch=1, buffer=4)
    assert sorted(order) != sorted(other_epoch)  # another half of the video samples


def test_only_the_needed_fields_are_read(train_cache, tiny_qwen, monkeypatch):
    from shards.wds_shard import WdsShardReader

    asked = []
    read = WdsShardReader.read
    monkeypatch.setattr(WdsShardReader, "read", lambda self, row, fields=None, checksums=None, decode=True: (
        asked.append(fields), read(self, row, fields, checksums, decode))[1])
    loader = loader_for(train_cache, tiny_qwen, fields=("depth",), weights={"sat": 0.0})
    batch = next(iter(loader))
    assert set(batch.encoded_targets) == {"depth"} and not batch.targets, "as stored until the step"
    batch.to("cpu")
    assert set(batch.targets) == {"depth"}
    assert batch.targets["depth"].shape[1:] == (16, 224, 224)
    assert asked and all(fields == ["frames", "timestamps", "depth"] for fields in asked), asked
    # A field a clip does not store is left out (the loader masks its loss for that sample).
    from shards.cache_reader import ClipReader

    clip = next(r.clip for r in loader.index.records if r.clip is not None)
    assert set(ClipReader(train_cache, ("timestamps", "normals")).read(clip)) == {"timestamps"}


# -- DeepSpeed ZeRO-3, 2 CPU ranks ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, cache: Path, model_dir: Path, out: Path, steps: int, every: int) -> Path:
    path.write_text(json.dumps({
        "student": {"model": {"adapter": "qwen2_5_vl", "path": str(model_dir), "video_size": [56, 56]},
                    "branch": {"latent_dim": LATENT_DIM, "decoders": "light", "light_hidden": 16}},
        "data": {"cache": str(cache), "datasets": [], "batch_size": 2, "global_batch": None, "num_workers": 1,
                 "shuffle_buffer": 16},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "run": {"out": str(out), "max_steps": steps, "checkpoint_every": every,
                "deepspeed": str(ROOT / "configs/deepspeed/zero3_cpu.json")},
    }))
    return path


def launch(config: Path, ranks: int = 2) -> subprocess.Popen:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
           "student/train.py", "--config", str(config)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def records(out: Path, rank: int) -> list[dict]:
    """What a rank logged per pass (RUN/batches-rank<r>.jsonl), in order."""
    return [json.loads(line) for line in (out / f"batches-rank{rank}.jsonl").read_text().splitlines()]


def steps_logged(out: Path, rank: int) -> dict[int, dict]:
    """step -> the LAST record of it (a killed attempt may have logged steps that were redone)."""
    return {r["step"]: r for r in records(out, rank)}


def global_sequence(passes: list[dict]) -> dict[int, list[tuple[int, int, str]]]:
    """step -> its samples as (epoch, global position, sample id) in position order, from the passes of
    every rank; a position is read once, and always holds the same sample."""
    steps: dict[int, dict] = {}
    for record in passes:
        for position, sample in zip(record["positions"], record["samples"]):
            seen = steps.setdefault(record["step"], {})
            assert seen.setdefault((record["epoch"], position), sample) == sample, (record, seen)
    return {step: sorted((e, p, s) for (e, p), s in seen.items()) for step, seen in steps.items()}


def deepspeed_shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")}


def test_zero3_training_killed_and_resumed_on_two_then_one_rank_sees_the_same_samples(train_cache, tiny_qwen,
                                                                                      tmp_path):
    """A 2-rank run killed after its step-4 checkpoint, resumed once on 2 ranks and once on 1 rank (a
    node lost): each consumes the global sample sequence of the run that never stopped, each sample
    once; on 2 ranks with the same losses, on 1 rank with the global batch of 4 kept by 2 passes."""
    steps, every = 6, 2
    segments_before = deepspeed_shm_segments()
    straight = tmp_path / "straight"
    finish(launch(write_config(tmp_path / "a.json", train_cache, tiny_qwen, straight, steps, every)))

    killed = tmp_path / "killed"
    proc = launch(write_config(tmp_path / "b.json", train_cache, tiny_qwen, killed, steps, every))
    marker = killed / "checkpoints" / "step-00000004" / "complete"
    deadline = time.time() + 400
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() < deadline, "no complete checkpoint at step 4"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    one = tmp_path / "killed-resumed-on-one"
    shutil.copytree(killed, one)
    before = {rank: len(records(one, rank)) for rank in (0, 1)}

    log = finish(launch(tmp_path / "b.json"))
    assert "resumed from step-00000004" in log
    log = finish(launch(write_config(tmp_path / "c.json", train_cache, tiny_qwen, one, steps, every), ranks=1))
    assert "saved by 2 ranks x 2 samples x 1 passes, resumed on 1 ranks x 2 x 2: the global batch 4 is kept" in log
    assert "resumed from step-00000004" in log and (one / "checkpoints" / "step-00000004" / "universal").is_dir()
    # DeepSpeed's CPU all-reduce segments (~69 MB per rank in /dev/shm) outlive no run, killed or not.
    assert deepspeed_shm_segments() == segments_before

    expected = global_sequence(records(straight, 0) + records(straight, 1))
    assert sorted(expected) == list(range(1, steps + 1))
    assert all(len(samples) == 4 for samples in expected.values())
    for rank in (0, 1):  # the same number of ranks: the same batches and losses, rank by rank
        a, b = steps_logged(straight, rank), steps_logged(killed, rank)
        assert sorted(a) == sorted(b) == list(range(1, steps + 1))
        for step in range(1, steps + 1):
            assert b[step]["samples"] == a[step]["samples"], (rank, step)
            # Same weights, optimizer state and batch after the resume: the same loss (fp32 CPU).
            assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-6), (rank, step)
    # On 1 rank: the killed run's passes up to its checkpoint, then the resumed run's, 2 passes a step.
    kept = [r for rank in (0, 1) for r in records(one, rank)[:before[rank]] if r["step"] <= 4]
    resumed = records(one, 0)[before[0]:]
    assert [r["step"] for r in resumed] == [5, 5, 6, 6]
    assert global_sequence(kept + resumed) == expected, "the same samples in the same optimizer steps, each once"
    # The first step after the resume sees the checkpoint's weights: each pass's answer loss (its own
    # batch's mean) is the one the 2-rank run had on the same samples.
    straight_passes = {tuple(r["positions"]): r for rank in (0, 1) for r in records(straight, rank) if r["step"] == 5}
    for r in resumed[:2]:
        assert r["terms"]["ce"] == pytest.approx(straight_passes[tuple(r["positions"])]["terms"]["ce"], rel=1e-4)

    # The case that deadlocks a stock HF forward under ZeRO-3 happened and passed: in some step one
    # rank had an image-only sample and the other had none (different vision-tower call patterns).
    def has_image(rank, step):
        return any(s.startswith("sat/") for s in steps_logged(straight, rank)[step]["samples"])

    assert any(has_image(0, s) != has_image(1, s) for s in range(1, steps + 1))

    export = straight / "export"
    base_class = StudentModel.from_export(export).adapter.model_class
    plain, info = base_class.from_pretrained(export, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in base_class(plain.config).parameters())


def test_train_config_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  max_steps: 3\n")
    cfg = load_train_config(path, ["data.batch_size=4", "student.loss.ld_weight=0"])
    assert (cfg.run.max_steps, cfg.data.batch_size, cfg.student.loss.ld_weight) == (3, 4, 0.0)
    with pytest.raises(ValueError, match=r"config.data: unknown key\(s\) \['batchsize'\]"):
        load_train_config(path, ["data.batchsize=4"])
    # The trainer's command line: the same reader, --set values read as YAML unless the key is a string.
    from student.train import parse_args

    cfg = config_from_args(TrainConfig, parse_args(["--config", str(path), "--set", "run.out=007",
                                                    "--set", "data.datasets=[sat, robofac]"]))
    assert (cfg.run.max_steps, cfg.run.out, cfg.data.datasets) == (3, "007", ("sat", "robofac"))


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    import math

    import torch

    from student.train import lr_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = lr_schedule(optimizer, max_steps=10, warmup_ratio=0.25)  # ceil(2.5) = 3 warmup steps
    lrs = []
    for _ in range(11):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    expected = [0.0, 2 / 3, 4 / 3] + [1.0 + math.cos(math.pi * (s - 3) / 7) for s in range(3, 11)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_loader_draws_marks_and_augments_consistently(train_cache, tiny_qwen):
    """Marks are drawn at load time (the cached frames stay clean); a flip mirrors frames and maps
    together (flow u changes sign), masks the latents it makes untrue, is the same after a restart,
    and is never applied to a sample whose text says left or right."""
    from student.augment import AugmentConfig
    from shards.cache_reader import ClipReader
    from shards.teacher_fields import CLIP_FIELDS
    from student.loader import SIDEDNESS, build_sample

    index = load_cache_index(train_cache)
    record = next(r for r in index.records if r.clip is not None and r.regions)
    clean = ClipReader(index.root, CLIP_FIELDS).read(record.clip)["frames"]
    marked = build_sample(record, ClipReader(index.root, CLIP_FIELDS), index.root, marks=DataConfig().marks)["frames"]
    assert marked.shape == clean.shape and not np.array_equal(marked, clean)

    fields = ("latents", "flow", "depth")
    plain = loader_for(train_cache, tiny_qwen, fields=fields, weights={"sat": 0.0}, draw_marks=False)
    flipping = dict(fields=fields, weights={"sat": 0.0}, draw_marks=False, augment=AugmentConfig(hflip_prob=1.0))
    a, b = next(iter(plain)), next(iter(loader_for(train_cache, tiny_qwen, **flipping)))
    again = next(iter(loader_for(train_cache, tiny_qwen, **flipping)))
    assert not b.encoded_targets, "augmented views are decoded in the loader"
    a.to("cpu")
    assert a.sample_ids == b.sample_ids == again.sample_ids
    assert torch_equal(b.targets["flow"], again.targets["flow"])  # seeded: a restart draws the same view
    by_id = {r.sample_id: r for r in index.records}
    for k, sid in enumerate(a.sample_ids):
        text = " ".join(t["content"] for t in by_id[sid].conversations)
        if SIDEDNESS.search(text):
            assert torch_equal(b.targets["flow"][k], a.targets["flow"][k])
            continue
        assert torch_equal(b.targets["depth"][k], a.targets["depth"][k].flip(-1))
        assert torch_equal(b.targets["flow"][k][0], -a.targets["flow"][k][0].flip(-1))
        assert torch_equal(b.targets["flow"][k][1], a.targets["flow"][k][1].flip(-1))
        assert not b.target_valid.get("latents", torch_false(len(a.sample_ids)))[k]


STORED_FIELDS = ("latents", "depth", "flow", "dyn_mask", "camray")


@pytest.mark.parametrize("clip_cache", [0, 8])
def test_the_loader_hands_stored_targets_that_decode_to_the_cached_values(train_cache, tiny_qwen, monkeypatch,
                                                                          clip_cache):
    """Targets leave the loader as stored (codes + side arrays); decoded in the step they are, bit
    for bit, the values the reader decodes on the CPU. A worker keeping `clip_cache` clips reads each
    clip once per epoch when they all fit (4 clips here), and once per sample when it keeps none."""
    import torch

    from shards.cache_reader import read_cached_clip
    from shards.wds_shard import WdsShardReader

    reads = []
    read = WdsShardReader.read
    monkeypatch.setattr(WdsShardReader, "read", lambda self, row, fields=None, checksums=None, decode=True: (
        reads.append((self.path, row)), read(self, row, fields, checksums, decode))[1])
    loader = loader_for(train_cache, tiny_qwen, fields=STORED_FIELDS, weights={"sat": 0.0}, clip_cache=clip_cache)
    batches = take(iter(loader), len(loader.epoch_batches(0)))
    samples = sum(b.size for b in batches)
    assert len(reads) == (4 if clip_cache else samples) and samples > 4, (len(reads), samples)
    by_id = {r.sample_id: r for r in loader.index.records}
    for batch in batches:
        stored = {name: arrays for name, (_, arrays) in batch.encoded_targets.items()}
        assert set(stored) == {"latents", "depth", "flow", "dyn_mask"} and set(batch.targets) == {"camray"}
        assert stored["latents"]["latents"].dtype == torch.int8
        batch.to("cpu")
        assert not batch.encoded_targets and set(batch.targets) == set(STORED_FIELDS)
        for k, sid in enumerate(batch.sample_ids):
            cached = read_cached_clip(train_cache, by_id[sid].clip, STORED_FIELDS)
            for name in STORED_FIELDS:
                value = batch.targets[name][k].numpy()
                assert value.dtype == np.float32 and value.tobytes() == cached[name].astype(np.float32).tobytes(), name


def test_a_batch_stacks_stored_targets_with_zeros_for_samples_without_them(tiny_qwen):
    from transformers import AutoConfig

    from shards.codecs import Encoded, encode_field
    from shards.schema import FieldSpec
    from student.adapters import build_adapter
    from student.batch import collate

    spec = FieldSpec("depth", (16, 224, 224), "uint16", "zstd", 3, "log-depth", 2**-8)
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 20.0, (16, 224, 224))
    encoded = Encoded(spec, encode_field(spec, depth))
    sample = {"frames": np.zeros((16, 28, 28, 3), np.uint8), "timestamps": np.arange(16) / 8, "window_starts": [0],
              "conversations": [{"role": "user", "content": "<video>\nhow deep?"},
                                {"role": "assistant", "content": "3"}]}
    samples = [{**sample, "sample_id": "a", "targets": {"depth": encoded}}, {**sample, "sample_id": "b", "targets": {}}]
    adapter = build_adapter("qwen2_5_vl", AutoConfig.from_pretrained(tiny_qwen), tiny_qwen, (56, 56))
    batch = collate(samples, adapter, load_tokenizer(tiny_qwen), ("depth",))
    (stored_spec, arrays), = batch.encoded_targets.values()
    assert stored_spec == spec and arrays["depth"].shape == (2, 16, 224, 224) and not arrays["depth"][1].any()
    batch.to("cpu")
    assert batch.target_valid["depth"].tolist() == [True, False]
    np.testing.assert_array_equal(batch.targets["depth"][0].numpy(), encoded.decode())
    assert not batch.targets["depth"][1].any(), "a missing target decodes to zeros (its loss is masked)"
    np.testing.assert_allclose(batch.targets["depth"][0].numpy(), depth, rtol=np.expm1(2**-9) + 2**-23)


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


def torch_false(n):
    import torch

    return torch.zeros(n, dtype=torch.bool)
