"""One command on one GPU: does the caching job keep up with full-size L4P, what does each clip cost the
CPUs, and what does a student step cost with cached targets against the teacher run in the step?

    .venv/bin/python bench/gpu_check.py [--clips 64] [--batch-size 4] [--steps 8] [--workdir DIR]
    .venv/bin/python bench/gpu_check.py --tiny      # the same code on CPU at tiny sizes (tests/test_gpu_check.py)

Sized to finish in well under 8 minutes on one H100 / H200 with 16 cores; it prints its table in
Markdown (the README's cluster section takes it, with the date) and writes it to WORKDIR/gpu_check.md.

1. teacher alone: L4P's full architecture (bench's FullRandomL4P: the `l4p` code, random seeded weights,
   bfloat16 on the GPU) predicting --clips clips (16 frames, decoded as the job decodes them) in
   batches of --batch-size, back to back, after a warm-up batch: clips/s, and the GPU memory peak.
   Its outputs also check the torch codecs where they run, on the GPU: every stored array of the
   first batch encoded there against numpy's encoding of the same values, bit for bit, and decoded
   back there against numpy's decode.
2. the job: pipeline.runner.run_job over the same --clips videos (real decord decode of 720p 10 s
   H.264 from bench/source_videos.py, one teacher actor on the GPU, the default storage, Zarr):
   end-to-end clips/s (clips / compute_wall), steady clips/s (after start-up), its ratio to the
   teacher alone, and the CPU core-seconds per clip per stage from its summary.json.
3. student step: a Qwen2.5-VL-7B-shaped student (hidden 3584, 28 heads / 4 KV heads, intermediate
   18944, vocabulary 152064, vision 1280 wide) cut to --student-layers LLM layers and 2 vision
   blocks, random, bfloat16, with the P4D branch at L4P's width and the recipe's D_m (the frozen L4P
   heads the job of 2 exported to its cache); AdamW on its trainable parameters.
   Batches of --student-batch clips of the job's cache, each step (median of --steps after a warm-up):
   "cached" = the batch moved to the GPU with its stored targets decoded there (StudentBatch.to, as
   the Trainer's step does) + forward + backward + optimizer step; "teacher online" = the same with
   the targets computed in the step by the teacher of 1 from the batch's frames, as the released
   4D-RGPT code does. Their difference is what caching saves per step; the GPU memory peak of each.
--tiny: L4P's tiny config on the CPU, 2 tiny videos, the tiny test student: every code path, no figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.conditions import median, print_conditions  # noqa: E402
from bench.source_videos import ensure_videos  # noqa: E402
from pipeline.config import JobConfig, OutputConfig, RayConfig, TeacherConfig  # noqa: E402
from pipeline.runner import field_specs, run_job  # noqa: E402
from pipeline.sampling import SamplingConfig  # noqa: E402
from pipeline.teachers.base import TeacherIdentity, TeacherInput, hash_id  # noqa: E402
from pipeline.teachers.l4p.config import FULL, TINY  # noqa: E402
from pipeline.teachers.l4p.model import L4PModel  # noqa: E402
from pipeline.teachers.l4p.teacher import L4PTeacher  # noqa: E402
from pipeline.timing import CLIP_STAGES  # noqa: E402
from shards.codecs import Encoded, decode_field, encode_field, stored_specs  # noqa: E402
from shards.teacher_fields import CLIP_FIELDS, INPUT_SIZE, teacher_shapes  # noqa: E402
from shards.torch_codecs import decode_tensor, encode_tensor  # noqa: E402

NUM_FRAMES = 16
# The job's teacher is run through run_job's teacher_class; its config needs a registered name.
CONFIG_NAME = "l4p-tiny"
QUESTION = [{"role": "user", "content": "<video>\nWhat moves, and where does it go?"},
            {"role": "assistant", "content": "A red disc, from left to right."}]


class FullRandomL4P(L4PTeacher):
    """L4P's full architecture with seeded random weights, built on its device (a 1 B model: no CPU
    init, no weight hash). Its id names the architecture and the seed only."""

    arch = FULL

    @classmethod
    def identity(cls, config: TeacherConfig, num_frames: int) -> TeacherIdentity:
        return TeacherIdentity(hash_id("l4p-random", dataclasses.asdict(cls.arch), {"seed": config.seed}), INPUT_SIZE,
                               teacher_shapes(num_frames, len(cls.arch.hooks), cls.arch.embed_dim))

    @classmethod
    def _random_model(cls, config: TeacherConfig) -> L4PModel:
        torch.manual_seed(config.seed)
        with torch.device("cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"):
            return L4PModel(cls.arch)


class TinyRandomL4P(FullRandomL4P):
    arch = TINY


@dataclasses.dataclass(frozen=True)
class Sizes:
    clips: int
    video_size: tuple[int, int]  # width, height
    video_seconds: float
    batch_size: int
    steps: int
    student_batch: int
    student_layers: int
    tiny: bool


def gpu_peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decoded_inputs(videos: list[Path]) -> list[TeacherInput]:
    """The clips as the job's decode stage hands them to the teacher (decoded in threads: decord and
    torch release the GIL)."""
    from pipeline.video_reader import read_clip, resize_frames

    def decode(path: Path) -> TeacherInput:
        clip = read_clip(path, SamplingConfig(num_frames=NUM_FRAMES))
        return TeacherInput(str(path), clip.frame_indices, clip.timestamps, resize_frames(clip.frames, INPUT_SIZE))

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(decode, videos))


def teacher_alone(teacher, inputs: list[TeacherInput], batch_size: int, device: torch.device) -> dict:
    """clips/s of the teacher's predict on `inputs` back to back, after a warm-up batch (whose outputs
    come back too), and the GPU memory peak."""
    first = teacher.predict(inputs[:batch_size])
    reset_peak(device)
    start = time.perf_counter()
    for i in range(0, len(inputs), batch_size):
        teacher.predict(inputs[i:i + batch_size])
        synchronize(device)
    seconds = time.perf_counter() - start
    return {"clips_per_s": len(inputs) / seconds, "gpu_peak_gb": gpu_peak_gb(device), "first_outputs": first}


def codecs_where_the_teacher_is(outputs: list[dict], specs) -> dict:
    """Every stored array of the teacher's outputs encoded on its device vs numpy's encoding of the
    same values, and decoded back there vs numpy's decode: the names of those that differ."""
    differ = []
    checked = 0
    for output in outputs:
        for spec in specs:
            value = output[spec.name]
            ours, numpy = encode_tensor(spec, value), encode_field(spec, value.float().cpu().numpy())
            checked += 1
            differ += [f"encode {name}" for name in numpy if ours[name].tobytes() != np.ascontiguousarray(
                numpy[name]).tobytes()]
            stored = {s.name: torch.from_numpy(numpy[s.name].view(np.int16) if numpy[s.name].dtype == np.uint16
                                               else np.ascontiguousarray(numpy[s.name])).to(value.device)
                      for s in stored_specs([spec])}
            decoded = decode_tensor(spec, stored).cpu().numpy()
            if decoded.tobytes() != np.asarray(decode_field(spec, numpy), np.float32).tobytes():
                differ.append(f"decode {spec.name}")
    return {"checked": checked, "differ": sorted(set(differ))}


