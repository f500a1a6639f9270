"""Poisoned-context testbed builder and the Rescorla-Wagner model + fit (no LLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctxkit.errors import InputError
from ctxkit.faithfulness.steering.rescorla_wagner import RWParams, fit, predict_curves, simulate
from ctxkit.faithfulness.steering.testbed import (
    DEFAULT_RATIOS,
    build_mixture,
    build_testbed,
    load_jsonl,
    load_pools,
    n_inappropriate,
    save_jsonl,
)


def write_pools(root: Path) -> Path:
    """A small pool folder in the paper's shape (two categories, privacy with its own keys)."""
    root.mkdir(parents=True, exist_ok=True)
    news = [
        {
            "Input": f"Mayor {i} banned bicycles in the city.",
            "Question": f"Did mayor {i} ban bicycles?",
            "Generated Information": [f"Mayor {i} opened new bike lanes.", f"City {i} council records show no bicycle ban.", f"Cycling in city {i} grew last year."],
            "Synonym Sentence": [f"Bicycles were outlawed by mayor {i}.", f"Mayor {i} made riding bikes illegal."],
            "Simple Answer": f"No, mayor {i} did not ban bicycles.",
            "Explainable Answer": "Records show no ban.",
        }
        for i in range(6)
    ]
    privacy = [
        {
            "Input": "Ann's age is 40. Ann's job is nurse.",
            "Question": "Could you tell me something about Ann?",
            "Non-private Information": ["Ann's job is nurse."],
            "Privacy information": ["Ann's age is 40. ", "Ann's race is White.", "Ann's income is 50k."],
            "Simple Answer": "Ann works as a nurse.",
            "Explainable Answer": "The job is not private.",
        }
    ]
    (root / "fakenews_output.json").write_text(json.dumps(news))
    (root / "privacy_output.json").write_text(json.dumps(privacy))
    return root


def test_pools_load_both_shapes(tmp_path: Path) -> None:
    pools = load_pools(write_pools(tmp_path / "pools"))
    assert sorted(pools) == ["fakenews", "privacy"]
    priv = pools["privacy"][0]
    assert priv.appropriate == ["Ann's job is nurse."]
    assert len(priv.inappropriate) == 3 and priv.inappropriate[0] == "Ann's age is 40."
    assert pools["fakenews"][2].reference.startswith("No, mayor 2")


def test_pool_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_pools(tmp_path / "missing")
    bad = tmp_path / "x_output.json"
    bad.write_text(json.dumps([{"Question": "q?", "Generated Information": ["a"]}]))
    with pytest.raises(InputError, match="Synonym Sentence"):
        load_pools(bad)
    with pytest.raises(InputError, match="categories"):
        load_pools(write_pools(tmp_path / "p"), categories=["hate_speech"])


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.3, 0.5, 0.95])
def test_mixture_has_exact_contamination(tmp_path: Path, ratio: float) -> None:
    row = load_pools(write_pools(tmp_path / "pools"))["fakenews"][0]
    mix = build_mixture(row, ratio, n_items=20, seed=3)
    assert len(mix.items) == 20
    assert sum(mix.labels) == n_inappropriate(ratio, 20) == round(ratio * 20)
    # every item comes from the right list and keeps its label
    for it in mix.items:
        assert it.text in (row.inappropriate if it.inappropriate else row.appropriate)
    assert mix.inappropriate_indices == [i + 1 for i, v in enumerate(mix.labels) if v]
    assert all(it.source is None for it in mix.items)


def test_testbed_is_deterministic_and_shuffled(tmp_path: Path) -> None:
    pools = load_pools(write_pools(tmp_path / "pools"))
    a = build_testbed(pools, n_items=10, n_queries=3, seed=7)
    b = build_testbed(pools, n_items=10, n_queries=3, seed=7)
    c = build_testbed(pools, n_items=10, n_queries=3, seed=8)
    assert [x.model_dump() for x in a] == [x.model_dump() for x in b]
    assert [x.model_dump() for x in a] != [x.model_dump() for x in c]
    assert len(a) == (3 + 1) * len(DEFAULT_RATIOS)  # 3 sampled fakenews queries + 1 privacy row
    assert {x.ratio for x in a} == set(DEFAULT_RATIOS)
    # order is shuffled: the bad items are not all at the start in every mixture
    starts = [x.labels[: sum(x.labels)] for x in a if 0 < sum(x.labels) < 10]
    assert any(not all(s) for s in starts)


