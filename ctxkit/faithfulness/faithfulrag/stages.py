"""FaithfulRAG as pipeline stages: self-facts, fact-to-chunk alignment, self-think answering.

Per batch of questions, every LLM step is ONE generator call over all questions of the batch:

1. :class:`SelfKnowledge` - the knowledge the model thinks it needs (numbered list).
2. :class:`SelfContext` - a short background passage written from that knowledge.
3. :class:`FactExtraction` - atomic statements extracted from it: the model's beliefs, written
   to ``state.facts``. :class:`SelfFacts` runs steps 1-3.
4. :class:`FactAligner` (no LLM) - the retrieved context is split into ~20-word sentence chunks;
   facts and chunks are embedded in one encoder call; each fact keeps its top-k chunks by cosine;
   the pooled chunks are deduplicated and the best ``top_k`` kept
   (``state.metadata["aligned_chunks"]``). Conflicts between the facts and the aligned chunks are
   recorded in ``state.conflicts``.
5. :class:`SelfThinkAnswer` - the answer prompt with the aligned chunks, the full context, the
   question and options; modes ``direct``, ``cot`` and ``scheduled_cot``.

:class:`FaithfulRAG` chains them; with ``beliefs="trusted"`` it skips steps 1-3 and uses beliefs
from ``state.metadata["beliefs"]`` instead of the model's.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from ...errors import InputError
from ...pipeline import BaseStage
from ...types import ContextState
from ..conflicts.beliefs import Belief
from ..conflicts.detector import ConflictDetector
from ..conflicts.stage import format_conflicts
from ..conflicts.text import split_chunks
from .parsing import parse_json_answer, parse_list
from .prompts import LETTERS, answer_prompt, facts_prompt, knowledge_prompt, self_context_prompt

__all__ = [
    "FactAligner",
    "FactExtraction",
    "FaithfulRAG",
    "SelfContext",
    "SelfFacts",
    "SelfKnowledge",
    "SelfThinkAnswer",
    "context_of",
]


def context_of(state: ContextState) -> str:
    """The full retrieved context of a state: its passages' texts joined by blank lines."""
    return "\n\n".join(p.text for p in state.passages if p.text.strip())