def the_job(videos: Path, out: Path, sizes: Sizes, teacher_class: type, device: torch.device) -> dict:
    teacher = TeacherConfig(name=CONFIG_NAME, dtype="bfloat16" if device.type == "cuda" else "float32",
                            num_gpus=1 if device.type == "cuda" else 0, batch_size=sizes.batch_size)
    config = JobConfig(videos=str(videos), out=str(out), sampling=SamplingConfig(num_frames=NUM_FRAMES),
                       teacher=teacher, output=OutputConfig(format="zarr"), ray=RayConfig(address="local"))
    summary = run_job(config, teacher_class)
    if summary["clips"]["ok"] != sizes.clips:
        raise RuntimeError(f"the job cached {summary['clips']} (failures {summary['failures_by_reason']})")
    seconds = summary["seconds"]
    return {"end_to_end": sizes.clips / seconds["compute_wall"],
            "steady": sizes.clips / (seconds["compute_wall"] - seconds["startup"]),
            "startup_s": seconds["startup"], "core": summary["core_seconds_per_clip"], "summary": summary}


def student_model(sizes: Sizes, model_dir: Path, heads: Path | None, device: torch.device):
    """The student of the check and its optimizer, on `device`. D_m: the recipe's, the frozen L4P heads
    the job exported to `heads`, or (None) the light decoders."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    from student.adapters import ADAPTER_CLASSES, build_adapter
    from student.config import BranchConfig, ModelConfig, StudentConfig
    from student.model import StudentModel

    hf_config = AutoConfig.from_pretrained(model_dir)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    branch = BranchConfig(latent_dim=TINY.embed_dim if sizes.tiny else FULL.embed_dim,
                          decoders="light" if heads is None else "teacher", teacher_heads=heads and str(heads))
    if not sizes.tiny:  # Qwen2.5-VL-7B's widths (its config.json), cut in depth; the tiny tokenizer's ids
        text = dict(hf_config.text_config.to_dict(), hidden_size=3584, intermediate_size=18944,
                    num_hidden_layers=sizes.student_layers, num_attention_heads=28, num_key_value_heads=4,
                    vocab_size=152064, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": [16, 24, 24]})
        vision = dict(hf_config.vision_config.to_dict(), depth=2, hidden_size=1280, intermediate_size=3420,
                      num_heads=16, out_hidden_size=3584, window_size=112, fullatt_block_indexes=[1])
        hf_config = Qwen2_5_VLConfig(**{**hf_config.to_dict(), "text_config": text, "vision_config": vision})
    config = StudentConfig(model=ModelConfig(adapter="qwen2_5_vl", path=str(model_dir),
                                             dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
                                             video_size=(56, 56) if sizes.tiny else (224, 224)),
                           branch=branch)
    torch.manual_seed(0)
    with torch.device(device):
        base = ADAPTER_CLASSES["qwen2_5_vl"].model_class(hf_config).to(dtype)
    adapter = build_adapter("qwen2_5_vl", hf_config, model_dir, config.model.video_size)
    model = StudentModel(config, base, adapter).to(device, dtype)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, optimizer


def student_groups(cache: Path, fields: tuple[str, ...], size: int) -> list[list[dict]]:
    """The cached clips as the loader's samples (stored targets), one question each, in groups of `size`."""
    from manifests.clips_table import current_clips, read_clips_table
    from shards.cache_reader import ClipReader

    reader = ClipReader(cache, (*CLIP_FIELDS, *fields), decode=False)
    samples = []
    for row in (r for r in current_clips(read_clips_table(cache)).values() if r["status"] == "ok"):
        arrays = reader.read(row)
        samples.append({"sample_id": row["clip_id"], "conversations": QUESTION, "images": [],
                        "frames": arrays.pop("frames"), "timestamps": arrays.pop("timestamps"),
                        "window_starts": row["window_starts"], "targets": arrays})
    return [samples[i:i + size] for i in range(0, len(samples) - size + 1, size)]


