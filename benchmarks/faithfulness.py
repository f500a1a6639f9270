"""End-to-end FaithfulRAG harness: full-context baseline vs FaithfulRAG per self-think mode.

Datasets (``--data``, default ``../shared/data/faithfulrag``): FaithEval counterfactual,
SQuAD-KRE negative, MuSiQue-KRE negative, RealtimeQA-2022. Each set is shuffled with ``--seed``
and the first ``--n`` items are used. Answers and options are stripped.

Methods:
    * ``full_context``: one prompt with the context, question and options (direct answer).
    * ``faithful_<mode>``: self-facts (3 batched calls) -> fact alignment -> self-think answer,
      for mode in direct / cot / scheduled_cot (the self-facts and alignment are shared by the
      three modes, as they do not depend on the mode).

Metrics (after SQuAD-style normalisation): ``em``; ``f1``; ``accuracy`` = the gold answer is
contained in the prediction (an empty prediction is wrong); ``empty_rate``; ``unparsable_rate``
(JSON modes: output with no parsable JSON object); ``memorisation`` (negative sets: the
prediction contains the golden-file answer instead of the substituted one).

``--speed``: items/s of FaithfulRAG (direct mode) run batched vs one item at a time with the
same generator on the same slice.

Usage:
    python benchmarks/faithfulness.py --model default --n 30 --out results.json
    python benchmarks/faithfulness.py --model default --n 200 --device cuda --batch-size 32 --out results.json
    python benchmarks/faithfulness.py --model default --n 16 --speed --out speed.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctxkit.faithfulness.faithfulrag import FactAligner, SelfFacts, SelfThinkAnswer  # noqa: E402
from ctxkit.faithfulness.parsing import clean_field  # noqa: E402
from ctxkit.types import ContextState, Passage  # noqa: E402

SETS = {
    "faitheval": ("faitheval_counterfactual.json", None),
    "squad_neg": ("squad_kre_negative.json", "squad_kre_golden.json"),
    "musique_neg": ("musique_kre_negative.json", "musique_kre_golden.json"),
    "realtimeqa": ("realtimeqa_2022_nota.json", None),
}
MODES = ("direct", "cot", "scheduled_cot")


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation) | {"“", "”", "’", "‘"})
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g or same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def contains(pred: str, gold: str) -> bool:
    """Gold contained in the prediction (the correct direction); empty predictions are wrong."""
    p, g = normalize(pred), normalize(gold)
    return bool(p) and bool(g) and f" {g} " in f" {p} "


def load(data: Path, name: str, n: int, seed: int) -> list[dict]:
    fname, golden = SETS[name]
    rows = json.loads((data / fname).read_text())
    gold_by_id = {}
    if golden:
        gold_by_id = {clean_field(r["id"]): clean_field(r["answer"]) for r in json.loads((data / golden).read_text())}
    items = []
    for r in rows:
        choices = clean_field(r.get("choices") or [])
        items.append({
            "id": clean_field(r["id"]),
            "question": clean_field(r["question"]),
            "answer": clean_field(r["answer"]),
            "choices": [c for c in choices if isinstance(c, str)] if isinstance(choices, list) else [],
            "context": clean_field(r["context"]),
            "golden_answer": gold_by_id.get(clean_field(r["id"])),
        })
    random.Random(seed).shuffle(items)
    return items[:n]


def states_of(items: list[dict]) -> list[ContextState]:
    return [
        ContextState(query=it["question"], query_id=str(it["id"]),
                     passages=[Passage(id=str(it["id"]), text=it["context"])],
                     metadata={"choices": it["choices"]} if it["choices"] else {})
        for it in items
    ]


def score(items: list[dict], states: list[ContextState], json_mode: bool) -> dict:
    n = len(items)
    em = f1s = acc = empty = unparsable = mem = mem_n = 0.0
    for it, s in zip(items, states, strict=True):
        pred = s.answer or ""
        em += normalize(pred) == normalize(it["answer"])
        f1s += f1(pred, it["answer"])
        acc += contains(pred, it["answer"])
        empty += not pred.strip()
        if json_mode:
            unparsable += s.trace.counters.get("faithful.json_parse_failures", 0) > 0
        ga = it["golden_answer"]
        if ga and normalize(ga) != normalize(it["answer"]):
            mem_n += 1
            mem += contains(pred, ga)
    out = {"n": n, "em": em / n, "f1": f1s / n, "accuracy": acc / n, "empty_rate": empty / n,
           "unparsable_rate": unparsable / n if json_mode else None}
    if mem_n:
        out["memorisation"] = mem / mem_n
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def run_set(gen, items: list[dict], args) -> dict:
    res = {}
    t0 = time.perf_counter()
    base = SelfThinkAnswer(generator=gen, mode="direct", use_aligned=False, max_new_tokens=args.answer_tokens)
    res["full_context"] = score(items, base(states_of(items)), False)
    res["full_context"]["seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    states = SelfFacts(generator=gen, max_new_tokens=args.facts_tokens)(states_of(items))
    aligner = FactAligner(device=args.device)
    states = aligner(states)
    shared = time.perf_counter() - t0
    for mode in MODES:
        t0 = time.perf_counter()
        stage = SelfThinkAnswer(generator=gen, mode=mode,
                                max_new_tokens=args.answer_tokens if mode == "direct" else args.cot_tokens)
        out = stage([s.model_copy(deep=True) for s in states])
        res[f"faithful_{mode}"] = score(items, out, mode != "direct")
        res[f"faithful_{mode}"]["seconds"] = round(time.perf_counter() - t0 + shared, 1)
        if args.show:
            for s in out[:2]:
                print(f"  [{mode}] Q: {s.query[:80]} -> {s.answer!r}")
    res["list_parse_failure_rate"] = round(
        sum(s.trace.counters.get("faithful.list_parse_failures", 0) > 0 for s in states) / max(len(states), 1), 4)
    return res


def speed(gen, items: list[dict], args) -> dict:
    def pipeline(states):
        states = SelfFacts(generator=gen, max_new_tokens=args.facts_tokens)(states)
        states = FactAligner(device=args.device)(states)
        return SelfThinkAnswer(generator=gen, mode="direct", max_new_tokens=args.answer_tokens)(states)

    pipeline(states_of(items[:1]))  # warm-up (model load)
    t0 = time.perf_counter()
    pipeline(states_of(items))
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for st in states_of(items):
        pipeline([st])
    single = time.perf_counter() - t0
    return {"n": len(items), "batched_items_per_s": round(len(items) / batched, 4),
            "one_at_a_time_items_per_s": round(len(items) / single, 4),
            "speedup": round(single / batched, 2), "batch_size": gen.batch_size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "faithfulrag"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--facts-tokens", type=int, default=128)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--cot-tokens", type=int, default=192)
    ap.add_argument("--max-input-tokens", type=int, default=2048)
    ap.add_argument("--speed", action="store_true", help="measure batched vs one-at-a-time items/s")
    ap.add_argument("--show", action="store_true", help="print a few predictions")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "squad_kre_negative.json").exists():
        print(f"data not found at {data}: pass --data <folder with the FaithfulRAG json files>; nothing to do.")
        return 0
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(args.model, device=args.device, batch_size=args.batch_size,
                                max_input_tokens=args.max_input_tokens)
    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "out"}}
    t0 = time.perf_counter()
    if args.speed:
        items = load(data, "squad_neg", args.n, args.seed)
        results["speed"] = speed(gen, items, args)
        print(json.dumps(results["speed"], indent=1))
    else:
        for name in args.sets.split(","):
            items = load(data, name, args.n, args.seed)
            results[name] = run_set(gen, items, args)
            print(name, json.dumps(results[name], indent=1), flush=True)
    results["config"]["seconds"] = round(time.perf_counter() - t0, 1)
    results["config"]["device_used"] = str(gen.device)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
