"""CAAD speed on a GPU: ``caad_speed.py`` with GPU defaults (random weights of the real architectures).

The GPU machine has torch, transformers, sentence-transformers and safetensors but neither
pydantic nor the packaged offline models. ``caad_speed.py`` imports nothing that needs pydantic;
the weights are random (SmolLM2-135M and all-MiniLM-L6-v2 architectures: speed does not depend on
the values) and only the two tokenizers are needed, exported once on a machine that has them::

    python benchmarks/caad_speed.py --export-assets benchmarks/_caad_assets    # here (~4 MB)
    python benchmarks/gpu_caad_speed.py --out benchmarks/results/caad_speed_gpu.json   # on the GPU

Extra arguments are passed to ``caad_speed.py`` (e.g. ``--dtype float16 --new-tokens 128``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from caad_speed import main

DEFAULTS = ["--device", "cuda", "--random-weights", "--dtype", "bfloat16", "--new-tokens", "64",
            "--repeats", "5", "--reference-tokens", "32", "--dense-sizes", "1000,10000",
            "--assets", str(Path(__file__).resolve().parent / "_caad_assets")]

if __name__ == "__main__":
    main(DEFAULTS + sys.argv[1:])
