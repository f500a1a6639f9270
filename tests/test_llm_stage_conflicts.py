"""Conflict records feed the answer prompt of ``GenerateAnswer`` (real tiny LLM, real MiniLM)."""

from __future__ import annotations

import pytest

from ctxkit import ContextState, Passage, Pipeline, load_pipeline
from ctxkit.faithfulness.conflicts import ConflictCheck
from ctxkit.llm import GenerateAnswer
from ctxkit.llm.stage import conflict_section
from ctxkit.llm.transformers import TransformersGenerator
from ctxkit.types import Conflict

HEADING = "Conflicts with known facts"


def _states() -> list[ContextState]:
    return [
        ContextState(query="When was the Eiffel Tower completed?", passages=[
            Passage(id="p1", text="Paris is the capital of France."),
            Passage(id="p2", text="The Eiffel Tower was completed in 1901."),
        ]),
        ContextState(query="Who discovered penicillin?", passages=[
            Passage(id="p3", text="Alexander Fleming discovered penicillin in 1928."),
        ]),
    ]


@pytest.fixture(scope="module")
def gen(tiny_llm_dir):
    return TransformersGenerator(str(tiny_llm_dir), device="cpu")


def test_warned_conflicts_appear_in_the_prompt_and_only_there(gen, minilm):
    check = ConflictCheck(beliefs=["The Eiffel Tower was completed in 1889."], action="warn", device="cpu")
    answer = GenerateAnswer(generator=gen, sampling={"max_new_tokens": 3})
    states = Pipeline([check, answer]).batch(_states())
    tower, other = states
    assert tower.conflicts and tower.metadata.get("conflict_note")
    assert not other.conflicts
    p = tower.prompt
    assert HEADING in p
    section = p[p.index(HEADING):]
    # cites the passage by its number in the prompt, with both sides of the disagreement
    assert 'passage [2] says "The Eiffel Tower was completed in 1901."' in section
    assert "1889" in section and "1901 vs 1889" in section
    # outside the truncatable context block, before the question
    assert p.index("</context>") < p.index(HEADING) < p.index("Question: When was the Eiffel Tower")
    assert isinstance(tower.answer, str)
    assert HEADING not in other.prompt and "known fact" not in other.prompt
    assert other.prompt.endswith("Question: Who discovered penicillin?\nAnswer:")


def test_section_can_be_switched_off_and_round_trips(gen, tiny_llm_dir):
    st = _states()[0]
    st.conflicts = [Conflict(belief="The Eiffel Tower was completed in 1889.", chunk="completed in 1901",
                             passage_id="p2", similarity=0.9, kind="date", score=0.8)]
    off = GenerateAnswer(generator=gen, conflicts=False)
    assert HEADING not in off.build_messages(st)[-1].content
    on = GenerateAnswer(generator=gen)
    assert HEADING in on.build_messages(st)[-1].content
    spec = {"backend": "transformers", "model": str(tiny_llm_dir), "device": "cpu"}
    cfg = load_pipeline({"stages": [{"type": "generate", "generator": spec, "conflicts": False,
                                     "max_conflicts": 2}]}).to_config()
    assert cfg["stages"][0]["conflicts"] is False and cfg["stages"][0]["max_conflicts"] == 2


def test_section_placement_in_custom_templates(gen):
    st = _states()[0]
    st.conflicts = [Conflict(belief="b", chunk="c", passage_id="p2", similarity=0.9, score=0.9)]
    slot = GenerateAnswer(generator=gen, template="{conflicts}Q: {question}\nDocs:\n{context}")
    text = slot.build_messages(st)[-1].content
    assert text.startswith(HEADING) and text.index("Q: When") > text.index('"c"')
    plain = GenerateAnswer(generator=gen, template="Docs: {context}\nQ: {question}")
    assert plain.build_messages(st)[-1].content.startswith(HEADING)
    marked = GenerateAnswer(generator=gen, template="<context>{context}</context> Q: {question}")
    text = marked.build_messages(st)[-1].content
    assert text.index("</context>") < text.index(HEADING) < text.index("Q: When")


def test_conflicts_in_passages_left_out_are_not_mentioned(gen):
    st = _states()[0]
    st.conflicts = [Conflict(belief="b", chunk="c", passage_id="p2", similarity=0.9, score=0.9)]
    stage = GenerateAnswer(generator=gen, max_passages=1)  # p2 is not in the prompt
    assert HEADING not in stage.build_messages(st)[-1].content


def test_section_from_a_note_without_records_and_max_items():
    st = ContextState(query="q", metadata={
        "conflict_note": "Note: the context disagrees with known facts in these places:\n- one\n- two\n- three"})
    text = conflict_section(st, max_items=2)
    assert text.startswith(HEADING) and "- one\n- two" in text and "three" not in text and "Note:" not in text
    assert conflict_section(ContextState(query="q")) == ""
    st = ContextState(query="q", conflicts=[
        Conflict(belief=f"b{i}", chunk=f"c{i}", similarity=0.9, score=s) for i, s in enumerate([0.2, 0.9, 0.5])])
    lines = conflict_section(st, max_items=2).splitlines()[1:]
    assert [ln.split('"')[1] for ln in lines] == ["c1", "c2"]  # strongest first
