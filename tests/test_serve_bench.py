"""benchmarks/serve.py end to end on a tiny setting (BM25 pipeline, a few requests, a short
soak): it starts both servers, writes the documented keys, the machine and the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _serve_helpers import ROOT, build_index, write_config


def test_serve_benchmark_runs_on_a_tiny_setting(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    index = build_index(tmp_path / "index", tiny_embedder_dir)
    cfg = write_config(tmp_path / "p.yaml", [{"type": "bm25", "path": str(index), "k": 3}])
    out = tmp_path / "serve.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--config", str(cfg), "--clients", "1,8,64",
           "--per-client", "1", "--min-requests", "8", "--warmup", "4", "--soak", "2", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert res.returncode == 0, res.stderr[-4000:]
    data = json.loads(out.read_text())
    for mode in ("batched", "unbatched"):
        assert set(data[mode]) == {"1", "8", "64"}
        for c, row in data[mode].items():
            assert {"rps", "p50_ms", "p95_ms"} <= set(row) and row["rps"] > 0 and row["errors"] == 0
            assert row["p95_ms"] >= row["p50_ms"] > 0 and row["requests"] >= max(8, int(c))
    assert set(data["speedup"]) == {"1", "8", "64"}
    soak = data["soak"]
    assert soak["ok"] and soak["errors"] == 0 and soak["requests"] > 0 and soak["rss_start_mb"] > 0
    assert data["machine"]["cpu_count"] and data["command"].startswith("python benchmarks/serve.py")
    assert data["pipeline"]["stages"][0]["type"] == "bm25"
