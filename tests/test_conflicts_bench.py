"""benchmarks/conflicts.py end to end on a handful of own pairs (real MiniLM, no shared data)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

PAIRS = [
    ("In what country is Normandy located?", "France", "Spain",
     "Normandy is a region in France. The Normans came from Denmark. Rollo led them.",
     "Normandy is a region in Spain. The Normans came from Denmark. Rollo led them."),
    ("When was the Eiffel Tower completed?", "1889", "1901",
     "Paris has many museums. The Eiffel Tower was completed in 1889.",
     "Paris has many museums. The Eiffel Tower was completed in 1901."),
    ("Who designed the tower?", "Gustave Eiffel", "Thomas Edison",
     "The tower is tall. It was designed by Gustave Eiffel.",
     "The tower is tall. It was designed by Thomas Edison."),
    ("What is the tower made of?", "wrought iron", "carved marble",
     "The tower is made of wrought iron. Tourists like it.",
     "The tower is made of carved marble. Tourists like it."),
    ("How tall is the tower?", "330 metres", "250 metres",
     "The tower is 330 metres tall. It stands in Paris.",
     "The tower stands in Paris. It is 250 metres tall."),
]


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("conflicts")


def test_targets_are_the_sentences_with_the_substituted_answer(bench) -> None:
    sents = ["Normandy is in Spain.", "The Normans came from Denmark.", "Spain's north is green."]
    assert bench.targets(sents, "Spain") == {0, 2}
    assert bench.targets(sents, "France") == set()


def test_benchmark_runs_and_reports_the_documented_keys(bench, tmp_path, monkeypatch) -> None:
    for name in ("squad", "musique"):
        gold = [{"id": f"{name}{i}", "question": q, "answer": g, "context": gc} for i, (q, g, _, gc, _) in enumerate(PAIRS)]
        neg = [{"id": f"{name}{i}", "question": q, "answer": n, "context": nc} for i, (q, _, n, _, nc) in enumerate(PAIRS)]
        (tmp_path / f"{name}_kre_golden.json").write_text(json.dumps(gold))
        (tmp_path / f"{name}_kre_negative.json").write_text(json.dumps(neg))
    out = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["conflicts.py", "--data", str(tmp_path), "--dev", "2", "--tune",
                                      "--misses", "3", "--speed", "2", "--device", "cpu", "--out", str(out)])
    assert bench.main() == 0
    res = json.loads(out.read_text())
    for name in ("squad", "musique"):
        r = res[name]
        assert r["pairs"] == 3 and r["n"] == 3 and r["no_target"] == 0
        for key in ("recall@1", "recall@5", "flag_precision", "flag_recall"):
            assert 0.0 <= r[key] <= 1.0
        assert r["recall@5"] == 1.0  # every context has at most 3 sentences
        # these substitutions are plain: the detector finds and flags every one
        assert r["recall@1"] == 1.0 and r["flag_recall"] == 1.0
        assert r["pairs_flagged_golden"] == 0.0  # the golden contexts agree with the beliefs
        assert r["miss_sample"] == []
        assert r["speed"]["pairs"] == 2 and r["speed"]["phrase_candidates_s"] > 0
        assert "library_default" in r["settings"] and "refit: all features" in r["settings"]
    assert set(res["fitted"]) >= {"alpha", "mismatch_weight", "weights"}


def test_miss_sample_lists_pairs_whose_top_sentence_is_not_a_target(bench) -> None:
    p = {"alpha": 1.0, "mismatch_weight": 0.0, "weights": {}}  # ranks by the first column (sim)
    x = np.zeros((3, len(bench.BASE + bench.EXTRA)), np.float32)
    x[:, 0] = [0.9, 0.5, 0.1]

    def row(i: int, targets: set[int]) -> dict:
        return {"id": str(i), "question": "q", "gold_answer": "g", "neg_answer": "n", "targets": targets,
                "neg_sents": ["s0", "s1", "s2"], "neg": {"x": x}}

    rows = [row(0, {0}), row(1, {1, 2}), row(2, set()), row(3, {2})]
    sample = bench.misses(rows, p, 5)
    assert sorted(m["id"] for m in sample) == ["1", "3"]  # a hit and a pair without target are left out
    one = next(m for m in sample if m["id"] == "1")
    assert (one["top"], one["best_target"], one["targets"]) == ("s0", "s1", 2)
    assert len(bench.misses(rows, p, 1)) == 1
