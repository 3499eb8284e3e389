"""Storage codecs and fidelity: bytes per clip per field, decoded-vs-exact errors, and how much the
P4D loss values move when the student trains on decoded instead of exact teacher targets.

    .venv/bin/python bench/fidelity.py [--clips 2] [--workdir DIR]

Data (full L4P shapes of one 16-frame clip, float32 "exact teacher output", not easier than real):
  latents   4 x 2048 x 1408: bench/storage.realistic_latents (Student-t tokens, per-channel mean and
            scale, 6 outlier channels 10-50x larger, as real ViT features have).
  maps      bench/storage.realistic_maps: smooth depth / flow backgrounds with moving objects
            (discontinuities), soft motion logits (dyn_mask is L4P's raw logit, -8 in the background,
            up to ~+30 inside objects), per-pixel noise that leaves no low bit constant; camray
            1 x 6 x 16 x 16 x 16 Plucker rays.
Storage configs, each written as one real shard per format through shards.formats.open_writer and
read back through the format readers (which return DECODED arrays):
  exact fp16   the previous default (every teacher field float16, latents uncompressed)
  default      shards.teacher_fields.default_storage() (what the job writes now)
  int8 finest  the default with int8-token step 0 (absmax / 127 per token): the fidelity ceiling of int8
  bf16         the default with latents, depth, flow and dyn_mask as bfloat16
Loss change = |L(pred, decoded) - L(pred, exact)| / L(pred, exact), with student/losses.py's
latent_loss_per_sample (mse and smooth_l1) and map_loss_per_sample, for two stand-in predictions:
  trained    exact target + Gaussian noise: latents 0.5 x each channel's std (relative MSE 0.25);
             log depth + N(0, 0.1); flow + N(0, 1 px); dyn_mask logit + N(0, 1); camray + N(0, 0.05).
  untrained  a second independent clip from the same generators (log depth, its motion logits).
dyn_mask is compared two ways: the loss of student/losses.py (BCE against the sigmoid of the stored
logit) and an L1 between logits (what a loss on the raw logit compares).
Why dyn_mask (the raw logit) is stored as `fixed` int16 with step 2**-5: its error is absolute and
bounded, <= 1/64 in logit (<= 0.004 in probability) for |logit| <= 1024, and it costs 0.58 MB per clip
here (Zarr), about what bfloat16 costs (0.56 MB) while bfloat16's error grows with the logit (0.06 at a
logit of 28), and 40 % less than float16 (0.95 MB); both loss forms move by < 1e-4. A uint8 code
(prob-u8, the storage when the field was a probability) cannot round-trip a raw logit: it saturates at
|logit| = 12.
The closer the stand-in is to the target, the more the quantization noise shows: 'trained' is the
harder case. Sizes are measured from the files (side arrays counted with their field).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.conditions import print_conditions  # noqa: E402
from bench.storage import field_bytes, realistic_latents, realistic_maps  # noqa: E402
from pipeline.config import JobConfig, OutputConfig, TeacherConfig  # noqa: E402
from pipeline.runner import field_specs  # noqa: E402
from pipeline.teachers.oracle import OracleTeacher  # noqa: E402
from shards.codecs import encode_arrays  # noqa: E402
from shards.formats import FORMATS, open_reader, open_writer, shard_filename  # noqa: E402
from shards.schema import FieldStorage  # noqa: E402
from shards.teacher_fields import MAP_SIZE, MAP_TASKS, TEACHER_FIELDS, default_storage, teacher_shapes  # noqa: E402
from student.losses import latent_loss_per_sample, map_loss_per_sample  # noqa: E402

NUM_FRAMES = 16
MB = 1e6
BUDGET_MB = 10.0
MAX_LOSS_CHANGE = 0.01


def storage_configs() -> dict[str, dict[str, FieldStorage]]:
    exact = {name: FieldStorage("float16", "zstd", 3) for name in TEACHER_FIELDS}
    exact["latents"] = FieldStorage("float16", "none", 0)
    exact["camray"] = FieldStorage("float16", "none", 0)
    default = default_storage()
    finest = {**default, "latents": replace(default["latents"], step=0.0)}
    bf16 = {**default, **{name: FieldStorage("uint16", "zstd", 3, "bf16")
                          for name in ("latents", "depth", "flow", "dyn_mask")}}
    return {"exact fp16": {**default, **exact}, "default": default, "int8 finest": finest, "bf16": bf16}


def make_clip(rng: np.random.Generator) -> dict[str, np.ndarray]:
    latents = realistic_latents(teacher_shapes(NUM_FRAMES)["latents"], rng)
    return {"latents": latents, **realistic_maps(NUM_FRAMES, MAP_SIZE, rng)}


def stand_ins(exact: dict[str, np.ndarray], other: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """Student predictions in the decoders' output spaces (log depth, flow px, mask logits, rays)."""
    channel_std = exact["latents"].std(axis=-2, keepdims=True)
    trained = {
        "latents": exact["latents"] + 0.5 * channel_std * rng.standard_normal(exact["latents"].shape, np.float32),
        "depth": np.log(exact["depth"]) + rng.normal(0, 0.1, exact["depth"].shape),
        "flow": exact["flow"] + rng.normal(0, 1.0, exact["flow"].shape),
        "dyn_mask": exact["dyn_mask"] + rng.normal(0, 1.0, exact["dyn_mask"].shape),
        "camray": exact["camray"] + rng.normal(0, 0.05, exact["camray"].shape),
    }
    untrained = {"latents": other["latents"], "depth": np.log(other["depth"]), "flow": other["flow"],
                 "dyn_mask": other["dyn_mask"], "camray": other["camray"]}
    return {"trained": trained, "untrained": untrained}


