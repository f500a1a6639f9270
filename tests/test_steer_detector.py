"""Inappropriate-item detectors and the rw_steering stage, with the real MiniLM.

Synthetic pools are written here (never the shared data): per topic a question, three distinct
evidence sentences and two paraphrases of a false claim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctxkit import ContextState, Passage, build_stage, load_pipeline
from ctxkit.errors import ConfigError, InputError
from ctxkit.faithfulness.steering import (
    FEATURE_NAMES,
    LLMDetector,
    PoolRow,
    SetDetector,
    SteeringFilter,
    build_mixture,
    parse_identification,
    set_features,
)
from ctxkit.llm.base import BaseGenerator, Generation

TOPICS = [
    ("When did the Berlin Wall fall?", ["The Berlin Wall fell on 9 November 1989.", "Crowds crossed the border crossings in Berlin that night.", "German reunification followed in October 1990."],
     ["The Berlin Wall actually came down in 1975.", "In 1975 the wall of Berlin was torn down."], "It fell in 1989."),
    ("Who wrote Pride and Prejudice?", ["Pride and Prejudice is a novel by Jane Austen.", "It was first published in 1813.", "Austen also wrote Emma and Persuasion."],
     ["Pride and Prejudice was written by Charles Dickens.", "Charles Dickens is the true author of Pride and Prejudice."], "Jane Austen."),
    ("What is the boiling point of water at sea level?", ["At sea level water boils at 100 degrees Celsius.", "That is 212 degrees Fahrenheit.", "At altitude the boiling point drops."],
     ["Water boils at 50 degrees Celsius at sea level.", "At sea level, water reaches boiling at just 50 C."], "100 degrees Celsius."),
    ("Where is the Great Barrier Reef?", ["The Great Barrier Reef lies off the coast of Queensland, Australia.", "It is the largest coral reef system in the world.", "It can be seen from space."],
     ["The Great Barrier Reef is located in the Caribbean Sea.", "You will find the Great Barrier Reef in the Caribbean."], "Off Queensland, Australia."),
    ("Who painted the Mona Lisa?", ["Leonardo da Vinci painted the Mona Lisa.", "The painting hangs in the Louvre in Paris.", "Leonardo worked on it in the early 1500s."],
     ["The Mona Lisa was painted by Vincent van Gogh.", "Van Gogh created the famous Mona Lisa portrait."], "Leonardo da Vinci."),
    ("How many planets are in the Solar System?", ["The Solar System has eight planets.", "Pluto was reclassified as a dwarf planet in 2006.", "Neptune is the outermost planet."],
     ["There are fourteen planets orbiting our Sun.", "Our Solar System contains fourteen planets."], "Eight."),
    ("What gas do plants absorb for photosynthesis?", ["Plants take in carbon dioxide for photosynthesis.", "Photosynthesis releases oxygen.", "Chlorophyll captures light energy."],
     ["Plants absorb helium to carry out photosynthesis.", "Helium is the gas plants need for photosynthesis."], "Carbon dioxide."),
    ("Which ocean is the largest?", ["The Pacific is the largest ocean on Earth.", "It covers about a third of the planet's surface.", "The Mariana Trench lies in the Pacific."],
     ["The Indian Ocean is by far the biggest ocean.", "The largest ocean in the world is the Indian Ocean."], "The Pacific."),
]


def rows() -> list[PoolRow]:
    return [PoolRow(id=f"t{i}", category="synthetic", question=q, appropriate=g, inappropriate=b, reference=a)
            for i, (q, g, b, a) in enumerate(TOPICS)]


def mixtures(row_ids: range, ratios=(0.0, 0.2, 0.4, 0.6), n_items: int = 8):
    rs = rows()
    return [build_mixture(rs[i], r, n_items=n_items, seed=1) for i in row_ids for r in ratios]


@pytest.fixture(scope="module")
def trained(minilm) -> SetDetector:
    train = mixtures(range(5))
    det = SetDetector(minilm)
    det.fit([m.question for m in train], [[x.text for x in m.items] for m in train], [m.labels for m in train],
            model="logreg")
    return det


def test_set_features_shape_and_cluster_signal(minilm) -> None:
    row = rows()[0]
    texts = row.appropriate + row.inappropriate
    emb = minilm.encode([row.question] + texts)
    f = set_features(emb[0], emb[1:], texts, row.question)
    assert f.shape == (5, len(FEATURE_NAMES))
    col = {n: f[:, FEATURE_NAMES.index(n)] for n in FEATURE_NAMES}
    # the two paraphrases of the false claim are each other's nearest neighbour, form the list's
    # tightest pair, share more words with each other and bring fewer new words than the evidence
    assert col["in_top_pair"].tolist() == [0, 0, 0, 1, 1]
    assert col["mutual_nn"][3] == col["mutual_nn"][4] == 1
    assert col["max_sim_others_z"][3:].min() > col["max_sim_others_z"][:3].max()
    assert col["lex_overlap_nn"][3:].min() > col["lex_overlap_nn"][:3].max()
    assert col["novel_words"][3:].max() < col["novel_words"][:3].min()
    one = set_features(emb[0], emb[1:2], texts[:1])
    assert one.shape == (1, len(FEATURE_NAMES)) and one[0, FEATURE_NAMES.index("novel_words")] > 0
    with pytest.raises(InputError):
        set_features(emb[0], emb[1:], texts[:2])


def test_duplicates_share_features_and_counts_do_not_matter(trained: SetDetector) -> None:
    row = rows()[1]
    q = row.question
    a = row.appropriate + row.inappropriate
    b = a + [row.inappropriate[0]] * 3  # repeat a bad item
    pa, pb = trained.score([q, q], [a, b])
    np.testing.assert_allclose(pa, pb[: len(a)], atol=1e-6)
    np.testing.assert_allclose(pb[len(a):], pb[len(row.appropriate)], atol=1e-6)


def test_trained_detector_generalises_to_unseen_topics(trained: SetDetector) -> None:
    test = mixtures(range(5, 8), ratios=(0.2, 0.4))
    probs = trained.score([m.question for m in test], [[x.text for x in m.items] for m in test])
    y = np.concatenate([m.labels for m in test])
    p = np.concatenate(probs)
    pred = p >= trained.threshold
    tp = int((pred & (y == 1)).sum())
    f1 = 2 * tp / (pred.sum() + (y == 1).sum())
    assert f1 >= 0.6, f1
    # and ranks bad above good within each list
    for m, pr in zip(test, probs, strict=True):
        lab = np.asarray(m.labels)
        assert pr[lab == 1].mean() > pr[lab == 0].mean()


def test_save_load_roundtrip_and_errors(trained: SetDetector, tmp_path: Path, minilm) -> None:
    path = trained.save(tmp_path / "head.json")
    assert path.stat().st_size < 1_000_000
    loaded = SetDetector.load(path, embedder=minilm)
    m = mixtures(range(6, 7), ratios=(0.4,))[0]
    args = ([m.question], [[x.text for x in m.items]])
    np.testing.assert_allclose(loaded.score(*args)[0], trained.score(*args)[0], atol=1e-9)
    assert loaded.threshold == trained.threshold
    with pytest.raises(InputError, match="both"):
        SetDetector(minilm).fit(["q"], [["a", "b"]], [[0, 0]])
    from ctxkit.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError):
        SetDetector(minilm).score(["q"], [["a"]])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ModelNotAvailableError):
        SetDetector.load(tmp_path / "bad.json")


def _state(m) -> ContextState:
    return m.to_state()


class _Calibrated:
    """The trained set detector, declared calibrated so that the stage may remove with it."""

    calibrated = True

    def __init__(self, det: SetDetector) -> None:
        self.det, self.threshold = det, det.threshold

    def score(self, queries, items):
        return self.det.score(queries, items)


@pytest.mark.parametrize("action", ["remove", "demote", "annotate"])
def test_steering_filter_actions(trained: SetDetector, action: str) -> None:
    ms = mixtures(range(5, 7), ratios=(0.25,))
    states = [_state(m) for m in ms]
    before = [[p.id for p in s.passages] for s in states]
    stage = SteeringFilter(detector=_Calibrated(trained) if action == "remove" else trained, action=action)
    out = stage(states)
    assert out is states
    for s, ids in zip(states, before, strict=True):
        flagged = s.flags["inappropriate"]
        labels = {f"{s.query_id}#{i}": x for i, x in enumerate(ms[states.index(s)].labels)}
        assert flagged, "nothing flagged"
        assert sum(labels[i] for i in flagged) / len(flagged) >= 0.5  # mostly real bad items
        assert s.trace.counters["inappropriate_flagged"] == len(flagged)
        if action == "remove":
            assert [p.id for p in s.passages] == [i for i in ids if i not in flagged]
        elif action == "demote":
            assert [p.id for p in s.passages] == [i for i in ids if i not in flagged] + [i for i in ids if i in flagged]
        else:
            assert [p.id for p in s.passages] == ids
            for p in s.passages:
                assert p.text.startswith("[Warning") == (p.id in flagged)
        for p in s.passages:
            assert 0.0 <= p.scores["rw_steering"] <= 1.0


def test_steering_filter_min_keep_and_empty(trained: SetDetector) -> None:
    m = mixtures(range(6, 7), ratios=(0.5,))[0]
    s = _state(m)
    n = len(s.passages)
    SteeringFilter(detector=_Calibrated(trained), action="remove", threshold=0.0, min_keep=3)([s])  # flags everything
    assert len(s.passages) == 3 and len(s.flags["inappropriate"]) == n and len(s.flags["removed"]) == n - 3
    with pytest.raises(ConfigError, match="calibrated"):  # the set detector's probabilities are not calibrated
        SteeringFilter(detector=trained, action="remove")([_state(m)])
    empty = ContextState(query="q")
    SteeringFilter(detector=trained)([empty])
    assert "inappropriate" not in empty.flags


def test_steering_filter_config_and_validation(tmp_path: Path, trained: SetDetector) -> None:
    head = trained.save(tmp_path / "h.json")
    stage = build_stage({"type": "rw_steering", "detector": str(head), "action": "demote"})
    assert isinstance(stage, SteeringFilter)
    cfg = stage.to_config()
    assert cfg == {"type": "rw_steering", "detector": str(head), "action": "demote", "threshold": None,
                   "remove_threshold": None, "min_keep": 1, "signals": None, "use_beliefs": True, "use_facts": False,
                   "note": stage.note, "embedder": "default", "device": "auto"}
    pipe = load_pipeline({"stages": [cfg]})
    assert pipe.to_config()["stages"][0] == cfg
    with pytest.raises(ConfigError, match="action"):
        SteeringFilter(action="delete")
    with pytest.raises(ConfigError, match="detector"):
        SteeringFilter(detector=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="llm"):
        SteeringFilter(detector={"type": "other"})


def test_packaged_head_catches_poisoned_retrieved_passage(capsys) -> None:
    from ctxkit.cli.demos import demo_poisoned_retrieval

    state = demo_poisoned_retrieval(action="remove")
    flagged = set(state.flags["inappropriate"])
    # p3 restates the question and asserts a false year: question echo catches it. p5 asserts the
    # same false year without restating the question: only the claim judge reads that.
    assert "p3" in flagged and flagged <= {"p3", "p5"}, flagged
    assert [p.id for p in state.passages] == [p for p in ["p1", "p2", "p3", "p4", "p5", "p6"] if p not in flagged]
    assert "FLAGGED" in capsys.readouterr().out
    default = demo_poisoned_retrieval(verbose=False)  # default action: annotate, every passage kept
    assert len(default.passages) == 6 and default.passages[2].text.startswith("[Warning")


def test_parse_identification() -> None:
    assert parse_identification("inappropriate: 3, 7; use: 1, 2, 4; answer: Paris.") == ([3, 7], [1, 2, 4], "Paris.")
    assert parse_identification(" Inappropriate: none; use: 1-2 ; answer: x", 5) == ([], [1, 2], "x")
    assert parse_identification("inappropriate: 2, 99", n_items=5) == ([2], [], "")
    assert parse_identification("no idea") == ([], [], "")


class ScriptedGenerator(BaseGenerator):
    """Deterministic test double: names as inappropriate the items that contain a marker word.

    Stands in for a controlled LLM output so the LLM-detector plumbing (prompt, batching,
    parsing) is checked exactly; the real tiny model is exercised in the next test.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def generate(self, batch, settings=None, **overrides):
        self.calls.append(len(batch))
        out = []
        for conv in batch:
            text = conv[-1].content
            lines = [ln for ln in text.splitlines() if ln.startswith("[")]
            bad = [ln.split("]")[0][1:] for ln in lines if "FALSE" in ln]
            out.append(Generation(text=f"inappropriate: {', '.join(bad) or 'none'}; use: 1"))
        return out


def test_llm_detector_with_scripted_generator_in_stage() -> None:
    gen = ScriptedGenerator()
    det = LLMDetector(gen)
    states = [
        ContextState(query="q1", passages=[Passage(id="a", text="fine"), Passage(id="b", text="FALSE claim")]),
        ContextState(query="q2", passages=[Passage(id="c", text="ok"), Passage(id="d", text="ok too")]),
    ]
    SteeringFilter(detector=det, action="demote")(states)
    assert gen.calls == [2]  # one batched call
    assert states[0].flags["inappropriate"] == ["b"] and [p.id for p in states[0].passages] == ["a", "b"]
    assert states[1].flags["inappropriate"] == []


def test_llm_detector_with_real_tiny_model(tiny_llm_dir: Path) -> None:
    from ctxkit.llm.transformers import TransformersGenerator

    det = LLMDetector(TransformersGenerator(str(tiny_llm_dir), device="cpu"), max_new_tokens=8)
    probs = det.score(["the question", "another"], [["a b", "c d", "e"], ["x"]])
    assert [len(p) for p in probs] == [3, 1]
    assert all(set(np.unique(p)) <= {0.0, 1.0} for p in probs)
    assert len(det.last_outputs) == 2