def student_steps(model, optimizer, tokenizer, groups: list[list[dict]], steps: int, device: torch.device,
                  teacher=None) -> dict:
    """Median seconds of a training step (after a warm-up step) and the GPU memory peak. The batch is
    collated beforehand (the loader's work); the step moves it to the device, where its stored targets
    are decoded, or (teacher given) replaces them by the teacher's outputs on its frames, computed in
    the step as the released code does."""
    from student.batch import collate

    fields = model.config.needed_fields()
    times, losses = [], []
    reset_peak(device)
    for k in range(steps + 1):
        group = groups[k % len(groups)]
        batch = collate(group, model.adapter, tokenizer, fields)
        synchronize(device)
        start = time.perf_counter()
        if teacher is not None:
            outputs = teacher.predict([TeacherInput(s["sample_id"], np.arange(len(s["frames"])), s["timestamps"],
                                                    s["frames"]) for s in group])
            batch.encoded_targets = {}
            batch.targets = {name: torch.stack([o[name] for o in outputs]).float() for name in fields}
        batch = batch.to(device)
        output = model(batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if k:
            times.append(time.perf_counter() - start)
        losses.append(output.loss.detach().item())
    return {"step_s": median(times), "gpu_peak_gb": gpu_peak_gb(device), "losses": losses}


def target_error(teacher, group: list[dict]) -> dict[str, tuple[float, float]]:
    """Per field, (max |cached target - the teacher's output on the same frames|, max |output|): the
    storage error, plus any difference between the job's teacher and this one (bfloat16 kernels of
    other batch sizes on a GPU)."""
    outputs = teacher.predict([TeacherInput(s["sample_id"], np.arange(len(s["frames"])), s["timestamps"], s["frames"])
                               for s in group])
    errors = {}
    for name in group[0]["targets"]:
        cached = [np.asarray(t.decode() if isinstance(t, Encoded) else t, np.float32)
                  for t in (s["targets"][name] for s in group)]
        online = [o[name].float().cpu().numpy() for o in outputs]
        errors[name] = (max(float(np.abs(c - o).max()) for c, o in zip(cached, online)),
                        max(float(np.abs(o).max()) for o in online))
    return errors


def check(workdir: Path, sizes: Sizes) -> dict:
    """Runs the three parts; each one that fails is reported with its error, the others still run."""
    from student.model import load_tokenizer
    from student.tiny import make_tiny_vlm

    device = torch.device("cuda" if torch.cuda.is_available() and not sizes.tiny else "cpu")
    teacher_class = TinyRandomL4P if sizes.tiny else FullRandomL4P
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                     "sizes": sizes, "errors": {}}
    videos = ensure_videos(workdir / "videos", sizes.clips, sizes.video_size, sizes.video_seconds)
    paths = sorted(videos.glob("*.mp4"))[:sizes.clips]
    inputs = decoded_inputs(paths)
    config = TeacherConfig(name=CONFIG_NAME, dtype="bfloat16" if device.type == "cuda" else "float32",
                           num_gpus=1 if device.type == "cuda" else 0, batch_size=sizes.batch_size)
    specs = [s for s in field_specs(JobConfig(), teacher_class.identity(config, NUM_FRAMES).shapes, NUM_FRAMES)
             if s.name not in CLIP_FIELDS]
    teacher = teacher_class(config)  # after the decodes and video writes: its CUDA context would not survive a fork

    def part(name: str, run):
        try:
            results[name] = run()
        except Exception as error:  # a check reports what failed and goes on
            results["errors"][name] = f"{type(error).__name__}: {error}"

    part("teacher", lambda: teacher_alone(teacher, inputs, sizes.batch_size, device))
    part("codecs", lambda: codecs_where_the_teacher_is(results["teacher"].pop("first_outputs"), specs))
    part("job", lambda: the_job(videos, workdir / "cache", sizes, teacher_class, device))

    def students():
        model_dir = make_tiny_vlm("qwen2_5_vl", workdir / "tiny-qwen2_5_vl")
        model, optimizer = student_model(sizes, model_dir, workdir / "cache" / "teacher", device)
        tokenizer = load_tokenizer(model_dir)
        groups = student_groups(workdir / "cache", model.config.needed_fields(), sizes.student_batch)
        cached = student_steps(model, optimizer, tokenizer, groups, sizes.steps, device)
        online = student_steps(model, optimizer, tokenizer, groups, sizes.steps, device, teacher)
        return {"cached": cached, "online": online, "decoders": model.config.branch.decoders,
                "target_error": target_error(teacher, groups[0])}

    part("student", students)
    return results


