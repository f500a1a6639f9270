#!/usr/bin/env bash
# GPU tests + speed benchmarks (run from the repo root on the GPU machine).
set -u
. benchmarks/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
timeout 150 python3 benchmarks/caad_speed.py --device cuda --dtype bfloat16 --new-tokens 64 --repeats 3 --out "$OUT/caad_speed_gpu.json" 2>&1 | tail -25
timeout 100 python3 benchmarks/gpu_cascade_speed.py --data "$DATA/retrieval/msmarco_trecdl2019" --out "$OUT/cascade_speed_gpu.json" 2>&1 | tail -15
timeout 120 python3 benchmarks/gpu_generation.py --out "$OUT/generation_gpu.json" 2>&1 | tail -15
