"""End-to-end FaithfulRAG harness: full-context baseline vs FaithfulRAG per self-think mode.

Datasets (``--data``, default ``../shared/data/faithfulrag``): FaithEval counterfactual,
SQuAD-KRE negative, MuSiQue-KRE negative, RealtimeQA-2022 (113 items in total: with ``--n`` above
113 all of them are used). Each set is shuffled with ``--seed``; the first ``--n`` items are the
fixed slice. Answers and options are stripped.

Methods:
    * ``full_context``: one prompt with the context, question and options (direct answer).
    * ``faithful_<mode>``: self-facts (3 batched calls) -> fact alignment -> self-think answer,
      for mode in direct / cot / scheduled_cot. The self-facts and the alignment do not depend on
      the mode: they are computed once per item and only the answer step runs per mode.

Cost controls (CPU): each item's context is cut to its first ``--context-tokens`` tokens (the
question, options and instructions are never cut; the same cut context is used by every method,
and ``gold_in_context`` reports how often the gold answer survives the cut); new tokens are capped
per step (``--facts-tokens``, ``--answer-tokens``, ``--cot-tokens``); the generator sorts each
call's prompts by length before batching.

Checkpoint / resume: the slices are processed in rounds of ``--chunk`` items per set (round-robin
over the sets, so a stopped run still covers every set with a random sub-slice). After every
chunk, its per-item records are appended to ``--checkpoint`` (default ``<out>.items.jsonl``) and
``--out`` is rewritten with the metrics so far. Re-running the same command skips the items
already in the checkpoint (the checkpoint's settings must match; ``--fresh`` starts over).
``--report`` only summarises an existing checkpoint.

Metrics (after SQuAD-style normalisation): ``em``; ``f1``; ``accuracy`` = the gold answer is
contained in the prediction (an empty prediction is wrong); ``empty_rate``; ``unparsable_rate``
(JSON modes: output with no parsable JSON object); ``memorisation`` (negative sets: the
prediction contains the golden-file answer instead of the substituted one).

``--speed``: items/s of FaithfulRAG (direct mode) run batched vs one item at a time with the
same generator on the same slice (SQuAD-KRE negative).

Usage:
    python benchmarks/faithfulness.py --model default --n 200 --device cpu --out results.json
    python benchmarks/faithfulness.py --model default --n 200 --device cuda --batch-size 32 --out results.json
    python benchmarks/faithfulness.py --model default --speed --n 16 --batch-size 16 --max-batch-tokens 4096 --device cpu --out speed.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import data_missing, data_path, machine, write_json

from ctxkit import ContextState, Passage
from ctxkit.faithfulness import FactAligner, SelfFacts, SelfThinkAnswer
from ctxkit.faithfulness.faithfulrag import clean_field

SETS = {
    "faitheval": ("faitheval_counterfactual.json", None),
    "squad_neg": ("squad_kre_negative.json", "squad_kre_golden.json"),
    "musique_neg": ("musique_kre_negative.json", "musique_kre_golden.json"),
    "realtimeqa": ("realtimeqa_2022_nota.json", None),
}
MODES = ("direct", "cot", "scheduled_cot")
METHODS = ("full_context", *(f"faithful_{m}" for m in MODES))
# settings that change the records: a checkpoint written with other values is not resumed
RECORD_KEYS = ("model", "seed", "data", "context_tokens", "facts_tokens", "answer_tokens", "cot_tokens",
               "max_input_tokens")


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
            "id": str(clean_field(r["id"])),
            "question": clean_field(r["question"]),
            "answer": clean_field(r["answer"]),
            "choices": [c for c in choices if isinstance(c, str)] if isinstance(choices, list) else [],
            "context": clean_field(r["context"]),
            "golden_answer": gold_by_id.get(clean_field(r["id"])),
        })
    random.Random(seed).shuffle(items)
    return items[:n]


def cap_context(items: list[dict], tokenizer: Any, max_tokens: int) -> None:
    """Cut each item's context to its first ``max_tokens`` tokens (in place; 0 = no cap)."""
    for it in items:
        it["context_truncated"] = False
        if max_tokens <= 0:
            continue
        enc = tokenizer(it["context"], add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) > max_tokens:
            it["context"] = it["context"][: offsets[max_tokens - 1][1]].rstrip()
            it["context_truncated"] = True


