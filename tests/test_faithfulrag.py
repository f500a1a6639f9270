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
        if "Question: In what country is Normandy" in prompt:
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
    assert gen.calls == [3, 2, 2, 3]  # one batched call per step; the failed item skips steps 2-3
    norm, paris, failed = out
    # Normandy: model beliefs -> aligned chunks -> a France/Spain conflict -> a warned prompt -> "B" mapped
    assert norm.facts == ["Normandy is a region in France.", "Rollo received Normandy in 911."]
    assert norm.metadata["aligned_chunks"][0]["passage_id"] == "d1"
    assert ("entity", "France", "Spain") in {(c.kind, c.belief_span, c.chunk_span) for c in norm.conflicts}
    assert "disagrees with known facts" in norm.prompt and norm.metadata["conflict_note"] in norm.prompt
    assert norm.answer == "Spain" and norm.metadata["reason"] == "the context says Spain"
    assert "faithful.json_parse_failures" not in norm.trace.counters
    # broken JSON: the "answer" field is extracted and the failure counted
    assert paris.answer == "Paris" and paris.metadata["answer_parse"] == "field"
    assert paris.trace.counters["faithful.json_parse_failures"] == 1
    # a failed first step: recorded on the item, no beliefs, the batch still answered
    assert failed.facts == [] and failed.metadata["self_knowledge"] is None
    assert any("backend exploded" in e for e in failed.trace.errors)
    assert failed.trace.counters["faithful.generation_errors"] == 1
    assert failed.trace.counters["faithful.no_facts"] == 1 and not failed.conflicts
    assert failed.answer == "Paris"
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


def test_map_choice_reads_labels_not_articles() -> None:
    from ctxkit.faithfulness.faithfulrag.stages import _map_choice

    choices = ["big dog", "dog", "cat"]
    assert _map_choice("A dog", choices) == "dog"  # the article "A", not option A
    assert _map_choice("A cat", choices) == "cat"
    for label in ("B", "b", "B.", "B)", "(B)", "B: dog", "(B) dog", "B. dog"):
        assert _map_choice(label, choices) == "dog", label
    assert _map_choice("(A) big dog", choices) == "big dog"
    assert _map_choice("C. dog", choices) == "dog"  # a label contradicted by its text: the text wins
    assert _map_choice("a horse", choices) == "a horse"  # nothing matches: kept as given


class RecordingGenerator(ScriptedGenerator):
    """Records the sampling settings each call really runs with (BaseGenerator's merge)."""

    def __init__(self, reply, settings) -> None:
        super().__init__(reply)
        self.default_settings = SamplingSettings(**settings)
        self.used: list[SamplingSettings] = []

    def generate(self, batch, settings=None, **kw):
        self.used.append(self._settings(settings, kw))
        return super().generate(batch)


def test_steps_keep_the_generator_sampling_settings() -> None:
    """A step sets its max_new_tokens; the generator's own repetition penalty, temperature and
    stop strings must still apply (a fresh SamplingSettings used to replace them)."""
    gen = RecordingGenerator(reply, {"repetition_penalty": 1.3, "temperature": 0.7, "seed": 5, "stop": ["###"]})
    states = SelfFacts(generator=gen, max_new_tokens=40)(_states()[:2])
    for s in states:
        s.metadata["aligned_chunks"] = [{"text": s.passages[0].text, "passage_id": s.passages[0].id, "score": 1.0}]
    SelfThinkAnswer(generator=gen, mode="direct", max_new_tokens=24)(states)
    assert [u.max_new_tokens for u in gen.used] == [40, 40, 40, 24]
    for used in gen.used:
        assert (used.repetition_penalty, used.temperature, used.seed, used.stop) == (1.3, 0.7, 5, ["###"])


def test_key_sentences_survive_truncation(tiny_llm_dir) -> None:
    """A long context and a small prompt budget: truncation shortens the full context and keeps
    every aligned key sentence, the question and the instructions."""
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", max_input_tokens=450)
    filler = " ".join(f"the quick brown fox number {i} jumps over the lazy dog." for i in range(40))
    key = ["penicillin was discovered by alexander fleming in 1928", "the eiffel tower was completed in 1889"]
    state = ContextState(query="who discovered penicillin", passages=[Passage(id="p", text=filler)],
                         metadata={"aligned_chunks": [{"text": k, "passage_id": "p", "score": 0.9} for k in key]})
    step = SelfThinkAnswer(generator=gen, mode="direct", max_new_tokens=4)
    step._ensure_warm()
    full = step._prompt(state)
    seen = gen.prompt([Message(role="user", content=full)], max_new_tokens=4)  # what the model reads
    assert len(gen._encode(gen.render(full))) > 450  # truncation really happened
    assert "lazy dog" in seen and filler not in seen  # the full context was shortened...
    assert all(k in seen for k in key)  # ...and the key sentences kept
    assert "Question: who discovered penicillin" in seen and "Reply with" in seen
    [out] = step([state])
    assert out.trace.errors == [] and out.prompt == full


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
