"""Benchmark honesty: every script writes its own JSON; hand-assembled GPU figures say so."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def test_every_benchmark_script_writes_its_own_json():
    scripts = [p for p in sorted(BENCH.glob("*.py")) if not p.name.startswith("_")]
    assert scripts
    for script in scripts:
        text = script.read_text(encoding="utf-8")
        assert '"--out"' in text, f"{script.name} has no --out"
        assert "write_json(" in text, f"{script.name} does not write its JSON with _common.write_json"


def test_write_json_adds_peak_gpu_memory_only_where_a_gpu_was_used(bench_module, tmp_path):
    import torch

    common = bench_module("_common")
    out = common.write_json(tmp_path / "r.json", {"x": 1})
    data = json.loads(out.read_text())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        assert data["gpu_memory"]["peak_allocated_bytes"] >= 0
    else:
        assert data == {"x": 1} and common.gpu_memory() is None
    common.write_json(tmp_path / "l.json", [1, 2])  # non-dict results are written as they are
    assert json.loads((tmp_path / "l.json").read_text()) == [1, 2]


def test_hand_assembled_gpu_figures_are_marked_not_reproduced():
    gpu = json.loads((BENCH / "results" / "gpu_h100.json").read_text(encoding="utf-8"))
    assert gpu["provenance"]["reproduced"] is False and "NOT REPRODUCED" in gpu["provenance"]["status"]
    readme = (BENCH / "README.md").read_text(encoding="utf-8")
    sections = [s for s in re.split(r"\n(?=##+ )", readme) if "gpu_h100.json" in s]
    assert len(sections) >= 6  # machines + every section that shows H100 figures
    for section in sections:
        assert "not reproduced" in " ".join(section.lower().split()), section.splitlines()[0]


def test_auc_counts_ties_half_and_is_nan_without_both_classes(bench_module):
    import math

    auc = bench_module("_common").auc
    assert auc([3.0, 2.0], [1.0, 0.0]) == 1.0
    assert auc([0.0], [1.0]) == 0.0
    assert auc([1.0, 0.0], [1.0]) == 0.25  # one tie (half) and one loss
    assert math.isnan(auc([], [1.0])) and math.isnan(auc([1.0], []))