class _GeneratorStage(BaseStage):
    """Shared plumbing: a generator from a spec (or object) and one batched call per step."""

    generator: Any = "default"
    max_new_tokens: int = Field(256, ge=1)

    def warm_up(self) -> None:
        from ...llm.spec import build_generator

        self._gen = build_generator(self.generator)

    def to_config(self) -> dict[str, Any]:
        cfg = super().to_config()
        gen = self.generator
        if not isinstance(gen, str | dict):
            from ...llm.spec import generator_spec

            spec = generator_spec(gen)
            cfg["generator"] = spec if spec is not None else repr(gen)
        return cfg

    def _share(self, other: BaseStage) -> None:
        """Use ``other``'s loaded generator (composite stages load the model once)."""
        self._gen = other._gen  # type: ignore[attr-defined]
        self._warm = True

    def _generate(self, states: list[ContextState], prompts: list[str], step: str) -> list[str | None]:
        """One generator call for the batch; failures are recorded on their item (None)."""
        from ...llm.base import Message

        if not prompts:
            return []
        batch = [[Message(role="user", content=p)] for p in prompts]
        try:
            # an override, not a new SamplingSettings: the generator's own settings (repetition
            # penalty, temperature, stop strings...) stay in force
            gens = self._gen.generate(batch, max_new_tokens=self.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - a broken backend fails every item of this step, not the run
            for s in states:
                s.trace.errors.append(f"{self.name}/{step}: generator failed: {exc}")
                s.trace.count("faithful.generation_errors")
            return [None] * len(states)
        out: list[str | None] = []
        for s, g in zip(states, gens, strict=True):
            if g.error is not None:
                s.trace.errors.append(f"{self.name}/{step}: {g.error}")
                s.trace.count("faithful.generation_errors")
                out.append(None)
            else:
                out.append(g.text)
        return out


def _fallback_items(text: str) -> list[str]:
    """Lines (or sentences) of an output that has no list markers."""
    from ...retrievers.chunking import split_sentences

    lines = [ln.strip(" -*•\t") for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:
        lines = split_sentences(text)
    return [ln for ln in lines if len(ln) > 2]


def _list_items(state: ContextState, text: str | None) -> list[str]:
    if text is None:
        return []
    items = parse_list(text)
    if items is None:
        state.trace.count("faithful.list_parse_failures")
        items = _fallback_items(text)
    return items


class SelfKnowledge(_GeneratorStage):
    """Step 1: ask the model which facts it needs (``state.metadata["self_knowledge"]``)."""


    def run(self, states: list[ContextState]) -> list[ContextState]:
        texts = self._generate(states, [knowledge_prompt(s.query) for s in states], "knowledge")
        for s, t in zip(states, texts, strict=True):
            s.metadata["self_knowledge"] = None if t is None else _list_items(s, t)
        return states


class SelfContext(_GeneratorStage):
    """Step 2: the model writes a background passage (``state.metadata["self_context"]``)."""


    def run(self, states: list[ContextState]) -> list[ContextState]:
        # an item whose knowledge step failed (None) is skipped, not sent again
        todo = [s for s in states if not ("self_knowledge" in s.metadata and s.metadata["self_knowledge"] is None)]
        prompts = [self_context_prompt(s.query, list(s.metadata.get("self_knowledge") or [])) for s in todo]
        texts = self._generate(todo, prompts, "context")
        for s in states:
            s.metadata["self_context"] = ""
        for s, t in zip(todo, texts, strict=True):
            s.metadata["self_context"] = (t or "").strip()
        return states


class FactExtraction(_GeneratorStage):
    """Step 3: atomic facts from the self-context, written to ``state.facts``.

    Without a self-context (step 2 not run or failed) the step uses the self-knowledge items.
    """


    def run(self, states: list[ContextState]) -> list[ContextState]:
        todo = [s for s in states if (s.metadata.get("self_context") or "").strip()]
        texts = self._generate(todo, [facts_prompt(s.query, s.metadata["self_context"]) for s in todo], "facts")
        for s, t in zip(todo, texts, strict=True):
            s.facts = _list_items(s, t)
        for s in states:
            if not s.facts:
                s.facts = list(s.metadata.get("self_knowledge") or [])
            s.trace.count("faithful.self_facts", len(s.facts))
        return states


class SelfFacts(_GeneratorStage):
    """Steps 1-3 in one stage (three batched generator calls in total for the whole batch)."""


    def warm_up(self) -> None:
        super().warm_up()
        self._steps = [
            cls(generator=self.generator, max_new_tokens=self.max_new_tokens, name=self.name)
            for cls in (SelfKnowledge, SelfContext, FactExtraction)
        ]
        for st in self._steps:
            st._share(self)

    def run(self, states: list[ContextState]) -> list[ContextState]:
        for st in self._steps:
            states = st.run(states)
        return states


class FactAligner(BaseStage):
    """Step 4: the context chunks closest to the beliefs (no LLM).

    Chunks are sentence-packed to about ``chunk_words`` words (no overlap, never empty). All
    facts and chunks of the batch are embedded in one encoder call; per state the cosine
    matrix ``facts @ chunks.T`` gives each fact's ``per_fact`` best chunks, which are pooled,
    deduplicated and cut to ``top_k`` by score. Results: ``state.metadata["aligned_chunks"]``
    (``[{"text", "passage_id", "score"}]``) and, with ``detect_conflicts``, ``state.conflicts``.
    """


    embedder: str = "default"
    device: str = "auto"
    chunk_words: int = Field(20, ge=1)
    per_fact: int = Field(5, ge=1)
    top_k: int = Field(5, ge=1)
    detect_conflicts: bool = True

    def warm_up(self) -> None:
        from ...models import get_embedder

        self._emb = get_embedder(self.embedder, device=self.device)
        self._detector = ConflictDetector(self.embedder, device=self.device)

    def run(self, states: list[ContextState]) -> list[ContextState]:
        torch = __import__("ctxkit._lazy", fromlist=["require"]).require("torch")
        chunks = [
            [(c, p.id) for p in s.passages for c in split_chunks(p.text, self.chunk_words)] for s in states
        ]
        texts: list[str] = []
        for s, cs in zip(states, chunks, strict=True):
            texts.extend(s.facts)
            texts.extend(c for c, _ in cs)
        vecs = self._emb.encode(texts, as_tensor=True) if texts else None
        off = 0
        for s, cs in zip(states, chunks, strict=True):
            nf, nc = len(s.facts), len(cs)
            f_vec = vecs[off : off + nf] if vecs is not None else None
            c_vec = vecs[off + nf : off + nf + nc] if vecs is not None else None
            off += nf + nc
            if nc == 0:
                s.metadata["aligned_chunks"] = []
                continue
            if nf == 0:  # no beliefs: keep the first chunks, say so
                s.trace.count("faithful.no_facts")
                s.metadata["aligned_chunks"] = [
                    {"text": c, "passage_id": pid, "score": 0.0} for c, pid in cs[: self.top_k]
                ]
                continue
            sims = f_vec @ c_vec.T  # (facts, chunks), on the embedder's device
            k = min(self.per_fact, nc)
            top = torch.topk(sims, k, dim=1)
            best: dict[int, float] = {}
            for score, ci in zip(top.values.flatten().tolist(), top.indices.flatten().tolist(), strict=True):
                if score > best.get(ci, -2.0):
                    best[ci] = score
            seen: set[str] = set()
            aligned = []
            for ci, score in sorted(best.items(), key=lambda kv: -kv[1]):
                key = " ".join(cs[ci][0].lower().split())
                if key in seen:
                    continue
                seen.add(key)
                aligned.append({"text": cs[ci][0], "passage_id": cs[ci][1], "score": round(float(score), 4)})
                if len(aligned) >= self.top_k:
                    break
            s.metadata["aligned_chunks"] = aligned
        if self.detect_conflicts:
            self._conflicts(states)
        return states

    def _conflicts(self, states: list[ContextState]) -> None:
        from ...types import Passage

        beliefs, passages = [], []
        for s in states:
            src = s.metadata.get("beliefs")
            if src:
                bs = [src] if isinstance(src, str | dict) else list(src)
            else:
                bs = [Belief(text=f, source="model") for f in s.facts]
            beliefs.append(bs)
            passages.append(
                [Passage(id=a["passage_id"] or f"c{i}", text=a["text"]) for i, a in enumerate(s.metadata["aligned_chunks"])]
            )
        for s, found in zip(states, self._detector.detect_batch(beliefs, passages), strict=True):
            s.conflicts = found
            s.trace.count("conflicts.found", len(found))


_LETTER_LABEL = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])(?:[.):]|$))")


