"""Per-token overhead of CAAD on KV-cache ``generate`` (plain vs CAAD, and the no-cache reference).

For every grounding-space size (1k, 10k, 100k entries) and batch size (1, 8) it times greedy
``model.generate`` with a fixed number of new tokens, plain and with a
:class:`~ctxkit.faithfulness.caad.CAADLogitsProcessor`, alternating the two and taking medians.
The ratio ``r = CAAD time / plain time`` is the overhead figure. The space is a real grounding
space (built from ctxkit's quickstart Q/A pairs with the same model) padded with synthetic random
keys and top-k logits up to the target size: speed depends on the size, not on the values.
The reference approach (no KV cache: the whole sequence is recomputed every step, with the same
CAAD processor) is timed as a peer figure.

``--random-weights`` uses random weights of the SmolLM2-135M and all-MiniLM-L6-v2 architectures
(speed does not depend on the values; with a random embedder every entry matches, so the figure
is an upper bound on the search cost); only the two tokenizers are needed, exported once on a
machine that has the packaged models (``--export-assets``, ~4 MB) for a machine that lacks them.

Usage::

    python benchmarks/caad_speed.py --out results.json              # CPU, real SmolLM2 + MiniLM
    python benchmarks/caad_speed.py --export-assets benchmarks/_caad_assets
    python benchmarks/caad_speed.py --device cuda --random-weights --assets benchmarks/_caad_assets \
        --dtype bfloat16 --new-tokens 64 --repeats 5 --reference-tokens 32 --out results.json   # GPU
    python benchmarks/caad_speed.py --keys minilm,static --sizes 10000 --dense-sizes "" --no-reference \
        --new-tokens 24 --repeats 7 --out results.json     # both window keys, paired with the same plain runs
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine, write_json

# SmolLM2-135M-Instruct's architecture (for --random-weights when its files are not at hand).
SMOLLM2 = {
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
    "rope_theta": 100000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
MINILM = {
    "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "max_position_embeddings": 512,
}
PREFETCH = {"auto": None, "on": True, "off": False}
PROMPTS = [
    "What happens if you eat watermelon seeds?",
    "Where did fortune cookies originate?",
    "Why do veins appear blue?",
    "What is the spiciest part of a chili pepper?",
    "How long should you wait before filing a missing person report?",
    "Why do matadors wave red capes?",
    "What percentage of the brain does a human typically use?",
    "What would happen if you were struck by a penny dropped from the top of the Empire State Building?",
]


def converted_smollm2() -> str | None:
    """The transformers copy of the packaged SmolLM2 GGUF that TransformersGenerator caches."""
    import os

    root = Path(os.environ.get("CTXKIT_CACHE", Path.home() / ".cache" / "ctxkit")).expanduser() / "models"
    hits = sorted(root.glob("SmolLM2-135M-Instruct-*/config.json"))
    return str(hits[-1].parent) if hits else None


def load_llm(args):
    import torch
    import transformers as tf

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    if args.random_weights:
        src = Path(args.assets) / "llm" if args.assets else None
        tok = tf.AutoTokenizer.from_pretrained(str(src) if src else (converted_smollm2() or args.model))
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMOLLM2)).to(dtype)
        name = "random-weight SmolLM2-135M architecture"
    else:
        from ctxkit.models import resolve_model

        path, gguf = converted_smollm2(), None
        if args.model != "default" or path is None:
            r = resolve_model(args.model, "llm")
            path, gguf = r.path, r.gguf_file
        kw = {"gguf_file": gguf} if gguf else {}
        tok = tf.AutoTokenizer.from_pretrained(path, **kw)
        model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        name = args.model if args.model != "default" else "SmolLM2-135M-Instruct"
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(args.device).eval(), tok, name


def load_encoder(args, key: str = "minilm"):
    from ctxkit.faithfulness.decoding import WindowEncoder

    if key == "static":  # a lookup table: its speed does not depend on the weights
        return WindowEncoder("static")
    if not args.random_weights:
        return WindowEncoder("default", device=args.device)
    import sentence_transformers as st
    import torch
    import transformers as tf

    tmp = Path(tempfile.mkdtemp(prefix="minilm-random-"))
    src = Path(args.assets) / "embedder" if args.assets else None
    if src is None:
        from ctxkit.models import resolve_model

        src = Path(resolve_model("default", "embedder").path)
    tf.AutoTokenizer.from_pretrained(str(src)).save_pretrained(tmp)
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(**MINILM)).save_pretrained(tmp)
    model = st.SentenceTransformer(str(tmp), device=args.device)
    if args.device.startswith("cuda"):
        model = model.half()
    return WindowEncoder(model)


def export_assets(out: Path) -> None:
    """Tokenizers (small) for --random-weights runs on a machine without the packaged models."""
    import transformers as tf

    from ctxkit.models import resolve_model

    llm = converted_smollm2()
    if llm is None:
        r = resolve_model("default", "llm")
        tok = tf.AutoTokenizer.from_pretrained(r.path, gguf_file=r.gguf_file)
    else:
        tok = tf.AutoTokenizer.from_pretrained(llm)
    tok.save_pretrained(out / "llm")
    tf.AutoTokenizer.from_pretrained(resolve_model("default", "embedder").path).save_pretrained(out / "embedder")
    print(f"assets written to {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


def breakdown(args, model, tok, encoder, base, sizes, sync, encoders=None) -> dict:
    """Milliseconds per decoding step of the processor's parts, without the LLM."""
    import torch

    from ctxkit.faithfulness.decoding import GroundingSpace, window_texts

    def med(fn, reps: int = 15) -> float:
        fn()
        ts = []
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
        return round(statistics.median(ts) * 1e3, 3)

    out: dict[str, dict] = {}
    ids = tok(" ".join(PROMPTS), add_special_tokens=False)["input_ids"]
    for b in [int(x) for x in args.batches.split(",") if x]:
        wins = [ids[i : i + 8] for i in range(b)]
        q = encoder.encode(window_texts(tok, wins)).to(model.device)
        row = {"decode_ms": med(lambda wins=wins: window_texts(tok, wins)),
               "embed_ms": med(lambda wins=wins: encoder.encode(window_texts(tok, wins)))}
        for k, e in (encoders or {}).items():
            if e is not encoder:
                row[f"embed_{k}_ms"] = med(lambda wins=wins, e=e: e.encode(window_texts(tok, wins)))
        for n in sizes:
            space = GroundingSpace.synthetic(n, vocab_size=base.vocab_size, base=base, storage=args.storage,
                                             top_k=args.top_k)
            space.device_storage = args.storage
            space.on(q.device)
            row[f"search_{n}_ms"] = med(lambda space=space, q=q: space.shift(q, tau=args.tau))
        inputs = tok([tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                              tokenize=False, add_generation_prompt=True) for i in range(b)],
                     add_special_tokens=False, return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            cache = model(**inputs, use_cache=True)
            past = getattr(cache, "cache", None) or cache.past_key_values
            step_ids = inputs["input_ids"][:, -1:]
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(step_ids)], 1)
            n0 = past.get_seq_length()

            arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

            def llm_step(past=past, n0=n0, step_ids=step_ids, mask=mask, arg=arg):
                extra = past.get_seq_length() - n0
                if extra > 0:
                    past.crop(-extra)
                model(input_ids=step_ids, attention_mask=mask, **{arg: past})

            row["llm_decode_step_ms"] = med(llm_step)
        out[f"b{b}"] = row
        print(json.dumps({f"b{b}": row}), flush=True)
    res = {"benchmark": "caad_speed_breakdown", "per_step": out,
           "settings": {"device": args.device, "storage": args.storage, "top_k": args.top_k,
                        "torch_threads": torch.get_num_threads(), "random_weights": args.random_weights}}
    res["machine"] = machine()
    write_json(args.out, res)
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--storage", default="topk", choices=["topk", "fp16"])
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--dense-sizes", default="1000,10000", help="also time fp16 full-logit storage at these sizes")
    ap.add_argument("--tau", type=float, default=0.7)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--reference-tokens", type=int, default=16, help="new tokens for the no-cache reference")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--random-weights", action="store_true", help="random weights, SmolLM2/MiniLM architectures")
    ap.add_argument("--assets", default=None, help="dir from --export-assets (tokenizers)")
    ap.add_argument("--export-assets", default=None, metavar="DIR")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--prefetch", default="auto", choices=sorted(PREFETCH),
                    help="embed windows on a spare core during the forward pass (auto: CPU with a free core); "
                         "when on, the serial processor is timed too")
    ap.add_argument("--keys", default="minilm",
                    help="CAAD window keys to time, comma-separated: minilm, static (the model2vec distillation; "
                         "rows keyed b<B>/<N>/<storage>/static, overheads under overhead_static...); each CAAD "
                         "run is paired with the same plain run (one plain run per repeat, then each key)")
    ap.add_argument("--breakdown-only", action="store_true",
                    help="only time the processor's parts per step (window embedding, search) without the LLM")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args(argv)
    if args.export_assets:
        export_assets(Path(args.export_assets))
        return {}

    import torch
    import transformers as tf

    from ctxkit.cli.demos import QUICKSTART_EXAMPLES
    from ctxkit.faithfulness.decoding import CAADLogitsProcessor, GroundingSpace

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, model_name = load_llm(args)
    keys = [k for k in args.keys.split(",") if k]
    if not keys or set(keys) - {"minilm", "static"}:
        ap.error(f"--keys: minilm and/or static, got {args.keys!r}")
    encoders = {k: load_encoder(args, k) for k in keys}
    encoder = encoders[keys[0]]
    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    bases = {k: GroundingSpace.build(QUICKSTART_EXAMPLES, model, tok, embedder=e, storage="fp16")
             for k, e in encoders.items()}
    base = bases[keys[0]]
    vocab = base.vocab_size

    def make_inputs(b: int):
        texts = [tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False,
                                         add_generation_prompt=True) for i in range(b)]
        enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
        return {k: v.to(args.device) for k, v in enc.items()}

    def run(inputs, procs, n, use_cache=True) -> float:
        sync()
        t = time.perf_counter()
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            for p in procs:
                stack.enter_context(p.prefetching(model))
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=use_cache,
                           pad_token_id=tok.pad_token_id,
                           logits_processor=tf.LogitsProcessorList(procs) if procs else None)
        sync()
        return (time.perf_counter() - t) / n

    def paired(xs: list[float], ys: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(xs, ys, strict=True))

    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.breakdown_only:
        return breakdown(args, model, tok, encoder, base, sizes, sync, encoders)
    dense = [int(s) for s in args.dense_sizes.split(",") if s] if args.storage == "topk" else []
    batches = [int(b) for b in args.batches.split(",") if b]
    configs = [(n, args.storage) for n in sizes] + [(n, "fp16") for n in dense]
    table: dict[str, dict] = {}
    match_rate: dict[str, float] = {}
    device_name = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} CPU"
    settings = {"model": model_name, "device": args.device, "device_name": device_name, "dtype": args.dtype,
                "new_tokens": args.new_tokens, "repeats": args.repeats, "storage": args.storage,
                "top_k": args.top_k, "tau": args.tau, "alpha": args.alpha,
                "torch_threads": torch.get_num_threads(), "random_weights": args.random_weights,
                "prefetch": args.prefetch, "cpu_count": os.cpu_count(),
                "keys": {k: e.name for k, e in encoders.items()},
                "space": f"{len(base)} real entries (quickstart Q/A) + synthetic random keys/top-k logits"}
    for b in batches:
        inputs = make_inputs(b)
        run(inputs, [], 4)  # warm-up
        for n, storage in configs:
            # every key's CAAD run is paired with the SAME plain run of each repeat (interleaved), so
            # the keys' ratios and absolute times compare directly and drifts of the machine cancel
            rows = {}
            for key_name in keys:
                enc = encoders[key_name]
                space = GroundingSpace.synthetic(n, vocab_size=vocab, base=bases[key_name], storage=storage,
                                                 top_k=args.top_k)
                space.device_storage = storage  # time the storage the row is labelled with, also on a GPU
                proc = CAADLogitsProcessor(space, tok, alpha=args.alpha, tau=args.tau, embedder=enc,
                                           prefetch=PREFETCH[args.prefetch])
                serial = CAADLogitsProcessor(space, tok, alpha=args.alpha, tau=args.tau, embedder=enc,
                                             prefetch=False)
                space.on(model.device)
                run(inputs, [proc], 4)
                rows[key_name] = {"proc": proc, "serial": serial, "overlap": proc._prefetch_enabled(),
                                  "caad": [], "caad_serial": []}
            plain = []
            for _ in range(args.repeats):
                plain.append(run(inputs, [], args.new_tokens))
                for r in rows.values():
                    r["caad"].append(run(inputs, [r["proc"]], args.new_tokens))
                    if r["overlap"]:
                        r["caad_serial"].append(run(inputs, [r["serial"]], args.new_tokens))
            p = statistics.median(plain)
            for key_name, r in rows.items():
                proc, caad, caad_serial = r["proc"], r["caad"], r["caad_serial"]
                key = f"b{b}/{n}/{storage}" + ("" if key_name == "minilm" else f"/{key_name}")
                c = statistics.median(caad)
                # ratio = median of the per-repeat ratios: each CAAD run is paired with the plain run
                # of its repeat, so slow drifts of a shared machine cancel out
                table[key] = {"batch": b, "entries": n, "storage": storage, "key": key_name,
                              "plain_ms_per_token": round(p * 1e3, 2),
                              "caad_ms_per_token": round(c * 1e3, 2), "ratio": round(paired(caad, plain), 3),
                              "prefetch": r["overlap"], "prefetch_hits": proc.stats.prefetch_hits,
                              "prefetch_misses": proc.stats.prefetch_misses}
                if caad_serial:
                    cs = statistics.median(caad_serial)
                    table[key].update(caad_serial_ms_per_token=round(cs * 1e3, 2),
                                      ratio_serial=round(paired(caad_serial, plain), 3))
                match_rate[key] = round(proc.stats.match_rate, 3)
                print(json.dumps({key: table[key]}), flush=True)
            # every finished row is in the JSON at once: a run stopped by a time limit keeps it
            write_json(args.out, {"benchmark": "caad_speed", "complete": False, "table": table,
                                  "match_rate": match_rate, "settings": settings, "machine": machine()})
            del rows
    ref = {}
    if not args.no_reference:
        for b in batches:
            inputs = make_inputs(b)
            n = 10000 if 10000 in sizes else sizes[0]
            space = GroundingSpace.synthetic(n, vocab_size=vocab, base=base, storage=args.storage, top_k=args.top_k)
            proc = CAADLogitsProcessor(space, tok, alpha=args.alpha, tau=args.tau, embedder=encoder)
            plain = run(inputs, [], args.reference_tokens)
            nocache = run(inputs, [proc], args.reference_tokens, use_cache=False)
            ref[f"b{b}"] = {"entries": n, "new_tokens": args.reference_tokens,
                            "plain_kv_ms_per_token": round(plain * 1e3, 2),
                            "reference_nocache_caad_ms_per_token": round(nocache * 1e3, 2),
                            "ratio_vs_plain": round(nocache / plain, 3)}
            print(json.dumps({f"reference b{b}": ref[f"b{b}"]}), flush=True)

    def ratios(b: int, storage: str, key_name: str = "minilm") -> dict[str, float]:
        sfx = "" if key_name == "minilm" else f"/{key_name}"
        return {str(n): table[f"b{b}/{n}/{storage}{sfx}"]["ratio"] for n in sizes + dense
                if f"b{b}/{n}/{storage}{sfx}" in table}

    b0 = batches[0]
    res = {
        "benchmark": "caad_speed",
        "complete": True,
        "overhead": ratios(b0, args.storage),
        "overhead_batch": b0,
        **{f"overhead_batch{b}": ratios(b, args.storage) for b in batches if b != b0},
        **({f"overhead_fp16_batch{b}": ratios(b, "fp16") for b in batches} if dense else {}),
        **{f"overhead_{k}_batch{b}": ratios(b, args.storage, k) for k in keys if k != "minilm" for b in batches},
        "reference_nocache": ref,
        "table": table,
        "match_rate": match_rate,
        "settings": settings,
        "machine": machine(),
    }
    write_json(args.out, res)
    print(json.dumps({k: res[k] for k in ("overhead", "reference_nocache")}, indent=2))
    return res


if __name__ == "__main__":
    main()
