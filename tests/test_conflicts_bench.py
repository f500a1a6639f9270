"""benchmarks/conflicts.py end to end on a handful of own items (the packaged judge, no shared data)."""

from __future__ import annotations

import json
import shutil
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from ctxkit.faithfulness.conflicts.detector import POLARITY_CAP
from ctxkit.faithfulness.judge import split_of

PAIRS = [
    ("In what country is Normandy located?", "France", "Spain",
     "Normandy is a region in France. The Normans came from Denmark. Rollo led them.",
     "Normandy is a region in Spain. The Normans came from Denmark. Rollo led them."),
    ("When was the Eiffel Tower completed?", "1889", "1901",
     "Paris has many museums. The Eiffel Tower was completed in 1889.",
     "Paris has many museums. The Eiffel Tower was completed in 1901."),
    ("Who designed the Eiffel Tower?", "Gustave Eiffel", "Thomas Edison",
     "The Eiffel Tower is tall. It was designed by Gustave Eiffel.",
     "The Eiffel Tower is tall. It was designed by Thomas Edison."),
    ("How tall is the Eiffel Tower?", "330 metres", "250 metres",
     "The Eiffel Tower is 330 metres tall. It stands in Paris.",
     "The Eiffel Tower stands in Paris. It is 250 metres tall."),
]


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("conflicts")


def _ids(set_name: str, split: str, n: int) -> list[str]:
    """The first ``n`` ids ``x0, x1, ...`` that the frozen split puts in ``split``."""
    out, i = [], 0
    while len(out) < n:
        if split_of(set_name, f"x{i}") == split:
            out.append(f"x{i}")
        i += 1
    return out


def _data(root: Path, split: str) -> Path:
    fr = root / "faithfulrag"
    fr.mkdir(parents=True)
    for name in ("squad", "musique"):
        ids = _ids(name, split, len(PAIRS))
        gold = [{"id": i, "question": q, "answer": g, "context": gc} for i, (q, g, _, gc, _) in zip(ids, PAIRS)]
        neg = [{"id": i, "question": q, "answer": n, "context": nc} for i, (q, _, n, _, nc) in zip(ids, PAIRS)]
        (fr / f"{name}_kre_golden.json").write_text(json.dumps(gold))
        (fr / f"{name}_kre_negative.json").write_text(json.dumps(neg))
    ids = _ids("faitheval", split, len(PAIRS))
    fe = [{"id": i, "question": q, "answer": n, "choices": [g, n], "context": nc}
          for i, (q, g, n, _, nc) in zip(ids, PAIRS)]
    (fr / "faitheval_counterfactual.json").write_text(json.dumps(fe))
    return root


def test_unrelated_items_pair_each_belief_with_another_items_passage(bench) -> None:
    items = [{"id": str(i), "belief": f"b{i}", "text": f"t{i}", "conflict": False, "kind": "support"} for i in range(3)]
    items.append({"id": "0", "belief": "b0", "text": "n0", "conflict": True, "kind": "conflict"})
    out = bench.unrelated_items(items)
    assert [(u["belief"], u["text"], u["kind"], u["conflict"]) for u in out] == [
        ("b0", "t1", "unrelated", False), ("b1", "t2", "unrelated", False), ("b2", "t0", "unrelated", False)]


def test_benchmark_reports_detection_and_localisation_on_the_test_split(bench, tmp_path, monkeypatch) -> None:
    data = _data(tmp_path / "data", "test")
    out = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["conflicts.py", "--data", str(data), "--device", "cpu", "--speed", "2",
                                      "--out", str(out)])
    assert bench.main() == 0
    res = json.loads(out.read_text())
    assert res["split"] == "test" and res["defaults"]["judge"] == "default"
    for name in ("squad", "musique", "faitheval"):
        r = res["detection"][name]
        assert r["n_conflict"] == r["n_support"] == len(PAIRS) and r["n_unrelated"] == len(PAIRS)
        for key in ("auc", "balanced_accuracy", "false_flag_rate", "recall", "unrelated_flag_rate"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r)
    for name in ("squad", "musique"):
        r = res["detection"][name]
        # plain substitutions: the judge ranks every conflicting context above the supporting ones
        assert r["auc"] == 1.0 and r["false_flag_rate"] == 0.0 and r["recall"] >= 0.75, r
        # precision of the flags: conflicts over everything flagged (supporting and off-topic too)
        flagged = r["recall"] * r["n_conflict"] + r["unrelated_flag_rate"] * r["n_unrelated"]
        assert r["precision"] == pytest.approx(r["recall"] * r["n_conflict"] / flagged, abs=1e-3)
        loc = res["localisation"][name]
        assert loc["pairs"] == len(PAIRS) and loc["recall@5"] == 1.0 and loc["recall@1"] >= 0.75
        assert res["speed"][name]["judge_pairs_per_s"] > 0 and "heuristic_s" not in res["speed"][name]


