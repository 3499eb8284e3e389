# p4d: offline teacher cache + student trainer for Perceptual 4D Distillation.
# Every recipe creates the virtualenv first when it is missing or pyproject.toml changed.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"
data := "data"

default: demo

# Create / refresh the virtualenv (torch pinned to the CPU build available on these machines).
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp="{{venv}}/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "setting up {{venv}} (first run: ~3 minutes)"
        [ -x "{{py}}" ] || python3 -m venv {{venv}}
        {{py}} -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
        {{py}} -m pip install -q -e '.[test]' 2>&1 | grep -v -e "is ignored" -e "^ *$" || true
        {{py}} -c "import torch, zarr, webdataset, ray, decord, deepspeed" 2>/dev/null \
            || { echo "virtualenv install failed: run {{py}} -m pip install -e '.[test]' to see why"; exit 1; }
        rm -f {{venv}}/.installed-*; touch "$stamp"
    fi

# Generate the bundled synthetic data set, cache it with the oracle teacher on an in-process Ray,
# print what the cache holds and render PNGs of a few clips; then train a tiny random student from
# the cache with DeepSpeed ZeRO-3 on 2 CPU ranks and export it without the P4D branch.
demo format="zarr": venv
    {{py}} -m pipeline.synthetic.dataset --out {{data}}/sample --scenes 8 --seed 0
    {{py}} pipeline/cache_teacher.py --config configs/demo.yaml --format {{format}} --out {{data}}/cache-{{format}}
    {{py}} -m student.inspect_cache {{data}}/cache-{{format}} --pictures 3
    @echo "cache: {{data}}/cache-{{format}} (summary.json, manifests/, shards/{{format}}/, pictures/)"
    {{py}} -m student.tiny --adapter qwen2_5_vl --out {{data}}/tiny-qwen2_5_vl
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 {{venv}}/bin/deepspeed --num_gpus 2 student/train.py \
        --config configs/train/demo.yaml --set data.cache={{data}}/cache-{{format}} --set run.out={{data}}/runs/demo-{{format}}
    @echo "student: {{data}}/runs/demo-{{format}} (export/ = plain transformers checkpoint, tensorboard/, checkpoints/)"

# The paper's ablation on CPU with a tiny student: synthetic training scenes and held-out benchmark
# scenes cached by the oracle, then the rows (default baseline / +LD+ED; add tpe for +TPE) trained per seed,
# read by the 4D probes (with Welch tests against the baseline) and evaluated; ~60 CPU minutes (README).
ablation seeds="0 1 2 3" rows="baseline ld_ed": venv
    {{py}} -m pipeline.synthetic.dataset --out {{data}}/ablation/train --scenes 32 --seed 0
    {{py}} pipeline/cache_teacher.py --videos {{data}}/ablation/train --teacher oracle --latent-dim 64 --num-frames 16 --out {{data}}/ablation/train-cache
    {{py}} -m pipeline.synthetic.benchmark --out {{data}}/ablation/bench --scenes 24
    {{py}} pipeline/cache_teacher.py --videos {{data}}/ablation/bench --teacher oracle --latent-dim 64 --num-frames 16 --out {{data}}/ablation/bench-cache
    {{py}} -m student.tiny --adapter qwen2_5_vl --out {{data}}/tiny-qwen2_5_vl
    HF_HUB_OFFLINE=1 {{py}} student/ablation.py --config configs/train/ablation.yaml --bench-cache {{data}}/ablation/bench-cache --train-data {{data}}/ablation/train --bench-data {{data}}/ablation/bench --seeds {{seeds}} --rows {{rows}} --ranks 1 --out {{data}}/ablation/results

# Run the whole test suite.
test *args: venv
    HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 {{py}} -m pytest {{args}}

# Mutation testing (mutmut) of the named modules, each against the tests mapped to it in
# tests/mutants.py (default: every mapped module); prints each surviving mutant's diff and the counts.
# Minutes per module; not part of `just test` or CI.
mutants *modules: venv
    {{py}} -c "import mutmut" 2>/dev/null || {{py}} -m pip install -q -e '.[test,mutation]' 2>&1 | grep -v "is ignored" || true
    OMP_NUM_THREADS=1 {{py}} tests/mutants.py {{modules}}

# Issue 21's planted bugs, each applied alone and run against the tests that name it (tests/planted_bugs.py);
# minutes, not part of `just test` or CI.
planted-bugs *words: venv
    OMP_NUM_THREADS=1 {{py}} tests/planted_bugs.py {{words}}

# Benchmarks (print figures; never part of the tests).
bench: venv
    {{py}} bench/storage.py
    {{py}} bench/fidelity.py
    {{py}} bench/planning.py
    {{py}} bench/preflight.py
    {{py}} bench/throughput.py
    {{py}} bench/l4p_teacher.py
    {{py}} bench/loader.py
    {{py}} bench/train_step.py
