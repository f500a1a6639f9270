"""TruthfulQA MC1/MC2 with plain decoding, CAAD (10 / 100 grounding examples), few-shot and CAD.

Grounding examples (question + best truthful answer) come from a split disjoint from the
evaluation questions: the 790 questions of ``mc_task.json`` are shuffled with ``--seed``; the first
100 form the grounding pool (CAAD-10 uses its first 10), the evaluation slice is the next
``--n-eval``.

Scoring (standard TruthfulQA MC): every option is scored by the sum of its token log-probabilities
as the assistant's reply to the question (chat template). MC1 = the best-scored option of the
``mc1_targets`` is the single true one; MC2 = normalised probability mass on the true options of
``mc2_targets``. One forward pass per question gives the base logits at every option token; each
method transforms those logits:

* ``plain``: the model as is.
* ``caad_10`` / ``caad_100``: the CAAD shift of generation (same windows, same processor).
* ``fewshot_10``: the 10 grounding Q/A pairs as previous chat turns (in-context learning; their
  KV cache is computed once and shared).
* ``cad_10`` / ``adacad_10``: context-aware decoding with the 10 grounding pairs as the context
  (``z_fewshot`` contrasted with ``z_plain``).

Usage::

    python benchmarks/caad.py --model default --out results.json
    python benchmarks/caad.py --model default --device cuda --n-eval 400 --out results.json   # GPU
    python benchmarks/caad.py --keys minilm,static --no-fewshot --n-eval 120 --out results.json  # window keys

``--keys minilm,static`` scores CAAD with both window keys on the same forward passes (rows
``caad_N`` and ``caad_N_static``) and reports the bootstrap std (over questions) of every row and of
the paired static - MiniLM difference.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import random
import sys
import time
from pathlib import Path

from _common import data_missing, data_path, machine, write_json


def load_questions(data: Path) -> list[dict]:
    path = data / "mc_task.json"
    if not path.is_file():
        data_missing("caad", path, needs="TruthfulQA mc_task.json")
        sys.exit(2)
    return json.loads(path.read_text())


def best_answer(item: dict) -> str:
    return next(k for k, v in item["mc1_targets"].items() if v == 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(data_path("truthfulqa")))
    ap.add_argument("--n-eval", type=int, default=150, help="evaluation questions (slice after the pool)")
    ap.add_argument("--pool", type=int, default=100, help="grounding pool size (disjoint from eval)")
    ap.add_argument("--grounding", default="10,100", help="CAAD grounding sizes (comma-separated)")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--tau", type=float, default=0.7)
    ap.add_argument("--cad-alpha", type=float, default=0.5)
    ap.add_argument("--no-fewshot", action="store_true", help="skip few-shot / CAD / AdaCAD")
    ap.add_argument("--keys", default="minilm",
                    help="CAAD window keys, comma-separated: minilm (caad_N rows), static (the model2vec "
                         "distillation of MiniLM; caad_N_static rows), both scored on the same forward passes")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the noise estimates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave)")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from ctxkit.faithfulness.decoding import (
        CAADLogitsProcessor,
        GroundingSpace,
        WindowEncoder,
        cad_combine,
    )
    from ctxkit.llm import TransformersGenerator

    if args.threads:
        torch.set_num_threads(args.threads)
    items = load_questions(Path(args.data))
    order = list(range(len(items)))
    random.Random(args.seed).shuffle(order)
    pool = [items[i] for i in order[: args.pool]]
    evals = [items[i] for i in order[args.pool : args.pool + args.n_eval]]
    assert not {p["question"] for p in pool} & {e["question"] for e in evals}

    t0 = time.time()
    gen = TransformersGenerator(args.model, device=args.device, dtype="float32")
    gen.warm_up()
    model, tok = gen.model, gen.tokenizer
    dev = model.device
    keys = [k for k in args.keys.split(",") if k]
    if not keys or set(keys) - {"minilm", "static"}:
        ap.error(f"--keys: minilm and/or static, got {args.keys!r}")
    encoders = {k: WindowEncoder(k, device=args.device) for k in keys}

    def prompt_ids(messages: list[dict]) -> list[int]:
        return gen._encode(gen.render(messages))

    sizes = [int(s) for s in args.grounding.split(",") if s]
    procs: dict[str, CAADLogitsProcessor] = {}
    build_s: dict[str, float] = {}
    for key, encoder in encoders.items():
        for n in sizes:
            name = f"caad_{n}" + ("" if key == "minilm" else f"_{key}")
            tb = time.time()
            ex = [(p["question"], best_answer(p)) for p in pool[:n]]
            space = GroundingSpace.from_generator(gen, ex, embedder=encoder, show_progress=True)
            procs[name] = CAADLogitsProcessor(space, tok, alpha=args.alpha, tau=args.tau, embedder=encoder,
                                              record_stats=False)
            build_s[name] = round(time.time() - tb, 1)
            print(f"grounding space {name}: {len(space)} entries in {build_s[name]} s", file=sys.stderr)

    # few-shot prefix: the 10 grounding pairs as chat turns; its KV cache is computed once
    shots = [(p["question"], best_answer(p)) for p in pool[:10]]
    shot_msgs = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    prefix_cache, prefix_len = None, 0
    if not args.no_fewshot:
        full = prompt_ids(shot_msgs + [{"role": "user", "content": "X"}])
        probe = prompt_ids(shot_msgs + [{"role": "user", "content": "Y"}])
        prefix_len = next(i for i, (a, b) in enumerate(zip(full, probe, strict=False)) if a != b)
        # back off to the last turn boundary so the suffix starts with the user turn's own tokens
        prefix_ids = full[:prefix_len]
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([prefix_ids], device=dev), use_cache=True)
        prefix_cache = getattr(out, "cache", None) or out.past_key_values
        print(f"few-shot prefix: {prefix_len} tokens", file=sys.stderr)

    methods = ["plain", *procs]
    if not args.no_fewshot:
        methods += ["fewshot_10", "cad_10", "adacad_10"]
    mc1 = {m: [] for m in methods}
    mc2 = {m: [] for m in methods}
    match_rates = {k: [] for k in procs}

    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward_sel(seqs: list[list[int]], starts: list[int], cache=None, offset: int = 0):
        """Logits predicting each continuation token (rows concatenated in order)."""
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), offset + width), dtype=torch.long)
        mask[:, :offset] = 1
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, offset : offset + len(s)] = 1
        kw = {}
        if cache is not None:
            c = copy.deepcopy(cache)
            c.batch_repeat_interleave(len(seqs))
            kw = {cache_arg: c}
            kw["position_ids"] = torch.arange(offset, offset + width, device=dev).expand(len(seqs), -1)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), **kw).logits
        rows, pos = [], []
        for j, (s, st) in enumerate(zip(seqs, starts, strict=True)):
            rows += [j] * (len(s) - st)
            pos += list(range(st - 1, len(s) - 1))
        return logits[torch.tensor(rows, device=dev), torch.tensor(pos, device=dev)].float()

    te = time.time()
    host = machine()

    def boot(values: dict[str, list[float]]) -> dict:
        """Bootstrap std over questions of each method's mean, and of the paired difference
        static - MiniLM for every CAAD row that has both keys (same resamples for all)."""
        rng = random.Random(args.seed)
        n = len(next(iter(values.values())))
        if n < 2 or args.bootstrap < 2:
            return {}
        idx = [[rng.randrange(n) for _ in range(n)] for _ in range(args.bootstrap)]

        def std(xs: list[float]) -> float:
            means = [sum(xs[i] for i in ii) / n for ii in idx]
            mu = sum(means) / len(means)
            return round(math.sqrt(sum((m - mu) ** 2 for m in means) / (len(means) - 1)), 4)

        out = {"std": {m: std(v) for m, v in values.items()}, "paired_static_minus_minilm": {}}
        for m, vs in values.items():
            if m.endswith("_static") and m[: -len("_static")] in values:
                d = [a - b for a, b in zip(vs, values[m[: -len("_static")]], strict=True)]
                out["paired_static_minus_minilm"][m[: -len("_static")]] = {
                    "mean": round(sum(d) / n, 4), "bootstrap_std": std(d)}
        return out

    def report(done: int, final: bool) -> dict:
        res = {
            "benchmark": "truthfulqa_mc",
            "model": args.model,
            "n_eval": done,
            "complete": final,
            "split": f"mc_task.json (790 q) shuffled with seed {args.seed}: grounding pool = first {args.pool}, "
            f"eval = next {len(evals)} ({done} scored)",
            "settings": {"alpha": args.alpha, "tau": args.tau, "window": 8, "cad_alpha": args.cad_alpha,
                         "adacad_alpha": 1.0, "storage": "fp16", "keys": {k: e.name for k, e in encoders.items()},
                         "threads": torch.get_num_threads()},
            "mc1": {m: round(sum(v) / done, 4) for m, v in mc1.items()},
            "mc2": {m: round(sum(v) / done, 4) for m, v in mc2.items()},
            "caad_match_rate": {k: round(sum(v) / len(v), 4) for k, v in match_rates.items() if v},
            "bootstrap_mc1": boot({m: v[:done] for m, v in mc1.items()}),
            "bootstrap_mc2": boot({m: v[:done] for m, v in mc2.items()}),
            "per_question": {"mc1": {m: v[:done] for m, v in mc1.items()},
                             "mc2": {m: [round(x, 5) for x in v[:done]] for m, v in mc2.items()}},
            "build_seconds": build_s,
            "eval_seconds": round(time.time() - te, 1),
            "total_seconds": round(time.time() - t0, 1),
            "machine": host,
        }
        write_json(args.out, res)
        return res

    for qi, item in enumerate(tqdm(evals, desc="TruthfulQA", unit="q")):
        if qi and qi % 10 == 0:
            report(qi, False)
        q = item["question"]
        options = list(dict.fromkeys([*item["mc1_targets"], *item["mc2_targets"]]))
        conts = [tok(o, add_special_tokens=False)["input_ids"] for o in options]
        p0 = prompt_ids([{"role": "user", "content": q}])
        seqs = [p0 + c for c in conts]
        targets = torch.tensor([t for c in conts for t in c], device=dev)
        # the question's prompt is read once (KV cache) and shared by every option
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([p0[:-1]], device=dev), use_cache=True)
        q_cache = getattr(out, "cache", None) or out.past_key_values
        base = forward_sel([[p0[-1], *c] for c in conts], [1] * len(conts), q_cache, len(p0) - 1)
        if qi == 0:  # the shared prompt gives the logits of the full forward pass (fp32 rounding aside)
            full = forward_sel(seqs, [len(p0)] * len(seqs))
            print(f"prompt cache check: max |logit diff| = {float((full - base).abs().max()):.2e}", file=sys.stderr)
            assert torch.allclose(full, base, atol=1e-3, rtol=1e-4)
        zs: dict[str, torch.Tensor] = {"plain": base}
        wins = [s[max(t - 8, 0) : t] for s in seqs for t in range(len(p0), len(s))]
        for name, proc in procs.items():
            w = proc.window
            wins_p = wins if w == 8 else [s[max(t - w, 0) : t] for s in seqs for t in range(len(p0), len(s))]
            proc.record_stats = True
            proc._matches = []
            zs[name] = proc.shift_windows(wins_p, base)
            match_rates[name].append(float((proc._matches[-1] > 0).float().mean()))
            proc.record_stats = False
        if prefix_cache is not None:
            pf = prompt_ids(shot_msgs + [{"role": "user", "content": q}])
            assert pf[:prefix_len] == prefix_ids[:prefix_len]
            suffix = pf[prefix_len:]
            fs = forward_sel([suffix + c for c in conts], [len(suffix)] * len(conts), prefix_cache, prefix_len)
            zs["fewshot_10"] = fs
            zs["cad_10"] = cad_combine(fs, base, args.cad_alpha)[0]
            zs["adacad_10"] = cad_combine(fs, base, 1.0, adaptive=True)[0]
        for m in methods:
            lp = torch.log_softmax(zs[m], -1)[torch.arange(len(targets), device=dev), targets].cpu()
            scores, k = {}, 0
            for o, c in zip(options, conts, strict=True):
                scores[o] = float(lp[k : k + len(c)].sum())
                k += len(c)
            m1 = item["mc1_targets"]
            best = max(m1, key=lambda o: scores[o])
            mc1[m].append(float(m1[best] == 1))
            m2 = item["mc2_targets"]
            top = max(scores[o] for o in m2)
            probs = {o: math.exp(scores[o] - top) for o in m2}
            mc2[m].append(sum(p for o, p in probs.items() if m2[o] == 1) / sum(probs.values()))
    res = report(len(evals), True)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
