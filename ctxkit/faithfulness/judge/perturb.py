"""Meaning-changing edits of a sentence, for training the claim judge.

Each function returns a new text, or ``None`` when the edit does not apply. Substitutes keep the
type of the value they replace: a number for a number (same formatting), a date for a date, an
entity for an entity of the same category (chosen by the caller, see
:class:`~ctxkit.faithfulness.judge.data.SubstitutePool`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

__all__ = [
    "PREFIXES",
    "flip_negation",
    "other_date",
    "other_number",
    "restyle",
    "swap_opposite",
]

_NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
                 "fifteen", "twenty", "thirty", "forty", "fifty", "hundred")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_NEGATED = re.compile(r"\b(is|are|was|were|has|have|had|can|could|will|would|does|did|do|should)"
                      r"(\s+not\b|n't\b)", re.IGNORECASE)
_AUX = re.compile(r"\b(is|are|was|were|has|have|had|can|could|will|would|should)\b(?!\s+not\b)")
_VERB_S = re.compile(r"\b(?i:it|he|she|this|that|which)\s+([a-z]+s)\b")


def other_number(value: str, rng: random.Random) -> str | None:
    """A different number written like ``value`` (digits, separators, unit and sign kept)."""
    m = re.search(r"\d+(?:[.,]\d+)*", value)
    if m is None:
        low = value.strip().lower()
        if low in _NUMBER_WORDS:
            choice = rng.choice([w for w in _NUMBER_WORDS if w != low])
            return choice.capitalize() if value.strip()[:1].isupper() else choice
        return None
    digits = m.group(0)
    sep = "," if "," in digits and not re.search(r",\d{1,2}$", digits) else ""
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    try:
        n = float(digits.replace(",", "")) if decimals else int(digits.replace(",", ""))
    except ValueError:
        return None
    for _ in range(10):
        how = rng.random()
        if how < 0.4:
            new = n + rng.choice([-1, 1]) * rng.randint(1, max(1, int(abs(n) * 0.3) or 3))
        elif how < 0.7:
            new = n * rng.choice([2, 3, 0.5, 1.5, 10, 0.1])
        else:
            new = rng.randint(1, 9) * 10 ** max(0, len(str(int(abs(n)))) - 1) + rng.randint(0, 9)
        if decimals:
            new_s = f"{float(new):.{decimals}f}"
        else:
            new = round(new)
            if new == n or new < 0:
                continue
            new_s = f"{new:,}" if sep else str(new)
        if new_s != digits:
            return value[: m.start()] + new_s + value[m.end():]
    return None


def other_date(value: str, rng: random.Random) -> str | None:
    """A different date written like ``value`` (year shifted, or another month or day)."""
    years = list(re.finditer(r"\b(1[0-9]|20)\d{2}\b", value))
    months = [m for m in re.finditer(r"\b(" + "|".join(_MONTHS) + r")\b", value)]
    days = list(re.finditer(r"\b([1-9]|[12]\d|3[01])(st|nd|rd|th)?\b(?!\d)", value))
    edits = []
    if years:
        edits.append("year")
    if months:
        edits.append("month")
    if days and months:
        edits.append("day")
    if re.search(r"\d{1,2}(st|nd|rd|th)\s+century", value, re.IGNORECASE):
        edits.append("century")
    if not edits:
        return None
    what = rng.choice(edits)
    if what == "year":
        m = rng.choice(years)
        y = int(m.group(0))
        new = y + rng.choice([-1, 1]) * rng.choice([1, 2, 3, 5, 10, 12, 20, 25, 50])
        if "s" == value[m.end():m.end() + 1]:  # a decade: "1920s"
            new = y + rng.choice([-1, 1]) * 10 * rng.randint(1, 4)
        return value[: m.start()] + str(new) + value[m.end():]
    if what == "month":
        m = rng.choice(months)
        new = rng.choice([x for x in _MONTHS if x != m.group(0)])
        return value[: m.start()] + new + value[m.end():]
    if what == "day":
        m = rng.choice(days)
        d = int(m.group(1))
        new = rng.choice([x for x in range(1, 29) if x != d])
        return value[: m.start()] + str(new) + (m.group(2) and _ordinal(new) or "") + value[m.end():]
    m = re.search(r"(\d{1,2})(st|nd|rd|th)(\s+century)", value, re.IGNORECASE)
    assert m is not None
    c = int(m.group(1))
    new = max(1, c + rng.choice([-2, -1, 1, 2]))
    return value[: m.start()] + f"{new}{_ordinal(new)}" + m.group(3) + value[m.end():]


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def flip_negation(text: str) -> str | None:
    """``text`` with its first auxiliary negated ("was" -> "was not"), or a negation removed."""
    m = _NEGATED.search(text)
    if m:
        return text[: m.end(1)] + text[m.end():]
    m = _AUX.search(text)
    if m:
        return text[: m.end()] + " not" + text[m.end():]
    m = _VERB_S.search(text)
    if m and len(m.group(1)) > 3 and not m.group(1).endswith("ss"):
        verb = m.group(1)
        base = verb[:-2] + "y" if verb.endswith("ies") else verb[:-1]
        return text[: m.start(1)] + "does not " + base + text[m.end(1):]
    return None


def swap_opposite(text: str, opposites: dict[str, frozenset[str]], rng: random.Random) -> str | None:
    """``text`` with one relation word replaced by its opposite ("before" -> "after")."""
    words = [m for m in re.finditer(r"[A-Za-z]+", text) if m.group(0).lower() in opposites]
    if not words:
        return None
    m = rng.choice(words)
    new = rng.choice(sorted(opposites[m.group(0).lower()]))
    if m.group(0)[:1].isupper():
        new = new.capitalize()
    return text[: m.start()] + new + text[m.end():]


PREFIXES = (
    "According to the record, ", "It is reported that ", "Sources say that ", "In fact, ",
    "As documented, ", "Notably, ", "Reportedly, ", "It is known that ",
)
# Words swapped for a near-synonym by :func:`restyle` (never a value, never an opposite).
_SYNONYMS = {
    "completed": "finished", "finished": "completed", "built": "constructed", "constructed": "built",
    "began": "started", "started": "began", "founded": "established", "established": "founded",
    "located": "situated", "situated": "located", "largest": "biggest", "biggest": "largest",
    "received": "got", "approximately": "about", "about": "around", "around": "about",
    "famous": "well-known", "well-known": "famous", "called": "named", "named": "called",
    "created": "made", "made": "created", "also": "too", "major": "important", "important": "major",
    "people": "persons", "however": "but", "although": "though", "though": "although",
    "home": "house", "city": "town", "film": "movie", "movie": "film", "died": "passed away",
    "often": "frequently", "frequently": "often", "several": "a number of", "many": "numerous",
}


def restyle(text: str, rng: random.Random, keep: Sequence[str] = (), neighbours: Sequence[str] = ()) -> str:
    """``text`` reworded without changing what it claims: a lead-in phrase, near-synonyms, a
    dropped parenthesis, or a neighbouring sentence before or after it. Every string of ``keep``
    (the values the claim is about) stays in the text.
    """
    out = text
    for _ in range(2):
        how = rng.random()
        if how < 0.3:
            words = [m for m in re.finditer(r"[A-Za-z-]+", out) if m.group(0).lower() in _SYNONYMS]
            if words:
                m = rng.choice(words)
                out = out[: m.start()] + _SYNONYMS[m.group(0).lower()] + out[m.end():]
        elif how < 0.5:
            m = re.search(r"\s*\([^()]{2,80}\)", out)
            if m and not any(k and k.lower() in m.group(0).lower() for k in keep):
                out = out[: m.start()] + out[m.end():]
        elif how < 0.75:
            out = rng.choice(PREFIXES) + out[:1].lower() + out[1:]
        elif neighbours:
            n = rng.choice(neighbours)
            out = f"{out} {n}" if rng.random() < 0.6 else f"{n} {out}"
    if any(k and k.lower() not in out.lower() for k in keep):
        return text
    return out
