"""Bytes per clip on disk, per field and in total, per shard format; and write seconds per clip
beside the raw write rate of the same bytes on the same disk.

    .venv/bin/python bench/storage.py [--clips 3] [--repeats 3] [--workdir DIR]

What is written: full L4P output shapes per 16-frame clip (latents 4 x 2048 x 1408; depth, dyn_mask
16 x 224 x 224; flow 2 x 16 x 224 x 224; camray 6 x 16 x 16 x 16) plus the student frames
(16 x 224 x 224 x 3 uint8) and timestamps, one shard of --clips clips per (storage variant, format,
latent source), through shards.formats.open_writer exactly as the caching job's writer does.

The data is not easier than real data: the maps are the oracle teacher's exact ground truth on
synthetic scenes (320 x 240, 16 frames, decoded and resized by the job's own reader), and the
latents come from two sources:
  realistic  heavy-tailed tokens (Student-t, 5 dof, unit variance) with per-channel means and
             scales and a few outlier channels 10-50x larger, as real ViT features have. QUOTE THESE.
  oracle     the oracle teacher's latents: a random projection of ground-truth patches, smooth and
             structured by construction. Shown only so nobody quotes their compression by mistake.

Storage variants:
  default         shards.teacher_fields.default_storage() via pipeline.runner.field_specs (what the job writes)
  all compressed  every field zstd-3 in Zarr; in WebDataset every compressing codec becomes gzip-3
  all raw         every field uncompressed (same dtypes)

How to read it: "bytes per clip" are measured from the files (Zarr: each field's array directory in
the .zarr group; WebDataset: tar member sizes) divided by the clips in the shard; "overhead" is the
rest of the shard (metadata, tar headers and padding). "x raw" is the raw fp16/uint8 size (fp16 for
every teacher field, whatever its storage; side arrays of quantized fields counted with them) divided by
the stored size. Write seconds per clip include compression and the writer's fsync at commit (the
arrays are already in their storage dtype, i.e. the encode stage is not timed); the limit beside them
is np.save + fsync of the same uncompressed arrays, measured alternately in the same run (zarr, wds,
raw, zarr, wds, raw, ...); medians over --repeats.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.conditions import median, print_conditions  # noqa: E402
from pipeline.config import JobConfig, TeacherConfig  # noqa: E402
from pipeline.runner import field_specs  # noqa: E402
from pipeline.sampling import SamplingConfig  # noqa: E402
from pipeline.synthetic.dataset import SyntheticConfig, generate_dataset, scene_name  # noqa: E402
from pipeline.teachers.base import TeacherInput  # noqa: E402
from pipeline.teachers.oracle import OracleTeacher  # noqa: E402
from pipeline.video_reader import read_clip, resize_frames  # noqa: E402
from shards.codecs import SIDE_SEPARATOR, encode_arrays  # noqa: E402
from shards.formats import FORMATS, open_writer, shard_filename  # noqa: E402
from shards.integrity import array_checksum  # noqa: E402
from shards.schema import FieldSpec  # noqa: E402
from shards.teacher_fields import DENSE_MAPS, INPUT_SIZE, TEACHER_FIELDS  # noqa: E402

NUM_FRAMES = 16
SCENE_SIZE = (320, 240)  # width, height
LATENT_SOURCES = ("realistic", "oracle")
T_DOF = 5
OUTLIER_CHANNELS = 6
OUTLIER_SCALE = (10.0, 50.0)
MB = 1e6


def variants(specs: list[FieldSpec]) -> dict[str, list[FieldSpec]]:
    return {
        "default": specs,
        "all compressed": [replace(s, codec="zstd", level=3) for s in specs],
        "all raw": [replace(s, codec="none", level=0) for s in specs],
    }


def realistic_latents(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """[hooks, tokens, C] heavy-tailed tokens with a few large outlier channels (fixed across hooks,
    as ViTs' massive-activation channels are)."""
    hooks, tokens, dim = shape
    unit_t = np.sqrt((T_DOF - 2) / T_DOF)
    mean = rng.normal(0.0, 0.3, dim)
    scale = rng.lognormal(0.0, 0.3, dim)
    outliers = rng.choice(dim, OUTLIER_CHANNELS, replace=False)
    scale[outliers] *= np.exp(rng.uniform(*np.log(OUTLIER_SCALE), OUTLIER_CHANNELS))
    mean[outliers] *= scale[outliers]
    out = np.empty(shape, np.float32)
    for h in range(hooks):
        out[h] = mean + scale * (rng.standard_t(T_DOF, (tokens, dim)) * unit_t)
    return out


def smooth_field(shape: tuple[int, int, int], cells: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """[T, H, W] unit-scale random field, smooth in time and space: a coarse random grid upsampled
    trilinearly, as DPT heads upsample their coarse features."""
    import torch

    coarse = torch.from_numpy(rng.standard_normal(cells).astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def realistic_maps(num_frames: int, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A network-like depth / flow / dyn_mask / camray of one clip (float32), not easier than real:
    smooth backgrounds with moving objects (discontinuities), soft motion logits (what L4P's head
    gives), and per-pixel noise of 0.5 % (depth) / 0.02 px (flow) / 0.05 (logit) that leaves no low
    bit constant; camray unit directions.
    """
    shape = (num_frames, size, size)
    cells = (num_frames // 4 + 2, 9, 9)
    log_depth = 1.5 + 0.8 * smooth_field(shape, cells, rng)  # ~1-20 m
    flow = np.stack([3.0 * smooth_field(shape, cells, rng) for _ in range(2)])
    logit = np.full(shape, -8.0, np.float32)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(3):  # moving discs: nearer, moving, soft-edged in the mask
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        vx, vy = rng.uniform(-3, 3, 2)
        radius = rng.uniform(0.08, 0.2) * size
        dist = np.sqrt((xx - cx - vx * t) ** 2 + (yy - cy - vy * t) ** 2) - radius
        inside = dist < 0
        log_depth = np.where(inside, log_depth - rng.uniform(0.3, 1.0), log_depth)
        flow[0] = np.where(inside, -vx, flow[0])
        flow[1] = np.where(inside, -vy, flow[1])
        logit = np.maximum(logit, -dist / 1.5)
    depth = np.exp(log_depth) * (1 + 0.005 * rng.standard_normal(shape))
    flow = flow + 0.02 * rng.standard_normal(flow.shape)
    logit = logit + 0.05 * rng.standard_normal(shape)
    rays = rng.standard_normal((1, 3, 16, 16, 16))
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    moments = np.cross(rng.standard_normal((1, 16, 16, 16, 3)), rays.transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
    return {"depth": depth.astype(np.float32), "flow": flow.astype(np.float32),
            "dyn_mask": logit.astype(np.float32), "camray": np.concatenate([rays, moments], 1).astype(np.float32)}


def make_clips(data_dir: Path, num_clips: int, specs: list[FieldSpec]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Encoded clips (storage dtypes) per latent source; the maps are the same in both."""
    generate_dataset(data_dir, SyntheticConfig(num_scenes=num_clips, seed=0, num_frames=NUM_FRAMES,
                                               width=SCENE_SIZE[0], height=SCENE_SIZE[1]),
                     workers=min(num_clips, os.cpu_count() or 1))
    teacher = OracleTeacher(TeacherConfig(name="oracle"))
    latent_shape = next(s.shape for s in specs if s.name == "latents")
    rng = np.random.default_rng(0)
    clips: dict[str, list] = {source: [] for source in LATENT_SOURCES}
    for i in range(num_clips):
        clip = read_clip(data_dir / "videos" / f"{scene_name(i)}.mp4", SamplingConfig(num_frames=NUM_FRAMES))
        frames = resize_frames(clip.frames, INPUT_SIZE)
        out = teacher.predict([TeacherInput(clip.video_path, clip.frame_indices, clip.timestamps, frames)])[0]
        arrays = {"frames": frames, "timestamps": clip.timestamps, **out}
        clips["oracle"].append(encode_arrays(specs, arrays))
        arrays["latents"] = realistic_latents(latent_shape, rng)
        clips["realistic"].append(encode_arrays(specs, arrays))
    return clips


def write_shard(fmt: str, path: Path, specs: list[FieldSpec], clips: list[dict]) -> float:
    start = time.perf_counter()
    writer = open_writer(fmt, path, specs)
    for i, arrays in enumerate(clips):
        writer.add(f"clip{i:04d}", arrays)
    writer.commit()
    return time.perf_counter() - start


def write_raw(directory: Path, clips: list[dict]) -> float:
    """The physical limit: the same uncompressed arrays, np.save + fsync, one file per field."""
    start = time.perf_counter()
    directory.mkdir()
    for i, arrays in enumerate(clips):
        for name, array in arrays.items():
            with open(directory / f"clip{i:04d}.{name}.npy", "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def checksums(clips: list[dict]) -> float:
    """What packing a clip does besides serializing and compressing: sha256 its arrays."""
    start = time.perf_counter()
    for arrays in clips:
        for array in arrays.values():
            array_checksum(array)
    return time.perf_counter() - start


def field_bytes(fmt: str, path: Path, fields: list[str]) -> dict[str, int]:
    """Stored bytes per field read from the files (a quantized field's side arrays `<field>__<part>`
    counted with it), plus 'overhead' (everything else in the shard)."""
    out = dict.fromkeys(fields, 0)
    if fmt == "zarr":
        total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        for entry in path.iterdir():
            name = entry.name.split(SIDE_SEPARATOR)[0]
            if entry.is_dir() and name in out:
                out[name] += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
    else:
        total = path.stat().st_size
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                name = member.name.split(".")[1].split(SIDE_SEPARATOR)[0]
                if name in out:
                    out[name] += member.size
    out["overhead"] = total - sum(out[name] for name in fields)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--clips", type=int, default=3, help="synthetic scenes = clips per shard (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of every write (default 3)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where scenes and shards go (default: a temporary dir on /tmp, removed at the end)")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.repeats < 1:
        parser.error("--clips and --repeats must be >= 1")

    workdir = Path(tempfile.mkdtemp(prefix="p4d-bench-storage-", dir=args.workdir))
    try:
        run(workdir, args.clips, args.repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(workdir: Path, num_clips: int, repeats: int) -> None:
    print_conditions("bench/storage.py: bytes per clip on disk and write seconds per clip",
                     ["numpy", "zarr", "numcodecs", "webdataset", "torch", "decord"], workdir)
    job = JobConfig()
    shapes = OracleTeacher.identity(TeacherConfig(name="oracle"), NUM_FRAMES).shapes
    specs = field_specs(job, shapes, NUM_FRAMES)
    fields = [s.name for s in specs]
    print(f"sizes: {num_clips} clips per shard ({num_clips} synthetic scenes {SCENE_SIZE[0]}x{SCENE_SIZE[1]}, "
          f"{NUM_FRAMES} frames, oracle maps), {repeats} timed repetitions of every write")
    for s in specs:
        print(f"  {s.name:<10} {'x'.join(map(str, s.shape)):<15} {s.dtype:<8} default codec {s.codec}"
              + (f"-{s.level}" if s.codec != "none" else ""))
    teacher_raw = sum(fp16_bytes(s) for s in specs if s.name in TEACHER_FIELDS)
    clip_raw = sum(fp16_bytes(s) for s in specs)
    print(f"raw reference: teacher fields {teacher_raw / MB:.2f} MB/clip in fp16 "
          f"({teacher_raw / 2**20:.2f} MiB), all fields {clip_raw / MB:.2f} MB/clip; MB = 1e6 bytes")
    print(f"latents: 'realistic' = Student-t ({T_DOF} dof) tokens, per-channel mean/scale, "
          f"{OUTLIER_CHANNELS} outlier channels x{OUTLIER_SCALE[0]:g}-{OUTLIER_SCALE[1]:g}; "
          "'oracle' = the oracle's random projection of smooth ground truth (easy, NOT realistic)")

    t0 = time.perf_counter()
    clips = make_clips(workdir / "scenes", num_clips, specs)
    print(f"data prepared in {time.perf_counter() - t0:.1f} s")

    by_variant = variants(specs)
    sizes: dict[tuple, dict[str, int]] = {}
    seconds: dict[tuple, list[float]] = {}
    raw_seconds: dict[tuple, list[float]] = {}
    memory_seconds: dict[tuple, list[float]] = {}
    shard_no = 0
    for rep in range(repeats):
        for variant, vspecs in by_variant.items():
            for source in LATENT_SOURCES:
                for fmt in (*FORMATS, "raw", "memory"):
                    shard_no += 1
                    if fmt == "memory":
                        memory_seconds.setdefault((variant, source), []).append(checksums(clips[source]))
                        continue
                    if fmt == "raw":
                        target = workdir / f"raw-{shard_no}"
                        raw_seconds.setdefault((variant, source), []).append(write_raw(target, clips[source]))
                    else:
                        target = workdir / "shards" / shard_filename(fmt, f"s{shard_no}")
                        target.parent.mkdir(exist_ok=True)
                        took = write_shard(fmt, target, vspecs, clips[source])
                        seconds.setdefault((variant, source, fmt), []).append(took)
                        measured = field_bytes(fmt, target, fields)
                        previous = sizes.setdefault((variant, source, fmt), measured)
                        if previous != measured:
                            raise RuntimeError(f"{fmt} {variant} {source}: sizes differ between repetitions")
                    shutil.rmtree(target) if target.is_dir() else target.unlink()

    print_sizes(specs, sizes, num_clips, clip_raw)
    # The raw-write limit writes the encoded arrays (side arrays included): its rate is of those bytes.
    encoded_bytes = sum(a.nbytes for a in clips["realistic"][0].values())
    print_seconds(seconds, raw_seconds, memory_seconds, num_clips, encoded_bytes)
    print(f"total bench time {time.perf_counter() - t0:.1f} s")


def fp16_bytes(spec: FieldSpec) -> int:
    """The raw reference of a field: fp16 for the teacher's fields (whatever they are stored as),
    the stored dtype for frames and timestamps."""
    return spec.nbytes if spec.name not in TEACHER_FIELDS else int(np.prod(spec.shape)) * 2


def amount(nbytes: float) -> str:
    return f"{nbytes:.0f} B" if nbytes < 10_000 else f"{nbytes / MB:.3f}"


def cell(stored: float, raw: int) -> str:
    return f"{amount(stored):>14} ({raw / max(stored, 1):>5.2f}x)"


def print_sizes(specs: list[FieldSpec], sizes: dict, num_clips: int, clip_raw: int) -> None:
    columns = [(v, f) for v in ("default", "all compressed", "all raw") for f in FORMATS]
    print("\n-- stored MB per clip (from the files; B = bytes)  [x raw = raw size / stored size]")
    print(f"{'field':<22}{'raw':>9} |" + "".join(f"{(v + ' ' + f):>23}" for v, f in columns))
    raw = {s.name: fp16_bytes(s) for s in specs}
    rows = [(s.name, "realistic") for s in specs]
    rows.insert(rows.index(("latents", "realistic")) + 1, ("latents", "oracle"))
    for name, source in rows:
        label = f"{name} [{source}]" if name == "latents" else name
        cells = "".join(cell(sizes[(v, source, f)][name] / num_clips, raw[name]) for v, f in columns)
        print(f"{label:<22}{amount(raw[name]):>9} |{cells}")
    print(f"{'overhead':<22}{'':>9} |" + "".join(
        f"{amount(sizes[(v, 'realistic', f)]['overhead'] / num_clips):>23}" for v, f in columns))
    for source in LATENT_SOURCES:
        cells = "".join(cell(sum(sizes[(v, source, f)].values()) / num_clips, clip_raw) for v, f in columns)
        print(f"{'TOTAL [' + source + ']':<22}{amount(clip_raw):>9} |{cells}")
    # The maps are exact ground truth of simple scenes (dyn_mask two logits, +-10): their ratios are upper
    # bounds, so bracket the realistic total with the maps counted at their raw size.
    cells = "".join(cell(sum(sizes[(v, "realistic", f)].values()) / num_clips
                         + sum(raw[m] - sizes[(v, "realistic", f)][m] / num_clips for m in DENSE_MAPS), clip_raw)
                    for v, f in columns)
    print(f"{'TOTAL bound (maps raw)':<22}{amount(clip_raw):>9} |{cells}")
    print("(Zarr 'all compressed' = zstd-3; WebDataset stores every compressing codec as gzip, here gzip-3.\n"
          " Quote the [realistic] latents rows. The maps are the oracle's exact ground truth of simple synthetic\n"
          " scenes: dyn_mask holds two values (+-10), depth piecewise smooth, so their ratios are best cases; a\n"
          " network's outputs (soft logits, noisy low bits) compress less. 'TOTAL bound (maps raw)' = realistic\n"
          " latents with depth, flow and dyn_mask counted at their raw size: the worst case for real maps.)")


def print_seconds(seconds: dict, raw_seconds: dict, memory_seconds: dict, num_clips: int, clip_raw: int) -> None:
    print("\n-- write seconds per clip (median; writer add + commit incl. fsync) vs the limits on the same bytes:\n"
          "   raw = np.save + fsync of the uncompressed arrays; sha256 = the checksums packing computes")
    print(f"{'variant':<16}{'latents':<11}" + "".join(f"{f + ' s/clip':>13}" for f in FORMATS)
          + f"{'raw s/clip':>12}{'raw MB/s':>10}{'sha256':>13}" + "".join(f"{f + '/raw':>10}" for f in FORMATS))
    for (variant, source), raws in raw_seconds.items():
        raw = median(raws) / num_clips
        per_fmt = [median(seconds[(variant, source, f)]) / num_clips for f in FORMATS]
        memory = median(memory_seconds[(variant, source)]) / num_clips
        print(f"{variant:<16}{source:<11}" + "".join(f"{s:>13.3f}" for s in per_fmt)
              + f"{raw:>12.3f}{clip_raw / raw / MB:>10.0f}{memory:>13.3f}" + "".join(f"{s / raw:>10.1f}" for s in per_fmt))
    print(f"(raw = {clip_raw / MB:.2f} MB/clip of encoded arrays written as one .npy each; every value is the median of the "
          "repetitions;\n zarr, wds, raw, sha256 alternated within each repetition. s/raw = how far a format is "
          "from the disk.)")


if __name__ == "__main__":
    main()