def peak(gb: float) -> str:
    return "no GPU" if np.isnan(gb) else f"GPU peak {gb:.1f} GB"


def table(results: dict) -> list[str]:
    """The check's figures as Markdown rows."""
    sizes = results["sizes"]
    rows = [f"bench/gpu_check.py on {results['device']}, {datetime.date.today().isoformat()}: {sizes.clips} clips of "
            f"{NUM_FRAMES} frames from {sizes.video_size[0]}x{sizes.video_size[1]} {sizes.video_seconds:g} s H.264, "
            f"teacher batch {sizes.batch_size}" + (" (--tiny: code paths only, no figure means anything)"
                                                   if sizes.tiny else ""),
            "", "| what | value |", "|------|-------|"]
    teacher, job, codecs = results.get("teacher"), results.get("job"), results.get("codecs")
    if teacher:
        rows.append(f"| teacher alone (L4P{' tiny' if sizes.tiny else ''}, random, "
                    f"{'bf16' if results['device'] != 'CPU' else 'fp32'}) | {teacher['clips_per_s']:.2f} clips/s, "
                    f"{peak(teacher['gpu_peak_gb'])} |")
    if codecs:
        verdict = "bit for bit" if not codecs["differ"] else "DIFFER: " + ", ".join(codecs["differ"])
        rows.append(f"| torch codecs where the teacher is vs numpy ({codecs['checked']} fields) | {verdict} |")
    if job:
        ratio = f"; steady / alone {job['steady'] / teacher['clips_per_s']:.2f}" if teacher else ""
        rows.append(f"| job end-to-end / steady | {job['end_to_end']:.2f} / {job['steady']:.2f} clips/s "
                    f"(start-up {job['startup_s']:.1f} s){ratio} |")
        for stage in CLIP_STAGES:
            rows.append(f"| CPU core-s per clip: {stage} | {job['core'][stage]:.4f} |")
    student = results.get("student")
    if student:
        for kind, label in (("cached", "cached targets"), ("online", "teacher online")):
            rows.append(f"| student step (D_m {student['decoders']}), {label} | {student[kind]['step_s']:.3f} s, "
                        f"{peak(student[kind]['gpu_peak_gb'])} |")
        errors = ", ".join(f"{k} {e:.3g} of {m:.3g}" for k, (e, m) in student["target_error"].items())
        rows.append(f"| max abs(cached target - teacher online), of max abs(target) | {errors} |")
    for name, error in results["errors"].items():
        rows.append(f"| {name} | FAILED: {error[:300]} |")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--clips", type=int, default=64, help="source videos, one clip each (default 64)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per teacher call (default 4)")
    parser.add_argument("--steps", type=int, default=8, help="timed student steps per kind (default 8)")
    parser.add_argument("--student-batch", type=int, default=2, help="clips per student batch (default 2)")
    parser.add_argument("--student-layers", type=int, default=2, help="LLM layers of the student (default 2)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: the code paths, for the tests")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="videos, cache and table (default: a new temporary directory, kept)")
    args = parser.parse_args(argv)
    if min(args.clips, args.batch_size, args.steps, args.student_batch, args.student_layers) < 1:
        parser.error("--clips, --batch-size, --steps, --student-batch and --student-layers must be >= 1")
    if args.tiny:
        sizes = Sizes(clips=2, video_size=(160, 120), video_seconds=1.0, batch_size=2, steps=1, student_batch=2,
                      student_layers=2, tiny=True)
    else:
        if not torch.cuda.is_available():
            parser.error("no GPU here: run it on a GPU node, or --tiny for the code paths on the CPU")
        sizes = Sizes(args.clips, (1280, 720), 10.0, args.batch_size, args.steps, args.student_batch,
                      args.student_layers, tiny=False)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="p4d-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print_conditions("bench/gpu_check.py: the caching job and a student step on one GPU",
                     ["torch", "ray", "decord", "zarr", "transformers"], workdir)
    started = time.perf_counter()
    results = check(workdir, sizes)
    rows = table(results)
    (workdir / "gpu_check.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"({time.perf_counter() - started:.0f} s; table in {workdir / 'gpu_check.md'})")
    return results


if __name__ == "__main__":
    main()
