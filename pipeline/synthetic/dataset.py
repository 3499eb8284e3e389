"""Generate the synthetic 4D data set: videos, ground-truth sidecars, questions, a description.

    python -m pipeline.synthetic.dataset --out DIR --scenes N --seed S \
        [--frames 32 --fps 10 --width 320 --height 240 --split train --workers CPUS]

writes
    DIR/videos/scene_0000.mp4      H.264 (libx264, yuv420p), N frames at fps, frame i at i / fps
    DIR/videos/scene_0000.gt.npz   its exact ground truth (pipeline.synthetic.ground_truth)
    DIR/samples.parquet            the questions, manifests.schemas.SAMPLES_SCHEMA
    DIR/region_truth.parquet       per (video, frame, object) ground truth for the 4D probes
                                   (manifests/region_truth.py)
    DIR/scenes.json                seed, resolution, fps, frame count and the scene list
Scene i is drawn from SeedSequence([seed, i]): the same command writes the same ground truth, rows and
(x264 in one thread being deterministic) the same video bytes, whatever the number of workers.
"""
from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schemas import SAMPLES_SCHEMA
from pipeline.synthetic.ground_truth import SceneGroundTruth, save_ground_truth, sidecar_path
from pipeline.synthetic.questions import scene_samples
from pipeline.synthetic.region_truth import write_region_truth
from pipeline.synthetic.render import render
from pipeline.synthetic.scene import Scene, sample_scene
from shards.local_path import local_path

VIDEO_DIR = "videos"
CRF = 17


@dataclass(frozen=True)
class SyntheticConfig:
    num_scenes: int
    seed: int = 0
    num_frames: int = 32
    fps: float = 10.0
    width: int = 320
    height: int = 240
    split: str = "train"

    def __post_init__(self):
        if self.num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {self.num_scenes}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ValueError(f"yuv420p needs even width and height >= 16, got {self.width}x{self.height}")
        video_rate(self.fps)


def video_rate(fps: float) -> Fraction:
    """The container frame rate; refuses rates whose frame times would drift from i / fps."""
    rate = Fraction(fps).limit_denominator(1001)
    if fps <= 0 or abs(float(rate) - fps) > 1e-9 * fps:
        raise ValueError(f"fps {fps} is not a positive rational with denominator <= 1001")
    return rate


def write_video(path: Path, rgb: np.ndarray, fps: float) -> None:
    """rgb [N, H, W, 3] uint8 -> H.264 mp4, frame i stamped i / fps."""
    rate = video_rate(fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = rgb.shape[2], rgb.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = 1 / rate
        # The video's bytes are part of every cache key, so they must not vary. One encoder thread:
        # multi-threaded x264 output depends on scheduling. cpu-independent: on an AVX-512 machine
        # (seen here, PyAV 18.1's x264 core 165) the same frames encoded twice in one process gave
        # different bytes; with x264's CPU-independent algorithms they are identical, on any CPU.
        stream.options = {"crf": str(CRF), "x264-params": "cpu-independent=1"}
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(rgb):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def scene_name(index: int) -> str:
    return f"scene_{index:04d}"


def _seeds(config: SyntheticConfig, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(scene seed, question seed) of scene `index`."""
    scene_seed, question_seed = np.random.SeedSequence([config.seed, index]).spawn(2)
    return scene_seed, question_seed


def make_scene(config: SyntheticConfig, index: int) -> Scene:
    """The scene description behind scene `index` of the data set `config` describes."""
    return sample_scene(_seeds(config, index)[0], (config.height, config.width), config.num_frames, config.fps)


def write_scene(out_dir: Path, scene: Scene, index: int) -> tuple[str, str, SceneGroundTruth]:
    """Render `scene` and write it as scene `index` (video + ground-truth sidecar):
    (its name, its video path relative to out_dir, its ground truth)."""
    rgb, ground_truth = render(scene)
    name = scene_name(index)
    video = f"{VIDEO_DIR}/{name}.mp4"
    write_video(out_dir / video, rgb, scene.fps)
    save_ground_truth(ground_truth, out_dir / video)
    return name, video, ground_truth


def scene_entry(name: str, video: str, ground_truth: SceneGroundTruth, rows: list[dict]) -> dict:
    """A scene's entry in the description file."""
    return {
        "scene": name,
        "video": video,
        "ground_truth": sidecar_path(video).as_posix(),
        "objects": [str(label) for label in ground_truth.object_labels],
        "moving": [bool(m) for m in ground_truth.object_moving],
        "questions": len(rows),
    }


def generate_scene(out_dir: Path, config: SyntheticConfig, index: int) -> tuple[dict, list[dict]]:
    """Render, encode and describe scene `index`: (its scenes.json entry, its sample rows)."""
    name, video, ground_truth = write_scene(out_dir, make_scene(config, index), index)
    rows = scene_samples(ground_truth, name, video, config.split, np.random.default_rng(_seeds(config, index)[1]))
    return scene_entry(name, video, ground_truth, rows), rows


SceneGenerator = Callable[[Path, SyntheticConfig, int], tuple[dict, list[dict]]]


def generate_scenes(out_dir: Path, config: SyntheticConfig, generate: SceneGenerator,
                    workers: int) -> tuple[list[dict], list[dict]]:
    """generate(out_dir, config, i) for every scene i, in `workers` processes (generate must be a
    module-level function), then out_dir/samples.parquet and the probes' out_dir/region_truth.parquet:
    (scene entries, sample rows)."""
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    indices = range(config.num_scenes)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(generate, [out_dir] * len(indices), [config] * len(indices), indices))
    else:
        results = [generate(out_dir, config, index) for index in indices]
    rows = [row for _, scene_rows in results for row in scene_rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), out_dir / "samples.parquet")
    write_region_truth(out_dir, VIDEO_DIR)
    return [entry for entry, _ in results], rows


def generate_dataset(out_dir: str | Path, config: SyntheticConfig, workers: int = 1) -> dict:
    """Write the whole data set under out_dir; returns the scenes.json content."""
    out_dir = Path(out_dir)
    entries, rows = generate_scenes(out_dir, config, generate_scene, workers)
    description = {
        "dataset": "synthetic",
        "config": asdict(config),
        "samples": "samples.parquet",
        "num_samples": len(rows),
        "scenes": entries,
    }
    (out_dir / "scenes.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def add_scene_arguments(parser: argparse.ArgumentParser, defaults: SyntheticConfig) -> None:
    """The options the data set's and the benchmark's commands share, with their own defaults."""
    parser.add_argument("--out", type=local_path, required=True)
    parser.add_argument("--scenes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--frames", type=int, default=defaults.num_frames)
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="scenes rendered in parallel")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_arguments(parser, SyntheticConfig(num_scenes=1))
    parser.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    config = SyntheticConfig(
        num_scenes=args.scenes, seed=args.seed, num_frames=args.frames, fps=args.fps,
        width=args.width, height=args.height, split=args.split,
    )
    description = generate_dataset(args.out, config, workers=args.workers)
    for entry in description["scenes"]:
        print(f"{args.out / entry['video']}  {entry['questions']} questions  objects: {', '.join(entry['objects'])}")
    print(
        f"wrote {len(description['scenes'])} scenes ({config.num_frames} frames, {config.width}x{config.height}, "
        f"{config.fps:g} fps, seed {config.seed}) and {description['num_samples']} samples to "
        f"{args.out / 'samples.parquet'}; description in {args.out / 'scenes.json'}"
    )


if __name__ == "__main__":
    main()
