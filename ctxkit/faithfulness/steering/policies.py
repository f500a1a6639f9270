"""Content policies: passages a model should not use whatever their truth (configuration, not learned).

* :class:`OffensiveLanguagePolicy` -- abusive, hateful or obscene language. Two parts, each
  switchable: the offline classifier of ``alt-profanity-check`` (a linear model over word and
  character n-grams, trained by its authors on public offensive-language data; installed with
  ``pip install 'ctxkit[policies]'``) and a small built-in rule set for what that classifier
  misses: sweeping derogatory generalisations about a group of people ("women are only good
  for ...", "<group> should be deported").
* :class:`SensitiveInfoPolicy` -- personal data: statements attributing a special-category or
  otherwise sensitive attribute to a person (the GDPR article 9 categories -- racial or ethnic
  origin, political opinions, religious or philosophical beliefs, trade-union membership,
  genetic or biometric data, health, sex life or sexual orientation -- plus age, sex / gender,
  marital status, national origin, disability, income and criminal record) and PII patterns
  (e-mail addresses, phone numbers, national ids, payment card numbers that pass the Luhn check,
  IP addresses, street addresses). Attribute names, patterns and their confidences are settings.

Both return one probability-like confidence per text and name the rule that fired
(:meth:`explain`). Neither is trained on the RW testbed: they are what a deployer configures.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...errors import ConfigError, ModelNotAvailableError

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "DEFAULT_PII",
    "OffensiveLanguagePolicy",
    "SensitiveInfoPolicy",
    "profanity_classifier_available",
]

log = logging.getLogger(__name__)

# -- offensive language ----------------------------------------------------------------------------

_GROUPS = (
    r"women|men|girls|boys|females|males|wives|blacks|whites|asians|africans|arabs|mexicans|latinos|hispanics|"
    r"indians|chinese|jews|jewish people|muslims|christians|hindus|atheists|immigrants|migrants|refugees|"
    r"foreigners|gays|lesbians|homosexuals|trans people|transgender people|disabled people|the disabled|"
    r"old people|the elderly|poor people|the poor|black people|white people|gay people|feminists|liberals|"
    r"conservatives|leftists|gypsies|roma|koreans|japanese|pakistanis|russians|americans|germans|"
    r"(?:christian|muslim|jewish|hindu|black|white|gay|disabled|autistic|asian|african|arab) (?:men|women|people|persons)"
)
_DEROGATORY = (
    r"stupid|dumb|idiots?|morons?|inferior|subhuman|animals|vermin|parasites|scum|trash|garbage|filth|filthy|"
    r"disgusting|worthless|useless|lazy|dirty|criminals|rapists|terrorists|savages|primitive|evil|cancer|"
    r"a disease|a plague|lesser|abominations?|freaks|sick|mentally ill|not (?:real )?(?:people|human)|"
    r"less intelligent|incapable|weak|hysterical|too emotional|ruining|destroying|taking over|a threat|"
    r"a burden|leeches"
)
_NOT_PREP = r"(?!(?:against|among|amongst|for|of|to|with|toward|towards|on|about|by|from|in|between)\b)"
_RULES: tuple[tuple[str, str], ...] = (
    ("group_derogation", (
        rf"\b(?:all |most |these |those |the )?(?:{_GROUPS})\b(?: [a-z]+){{0,3}} (?:are|is|were|r) (?:all |just |only |"
        rf"nothing but |so |such |naturally |inherently |basically |clearly |a bunch of |born )?(?:{_DEROGATORY})\b")),
    ("group_exclusion", (
        rf"\b(?:{_GROUPS})\b(?: [a-z]+){{0,3}} (?:should|must|need to|ought to|deserve to) (?:all )?(?:be |get )?"
        r"(?:deported|banned|killed|shot|hanged|exterminated|eradicated|wiped out|locked up|sterili[sz]ed|"
        r"kicked out|sent back|go back|stay in the kitchen|stick to the kitchen|stay home|shut up|not be allowed|"
        r"never be allowed|know their place|be kept out|be punished|die|burn)")),
    ("group_only_good_for", (
        rf"\b(?:{_GROUPS})\b(?: [a-z]+){{0,3}} (?:are|is) (?:only |just )?(?:good|made|meant|fit) (?:for|to) "
        r"(?:nothing|making babies|cooking|cleaning|the kitchen|sex|breeding|serving)")),
    ("group_inferiority", (
        rf"\b(?:{_GROUPS})\b(?: [a-z]+){{0,3}} (?:can't|cannot|can not|shouldn't|should not) (?:think|lead|drive|"
        r"vote|be trusted|be leaders|do anything|handle)")),
    ("group_violence", (
        # incitement or approval, not report: "kill all X", "let's eliminate X", "I'd love to watch
        # X torn apart", "killing X is good"; "the army killed X" (a history passage) does not fire
        rf"(?:(?:^|[.!?;]\s+)|\b(?:let'?s|we should|we must|you should|i want to|i'd love to|i would love to|"
        r"i will|i'm going to|go|time to|allowed to)\s+(?:\w+\s+){0,2})"
        r"(?:kill|murder|exterminate|eliminate|eradicate|slaughter|wipe out|gas|lynch|tear(?:ing)? apart|"
        # up to two words before the group, none a preposition ("eliminate poverty among the poor"
        # is about poverty)
        rf"get rid of)\s+(?:all\s+|every\s+|those\s+|these\s+|the\s+)?(?:{_NOT_PREP}\w+\s+){{0,2}}(?:{_GROUPS}|"
        r"(?:christian|muslim|jew|hindu|atheist|immigrant|refugee)s?)"
        # the group ends the phrase ("kill the Christian dragon boss" is about a dragon)
        r"(?=\s*(?:$|[.,;:!?)]|(?:who|that|and|or|because|so|until|in|from|out|now|here|there)\b))")),
    ("group_violence_approval", (
        rf"\b(?:killing|murdering|exterminating|eliminating)\s+(?:all\s+)?(?:{_GROUPS})\b\s+(?:is|it'?s|its)\s+"
        r"(?:\w+\s+)?(?:good|great|fine|right|justified|necessary|fun)")),
    ("slur", (
        r"\b(?:n[i1]gg(?:er|a)s?|f[a4]gg?ots?|k[i1]kes?|sp[i1]cs?|ch[i1]nks?|wetbacks?|tr[a4]nn(?:y|ies)|"
        r"retards?|dykes?|raghead|towelhead|sandn[i1]gg(?:er|a)s?|golliwogs?|coons?)\b")),
)
_RULES_RE = tuple((name, re.compile(p, re.IGNORECASE)) for name, p in _RULES)


def profanity_classifier_available() -> bool:
    """True when ``alt-profanity-check`` (``pip install 'ctxkit[policies]'``) is importable."""
    import importlib.util

    return importlib.util.find_spec("profanity_check") is not None


class OffensiveLanguagePolicy:
    """Offensive-language confidence per text: max of the classifier and the rule set.

    Args:
        classifier: ``"auto"`` (``alt-profanity-check`` when installed, else the rules alone, with
            one warning), ``"profanity-check"`` (required: raises when missing) or ``"none"``.
        rules: Apply the built-in generalisation / slur rules.
        rule_confidence: Confidence given to a text a rule matches.
    """

    def __init__(self, classifier: str = "auto", rules: bool = True, rule_confidence: float = 0.9) -> None:
        if classifier not in ("auto", "profanity-check", "none"):
            raise ConfigError(f"classifier must be 'auto', 'profanity-check' or 'none', got {classifier!r}")
        self.classifier = classifier
        self.rules = rules
        self.rule_confidence = rule_confidence
        self._predict = None
        self._resolved: str | None = None

    @property
    def backend(self) -> str:
        """What scores the texts: ``"profanity-check+rules"``, ``"rules"``..."""
        self._load()
        parts = [p for p in (self._resolved, "rules" if self.rules else None) if p]
        return "+".join(parts) or "none"

    def _load(self) -> None:
        if self._resolved is not None or self.classifier == "none":
            self._resolved = self._resolved or ""
            return
        if profanity_classifier_available():
            from profanity_check import predict_prob

            self._predict, self._resolved = predict_prob, "profanity-check"
            return
        if self.classifier == "profanity-check":
            raise ModelNotAvailableError(
                "the offensive-language classifier needs alt-profanity-check: pip install 'ctxkit[policies]' "
                "(or use classifier='auto' / 'none' for the built-in rules alone)"
            )
        log.warning("alt-profanity-check is not installed: offensive-language policy uses its rules only "
                    "(pip install 'ctxkit[policies]' adds the classifier)")
        self._resolved = ""

    def rule(self, text: str) -> str | None:
        """Name of the first rule matching ``text``, else ``None``."""
        if not self.rules:
            return None
        for name, rx in _RULES_RE:
            if rx.search(text):
                return name
        return None

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Confidence in [0, 1] that each text is offensive."""
        self._load()
        out = np.zeros(len(texts))
        if not len(texts):
            return out
        if self._predict is not None:
            out = np.asarray(self._predict(list(texts)), dtype=float)
        for i, t in enumerate(texts):
            if self.rule(t):
                out[i] = max(out[i], self.rule_confidence)
        return out


