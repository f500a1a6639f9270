"""FaithfulRAG stages: batching, parsing counters, alignment (real MiniLM), real tiny LLM."""

from __future__ import annotations

from typing import Any

import pytest

from ctxkit import Pipeline, build_stage
from ctxkit.errors import ConfigError
from ctxkit.faithfulness.faithfulrag import (
    FactAligner,
    FactExtraction,
    FaithfulRAG,
    SelfContext,
    SelfFacts,
    SelfKnowledge,
    SelfThinkAnswer,
)
from ctxkit.llm.base import BaseGenerator, Generation, Message, SamplingSettings
from ctxkit.types import ContextState, Passage


class ScriptedGenerator(BaseGenerator):
    """Test double for LLM output we must control (malformed lists, broken JSON, failures).

    It implements the real Generator protocol; ``reply(prompt)`` decides each output, and every
    ``generate`` call is recorded so tests can check that a step is ONE call for the batch.
    """

    def __init__(self, reply) -> None:
        super().__init__()
        self.reply = reply
        self.calls: list[int] = []
        self.prompts: list[str] = []

    def generate(self, batch: list[list[Message]], settings: SamplingSettings | None = None, **kw: Any) -> list[Generation]:
        self.calls.append(len(batch))
        out = []
        for conv in batch:
            prompt = conv[-1].content
            self.prompts.append(prompt)
            r = self.reply(prompt)
            out.append(Generation(text="", error=r.args[0], finish_reason="error") if isinstance(r, Exception)
                       else Generation(text=r))
        return out


def reply(prompt: str) -> str | Exception:
    if prompt.startswith("Before answering"):
        if "Normandy" in prompt:
            return "Here you go:\n1. Normandy is a region in France.\n2. It was settled in 911."
        if "fail" in prompt:
            return RuntimeError("backend exploded")
        return "Paris is the capital. It has the tower."  # no list markers -> parse failure
    if prompt.startswith("Write a short background"):
        return "Normandy is a region in northern France. Rollo received it in 911 from the king."
    if prompt.startswith("Extract the key facts"):
        return "1. Normandy is a region in France.\n2. Rollo received Normandy in 911."
    if '"answer"' in prompt:  # cot / scheduled_cot
        if "Normandy" in prompt:
            return 'Steps done.\n```json\n{"reason": "the context says Spain", "answer": "B",}\n```'
        return 'reasoning... "answer": "Paris" and more text'
    return "Answer: Spain\nbecause the context says so"


def _states() -> list[ContextState]:
    return [
        ContextState(
            query="In what country is Normandy located?",
            passages=[Passage(id="d1", text=(
                "The Normans gave their name to Normandy, a region in Spain. "
                "They descended from Norse raiders. Rollo was their first ruler and received the land in 911."
            ))],
            metadata={"choices": ["France", "Spain", "Italy"]},
        ),
        ContextState(query="What is the capital of France?",
                     passages=[Passage(id="d2", text="Paris is the capital and largest city of France.")]),
        ContextState(query="this one will fail", passages=[Passage(id="d3", text="Nothing here.")]),
    ]


def test_self_fact_steps_batch_parse_and_record_failures() -> None:
    gen = ScriptedGenerator(reply)
    states = SelfFacts(generator=gen)(_states())
    assert gen.calls == [3, 2, 2]  # one call per step for the batch; later steps skip the failed item
    norm, paris, failed = states
    assert norm.metadata["self_knowledge"] == ["Normandy is a region in France.", "It was settled in 911."]
    assert norm.facts == ["Normandy is a region in France.", "Rollo received Normandy in 911."]
    assert paris.trace.counters["faithful.list_parse_failures"] == 1
    assert paris.metadata["self_knowledge"] == ["Paris is the capital.", "It has the tower."]
    assert failed.trace.counters["faithful.generation_errors"] >= 1
    assert any("backend exploded" in e for e in failed.trace.errors)
    assert failed.facts == []


def test_each_step_usable_alone() -> None:
    gen = ScriptedGenerator(reply)
    [s] = SelfKnowledge(generator=gen)([_states()[0]])
    assert len(s.metadata["self_knowledge"]) == 2
    [s] = SelfContext(generator=gen)([s])
    assert "Rollo" in s.metadata["self_context"]
    [s] = FactExtraction(generator=gen)([s])
    assert s.facts[1] == "Rollo received Normandy in 911."


