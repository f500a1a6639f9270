"""Generation throughput: batched TransformersGenerator vs a one-prompt-at-a-time loop, and over HTTP.

Usage::

    python benchmarks/generation.py --n 48 --out results.json

Builds RAG prompts (the ``generate`` stage's default template: instructions, the passage inside
``<context>`` markers, the question) from SQuAD-KRE golden items in
``../shared/data/faithfulrag/squad_kre_golden.json`` and answers them greedily with the offline
SmolLM2-135M-Instruct (``--model``) in three ways on the same prompts:

* ``loop``: ``generate([prompt])`` once per prompt (how the reference implementations run);
* ``batched``: one ``generate(all_prompts)`` call per ``--batch-sizes`` value (left padding,
  length-sorted batches, KV cache);
* ``http``: ``OpenAIGenerator`` (``--concurrency`` requests in flight) against ``ctxkit``'s own
  OpenAI-compatible server wrapping the same generator (the server batches concurrent requests).

Reports prompts/s, generated tokens/s, speed-up over the loop, the share of outputs identical to
the loop's (greedy decoding; batched fp32 should agree almost always), and "gold answer contained
in the output" accuracy as a sanity check. Exits with status 2 when the data file is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import string
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "faithfulrag" / "squad_kre_golden.json"


def _norm(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _contains(pred: str, gold: str) -> bool:
    return bool(_norm(gold)) and _norm(gold) in _norm(pred)


def _summary(gens: list, seconds: float, golds: list[str], reference: list[str] | None) -> dict:
    n_tok = sum(g.n_tokens or 0 for g in gens)
    out = {
        "seconds": round(seconds, 3),
        "prompts_per_s": round(len(gens) / seconds, 3),
        "tokens_per_s": round(n_tok / seconds, 2),
        "generated_tokens": n_tok,
        "errors": sum(1 for g in gens if not g.ok),
        "gold_contained": round(sum(_contains(g.text, a) for g, a in zip(gens, golds, strict=True)) / len(gens), 3),
    }
    if reference is not None:
        out["same_as_loop"] = round(sum(g.text == r for g, r in zip(gens, reference, strict=True)) / len(gens), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="FaithfulRAG-format JSON (question, context, answer)")
    ap.add_argument("--model", default="default", help="model for TransformersGenerator (default: SmolLM2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=48, help="prompts (the first N items)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="8,16", help="comma-separated batch sizes for the batched runs")
    ap.add_argument("--concurrency", type=int, default=16, help="HTTP requests in flight (0: skip HTTP)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default). On a CPU shared with other jobs, 1 is "
                    "much faster than oversubscribed threads")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args(argv)

    data_path = Path(args.data)
    if not data_path.is_file():
        print(f"generation benchmark: data file {data_path} not found; pass --data "
              "(FaithfulRAG JSON with question/context/answer). Skipping.", file=sys.stderr)
        return 2
    items = json.loads(data_path.read_text(encoding="utf-8"))[: args.n]

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from ctxkit import ContextState, Passage
    from ctxkit.llm import GenerateAnswer, OpenAIGenerator, TransformersGenerator
    from ctxkit.llm.server import OpenAICompatibleServer

    stage = GenerateAnswer(generator={"backend": "transformers", "model": "unused"})
    convs, golds = [], []
    for it in items:
        st = ContextState(query=it["question"].strip(), passages=[Passage(id=it["id"], text=it["context"])])
        convs.append(stage.build_messages(st))
        golds.append(str(it["answer"]).strip())

    gen = TransformersGenerator(args.model, device=args.device, settings={"max_new_tokens": args.max_new_tokens})
    t0 = time.perf_counter()
    gen.warm_up()
    load_s = time.perf_counter() - t0
    gen.generate(convs[:2])  # warm-up call (allocations, kernels), not timed
    n_prompt = [len(gen.tokenizer(gen.render(c), add_special_tokens=False)["input_ids"]) for c in convs]

    results: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "device": str(gen.device),
        "model": args.model,
        "loaded_from": gen.loaded_from,
        "load_seconds": round(load_s, 2),
        "n": len(convs),
        "max_new_tokens": args.max_new_tokens,
        "prompt_tokens_mean": round(sum(n_prompt) / len(n_prompt), 1),
        "command": "python benchmarks/generation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    loop = [gen.generate([c])[0] for c in tqdm(convs, desc="loop")]
    loop_s = time.perf_counter() - t0
    ref = [g.text for g in loop]
    results["loop"] = _summary(loop, loop_s, golds, None)
    print("loop", results["loop"], flush=True)

    results["batched"] = {}
    for bs in [int(x) for x in args.batch_sizes.split(",") if x.strip()]:
        gen.batch_size = bs
        t0 = time.perf_counter()
        out = gen.generate(convs)
        s = time.perf_counter() - t0
        r = _summary(out, s, golds, ref)
        r["speedup_vs_loop"] = round(loop_s / s, 2)
        results["batched"][str(bs)] = r
        print(f"batched {bs}", r, flush=True)

    if args.concurrency > 0:
        gen.batch_size = args.concurrency
        with OpenAICompatibleServer(gen, max_batch_size=args.concurrency, batch_wait_s=0.02) as srv:
            client = OpenAIGenerator("m", base_url=srv.url, max_concurrency=args.concurrency, timeout=600)
            t0 = time.perf_counter()
            out = client.generate(convs, max_new_tokens=args.max_new_tokens)
            s = time.perf_counter() - t0
            r = _summary(out, s, golds, ref)
            r["speedup_vs_loop"] = round(loop_s / s, 2)
            r["server_batch_sizes_mean"] = round(sum(srv.batch_sizes) / max(len(srv.batch_sizes), 1), 2)
            results["http"] = r
            print("http", r, flush=True)

    Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
