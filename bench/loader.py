"""Student loader samples/s per worker at full L4P output shapes, per shard format, beside the raw
read rate of the same shard bytes from the same disk.

    .venv/bin/python bench/loader.py [--clips 8] [--samples 16] [--repeats 3] [--formats zarr,wds]
                                     [--cache-state auto|warm|cold|both] [--video-size 224]

The data: --clips synthetic scenes (16 frames, 320 x 240 H.264) cached by the real caching job
(pipeline.runner.run_job, oracle teacher at its default latent width 1408, the job's DEFAULT storage
config, default clips per shard) into data/bench/loader/cache-<format> (git-ignored), reused while its
clips manifest records the field specs the job writes today, rebuilt otherwise. Per clip: frames
16 x 224 x 224 x 3, latents 4 x 2048 x 1408, depth / dyn_mask 16 x 224 x 224, flow 2 x 16 x 224 x 224,
camray 1 x 6 x 16 x 16 x 16, timestamps; the stored dtype / encoding / codec of each field is printed
from the clips manifest's `fields`.

What is timed, per format, alternated in one run (raw, read+decode, loader, then the next format, then
the next repetition; medians over --repeats):
  raw          every byte of every shard file of the cache read with plain read() into a reused
               buffer (Zarr: all files under the .zarr directory; WebDataset: the .tar). The limit:
               rate = clips in the cache / seconds, i.e. what a loader would reach if decoding, checking
               and collating were free. Each sample of the loader reads one whole clip, so the limit in
               samples/s is the same number.
  read+decode  shards.cache_reader.ClipReader + student.loader.build_sample over the first --samples samples of epoch 0's
               order (StudentLoader.epoch_batches: mixture, shard groups, shuffle buffer, 1 rank),
               every field the default student's losses need (latents + the four maps) plus frames and
               timestamps, decoded to float32 and checksum-verified, as a loader worker does. A fresh
               ClipReader per pass (a WebDataset shard is indexed once per pass).
  loader       student.loader.StudentLoader(num_workers=0), the same samples in batches of
               --batch-size: read+decode + collate (tokenizing, the tiny Qwen2.5-VL adapter's video
               preparation at --video-size, stacking targets into float32 tensors).
"Per worker": this process runs as one DataLoader worker does: torch.set_num_threads(1) and
OMP_NUM_THREADS=1 (set before numpy loads). num_workers=0 puts the worker's work on the timed path.

Page cache: "warm" = the whole cache was read once before the pass (the cache is far smaller than RAM);
"cold" = `echo 3 > /proc/sys/vm/drop_caches` right before EACH timed pass (raw and loader alike; needs
root). Within a cold loader pass, samples of a clip read after its first one find it in the page cache,
as in a real epoch. --cache-state auto = both when drop_caches is writable, else warm.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# One loader worker's threads (DataLoader sets torch threads to 1 in its workers); before numpy loads.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.caches import BENCH_DATA, describe_specs, ensure_cache  # noqa: E402
from bench.conditions import median, print_conditions  # noqa: E402
from shards.teacher_fields import CLIP_FIELDS  # noqa: E402

SCENE_SIZE = (320, 240)
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
READ_BLOCK = 8 << 20
MB = 1e6


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def can_drop_caches() -> str | None:
    """None if the page cache can be dropped here, else why not."""
    try:
        drop_caches()
    except OSError as e:
        return f"{DROP_CACHES}: {e.strerror or e}"
    return None


def shard_files(cache: Path) -> list[Path]:
    shards = cache / "shards"
    return sorted(p for p in shards.rglob("*") if p.is_file())


def raw_read_seconds(files: list[Path]) -> tuple[float, int]:
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return time.perf_counter() - start, total


class Subject:
    """One cache: its sample order, its loader, and the three timed passes."""

    def __init__(self, fmt: str, cache: Path, model_dir: Path, samples: int, batch_size: int,
                 video_size: tuple[int, int]):
        from transformers import AutoConfig

        from student.adapters import build_adapter
        from student.cache_index import load_cache_index
        from student.config import StudentConfig
        from student.model import load_tokenizer
        from student.train_config import DataConfig

        self.fmt, self.cache = fmt, cache
        student = StudentConfig()
        self.fields = student.needed_fields()
        self.index = load_cache_index(cache, needed=self.fields)
        self.data = DataConfig(cache=str(cache), batch_size=batch_size, num_workers=0)
        self.adapter = build_adapter("qwen2_5_vl", AutoConfig.from_pretrained(model_dir), model_dir, video_size)
        self.tokenizer = load_tokenizer(model_dir)
        order = [i for b in self.loader().epoch_batches(0) for i in b]
        if len(order) < samples:
            raise ValueError(f"{cache}: epoch 0 has {len(order)} samples in full batches, --samples asks {samples}")
        self.order = order[:samples]
        self.batches = samples // batch_size
        self.files = shard_files(cache)
        self.clips = len({r.clip["cache_key"] for r in self.index.records if r.clip is not None})
        self.disk_bytes = sum(p.stat().st_size for p in self.files)

    def loader(self):
        from student.loader import StudentLoader

        return StudentLoader(self.index, self.data, 0, 1, self.adapter, self.tokenizer, self.fields)

    def raw(self) -> float:
        seconds, nbytes = raw_read_seconds(self.files)
        if nbytes != self.disk_bytes:
            raise RuntimeError(f"{self.cache}: read {nbytes} bytes, the shard files hold {self.disk_bytes}")
        return seconds

    def read_decode(self) -> float:
        from shards.cache_reader import ClipReader
        from student.loader import build_sample

        start = time.perf_counter()
        reader = ClipReader(self.index.root, (*CLIP_FIELDS, *self.fields))
        for i in self.order:
            sample = build_sample(self.index.records[i], reader, self.index.root)
            if set(sample["targets"]) != set(self.fields):
                raise RuntimeError(f"read {sorted(sample['targets'])}, expected {self.fields}")
        return time.perf_counter() - start

    def full_loader(self) -> float:
        start = time.perf_counter()
        stream = iter(self.loader())
        for _ in range(self.batches):
            batch = next(stream)
            if set(batch.targets) != set(self.fields):
                raise RuntimeError(f"batch holds {sorted(batch.targets)}, expected {self.fields}")
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips cached (default 8)")
    parser.add_argument("--samples", type=int, default=16,
                        help="samples per timed pass, the first of epoch 0's order (default 16)")
    parser.add_argument("--batch-size", type=int, default=2, help="loader batch size (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated repetitions (default 3)")
    parser.add_argument("--formats", default="zarr,wds", help="comma-separated shard formats (default zarr,wds)")
    parser.add_argument("--cache-state", default="auto", choices=("auto", "warm", "cold", "both"),
                        help="page-cache condition (default auto: both if drop_caches is writable, else warm)")
    parser.add_argument("--video-size", type=int, default=224,
                        help="the student's video side for collate (default 224, ModelConfig's default)")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if args.samples < args.batch_size or args.repeats < 1 or args.clips < 1:
        parser.error("--samples must be >= --batch-size, --repeats and --clips >= 1")

    import torch

    torch.set_num_threads(1)
    print_conditions("bench/loader.py: student loader samples/s per worker vs raw read of the same bytes",
                     ["torch", "numpy", "zarr", "numcodecs", "webdataset", "transformers"], BENCH_DATA)
    why_not = can_drop_caches() if args.cache_state in ("auto", "cold", "both") else None
    if args.cache_state == "auto":
        states = ["warm"] if why_not else ["warm", "cold"]
    elif args.cache_state == "both":
        states = ["warm", "cold"]
    else:
        states = [args.cache_state]
    if "cold" in states and why_not:
        parser.error(f"cold page cache needs a writable drop_caches: {why_not}")
    print(f"page cache: {', '.join(states)}" + (f" (cold not available: {why_not})" if why_not else "")
          + f"; torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")

    from student.tiny import make_tiny_vlm

    model_dir = BENCH_DATA / "tiny-qwen2_5_vl"
    if not (model_dir / "config.json").exists():
        make_tiny_vlm("qwen2_5_vl", model_dir)
    subjects = {}
    for fmt in formats:
        t = time.perf_counter()
        cache, reused = ensure_cache("loader", "oracle", fmt, args.clips, SCENE_SIZE)
        subjects[fmt] = Subject(fmt, cache, model_dir, args.samples, args.batch_size,
                                (args.video_size, args.video_size))
        s = subjects[fmt]
        print(f"cache {fmt}: {cache} ({'reused' if reused else f'built by the caching job in {time.perf_counter() - t:.0f} s'}), "
              f"{s.clips} clips in {len({r.shard for r in s.index.records if r.shard})} shard(s), "
              f"{len(s.files)} files, {s.disk_bytes / MB:.1f} MB on disk = {s.disk_bytes / s.clips / MB:.2f} MB/clip; "
              f"{len(s.index.records)} samples; teacher {s.index.teacher_id}")
    first = subjects[formats[0]]
    print("storage (the job's default config, from the clips manifest `fields`; readers return float32 "
          "for quantized fields):")
    for line in describe_specs(first.index.specs):
        print(f"  {line}")
    for fmt, s in subjects.items():
        if s.index.specs != first.index.specs:
            print(f"  ({fmt} stores differently: {describe_specs(s.index.specs)})")
    clips_touched = len({first.index.records[i].clip["cache_key"] for i in first.order})
    print(f"sizes: {args.samples} samples per pass (epoch 0 order: {clips_touched} distinct clips, each sample reads "
          f"and decodes its clip whole), loader batches of {args.batch_size}, student video {args.video_size}x{args.video_size}, "
          f"fields read {(*CLIP_FIELDS, *first.fields)}; {args.repeats} repetitions alternated per state "
          f"({' -> '.join(f'{f}: raw, read+decode, loader' for f in formats)})")

    results = {(st, fmt, kind): [] for st in states for fmt in formats for kind in ("raw", "decode", "loader")}
    for rep in range(args.repeats):
        for state in states:
            for fmt, s in subjects.items():
                for kind, fn in (("raw", s.raw), ("decode", s.read_decode), ("loader", s.full_loader)):
                    if state == "cold":
                        drop_caches()
                    else:
                        s.raw()  # warm: every byte in the page cache before the pass
                    results[(state, fmt, kind)].append(fn())
            line = "  ".join(
                f"{fmt} raw {results[(state, fmt, 'raw')][-1]:.3f}s decode {results[(state, fmt, 'decode')][-1]:.2f}s "
                f"loader {results[(state, fmt, 'loader')][-1]:.2f}s" for fmt in formats)
            print(f"rep {rep + 1} {state:<4}  {line}", flush=True)

    print(f"\n-- per worker (1 thread), median of {args.repeats}; ratio = stage rate / raw read rate of the "
          "same cache, per repetition, then median")
    print(f"{'state':<6}{'format':<7}{'raw MB/s':>10}{'raw clips/s':>13}{'read+decode':>13}{'ratio':>8}"
          f"{'loader':>10}{'ratio':>8}{'decode s/sample':>17}{'collate s/sample':>18}")
    print(f"{'':<6}{'':<7}{'':>10}{'(= limit)':>13}{'samples/s':>13}{'':>8}{'samples/s':>10}")
    for state in states:
        for fmt, s in subjects.items():
            raw = results[(state, fmt, "raw")]
            dec = results[(state, fmt, "decode")]
            full = results[(state, fmt, "loader")]
            loader_samples = s.batches * args.batch_size
            raw_rate = [s.clips / t for t in raw]
            dec_rate = [len(s.order) / t for t in dec]
            full_rate = [loader_samples / t for t in full]
            print(f"{state:<6}{fmt:<7}{median([s.disk_bytes / t / MB for t in raw]):>10.0f}"
                  f"{median(raw_rate):>13.1f}{median(dec_rate):>13.2f}"
                  f"{median([d / r for d, r in zip(dec_rate, raw_rate)]):>8.3f}"
                  f"{median(full_rate):>10.2f}{median([f / r for f, r in zip(full_rate, raw_rate)]):>8.3f}"
                  f"{median(dec) / len(s.order):>17.3f}"
                  f"{(median(full) / loader_samples - median(dec) / len(s.order)):>18.3f}")
    print("(raw clips/s: the shard files' bytes / the time to read them with read(), per clip stored: each sample "
          "reads one\n clip, so it is the samples/s limit of a loader that did nothing else; collate s/sample = "
          "loader - read+decode medians.)")


if __name__ == "__main__":
    main()