def test_passage_held_out_leaves_out_test_ids_whose_passage_a_dev_id_carries(bench, tmp_path, monkeypatch) -> None:
    data = _data(tmp_path / "data", "test")
    fr = data / "faithfulrag"
    # a dev_train question about the first pair's passage: that test id's passage is not held out
    (extra,) = _ids("squad", "dev_train", 1)
    for kind, ans in (("golden", PAIRS[0][1]), ("negative", PAIRS[0][2])):
        path = fr / f"squad_kre_{kind}.json"
        rows = json.loads(path.read_text())
        ctx = PAIRS[0][3] if kind == "golden" else PAIRS[0][4]
        path.write_text(json.dumps([*rows, {"id": extra, "question": "Where is Normandy?", "answer": ans, "context": ctx}]))
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["conflicts.py", "--data", str(data), "--device", "cpu", "--sets", "squad",
                                      "--out", str(out)])
    assert bench.main() == 0
    res = json.loads(out.read_text())
    full, held = res["detection"]["squad"], res["detection"]["squad"]["passage_held_out"]
    assert full["n_support"] == full["n_conflict"] == len(PAIRS)  # the dev_train id is not scored
    assert held["n_support"] == held["n_conflict"] == len(PAIRS) - 1
    assert held["n_unrelated"] == len(PAIRS) - 1  # off-topic items whose passage is the shared one go too
    assert res["localisation"]["squad"]["passage_held_out"]["pairs"] == len(PAIRS) - 1


def test_llm_judge_is_scored_through_the_same_benchmark(bench, tmp_path, monkeypatch, tiny_llm_dir) -> None:
    data = _data(tmp_path / "data", "test")
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["conflicts.py", "--data", str(data), "--device", "cpu", "--sets", "squad",
                                      "--llm-judge", str(tiny_llm_dir), "--out", str(out)])
    calls = []
    from ctxkit.faithfulness.judge import LLMClaimJudge

    real = LLMClaimJudge._ask  # what reaches the LLM

    def counted(self, beliefs, texts):
        calls.append(len(beliefs))
        return real(self, beliefs, texts)

    monkeypatch.setattr(LLMClaimJudge, "_ask", counted)
    assert bench.main() == 0
    res = json.loads(out.read_text())
    assert res["defaults"]["judge"] == f"llm: {tiny_llm_dir}" and res["defaults"]["threshold"] == 0.5
    r = res["detection"]["squad"]
    assert r["n_conflict"] == r["n_support"] == len(PAIRS) and 0.0 <= r["auc"] <= 1.0
    assert res["localisation"]["squad"]["pairs"] == len(PAIRS)
    # each (belief, sentence) pair reaches the LLM once although the benchmark reads items three times
    n_sents = sum(len(bench.split_sentences(t)) for _, _, _, gc, nc in PAIRS for t in (gc, nc))
    assert sum(calls) <= n_sents + sum(len(bench.split_sentences(p[3])) for p in PAIRS)


def test_misses_are_for_the_dev_split_only(bench, tmp_path, monkeypatch) -> None:
    data = _data(tmp_path / "data", "test")
    monkeypatch.setattr(sys, "argv", ["conflicts.py", "--data", str(data), "--misses", "3", "--out",
                                      str(tmp_path / "r.json")])
    with pytest.raises(SystemExit):
        bench.main()