def _map_choice(answer: str, choices: list[str]) -> str:
    """Map ``"B"``, ``"B."``, ``"B)"``, ``"(B) text"`` or an option's text to the option text.

    A letter counts as an option label only on its own or followed by ``.``, ``)`` or ``:``
    (``"A dog"`` starts with the article "A", not with option A), and any text after the label
    must agree with that option; otherwise the option whose text appears in the answer wins.
    """
    a = answer.strip()
    m = _LETTER_LABEL.match(a)
    if m and len(choices) <= len(LETTERS):
        i = LETTERS.find((m.group(1) or m.group(2)).upper())
        if 0 <= i < len(choices):
            rest = a[m.end():].strip()
            if not rest or rest.lower() in choices[i].lower() or choices[i].lower() in rest.lower():
                return choices[i]
    low = a.lower()
    for c in sorted(choices, key=len, reverse=True):
        if c and c.lower() in low:
            return c
    return a


class SelfThinkAnswer(_GeneratorStage):
    """Step 5: answer with the aligned chunks, the full context and the question.

    Modes: ``direct`` (short answer), ``cot`` (JSON ``{"reason", "answer"}``) and
    ``scheduled_cot`` (fact analysis -> judgement -> context check -> final verification, as
    JSON). Multiple-choice options come from ``state.metadata["choices"]``; a letter answer is
    mapped to the option text. Writes ``state.prompt``, ``state.answer`` (``""`` when generation
    failed), ``state.metadata["raw_answer"]`` and, for JSON modes, ``state.metadata["reason"]``;
    JSON failures are counted as ``faithful.json_parse_failures`` and the answer is then taken
    from an ``"answer"`` field, an ``Answer:`` line or a bare one-line reply; other output gives
    an empty answer (counted in ``faithful.empty_answers``), never the whole raw text.
    """


    mode: Literal["direct", "cot", "scheduled_cot"] = "scheduled_cot"
    use_aligned: bool = True
    use_conflict_note: bool = True
    max_new_tokens: int = Field(256, ge=1)

    def _prompt(self, s: ContextState) -> str:
        facts = [a["text"] for a in s.metadata.get("aligned_chunks") or []] if self.use_aligned else None
        choices = s.metadata.get("choices") or None
        if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
            raise InputError("state.metadata['choices'] must be a list of option strings")
        note = s.metadata.get("conflict_note") if self.use_conflict_note else None
        markers = getattr(self._gen, "context_markers", None)
        return answer_prompt(
            s.query, context_of(s), mode=self.mode, facts=facts, choices=choices, note=note, markers=markers
        )

    def run(self, states: list[ContextState]) -> list[ContextState]:
        prompts = [self._prompt(s) for s in states]
        texts = self._generate(states, prompts, "answer")
        for s, p, t in zip(states, prompts, texts, strict=True):
            s.prompt = p
            s.metadata["raw_answer"] = t
            if t is None:
                s.answer = ""
                continue
            if self.mode == "direct":
                ans = t.strip()
                m = re.match(r"^\s*(?:final\s+)?answer\s*[:：]\s*", ans, re.IGNORECASE)
                if m:
                    ans = ans[m.end():]
                ans = ans.split("\n")[0].strip().strip('"').strip()
            else:
                parsed = parse_json_answer(t)
                if not parsed.ok:
                    s.trace.count("faithful.json_parse_failures")
                if parsed.data and "reason" in parsed.data:
                    s.metadata["reason"] = str(parsed.data["reason"])
                s.metadata["answer_parse"] = parsed.method
                ans = parsed.answer
            if not ans:
                s.trace.count("faithful.empty_answers")
            choices = s.metadata.get("choices")
            s.answer = _map_choice(ans, choices) if choices and ans else ans
        return states


