"""Tolerant parsing of LLM outputs: numbered/bulleted lists and near-JSON answers.

Small models rarely produce clean output. These parsers accept the usual variations and report
failure explicitly (``None`` / ``ok=False``) so callers can count it in the trace instead of
silently using garbage.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BARE_ANSWER_MAX_WORDS", "JsonAnswer", "clean_field", "parse_json_answer", "parse_list"]

# A list marker at the start of a line: "1.", "1)", "(1)", "-", "*", "•", "Fact 1:", "Step 2 -".
# The marker must be followed by whitespace (or end the label with ":"), so a digit *inside* an
# item ("completed in 1889.") never starts a new item.
_MARKER = re.compile(
    r"""^\s*(?:
        (?:\(?\d{1,3}[.)]|\d{1,3}\s*[:\-–]) (?=\s)          # 1.  1)  (1)  1:  1 -
      | [-*•·▪‣◦+]  (?=\s)                                  # bullets
      | (?:fact|knowledge|statement|item|point|step)\s*\#?\d{1,3}\s*[:.)\-–]   # Fact 1:
    )\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_INLINE_NUMBERED = re.compile(r"(?:^|\s)(\d{1,2})[.)]\s+(?=[A-Z\"'(])")
_HEADER = re.compile(r"^\s*(?:here (?:is|are)|sure|the following|facts?:|knowledge:|list:)", re.IGNORECASE)


def _strip_item(text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)  # markdown bold
    return text.strip().strip("\"'`").strip()


def parse_list(text: str, *, min_chars: int = 2) -> list[str] | None:
    """Parse a numbered or bulleted list into its items.

    Accepts ``1.``, ``1)``, ``(1)``, ``-``, ``*``, ``•`` and ``Fact 1:`` style markers, items that
    continue over several lines, and numbered items run together on one line
    (``"1. A. 2. B."``). A number inside an item never ends it: ``"1. It was completed in 1889."``
    gives ``["It was completed in 1889."]``.

    Args:
        text: Raw model output.
        min_chars: Items shorter than this (after stripping) are dropped.

    Returns:
        The items in order, or ``None`` when no list marker was found (a parse failure). Output
        with a single unmarked line is also ``None``: callers decide whether to use it as is.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    lines = text.strip().splitlines()
    items: list[str] = []
    current: list[str] | None = None
    found_marker = False
    for line in lines:
        m = _MARKER.match(line)
        if m:
            found_marker = True
            if current is not None:
                items.append(" ".join(current))
            current = [line[m.end() :]]
        elif current is not None and line.strip():
            current.append(line.strip())
        elif current is not None:  # blank line closes the item
            items.append(" ".join(current))
            current = None
    if current is not None:
        items.append(" ".join(current))
    if not found_marker or len(items) == 1:
        # "1. First fact. 2. Second fact." on one line: split only at "<n>. " followed by a
        # capital, and only when the numbers run 1, 2, 3... (so "in 1889. The" never splits).
        flat = " ".join(line.strip() for line in lines)
        cuts = [m for m in _INLINE_NUMBERED.finditer(flat)]
        seq = []
        expected = 1
        for m in cuts:
            if int(m.group(1)) == expected:
                seq.append(m)
                expected += 1
        if len(seq) < 2:
            if not found_marker:
                return None
        else:
            items = []
            for i, m in enumerate(seq):
                end = seq[i + 1].start() if i + 1 < len(seq) else len(flat)
                items.append(flat[m.end() : end])
    out = [_strip_item(i) for i in items]
    return [i for i in out if len(i) >= min_chars and not _HEADER.match(i)] or None


@dataclass
class JsonAnswer:
    """The result of :func:`parse_json_answer`.

    Attributes:
        answer: The extracted answer ("" when nothing could be found).
        data: The parsed object when the JSON (or near-JSON) parsed, else ``None``.
        ok: True when a JSON object with an answer field parsed.
        method: How the answer was found: ``"json"``, ``"near_json"``, ``"field"`` (regex on an
            ``"answer"`` field of broken JSON), ``"label"`` (an ``Answer:`` line), ``"bare"`` (the
            whole output is one short line, see :data:`BARE_ANSWER_MAX_WORDS`) or ``"none"`` (no
            answer found: ``answer`` is ``""``).
    """

    answer: str
    data: dict[str, Any] | None = None
    ok: bool = False
    method: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


BARE_ANSWER_MAX_WORDS = 10
"""An unparsable output is taken as the answer only when it is one line of at most this many words."""

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_ANSWER_FIELD = re.compile(
    r"""["']?(?:final[_ ]?answer|answer)["']?\s*[:=]\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^,}\n]+))""",
    re.IGNORECASE,
)
_ANSWER_LABEL = re.compile(r"(?:^|\n)\s*\**(?:final\s+)?answer\**\s*[:：]\s*(.+)", re.IGNORECASE)


