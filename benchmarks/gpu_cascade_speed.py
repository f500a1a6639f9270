"""GPU version of the cascade speed benchmark (run by the lead on an H100/H200).

Needs only torch, transformers, sentence-transformers, numpy and this repo (LangChain and
LlamaIndex peers run when installed, else they are skipped). Uses the TREC DL corpus when
``../shared/data`` is present (and bm25s is installed), else synthetic MS MARCO-like passages;
the cross-encoder is MiniLM-L6 (offline all-MiniLM-L6-v2 weights when installed, else random
weights of the same architecture: same cost).

Reports queries/s for 50 queries x 50 candidates: ctxkit CrossEncoderPreRanker fp32 and fp16
(one batch for all queries), fp16 called per query (what batching across queries buys), peers,
and top-10 overlap with the fp32 reference.

    python benchmarks/gpu_cascade_speed.py --out gpu_cascade.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cascade import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--device" not in args:
        args += ["--device", "cuda"]
    if "--parts" not in args:
        args += ["--parts", "speed"]
    if "--repeats" not in args:
        args += ["--repeats", "5"]
    raise SystemExit(main(args))