class FaithfulRAG(_GeneratorStage):
    """The whole FaithfulRAG method as one stage.

    Args (settings):
        generator: Generator spec or object (``"default"``: the offline SmolLM2).
        beliefs: ``"model"`` (self-facts from the LLM, 3 batched calls) or ``"trusted"``
            (``state.metadata["beliefs"]``; no LLM calls before answering).
        mode: Self-think mode of the answer step.
        chunk_words / per_fact / top_k: Alignment settings (see :class:`FactAligner`).
        warn_conflicts: Add a list of detected conflicts to the answer prompt.
        answer: Run the answer step (``False`` stops after alignment and conflict records).

    Example:
        >>> stage = FaithfulRAG(generator="default", mode="direct")
        >>> pipe = Pipeline([my_retriever, stage]); pipe.run("Who discovered penicillin?").answer
    """


    beliefs: Literal["model", "trusted"] = "model"
    mode: Literal["direct", "cot", "scheduled_cot"] = "scheduled_cot"
    embedder: str = "default"
    device: str = "auto"
    chunk_words: int = Field(20, ge=1)
    per_fact: int = Field(5, ge=1)
    top_k: int = Field(5, ge=1)
    warn_conflicts: bool = False
    answer: bool = True
    facts_max_new_tokens: int = Field(160, ge=1)

    def warm_up(self) -> None:
        super().warm_up()
        self._facts = SelfFacts(generator=self.generator, max_new_tokens=self.facts_max_new_tokens, name=self.name)
        self._facts._share(self)
        self._facts._steps = [
            cls(generator=self.generator, max_new_tokens=self.facts_max_new_tokens, name=self.name)
            for cls in (SelfKnowledge, SelfContext, FactExtraction)
        ]
        for st in self._facts._steps:
            st._share(self)
        self._aligner = FactAligner(
            embedder=self.embedder, device=self.device, chunk_words=self.chunk_words,
            per_fact=self.per_fact, top_k=self.top_k, name=self.name,
        )
        self._aligner._ensure_warm()
        self._answer = SelfThinkAnswer(
            generator=self.generator, mode=self.mode, max_new_tokens=self.max_new_tokens,
            use_conflict_note=self.warn_conflicts, name=self.name,
        )
        self._answer._share(self)

    def run(self, states: list[ContextState]) -> list[ContextState]:
        if self.beliefs == "model":
            states = self._facts.run(states)
        else:
            for s in states:
                src = s.metadata.get("beliefs")
                if not src:
                    s.trace.count("faithful.no_trusted_beliefs")
                    continue
                bs = [src] if isinstance(src, str | dict) else list(src)
                s.facts = [Belief.coerce(b).text for b in bs]
        states = self._aligner.run(states)
        if self.warn_conflicts:
            for s in states:
                note = format_conflicts(s.conflicts)
                if note:
                    s.metadata["conflict_note"] = note
        if self.answer:
            states = self._answer.run(states)
        return states
