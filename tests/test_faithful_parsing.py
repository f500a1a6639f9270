"""Tolerant list / JSON parsing of LLM outputs (pure Python, no models)."""

from __future__ import annotations

import pytest

from ctxkit.faithfulness.faithfulrag import clean_field, parse_json_answer, parse_list


@pytest.mark.parametrize(
    "text",
    [
        "1. The Eiffel Tower was completed in 1889.\n2. It is 330 metres tall.",
        "1) The Eiffel Tower was completed in 1889.\n2) It is 330 metres tall.",
        "- The Eiffel Tower was completed in 1889.\n- It is 330 metres tall.",
        "* The Eiffel Tower was completed in 1889.\n* It is 330 metres tall.",
        "• The Eiffel Tower was completed in 1889.\n• It is 330 metres tall.",
        "Fact 1: The Eiffel Tower was completed in 1889.\nFact 2: It is 330 metres tall.",
        "Here are the facts:\n\n1. The Eiffel Tower was completed in 1889.\n2. It is 330 metres tall.",
        "1. The Eiffel Tower was completed in 1889. 2. It is 330 metres tall.",
        "(1) **The Eiffel Tower was completed in 1889.**\n(2) It is 330 metres tall.",
    ],
)
def test_list_formats_never_cut_at_digits(text: str) -> None:
    assert parse_list(text) == ["The Eiffel Tower was completed in 1889.", "It is 330 metres tall."]


def test_list_item_continues_over_lines_and_keeps_numbers() -> None:
    text = "1. Penicillin was discovered\n   by Fleming in 1928.\n2. Released 3.5 million doses in 1943."
    assert parse_list(text) == [
        "Penicillin was discovered by Fleming in 1928.",
        "Released 3.5 million doses in 1943.",
    ]


def test_list_without_markers_is_a_failure() -> None:
    assert parse_list("It was completed in 1889. 2 people built it.") is None
    assert parse_list("") is None
    assert parse_list("   ") is None


@pytest.mark.parametrize(
    ("text", "answer", "method"),
    [
        ('{"reason": "the context says so", "answer": "Spain"}', "Spain", "json"),
        ('Sure!\n```json\n{"reason": "x", "answer": "Spain"}\n```\nHope it helps', "Spain", "json"),
        ("{'reason': 'x', 'answer': 'Spain',}", "Spain", "near_json"),
        ('Reasoning first. {"answer": "Spain", "reason": "y",} trailing prose', "Spain", "near_json"),
        ('{"reason": "because", "answer": "Spain"', "Spain", "json"),
        ('{"Final Answer": "B. Spain"}', "B. Spain", "json"),
    ],
)
def test_json_answers(text: str, answer: str, method: str) -> None:
    parsed = parse_json_answer(text)
    assert parsed.ok
    assert parsed.answer == answer
    assert parsed.method == method


def test_json_failure_extracts_answer_field_not_whole_text() -> None:
    raw = 'I think {"reason": "the text says "Spain" here", "answer": "Spain" and then garbage'
    parsed = parse_json_answer(raw)
    assert not parsed.ok
    assert parsed.answer == "Spain"
    assert parsed.method == "field"
    labelled = parse_json_answer("Step 1: look.\nStep 2: think.\nFinal answer: Madrid")
    assert (labelled.ok, labelled.answer) == (False, "Madrid")
    bare = parse_json_answer("  Madrid  ")
    assert (bare.ok, bare.answer, bare.method) == (False, "Madrid", "bare")


@pytest.mark.parametrize(
    "text",
    [
        "Step 1: the key sentences talk about Normandy.\nStep 2: France and Spain are both named.\nSo it is Spain.",
        "I think the region is in France because the model knows it but the context says Spain instead.",
        '{"reason": "no answer field at all"}',
    ],
)
def test_unparsable_output_is_never_scored_as_the_answer(text: str) -> None:
    """The reference defect: a failed parse scored the whole raw text, which "contains" every
    option a long reasoning mentions. Here it gives an empty answer."""
    parsed = parse_json_answer(text)
    assert (parsed.ok, parsed.answer, parsed.method) == (False, "", "none")


def test_clean_field_decodes_dataset_literals() -> None:
    assert clean_field("[' Spain ', ' Italy ', 'France']") == ["Spain", "Italy", "France"]
    assert clean_field("'Tamaulipas'") == "Tamaulipas"
    assert clean_field('"I don\'t know"') == "I don't know"
    assert clean_field("  plain  ") == "plain"
    assert clean_field("[not a list") == "[not a list"