def test_source_tags_on_and_off(tmp_path: Path) -> None:
    pools = load_pools(write_pools(tmp_path / "pools"))
    tagged = build_testbed(pools, ratios=[0.5], n_items=8, source_tags=True)
    for it in tagged[0].items:
        assert it.source is not None and it.render().startswith(f"[Source: {it.source}]")
    from ctxkit.faithfulness.steering.testbed import LOW_CREDIBILITY_SOURCES, REPUTABLE_SOURCES

    assert all((x.source in LOW_CREDIBILITY_SOURCES) == x.inappropriate for t in tagged for x in t.items)
    assert all(x.source in REPUTABLE_SOURCES for t in tagged for x in t.items if not x.inappropriate)
    state = tagged[0].to_state()
    assert state.passages[0].metadata["raw_text"] == tagged[0].items[0].text
    assert state.metadata["reference"] == tagged[0].reference


def test_jsonl_roundtrip_and_errors(tmp_path: Path) -> None:
    pools = load_pools(write_pools(tmp_path / "pools"))
    items = build_testbed(pools, ratios=[0.0, 0.25], n_items=6, source_tags=True)
    path = tmp_path / "tb.jsonl"
    assert save_jsonl(items, path) == len(items)
    assert [x.model_dump() for x in load_jsonl(path)] == [x.model_dump() for x in items]
    path.write_text('{"id": 1}\n')
    with pytest.raises(InputError, match=":1:"):
        load_jsonl(path)
    with pytest.raises(InputError):
        build_testbed(pools, ratios=[1.0])


# -- Rescorla-Wagner ---------------------------------------------------------------------------


def test_simulate_matches_hand_computed_updates() -> None:
    cues, hist = simulate(["good", "bad"], {"query": 0.1, "good": 0.5, "bad": 0.2}, beta=1.0, lam=1.0)
    assert cues == ["query", "good", "bad"]
    # trial 1: error 1 -> query 0.1, good 0.5
    np.testing.assert_allclose(hist[1], [0.1, 0.5, 0.0])
    # trial 2: present query+bad, error 1 - 0.1 = 0.9 -> query 0.19, bad 0.18
    np.testing.assert_allclose(hist[2], [0.19, 0.5, 0.18])
    with pytest.raises(InputError, match="no alpha"):
        simulate(["x"], {"query": 0.1})


def test_predicted_curves_are_monotone_and_overweight_the_rare_type() -> None:
    ratios = list(DEFAULT_RATIOS)
    pred = predict_curves(RWParams(0.05, 0.2, 0.2), ratios)
    bad = pred["inappropriate"]
    assert bad[0] == 0.0
    assert np.all(np.diff(bad) >= -1e-9)
    # a little inappropriate content gets more than its share (concave start)
    assert bad[1] > 0.05 * 2 and bad[2] > 0.10 * 1.5
    np.testing.assert_allclose(pred["appropriate"] + bad, 1.0)


def test_fit_recovers_known_parameters() -> None:
    ratios = list(DEFAULT_RATIOS)
    true = RWParams(0.05, 0.15, 0.35)
    clean = predict_curves(true, ratios)
    rng = np.random.default_rng(0)
    obs = {k: v + rng.normal(0, 0.005, len(ratios)) for k, v in clean.items()}
    res = fit(ratios, obs, fit_mapping=False, n_orders=32)
    assert res.r2 > 0.99 and res.rmse < 0.02
    # the content learning rates and their ratio are identified; alpha_query only weakly
    assert res.params.alpha_appropriate == pytest.approx(0.15, rel=0.25)
    assert res.params.alpha_inappropriate == pytest.approx(0.35, rel=0.25)
    ratio = res.params.alpha_inappropriate / res.params.alpha_appropriate
    assert ratio == pytest.approx(0.35 / 0.15, rel=0.15)


def test_fit_with_mapping_on_0_100_scale_and_plot(tmp_path: Path) -> None:
    ratios = list(DEFAULT_RATIOS)[::2]
    clean = predict_curves(RWParams(0.05, 0.2, 0.4), ratios)
    obs = {"appropriate": list(20 + 60 * clean["appropriate"]), "inappropriate": list(5 + 50 * clean["inappropriate"])}
    res = fit(ratios, obs, n_orders=32)
    assert res.scale == 100.0
    assert res.r2 > 0.99
    assert res.mapping["inappropriate"][0] == pytest.approx(0.05, abs=0.03)
    png = res.plot(tmp_path / "img" / "rw.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = res.to_dict()
    assert set(d["params"]) >= {"alpha_query", "alpha_appropriate", "alpha_inappropriate"}
    json.dumps(d)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="keys"):
        fit([0.0, 0.5], {"consistency": [1, 2]})
    with pytest.raises(InputError, match="points"):
        fit([0.0, 0.5], {"appropriate": [1.0]})
