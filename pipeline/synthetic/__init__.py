"""The project's bundled sample data set: synthetic 4D scenes with exact ground truth.

scene.py (what a seed describes) -> render.py (ray casting: frames + ground truth) ->
ground_truth.py (the per-video sidecar) -> questions.py (region-level questions) ->
dataset.py (videos, sidecars, samples.parquet, scenes.json; the CLI).
Held-out evaluation: benchmark_questions.py (R4D-category multiple choice) -> benchmark.py (held-out
seeds; videos, sidecars, samples.parquet, benchmark.json; the CLI).
"""
