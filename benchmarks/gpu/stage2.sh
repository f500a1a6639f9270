#!/usr/bin/env bash
# Quality harnesses with the real SmolLM2 on the GPU (run from the repo root on the GPU machine).
set -u
. benchmarks/gpu/env.sh
timeout 260 python3 benchmarks/faithfulness.py --device cuda --n 200 --batch-size 64 --data "$DATA/faithfulrag" --out "$OUT/faithfulness_gpu.json" 2>&1 | tail -30
timeout 150 python3 benchmarks/caad.py --device cuda --n-eval 400 --data "$DATA/truthfulqa" --out "$OUT/caad_gpu.json" 2>&1 | tail -20
timeout 150 python3 benchmarks/cascade.py --parts mmlu --device cuda --data "$DATA" --mmlu-n 400 --out "$OUT/cascade_mmlu_gpu.json" 2>&1 | tail -20