def test_aligner_topk_dedupe_and_conflicts(minilm) -> None:
    state = _states()[0]
    state.passages.append(Passage(id="dup", text="The Normans gave their name to Normandy, a region in Spain."))
    state.facts = ["Normandy is a region in France.", "Rollo received Normandy in 911."]
    aligner = FactAligner(top_k=2, chunk_words=12)
    aligner._ensure_warm()
    aligner._emb = aligner._detector._embedder = minilm
    [s] = aligner([state])
    aligned = s.metadata["aligned_chunks"]
    assert len(aligned) == 2
    assert len({a["text"].lower() for a in aligned}) == 2  # the duplicate chunk is dropped
    assert {a["text"][:11] for a in aligned} == {"The Normans", "Rollo was t"}
    assert aligned[0]["score"] >= aligned[1]["score"]
    assert all(a["text"].strip() for a in aligned)
    kinds = {(c.kind, c.belief_span, c.chunk_span) for c in s.conflicts}
    assert ("entity", "France", "Spain") in kinds


def test_self_think_modes_parse_and_map_choices() -> None:
    gen = ScriptedGenerator(reply)
    states = _states()[:2]
    for s in states:
        s.metadata["aligned_chunks"] = [{"text": s.passages[0].text, "passage_id": s.passages[0].id, "score": 1.0}]
    direct = SelfThinkAnswer(generator=gen, mode="direct")([s.model_copy(deep=True) for s in states])
    assert direct[0].answer == "Spain"  # "Answer:" prefix and trailing lines removed, mapped to option
    assert "Options:\nA. France\nB. Spain" in direct[0].prompt and "Key sentences" in direct[0].prompt
    cot = SelfThinkAnswer(generator=gen, mode="scheduled_cot")([s.model_copy(deep=True) for s in states])
    assert cot[0].answer == "Spain" and cot[0].metadata["reason"] == "the context says Spain"
    assert "faithful.json_parse_failures" not in cot[0].trace.counters
    assert cot[1].answer == "Paris" and cot[1].trace.counters["faithful.json_parse_failures"] == 1
    assert "Fact analysis" in cot[1].prompt


def test_faithful_rag_composite_and_trusted_beliefs(minilm) -> None:
    gen = ScriptedGenerator(reply)
    stage = FaithfulRAG(generator=gen, mode="cot", warn_conflicts=True)
    stage._ensure_warm()
    stage._aligner._emb = stage._aligner._detector._embedder = minilm
    out = Pipeline([stage]).batch(_states())
    assert gen.calls == [3, 2, 2, 3]
    assert out[0].answer == "Spain" and out[0].conflicts
    assert "disagrees with known facts" in out[0].prompt
    assert out[2].answer == "" or out[2].answer is not None
    # trusted beliefs: no LLM call before the answer
    gen2 = ScriptedGenerator(reply)
    trusted = FaithfulRAG(generator=gen2, beliefs="trusted", mode="direct")
    trusted._ensure_warm()
    trusted._aligner._emb = trusted._aligner._detector._embedder = minilm
    st = _states()[0]
    st.metadata["beliefs"] = ["In what country is Normandy located? France"]
    [st] = trusted([st])
    assert gen2.calls == [1]
    assert st.conflicts[0].chunk_span == "Spain" and st.answer == "Spain"


def test_config_roundtrip_and_bad_settings() -> None:
    stage = FaithfulRAG(generator={"backend": "transformers", "model": "some/dir"}, mode="direct", top_k=3)
    again = build_stage(stage.to_config())
    assert again.to_config() == stage.to_config()
    with pytest.raises(ConfigError, match="mode"):
        SelfThinkAnswer(mode="telepathy")
    with pytest.raises(ConfigError, match="top_k"):
        FactAligner(top_k=0)


def test_real_tiny_transformers_model(tiny_llm_dir, minilm) -> None:
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", batch_size=4)
    stage = FaithfulRAG(generator=gen, mode="direct", max_new_tokens=8, facts_max_new_tokens=8)
    stage._ensure_warm()
    stage._aligner._emb = stage._aligner._detector._embedder = minilm
    out = stage(_states()[:2])
    for s in out:
        assert not s.trace.errors
        assert isinstance(s.answer, str) and s.metadata["raw_answer"] is not None
        assert s.prompt and "Question:" in s.prompt and "<context>" in s.prompt
        assert isinstance(s.metadata["self_knowledge"], list)
    # The long scheduled-CoT instructions do not fit the tiny model's 512 positions: the failure
    # is recorded on each item (empty answer), the batch is not aborted.
    long = SelfThinkAnswer(generator=gen, mode="scheduled_cot", max_new_tokens=8)
    first, second = long(out)
    assert first.answer == "" and any("prompt too long" in e for e in first.trace.errors)
    assert first.trace.counters["faithful.generation_errors"] == 1
    assert not second.trace.errors and second.answer is not None  # shorter item still answered