def losses(pred: dict, target: dict) -> dict[str, float]:
    """Per-field loss values of one clip (batch of 1), float64 so the comparison is not float32 noise."""
    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float64))[None]

    out = {f"latents {kind}": float(latent_loss_per_sample(t(pred["latents"]), t(target["latents"]), kind)[0])
           for kind in ("mse", "smooth_l1")}
    for task in MAP_TASKS:
        out[task] = float(map_loss_per_sample(task, t(pred[task]), t(target[task]))[0])
    out["dyn_mask logit-L1"] = float((t(pred["dyn_mask"]) - t(target["dyn_mask"])).abs().mean())
    return out


def write_and_read(fmt: str, path: Path, specs, clips: list[dict]) -> list[dict[str, np.ndarray]]:
    writer = open_writer(fmt, path, specs)
    stored = [writer.add(f"clip{i:04d}", encode_arrays(specs, clip)) for i, clip in enumerate(clips)]
    writer.commit()
    reader = open_reader(fmt, path, specs)
    return [reader.read(i, checksums=s.checksums) for i, s in enumerate(stored)]


def run(workdir: Path, num_clips: int) -> None:
    print_conditions("bench/fidelity.py: stored bytes, decoded-vs-exact error and loss change per field",
                     ["numpy", "zarr", "numcodecs", "webdataset", "torch"], workdir)
    shapes = OracleTeacher.identity(TeacherConfig(name="oracle"), NUM_FRAMES).shapes
    print(f"sizes: {num_clips} clips per shard, full L4P shapes per 16-frame clip: "
          + ", ".join(f"{n} {'x'.join(map(str, shapes[n]))}" for n in TEACHER_FIELDS)
          + "; exact = float32 generator output; MB = 1e6 bytes")
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    clips = [make_clip(rng) for _ in range(num_clips)]
    other = make_clip(np.random.default_rng(1))
    preds = [stand_ins(clip, other, np.random.default_rng(2 + i)) for i, clip in enumerate(clips)]
    exact_losses = [{who: losses(p, clip) for who, p in pred.items()} for pred, clip in zip(preds, clips)]
    print(f"data prepared in {time.perf_counter() - t0:.1f} s")

    raw_fp16 = sum(int(np.prod(shapes[n])) * 2 for n in TEACHER_FIELDS)
    for config_name, storage in storage_configs().items():
        job = JobConfig(output=OutputConfig(storage={**default_storage(), **storage}))
        specs = [s for s in field_specs(job, shapes, NUM_FRAMES) if s.name in TEACHER_FIELDS]
        print(f"\n== {config_name}: " + "; ".join(
            f"{s.name} {s.encoding}{f'(step {s.step:g})' if s.step else ''} {s.dtype} {s.codec}" for s in specs))
        decoded, sizes = {}, {}
        for fmt in FORMATS:
            path = workdir / shard_filename(fmt, f"{config_name.replace(' ', '-')}")
            t = time.perf_counter()
            decoded[fmt] = write_and_read(fmt, path, specs, clips)
            seconds = (time.perf_counter() - t) / num_clips
            sizes[fmt] = {name: stored / num_clips for name, stored in field_bytes(fmt, path, list(TEACHER_FIELDS)).items()}
            sizes[fmt]["_seconds"] = seconds
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for i in range(num_clips):
            for name in TEACHER_FIELDS:
                if not np.array_equal(decoded["zarr"][i][name], decoded["wds"][i][name]):
                    raise RuntimeError(f"{config_name}: zarr and wds decode {name} of clip {i} differently")
        print(f"{'field':<10}{'zarr MB':>9}{'wds MB':>8}{'max |err|':>11}{'mean |err|':>11}{'max rel':>9}"
              f"{'loss':>16}{'trained dL/L':>14}{'untrained dL/L':>16}")
        worst = 0.0
        for name in TEACHER_FIELDS:
            err = np.concatenate([(d[name].astype(np.float64) - c[name]).ravel() for d, c in zip(decoded["zarr"], clips)])
            scale = np.concatenate([np.abs(c[name]).ravel() for c in clips])
            rel = np.abs(err) / np.maximum(scale, 1e-3 * scale.max())
            loss_names = [k for k in exact_losses[0]["trained"] if k.split()[0] == name]
            for j, loss_name in enumerate(loss_names):
                changes = {}
                for who in ("trained", "untrained"):
                    values = [(losses(p[who], d)[loss_name], e[who][loss_name])
                              for p, d, e in zip(preds, decoded["zarr"], exact_losses)]
                    changes[who] = max(abs(a - b) / b for a, b in values)
                    worst = max(worst, changes[who])
                left = (f"{name:<10}{sizes['zarr'][name] / MB:>9.3f}{sizes['wds'][name] / MB:>8.3f}"
                        f"{np.abs(err).max():>11.2e}{np.abs(err).mean():>11.2e}{rel.max():>9.1e}") if j == 0 \
                    else " " * 58
                label = loss_name.replace("latents ", "L_LD ") if name == "latents" else f"L_ED {loss_name}"
                print(f"{left}{label:>16}{changes['trained']:>14.2e}{changes['untrained']:>16.2e}")
        for fmt in FORMATS:
            total = sum(sizes[fmt][n] for n in TEACHER_FIELDS)
            print(f"TOTAL {fmt:<5}{total / MB:>8.3f} MB/clip of teacher fields ({raw_fp16 / total:.2f}x smaller than "
                  f"{raw_fp16 / MB:.2f} MB raw fp16; budget {BUDGET_MB:g} MB: {'ok' if total <= BUDGET_MB * MB else 'OVER'}); "
                  f"encode+write+read {sizes[fmt]['_seconds']:.2f} s/clip")
        print(f"worst loss change {worst:.2e} (target < {MAX_LOSS_CHANGE:g}: {'ok' if worst < MAX_LOSS_CHANGE else 'OVER'})")
    print("\n(max rel = max |err| / max(|exact|, 1e-3 x max |exact|). dL/L = the largest over the clips of\n"
          " |L(pred, decoded) - L(pred, exact)| / L(pred, exact). WebDataset compresses with gzip where Zarr uses zstd.)")
    print(f"total bench time {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--clips", type=int, default=2, help="clips per shard (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="where shards go (default: a temporary dir)")
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error("--clips must be >= 1")
    workdir = Path(tempfile.mkdtemp(prefix="p4d-bench-fidelity-", dir=args.workdir))
    try:
        run(workdir, args.clips)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
