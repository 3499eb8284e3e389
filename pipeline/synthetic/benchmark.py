"""Generate the synthetic region-level 4D benchmark: held-out scenes, R4D-category multiple choice.

    python -m pipeline.synthetic.benchmark --out DIR --scenes N [--seed 1000000] \
        [--frames 16 --fps 5 --width 320 --height 240 --workers CPUS]

writes
    DIR/videos/scene_0000.mp4      H.264, as dataset.py writes them (dataset.write_video)
    DIR/videos/scene_0000.gt.npz   its exact ground truth: what the oracle teacher reads
    DIR/samples.parquet            the questions (benchmark_questions.py), SAMPLES_SCHEMA rows of dataset
                                   "synthetic4d", split "test"; meta "category" is the R4D column code
    DIR/region_truth.parquet       per (video, frame, object) ground truth for the 4D probes
    DIR/benchmark.json             config, seed rule, questions per category and group, per-scene entries
Every R4D category is asked (benchmark_questions.py says how each question is built and kept decidable);
R about the camera's turn, because objects never rotate in the generator.
16 frames by default, as R4D-Bench samples its videos; 5 fps so that objects travel far enough in them.

Seeds never used for training: benchmark scene i of seed S is drawn from
SeedSequence([S, i], spawn_key=(SEED_DOMAIN,)) (then split into a scene and a question seed by spawn(2),
like dataset.py), while the training set's scene j of seed s comes from SeedSequence([s, j]). NumPy
pads an entropy to 4 words before appending a spawn key, so the benchmark's assembled entropy is
[S, i, 0, 0, SEED_DOMAIN, ...] and the training set's [s, j, 0, 0, ...]: equal only for a training
scene index j >= 2**64. So no benchmark scene is a training scene whatever seed either side uses, and
the default seed 1_000_000 keeps benchmark seeds apart from the training ones by eye as well.
Benchmark scenes also use sample_scene(static_probability=STATIC_PROBABILITY), more static objects than
the training rule, for false-premise and counting questions.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.synthetic.benchmark_questions import (
    COVERED_CATEGORIES, DYNAMIC_CATEGORIES, STATIC_CATEGORIES, benchmark_samples,
)
from pipeline.synthetic.dataset import (
    SyntheticConfig, add_scene_arguments, generate_scenes, scene_entry, write_scene,
)
from pipeline.synthetic.scene import Scene, sample_scene

DATASET = "synthetic4d"
SPLIT = "test"
DEFAULT_SEED = 1_000_000
SEED_DOMAIN = 0x4D42  # "4D" "B"(enchmark): any non-zero word separates the two seed spaces
STATIC_PROBABILITY = 0.35


def benchmark_config(num_scenes: int, seed: int = DEFAULT_SEED, num_frames: int = 16, fps: float = 5.0,
                     width: int = 320, height: int = 240) -> SyntheticConfig:
    """The benchmark's generation settings (dataset.py's config type and checks, split "test")."""
    return SyntheticConfig(num_scenes=num_scenes, seed=seed, num_frames=num_frames, fps=fps, width=width,
                           height=height, split=SPLIT)


def scene_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(scene seed, question seed) of benchmark scene `index`: the module docstring's rule."""
    scene_seed, question_seed = np.random.SeedSequence([seed, index], spawn_key=(SEED_DOMAIN,)).spawn(2)
    return scene_seed, question_seed


def make_scene(config: SyntheticConfig, index: int) -> Scene:
    return sample_scene(scene_seeds(config.seed, index)[0], (config.height, config.width), config.num_frames,
                        config.fps, static_probability=STATIC_PROBABILITY)


def generate_scene(out_dir: Path, config: SyntheticConfig, index: int) -> tuple[dict, list[dict]]:
    """Render, encode and ask about benchmark scene `index`: (its benchmark.json entry, its rows)."""
    name, video, ground_truth = write_scene(out_dir, make_scene(config, index), index)
    rng = np.random.default_rng(scene_seeds(config.seed, index)[1])
    rows = benchmark_samples(ground_truth, name, video, DATASET, config.split, config.seed, index, rng)
    return scene_entry(name, video, ground_truth, rows), rows


def generate_benchmark(out_dir: str | Path, config: SyntheticConfig, workers: int = 1) -> dict:
    """Write the whole benchmark under out_dir; returns the benchmark.json content."""
    out_dir = Path(out_dir)
    entries, rows = generate_scenes(out_dir, config, generate_scene, workers)
    metas = [json.loads(row["meta"]) for row in rows]
    by_category = Counter(meta["category"] for meta in metas)
    description = {
        "dataset": DATASET,
        "split": config.split,
        "config": asdict(config),
        "seeds": {
            "rule": "scene i: numpy SeedSequence([seed, i], spawn_key=(seed_domain,)).spawn(2) -> (scene, questions)",
            "seed": config.seed,
            "seed_domain": SEED_DOMAIN,
            "scene_indices": [0, config.num_scenes - 1],
            "static_probability": STATIC_PROBABILITY,
        },
        "samples": "samples.parquet",
        "num_samples": len(rows),
        "categories": {c: by_category[c] for c in (*STATIC_CATEGORIES, *DYNAMIC_CATEGORIES)},
        "not_covered": sorted(set(STATIC_CATEGORIES + DYNAMIC_CATEGORIES) - set(COVERED_CATEGORIES)),
        "groups": dict(sorted(Counter(meta["group"] for meta in metas).items())),
        "types": dict(sorted(Counter(f"{meta['category']}/{meta['type']}" for meta in metas).items())),
        "scenes": entries,
    }
    (out_dir / "benchmark.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_arguments(parser, benchmark_config(num_scenes=1))
    args = parser.parse_args(argv)
    config = benchmark_config(args.scenes, args.seed, args.frames, args.fps, args.width, args.height)
    description = generate_benchmark(args.out, config, workers=args.workers)
    counts = ", ".join(f"{c} {n}" for c, n in description["categories"].items())
    print(
        f"wrote {config.num_scenes} benchmark scenes ({config.num_frames} frames, {config.width}x{config.height}, "
        f"{config.fps:g} fps, seed {config.seed}) and {description['num_samples']} questions to "
        f"{args.out / 'samples.parquet'} ({counts}); description in {args.out / 'benchmark.json'}"
    )


if __name__ == "__main__":
    main()