def states_of(items: list[dict]) -> list[ContextState]:
    return [
        ContextState(query=it["question"], query_id=str(it["id"]),
                     passages=[Passage(id=str(it["id"]), text=it["context"])],
                     metadata={"choices": it["choices"]} if it["choices"] else {})
        for it in items
    ]


def _json_failed(s: ContextState) -> bool:
    return s.trace.counters.get("faithful.json_parse_failures", 0) > 0


def run_chunk(gen: Any, items: list[dict], args: argparse.Namespace, show: bool = False) -> list[dict]:
    """All methods on one chunk of items; returns one record per item."""
    recs = [{
        "set": it["set"], "id": it["id"], "answer": it["answer"], "golden_answer": it["golden_answer"],
        "context_truncated": it["context_truncated"],
        "gold_in_context": contains(it["context"], it["answer"]),
        "pred": {}, "json_failed": {}, "seconds": {},
    } for it in items]
    per = 1.0 / len(items)

    t0 = time.perf_counter()
    base = SelfThinkAnswer(generator=gen, mode="direct", use_aligned=False, max_new_tokens=args.answer_tokens)
    for r, s in zip(recs, base(states_of(items)), strict=True):
        r["pred"]["full_context"] = s.answer or ""
        r["seconds"]["full_context"] = (time.perf_counter() - t0) * per

    t0 = time.perf_counter()
    states = SelfFacts(generator=gen, max_new_tokens=args.facts_tokens)(states_of(items))
    states = FactAligner(device=args.device)(states)
    shared = (time.perf_counter() - t0) * per
    for r, s in zip(recs, states, strict=True):
        r["n_facts"] = len(s.facts)
        r["n_conflicts"] = len(s.conflicts)
        r["list_parse_failed"] = s.trace.counters.get("faithful.list_parse_failures", 0) > 0
        r["seconds"]["self_facts_and_alignment"] = shared
        r["errors"] = list(s.trace.errors)

    for mode in MODES:
        t0 = time.perf_counter()
        stage = SelfThinkAnswer(generator=gen, mode=mode,
                                max_new_tokens=args.answer_tokens if mode == "direct" else args.cot_tokens)
        out = stage([s.model_copy(deep=True) for s in states])
        dt = (time.perf_counter() - t0) * per
        for r, s in zip(recs, out, strict=True):
            r["pred"][f"faithful_{mode}"] = s.answer or ""
            r["json_failed"][f"faithful_{mode}"] = _json_failed(s) if mode != "direct" else None
            r["seconds"][f"faithful_{mode}"] = dt + shared
        if show:
            for s in out[:2]:
                print(f"  [{mode}] Q: {s.query[:80]} -> {s.answer!r}", flush=True)
    return recs


def summarise(recs: list[dict]) -> dict:
    """Metrics per method over the records of one set."""
    n = len(recs)
    res: dict[str, Any] = {"n": n}
    if not n:
        return res
    for m in METHODS:
        em = f1s = acc = empty = unparsable = mem = mem_n = 0.0
        json_mode = m not in ("full_context", "faithful_direct")
        for r in recs:
            pred, gold = r["pred"].get(m, ""), r["answer"]
            em += normalize(pred) == normalize(gold)
            f1s += f1(pred, gold)
            acc += contains(pred, gold)
            empty += not pred.strip()
            if json_mode:
                unparsable += bool(r["json_failed"].get(m))
            ga = r.get("golden_answer")
            if ga and normalize(ga) != normalize(gold):
                mem_n += 1
                mem += contains(pred, ga)
        out = {"em": em / n, "f1": f1s / n, "accuracy": acc / n, "empty_rate": empty / n,
               "unparsable_rate": unparsable / n if json_mode else None,
               "seconds_per_item": sum(r["seconds"].get(m, 0.0) for r in recs) / n}
        if mem_n:
            out["memorisation"] = mem / mem_n
        res[m] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
    res["context_truncated_rate"] = round(sum(r["context_truncated"] for r in recs) / n, 4)
    res["gold_in_context_rate"] = round(sum(r["gold_in_context"] for r in recs) / n, 4)
    res["list_parse_failure_rate"] = round(sum(r.get("list_parse_failed", False) for r in recs) / n, 4)
    res["mean_facts"] = round(sum(r.get("n_facts", 0) for r in recs) / n, 2)
    res["mean_conflicts"] = round(sum(r.get("n_conflicts", 0) for r in recs) / n, 2)
    res["items_with_errors"] = sum(bool(r.get("errors")) for r in recs)
    return res