def _candidates(text: str) -> list[str]:
    out = [m.group(1) for m in _FENCE.finditer(text)]
    # Every balanced {...} block, outermost first.
    depth, start = 0, -1
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append(text[start : i + 1])
    if "{" in text and depth > 0:  # unterminated object: close it
        out.append(text[start:] + "}")
    return out


def _loads(block: str) -> tuple[dict[str, Any] | None, str]:
    block = block.strip()
    try:
        obj = json.loads(block)
        return (obj, "json") if isinstance(obj, dict) else (None, "")
    except ValueError:
        pass
    fixed = re.sub(r",\s*([}\]])", r"\1", block)  # trailing commas
    for attempt in (fixed, fixed.replace("true", "True").replace("false", "False").replace("null", "None")):
        try:
            obj = ast.literal_eval(attempt)  # single quotes
            if isinstance(obj, dict):
                return {str(k): v for k, v in obj.items()}, "near_json"
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
    try:
        obj = json.loads(fixed)
        return (obj, "near_json") if isinstance(obj, dict) else (None, "")
    except ValueError:
        return None, ""


def _answer_of(obj: dict[str, Any]) -> str | None:
    lowered = {k.lower().replace(" ", "_"): v for k, v in obj.items()}
    for key in ("answer", "final_answer", "finalanswer", "final", "prediction", "option"):
        if key in lowered and lowered[key] is not None:
            v = lowered[key]
            if isinstance(v, list):
                v = ", ".join(str(x) for x in v)
            return str(v).strip()
    return None


def parse_json_answer(text: str) -> JsonAnswer:
    """Extract the answer from a JSON-ish model output such as ``{"reason": ..., "answer": ...}``.

    Tolerates code fences, prose around the object, single quotes, trailing commas and an
    unterminated object. When nothing parses, an ``"answer": ...`` field or an ``Answer: ...``
    line is extracted with a regex. When both are absent, a bare reply (one line of at most
    :data:`BARE_ANSWER_MAX_WORDS` words, no braces) is the answer (``method="bare"``); anything
    else gives ``answer=""`` (``method="none"``): the whole raw text is never scored as the answer
    (the reference implementation's defect: a long reasoning text "contains" many answers).
    All three fallbacks have ``ok=False``.
    """
    if not isinstance(text, str):
        return JsonAnswer(answer="")
    for block in _candidates(text):
        obj, how = _loads(block)
        if obj is not None:
            ans = _answer_of(obj)
            if ans is not None:
                return JsonAnswer(answer=ans, data=obj, ok=True, method=how)
    m = _ANSWER_FIELD.search(text)
    if m:
        ans = next(g for g in m.groups() if g is not None)
        return JsonAnswer(answer=ans.strip().strip("\"'").strip(), method="field")
    m = _ANSWER_LABEL.search(text)
    if m:
        return JsonAnswer(answer=m.group(1).strip().strip("*").strip(), method="label")
    bare = text.strip()
    if bare and "\n" not in bare and "{" not in bare and len(bare.split()) <= BARE_ANSWER_MAX_WORDS:
        return JsonAnswer(answer=bare, method="bare")
    return JsonAnswer(answer="", method="none")


def clean_field(value: Any) -> Any:
    """Normalise a dataset field: decode a quoted or list-literal string, strip whitespace.

    ``"'France'"`` -> ``"France"``; ``"[' Spain ', 'Italy']"`` -> ``["Spain", "Italy"]``.
    """
    if isinstance(value, str):
        s = value.strip()
        if len(s) >= 2 and ((s[0] == s[-1] and s[0] in "'\"") or (s[0] == "[" and s[-1] == "]")):
            try:
                value = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                return s
            return clean_field(value)
        return s
    if isinstance(value, list | tuple):
        return [clean_field(v) for v in value]
    return value