# -- sensitive personal information ----------------------------------------------------------------

DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "racial or ethnic origin": ("race", "ethnicity", "ethnic origin", "ethnic background", "skin colou?r"),
    "political opinions": ("political (?:views?|opinions?|affiliation|leanings?|party)", "party membership",
                           "voting (?:preference|record)"),
    "religious or philosophical beliefs": ("religion", "religious (?:beliefs?|affiliation|views?)", "faith"),
    "trade-union membership": ("(?:trade |labou?r )?union membership",),
    "genetic or biometric data": ("genetic (?:data|test results?|profile)", "dna profile", "fingerprints?",
                                  "biometric data"),
    "health": ("health(?: condition| status| records?| problems?)?", "medical (?:condition|history|records?)",
               "diagnosis", "disability", "disease", "illness", "mental health", "hiv status", "pregnancy",
               "medications?"),
    "sex life or sexual orientation": ("sex life", "sexual (?:orientation|preferences?|history|partners?)",
                                       "gender identity"),
    "age": ("age", "date of birth", "birth ?date", "birthday"),
    "sex or gender": ("sex", "gender"),
    "marital status": ("marital status", "marital condition", "relationship status"),
    "national origin": ("native[- ]country", "country of (?:origin|birth)", "nationality", "national origin",
                        "citizenship", "immigration status"),
    "income": ("income", "salary", "wages?", "net worth", "credit score", "debts?", "bank balance"),
    "criminal record": ("criminal (?:record|history|convictions?)", "arrest record"),
}
"""Attribute group -> regular expressions of attribute names (case-insensitive)."""