def read_checkpoint(path: Path) -> tuple[dict | None, list[dict]]:
    if not path.exists():
        return None, []
    header, recs = None, []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: ignore it (its chunk is redone)
            continue
        if "config" in obj:
            header = obj["config"]
        else:
            recs.append(obj)
    return header, recs


def write_results(out: Path, config: dict, recs: list[dict], planned: dict[str, int],
                  host: dict | None = None) -> dict:
    results: dict[str, Any] = {"config": config}
    for name, n_planned in planned.items():
        mine = [r for r in recs if r["set"] == name]
        results[name] = summarise(mine)
        results[name]["planned"] = n_planned
        results[name]["complete"] = len(mine) >= n_planned
    if host is not None:
        results["machine"] = host
    write_json(out, results)
    return results


def speed(gen: Any, items: list[dict], args: argparse.Namespace) -> dict:
    def pipeline(states: list[ContextState]) -> list[ContextState]:
        states = SelfFacts(generator=gen, max_new_tokens=args.facts_tokens)(states)
        states = FactAligner(device=args.device)(states)
        return SelfThinkAnswer(generator=gen, mode="direct", max_new_tokens=args.answer_tokens)(states)

    pipeline(states_of(items[:1]))  # warm-up (model and embedder load)
    t0 = time.perf_counter()
    answers = [s.answer for s in pipeline(states_of(items))]
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single_answers = [pipeline([st])[0].answer for st in states_of(items)]
    single = time.perf_counter() - t0
    res = {"n": len(items), "batched_items_per_s": round(len(items) / batched, 4),
           "one_at_a_time_items_per_s": round(len(items) / single, 4),
           "speedup": round(single / batched, 2), "batch_size": gen.batch_size, "prefill": gen.prefill,
           "batched_seconds": round(batched, 1), "one_at_a_time_seconds": round(single, 1),
           "same_answers_as_one_at_a_time": sum(a == b for a, b in zip(answers, single_answers, strict=True)),
           "answers": answers, "one_at_a_time_answers": single_answers}
    if args.compare_prefill and gen.prefill != "batch":
        # the same batched pipeline with one padded prefill per call, in the same run
        mode, gen.prefill = gen.prefill, "batch"
        t0 = time.perf_counter()
        padded_answers = [s.answer for s in pipeline(states_of(items))]
        padded = time.perf_counter() - t0
        gen.prefill = mode
        res.update({"padded_prefill_seconds": round(padded, 1), "padded_prefill_speedup": round(single / padded, 2),
                    "padded_prefill_same_answers": sum(a == b for a, b in zip(answers, padded_answers, strict=True))})
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=200, help="items per set (the first N after shuffling)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--data", default=str(data_path("faithfulrag")))
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=0, help="items per set per round (0: --batch-size)")
    ap.add_argument("--context-tokens", type=int, default=384, help="cut each context to this many tokens (0: no cut)")
    ap.add_argument("--facts-tokens", type=int, default=48)
    ap.add_argument("--answer-tokens", type=int, default=24)
    ap.add_argument("--cot-tokens", type=int, default=96)
    ap.add_argument("--max-input-tokens", type=int, default=2048)
    ap.add_argument("--max-batch-tokens", type=int, default=0,
                    help="cap on padded prompt tokens per generate call (0: none)")
    ap.add_argument("--prefill", default="auto", choices=("auto", "batch", "rows"),
                    help="TransformersGenerator(prefill=...): how a batch reads its prompts")
    ap.add_argument("--speed", action="store_true", help="measure batched vs one-at-a-time items/s")
    ap.add_argument("--compare-prefill", action="store_true",
                    help="with --speed: also time the batched pipeline with prefill='batch' in the same run")
    ap.add_argument("--show", action="store_true", help="print a few predictions")
    ap.add_argument("--checkpoint", default=None, help="per-item records (JSON lines); default <out>.items.jsonl")
    ap.add_argument("--fresh", action="store_true", help="ignore and overwrite an existing checkpoint")
    ap.add_argument("--report", action="store_true", help="only summarise the checkpoint into --out")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args()
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".items.jsonl")
    data = Path(args.data)
    names = [s for s in args.sets.split(",") if s]
    unknown = [s for s in names if s not in SETS]
    if unknown:
        ap.error(f"unknown set(s) {unknown}; choose from {', '.join(SETS)}")
    config = {k: v for k, v in vars(args).items() if k not in ("out", "checkpoint", "fresh", "report", "show")}

    if args.report:
        header, recs = read_checkpoint(ckpt)
        if header is None:
            print(f"no checkpoint at {ckpt}; nothing to report.")
            return 1
        planned = {s: sum(r["set"] == s for r in recs) for s in names}
        write_results(out, {**header, "report_only": True}, recs, planned)
        for s in names:
            print(s, json.dumps(summarise([r for r in recs if r["set"] == s])))
        print(f"wrote {out}")
        return 0

    if not (data / "squad_kre_negative.json").exists():
        data_missing("faithfulness", data, needs="the FaithfulRAG JSON files")
        return 0
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from ctxkit.llm import TransformersGenerator

    gen = TransformersGenerator(args.model, device=args.device, batch_size=args.batch_size,
                                max_input_tokens=args.max_input_tokens, max_batch_tokens=args.max_batch_tokens or None, prefill=args.prefill)
    tok = gen.tokenizer
    t_start = time.perf_counter()

    if args.speed:
        items = load(data, "squad_neg", args.n, args.seed)
        cap_context(items, tok, args.context_tokens)
        results = {"config": {**config, "device_used": str(gen.device)}, "speed": speed(gen, items, args),
                   "machine": machine()}
        write_json(out, results)
        print(json.dumps(results["speed"], indent=1))
        print(f"wrote {out}")
        return 0

    slices: dict[str, list[dict]] = {}
    for name in names:
        items = load(data, name, args.n, args.seed)
        cap_context(items, tok, args.context_tokens)
        for it in items:
            it["set"] = name
        slices[name] = items
    planned = {name: len(items) for name, items in slices.items()}

    header, recs = (None, []) if args.fresh else read_checkpoint(ckpt)
    if header is not None and any(header.get(k) != config.get(k) for k in RECORD_KEYS):
        diff = {k: (header.get(k), config.get(k)) for k in RECORD_KEYS if header.get(k) != config.get(k)}
        print(f"checkpoint {ckpt} was written with other settings {diff}; pass --fresh to start over "
              "or --checkpoint <new file>.")
        return 2
    if header is None:
        ckpt.write_text(json.dumps({"config": config}) + "\n")
    wanted = {(name, it["id"]) for name, items in slices.items() for it in items}
    recs = [r for r in recs if (r["set"], r["id"]) in wanted]
    done = {(r["set"], r["id"]) for r in recs}
    if done:
        print(f"resuming: {len(done)} items already in {ckpt}", flush=True)
    config["device_used"] = str(gen.device)
    host = machine()

    chunk = args.chunk or args.batch_size
    todo = {name: [it for it in items if (name, it["id"]) not in done] for name, items in slices.items()}
    rounds = max((len(v) + chunk - 1) // chunk for v in todo.values()) if todo else 0
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(v) for v in todo.values()), desc="items", unit="item")
    for r in range(rounds):
        for name in names:
            part = todo[name][r * chunk : (r + 1) * chunk]
            if not part:
                continue
            new = run_chunk(gen, part, args, show=args.show and r == 0)
            with ckpt.open("a") as fh:
                for rec in new:
                    fh.write(json.dumps(rec) + "\n")
            recs.extend(new)
            config["seconds_this_run"] = round(time.perf_counter() - t_start, 1)
            write_results(out, config, recs, planned, host)
            bar.update(len(part))
    bar.close()
    results = write_results(out, config, recs, planned, host)
    for name in names:
        print(name, json.dumps(results[name], indent=1), flush=True)
    print(f"wrote {out} (per-item records: {ckpt})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
