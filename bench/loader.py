"""Student loader CPU ms and samples/s per worker at full L4P output shapes, per shard format, the path
of before (targets decoded to float32 in the worker, every sample reading its clip) beside the path of
now (targets as stored, decoded in the step; a worker keeps its last clips), and the raw read rate of
the same shard bytes from the same disk.

    .venv/bin/python bench/loader.py [--clips 8] [--samples 16] [--repeats 3] [--formats zarr,wds]
                                     [--cache-state auto|warm|cold|both] [--video-size 224] [--clip-cache 8]

The data: --clips synthetic scenes (16 frames, 320 x 240 H.264) cached by the real caching job
(pipeline.runner.run_job, oracle teacher at its default latent width 1408, the job's DEFAULT storage
config, default clips per shard) into data/bench/loader/cache-<format> (git-ignored), reused while its
clips manifest records the field specs the job writes today, rebuilt otherwise. Per clip: frames
16 x 224 x 224 x 3, latents 4 x 2048 x 1408, depth / dyn_mask 16 x 224 x 224, flow 2 x 16 x 224 x 224,
camray 1 x 6 x 16 x 16 x 16, timestamps; the stored dtype / encoding / codec of each field is printed
from the clips manifest's `fields`. Each scene has several questions, so several samples share a clip.

What is timed, per format, alternated in one run (raw, before, now, then the next format, then the
next repetition; medians over --repeats), on the first --samples samples of epoch 0's order
(StudentLoader.epoch_batches: mixture, shard groups, shuffle buffer, 1 rank), in batches of
--batch-size, every field the default student's losses need (latents + the four maps) plus frames and
timestamps, checksum-verified:
  raw     every byte of every shard file of the cache read with plain read() into a reused buffer
          (Zarr: all files under the .zarr directory; WebDataset: the .tar). The limit: clips in the
          cache / seconds, i.e. what a loader would reach if decoding, checking and collating were free.
  before  a worker's work as the loader did it before: shards.cache_reader.ClipReader decoding every
          field to float32 and keeping no clip, student.loader.build_sample, student.batch.collate
          (tokenizing, the tiny Qwen2.5-VL adapter's video preparation at --video-size, float32 targets).
  now     the loader's worker today (student/loader.py): the reader keeps --clip-cache clips and hands
          quantized fields as stored, collate stacks them as stored. "step decode" is the other half of
          it, StudentBatch.to(device), run in the trainer (here on the CPU; on a GPU node on the GPU).
CPU ms per sample = time.process_time of the pass / its samples (this process, 1 thread): what a
worker's core spends. Read amplification = clip reads (from shards) / distinct clips, over the pass
and over the whole of epoch 0 with 1 and 2 workers (a worker keeps its own clips; batches go to
workers round-robin).
"Per worker": this process runs as one DataLoader worker does: torch.set_num_threads(1) and
OMP_NUM_THREADS=1 (set before numpy loads).

Page cache: "warm" = the whole cache was read once before the pass (the cache is far smaller than RAM);
"cold" = `echo 3 > /proc/sys/vm/drop_caches` right before EACH timed pass (raw and loader alike; needs
root). Within a cold pass, samples of a clip read after its first one find it in the page cache, as in
a real epoch. --cache-state auto = both when drop_caches is writable, else warm.
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
    """One cache: its sample order, its batches, and the timed passes."""

    def __init__(self, fmt: str, cache: Path, model_dir: Path, samples: int, batch_size: int,
                 video_size: tuple[int, int], clip_cache: int):
        from transformers import AutoConfig

        from student.adapters import build_adapter
        from student.cache_index import load_cache_index
        from student.config import StudentConfig
        from student.loader import StudentLoader
        from student.model import load_tokenizer
        from student.train_config import DataConfig

        self.fmt, self.cache, self.clip_cache = fmt, cache, clip_cache
        self.fields = StudentConfig().needed_fields()
        self.index = load_cache_index(cache, needed=self.fields)
        self.adapter = build_adapter("qwen2_5_vl", AutoConfig.from_pretrained(model_dir), model_dir, video_size)
        self.tokenizer = load_tokenizer(model_dir)
        data = DataConfig(cache=str(cache), batch_size=batch_size, num_workers=0)
        self.epoch = StudentLoader(self.index, data, 0, 1, self.adapter, self.tokenizer, self.fields).epoch_batches(0)
        order = [i for b in self.epoch for i in b]
        if len(order) < samples:
            raise ValueError(f"{cache}: epoch 0 has {len(order)} samples in full batches, --samples asks {samples}")
        self.batches = [order[k:k + batch_size] for k in range(0, samples - samples % batch_size, batch_size)]
        self.samples = sum(len(b) for b in self.batches)
        self.files = shard_files(cache)
        self.clips = len({r.clip["cache_key"] for r in self.index.records if r.clip is not None})
        self.disk_bytes = sum(p.stat().st_size for p in self.files)

    def raw(self) -> dict:
        start = time.perf_counter()
        _, nbytes = raw_read_seconds(self.files)
        if nbytes != self.disk_bytes:
            raise RuntimeError(f"{self.cache}: read {nbytes} bytes, the shard files hold {self.disk_bytes}")
        return {"seconds": time.perf_counter() - start}

    def reader(self, now: bool):
        from shards.cache_reader import ClipReader

        return ClipReader(self.index.root, (*CLIP_FIELDS, *self.fields), decode=not now,
                          keep_clips=self.clip_cache if now else 0)

    def worker_pass(self, now: bool) -> dict:
        """The worker's work on the pass's batches (read, build, collate), then the step's decode."""
        from student.batch import collate
        from student.loader import build_sample

        wall, cpu = time.perf_counter(), time.process_time()
        reader = self.reader(now)
        batches = [collate([build_sample(self.index.records[i], reader, self.index.root) for i in batch],
                           self.adapter, self.tokenizer, self.fields) for batch in self.batches]
        result = {"seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "reads": reader.reads}
        cpu = time.process_time()
        for batch in batches:
            batch.to("cpu")
            if set(batch.targets) != set(self.fields):
                raise RuntimeError(f"batch holds {sorted(batch.targets)}, expected {self.fields}")
        result["decode_cpu"] = time.process_time() - cpu
        return result

    def epoch_amplification(self, keep: int, workers: int) -> float:
        """Clip reads over epoch 0 / distinct clips, with `workers` workers taking batches round-robin,
        each keeping its last `keep` clips."""
        from shards.cache_reader import ClipReader

        reads = 0
        for worker in range(workers):
            reader = ClipReader(self.index.root, (*CLIP_FIELDS, *self.fields), decode=False, keep_clips=keep)
            for batch in self.epoch[worker::workers]:
                for i in batch:
                    if self.index.records[i].clip is not None:
                        reader.read(self.index.records[i].clip)
            reads += reader.reads
        clips = {self.index.records[i].clip["cache_key"] for b in self.epoch for i in b
                 if self.index.records[i].clip is not None}
        return reads / len(clips)


def main(argv: list[str] | None = None) -> None:
    from student.train_config import DataConfig

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
    parser.add_argument("--clip-cache", type=int, default=DataConfig.clip_cache,
                        help=f"clips a worker keeps on the path of now (default: data.clip_cache, "
                             f"{DataConfig.clip_cache})")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if args.samples < args.batch_size or args.repeats < 1 or args.clips < 1 or args.clip_cache < 0:
        parser.error("--samples must be >= --batch-size, --repeats and --clips >= 1, --clip-cache >= 0")

    import torch

    torch.set_num_threads(1)
    print_conditions("bench/loader.py: student loader CPU ms and samples/s per worker, before and now, vs raw read",
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
                                (args.video_size, args.video_size), args.clip_cache)
        s = subjects[fmt]
        print(f"cache {fmt}: {cache} ({'reused' if reused else f'built by the caching job in {time.perf_counter() - t:.0f} s'}), "
              f"{s.clips} clips in {len({r.shard for r in s.index.records if r.shard})} shard(s), "
              f"{len(s.files)} files, {s.disk_bytes / MB:.1f} MB on disk = {s.disk_bytes / s.clips / MB:.2f} MB/clip; "
              f"{len(s.index.records)} samples; teacher {s.index.teacher_id}")
    first = subjects[formats[0]]
    print("storage (the job's default config, from the clips manifest `fields`):")
    for line in describe_specs(first.index.specs):
        print(f"  {line}")
    for fmt, s in subjects.items():
        if s.index.specs != first.index.specs:
            print(f"  ({fmt} stores differently: {describe_specs(s.index.specs)})")
    touched = len({first.index.records[i].clip["cache_key"] for b in first.batches for i in b})
    print(f"sizes: {first.samples} samples per pass ({touched} distinct clips), loader batches of {args.batch_size}, "
          f"student video {args.video_size}x{args.video_size}, fields read {(*CLIP_FIELDS, *first.fields)}; now keeps "
          f"{args.clip_cache} clips per worker; {args.repeats} repetitions alternated per state "
          f"({' -> '.join(f'{f}: raw, before, now' for f in formats)})")

    kinds = {"raw": lambda s: s.raw(), "before": lambda s: s.worker_pass(now=False),
             "now": lambda s: s.worker_pass(now=True)}
    results = {(st, fmt, kind): [] for st in states for fmt in formats for kind in kinds}
    for rep in range(args.repeats):
        for state in states:
            for fmt, s in subjects.items():
                for kind, fn in kinds.items():
                    if state == "cold":
                        drop_caches()
                    else:
                        s.raw()  # warm: every byte in the page cache before the pass
                    results[(state, fmt, kind)].append(fn(s))
            line = "  ".join(f"{fmt} " + " ".join(f"{kind} {results[(state, fmt, kind)][-1]['seconds']:.2f}s"
                                                 for kind in kinds) for fmt in formats)
            print(f"rep {rep + 1} {state:<4}  {line}", flush=True)

    print(f"\n-- per worker (1 thread), median of {args.repeats}; limit = raw read rate of the same cache (clips/s, "
          "each sample reads one clip)")
    print(f"{'state':<6}{'format':<7}{'path':<8}{'samples/s':>11}{'/ limit':>9}{'worker CPU':>12}{'step decode':>13}"
          f"{'reads /':>9}")
    print(f"{'':<21}{'':>11}{'':>9}{'ms/sample':>12}{'ms/sample':>13}{'clips':>9}")
    for state in states:
        for fmt, s in subjects.items():
            limit = median([s.clips / r["seconds"] for r in results[(state, fmt, "raw")]])
            print(f"{state:<6}{fmt:<7}{'raw':<8}{limit:>11.1f}{1:>9.3f}")
            for kind in ("before", "now"):
                runs = results[(state, fmt, kind)]
                rate = median([s.samples / r["seconds"] for r in runs])
                print(f"{state:<6}{fmt:<7}{kind:<8}{rate:>11.2f}{rate / limit:>9.3f}"
                      f"{median([r['cpu'] for r in runs]) / s.samples * 1e3:>12.1f}"
                      f"{median([r['decode_cpu'] for r in runs]) / s.samples * 1e3:>13.1f}"
                      f"{median([r['reads'] for r in runs]) / touched:>9.2f}")
    print("(worker CPU: time.process_time of reading, building and collating the pass / its samples; step decode: "
          "to(device) on this CPU\n (before: nothing left to decode; a GPU node decodes there); reads / clips: "
          "clip reads from shards / distinct clips of the pass.)")

    keeps = sorted({0, 1, 2, 4, args.clip_cache})
    print(f"\n-- read amplification over epoch 0 (clip reads / distinct clips; {len(first.epoch)} batches of "
          f"{args.batch_size}, 1 rank), by the clips a worker keeps (0: before; {args.clip_cache}: now)")
    print(f"{'format':<8}{'workers':>8}" + "".join(f"{f'keep {k}':>10}" for k in keeps))
    for fmt, s in subjects.items():
        for workers in (1, 2):
            print(f"{fmt:<8}{workers:>8}" + "".join(f"{s.epoch_amplification(k, workers):>10.2f}" for k in keeps))


if __name__ == "__main__":
    main()