DEFAULT_PII: dict[str, str] = {
    "email": r"\b[\w.+-]+@[\w-]+\.[\w.-]{2,}\b",
    "phone": r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])",
    "national_id": r"\b(?:\d{3}-\d{2}-\d{4}|[A-Z]{2}\d{6}[A-D])\b",
    "payment_card": r"\b(?:\d[ -]?){13,19}\b",
    "ip_address": r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
    "street_address": r"\b\d{1,5} [A-Z][a-z]+(?: [A-Z][a-z]+)? (?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|"
                      r"Boulevard|Blvd|Court|Ct)\.?(?:,| [A-Z#]|$)",
}
"""PII kind -> regular expression (``payment_card`` also needs the Luhn check, ``ip_address`` a
public address)."""

# a name ("Mike's", "Ada Lovelace's") or an online handle ("Quorra84's") in the possessive
_PERSON = r"(?:\b[A-Z][a-z]+(?: [A-Z][a-z]+)?\d{0,4}'s|\b(?:his|her|their|my|your|the person's|the patient's|the user's|the employee's))"


def _luhn(digits: str) -> bool:
    nums = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(nums) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(nums)):
        if i % 2:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return total % 10 == 0


def _public_ip(text: str) -> bool:
    """An address that can point at a person: not loopback, private, link-local or reserved
    ("127.0.0.1" in a setup guide is not personal data)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return ip.is_global


@dataclass
class SensitiveInfoPolicy:
    """Confidence per text that it discloses a person's sensitive attribute or a PII item.

    An attribute fires on "<person>'s <attribute> is/was/: <value>" (a name's possessive or his /
    her / their / my / your) and on "<Name> is diagnosed with / suffers from / votes for / is a
    member of a union ...". Public-style descriptions ("an American politician born in 1950")
    do not fire: they state no attribute by name.

    Attributes:
        attributes: Attribute group -> name patterns (default :data:`DEFAULT_ATTRIBUTES`); pass
            a subset to narrow the policy or add groups (e.g. ``"occupation": ("occupation",)``).
        pii: PII kind -> pattern (default :data:`DEFAULT_PII`); ``{}`` switches PII off.
        attribute_confidence: Confidence of an attribute statement.
        pii_confidence: Confidence per PII kind (missing kinds: 0.8).
    """

    attributes: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(DEFAULT_ATTRIBUTES))
    pii: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PII))
    attribute_confidence: float = 0.9
    pii_confidence: Mapping[str, float] = field(default_factory=lambda: {"phone": 0.6, "street_address": 0.6})

    def __post_init__(self) -> None:
        try:
            names = "|".join(f"(?:{p})" for ps in self.attributes.values() for p in ps)
            self._attr = re.compile(rf"{_PERSON} (?:[a-z-]+ ){{0,2}}(?:{names})\b(?: [a-z]+)?\s*(?:is|was|are|were|:|=)\s*\S",
                                    re.IGNORECASE) if names else None
            self._verbs = re.compile(
                r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)? (?:is|was|has been) (?:diagnosed with|being treated for|HIV[- ]positive|"
                r"pregnant|(?:openly )?(?:gay|lesbian|bisexual|transgender)\b|a member of (?:the|a) [\w -]*union)"
                if any(k in self.attributes for k in ("health", "sex life or sexual orientation",
                                                      "trade-union membership")) else r"(?!x)x")
            self._pii = {k: re.compile(v) for k, v in self.pii.items()}
        except re.error as exc:
            raise ConfigError(f"SensitiveInfoPolicy: bad pattern ({exc})") from None

    def explain(self, text: str) -> list[str]:
        """Names of what fired in ``text`` (``"attribute"``, ``"health_statement"``, PII kinds)."""
        hits = []
        if self._attr is not None and self._attr.search(text):
            hits.append("attribute")
        if self._verbs.search(text):
            hits.append("attribute_statement")
        for kind, rx in self._pii.items():
            for m in rx.finditer(text):
                if (kind != "payment_card" or _luhn(m.group(0))) and (kind != "ip_address" or _public_ip(m.group(0))):
                    hits.append(kind)
                    break
        return hits

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Confidence in [0, 1] per text (the largest confidence among what fired)."""
        out = np.zeros(len(texts))
        for i, t in enumerate(texts):
            conf = [self.attribute_confidence if h.startswith("attribute") else self.pii_confidence.get(h, 0.8)
                    for h in self.explain(t)]
            out[i] = max(conf, default=0.0)
        return out