def test_calibrate_fits_the_head_and_threshold_into_judge_json(bench, tmp_path, monkeypatch) -> None:
    data = _data(tmp_path / "data", "dev")
    judge = tmp_path / "judge"
    shutil.copytree(Path(str(resources.files("ctxkit.faithfulness.judge") / "weights")), judge)
    monkeypatch.setattr(sys, "argv", ["conflicts.py", "--data", str(data), "--device", "cpu", "--calibrate",
                                      str(judge), "--sets", "squad,musique,faitheval",
                                      "--features-cache", str(tmp_path / "f.npz")])
    assert bench.main() == 0
    cal = json.loads((judge / "judge.json").read_text())["detector"]
    assert 0.05 <= cal["threshold"] <= 0.99
    # the features, their squares and pairwise products
    k = len(bench.PASSAGE_FEATURES)
    assert len(cal["head"]["weights"]) == k + k * (k + 1) // 2
    assert {f for t in cal["head"]["weights"] for f in t.split("*")} == set(bench.PASSAGE_FEATURES)
    assert not any("similarity" in t for t in cal["statement_head"]["weights"])
    assert set(cal["dev"]) == {"squad", "musique", "faitheval"}
    # the threshold keeps every set's dev false flags (supporting and off-topic) within the target
    assert all(r["false_flag_rate"] <= 0.10 and r["unrelated_flag_rate"] <= 0.10 for r in cal["dev"].values())
    # held-out folds: head and threshold refitted without them, rates per set
    cross = cal["cross_fitted_dev"]
    assert cross["folds"] == 5 and set(cross) == {"folds", "max_false_flag_rate", "squad", "musique", "faitheval"}
    # each set scored by a calibration fitted on the other sets alone
    loso = cal["leave_one_set_out"]
    assert set(loso) == {"squad", "musique", "faitheval"}
    assert all(0.05 <= r["threshold"] <= 0.99 and 0.0 <= r["false_flag_rate"] <= 1.0 for r in loso.values())
    assert all(0.0 <= cross[n]["recall"] <= 1.0 for n in ("squad", "musique", "faitheval"))
    assert cal["polarity_check"] is True
    cached = np.load(tmp_path / "f.npz")
    # features against the belief, then against its opposite answer (none of these beliefs is yes / no)
    assert cached["squad_x"].shape == (3 * len(PAIRS), 2 * k)
    assert np.isnan(cached["squad_x"][:, k:]).all() and not np.isnan(cached["squad_x"][:, :k]).any()
    assert sorted(set(cached["squad_y"])) == ["conflict", "support", "unrelated"]
    # a second calibration reads the saved features instead of scoring the items again
    (judge / "judge.json").write_text(json.dumps({k: v for k, v in json.loads((judge / "judge.json").read_text()).items()
                                                  if k != "detector"}))
    monkeypatch.setattr(bench, "features", lambda *a, **k: pytest.fail("features recomputed"))
    assert bench.main() == 0
    assert json.loads((judge / "judge.json").read_text())["detector"]["threshold"] == cal["threshold"]


def test_polarity_check_scores_the_quickstart_belief_both_ways(bench_module, tmp_path, monkeypatch) -> None:
    polarity = bench_module("conflicts_polarity")
    out = tmp_path / "p.json"
    monkeypatch.setattr(sys, "argv", ["conflicts_polarity.py", "--data", str(tmp_path / "none"), "--device", "cpu",
                                      "--out", str(out)])
    assert polarity.main() == 0
    res = json.loads(out.read_text())
    assert res["poisonedrag"] is None  # no shared data here
    rows = res["quickstart"]
    assert {r["note"] for r in rows} == {"team-note-embedder.md", "forum-post-upload.md", "blog-leak.md"}
    for r in rows:
        assert r["belief"].endswith("No") and r["flipped"].endswith("Yes")
        assert r["flagged"] == (r["score"] >= res["threshold"])
        assert r["flipped_flagged"] == (r["flipped_score"] >= res["threshold"])
        # the default detector keeps a flag only where the stated answer reads as more conflicting
        assert r["default_flagged"] == (r["flagged"] and r["score"] > r["flipped_score"])


def test_head_scores_cap_a_yes_no_passage_that_conflicts_as_much_with_the_opposite_answer(bench) -> None:
    head = {"bias": 0.0, "weights": {f: (1.0 if f == "conflict_max" else 0.0) for f in bench.PASSAGE_FEATURES}}
    k = len(bench.PASSAGE_FEATURES)
    rows = np.zeros((3, 2 * k))
    rows[:, 0] = 3.0  # a score of sigmoid(3) = 0.95 against the belief
    rows[0, k:] = np.nan  # not a yes / no belief
    rows[1, k] = 3.0  # the opposite answer reads as conflicting: capped
    rows[2, k] = -3.0  # only the stated answer conflicts: kept
    on = bench.head_scores(head, rows, polarity_check=True)
    assert on[0] == on[2] == pytest.approx(0.9526, abs=1e-4) and on[1] == POLARITY_CAP
    assert bench.head_scores(head, rows, polarity_check=False) == pytest.approx([0.9526] * 3, abs=1e-4)


def test_fit_head_writes_the_standardised_quadratic_fit_as_raw_terms(bench) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    k = len(bench.PASSAGE_FEATURES)
    x = rng.random((400, k)) * np.linspace(0.5, 3.0, k)
    y = (x[:, 0] * x[:, 3] + 0.3 * rng.standard_normal(400)) > 0.6
    w = np.ones(len(y))
    head = bench.fit_head(x, y, w)
    z = (x - x.mean(0)) / x.std(0)
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    zz = np.concatenate([z, np.stack([z[:, i] * z[:, j] for i, j in pairs], axis=1)], axis=1)
    ref = LogisticRegression(C=bench.HEAD_C, max_iter=10000).fit(zz, y, sample_weight=w).predict_proba(zz)[:, 1]
    rows = np.concatenate([x, np.full_like(x, np.nan)], axis=1)
    assert bench.head_scores(head, rows, polarity_check=True) == pytest.approx(ref, abs=1e-4)
