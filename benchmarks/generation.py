"""Generation throughput: batched TransformersGenerator vs a one-prompt-at-a-time loop, and over HTTP.

Usage::

    python benchmarks/generation.py --n 48 --out results.json                   # real SmolLM2, SQuAD-KRE prompts
    python benchmarks/generation.py --arch llama-3.2-1b --device cuda --out results.json   # GPU throughput

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

``--arch NAME`` measures raw throughput instead (the GPU run): speed does not depend on the
weights, so the model is a randomly initialised Llama of that shape (``llama-3.2-1b``: hidden 2048,
16 layers, 32 heads / 8 KV heads, vocab 128256; ``smollm2-135m``; ``tiny`` to check the script on a
laptop with ``--device cpu``) in its default dtype (bf16 on CUDA), and the tokenizer is a small
BPE trained on the spot, so nothing is downloaded and no data is read. Prompts are RAG-shaped
(instructions, a ``<context>`` block of ``--prompt-words`` words, a question) rendered with a chat
template. Every row generates exactly ``--max-new-tokens`` tokens (EOS is suppressed) so all
methods do the same work. Reports prompts/s and generated tokens/s for the loop (the first
``--loop-n`` prompts) and for each batch size, the speed-up and, on CUDA, the peak memory; no
HTTP run. Defaults in this mode: ``--n 64 --max-new-tokens 64 --batch-sizes 8,16,32``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import data_missing, data_path, machine, write_json

# --arch: random-weight Llama shapes (throughput does not depend on the weights)
ARCHS = {
    "llama-3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                         "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                         "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 2000},
}
WORDS = ["the", "tower", "paris", "built", "year", "engineer", "iron", "fair", "visitors", "height", "metres", "city", "river", "museum", "question", "answer", "context", "passage", "record", "history", "science", "discovery", "fleming", "penicillin", "mould", "bacteria", "london", "hospital", "laboratory", "culture", "antibiotic", "war", "medicine", "prize"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# per-mode defaults of --n / --max-new-tokens / --batch-sizes: (real model on data, --arch)
MODE_DEFAULTS = {"n": (48, 64), "max_new_tokens": (32, 64), "batch_sizes": ("8,16", "8,16,32")}


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


class NoEOS:
    """Suppress EOS so every row generates exactly max_new_tokens (equal work for all methods)."""

    def __init__(self, eos: int) -> None:
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores[:, self.eos] = -float("inf")
        return scores


def build(out: Path, arch: str):
    """A random-weight Llama of shape ``arch`` and a small BPE tokenizer with a chat template, saved to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<|user|>",
                                  "<|assistant|>", "<|system|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=8192, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.pad_token_id, tie_word_embeddings=True, **ARCHS[arch])
    LlamaForCausalLM(cfg).save_pretrained(out)
    return fast


def random_weight_run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--arch``: loop vs batched throughput of a random-weight model on synthetic RAG prompts."""
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("generation --arch: CUDA is not available; run on a GPU machine or pass --device cpu --arch tiny",
              file=sys.stderr)
        return 2
    from ctxkit.llm import TransformersGenerator

    rng = random.Random(0)
    convs = []
    for _ in range(args.n):
        n_words = rng.randint(args.prompt_words // 2, args.prompt_words * 3 // 2)
        ctx = " ".join(rng.choice(WORDS) for _ in range(n_words))
        convs.append([{"role": "system", "content": "Answer from the context."},
                      {"role": "user", "content": f"<context>{ctx}</context>\nQuestion: when was the tower built?"}])
    with tempfile.TemporaryDirectory() as tmp:
        tok = build(Path(tmp), args.arch)
        gen = TransformersGenerator(tmp, device=args.device, dtype=args.dtype,
                                    settings={"max_new_tokens": args.max_new_tokens},
                                    logits_processors=[NoEOS(tok.eos_token_id)])
        gen.warm_up()
        gen.generate(convs[:2])  # warm-up: kernels, allocator
        cuda = str(gen.device).startswith("cuda")

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        res: dict = {
            "device": torch.cuda.get_device_name(0) if cuda else str(gen.device),
            "arch": args.arch, "dtype": str(gen.model.dtype), "n": args.n,
            "max_new_tokens": args.max_new_tokens,
            "prompt_tokens_mean": round(sum(len(tok(gen.render(c))["input_ids"]) for c in convs) / len(convs), 1),
            "torch": torch.__version__,
            "machine": machine(),
            "command": "python benchmarks/generation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        loop_convs = convs[: args.loop_n]
        sync()
        t0 = time.perf_counter()
        loop = [gen.generate([c])[0] for c in loop_convs]
        sync()
        loop_s = time.perf_counter() - t0
        loop_tps = sum(g.n_tokens or 0 for g in loop) / loop_s
        res["loop"] = {"prompts_per_s": round(len(loop) / loop_s, 3), "tokens_per_s": round(loop_tps, 1)}
        print("loop", res["loop"], flush=True)
        write_json(args.out, {**res, "complete": False})  # a run stopped by a time limit keeps its rows
        res["batched"] = {}
        for bs in [int(x) for x in args.batch_sizes.split(",") if x.strip()]:
            gen.batch_size = bs
            sync()
            t0 = time.perf_counter()
            out = gen.generate(convs)
            sync()
            s = time.perf_counter() - t0
            tps = sum(g.n_tokens or 0 for g in out) / s
            res["batched"][str(bs)] = {
                "prompts_per_s": round(len(out) / s, 3), "tokens_per_s": round(tps, 1),
                "speedup_vs_loop": round(tps / loop_tps, 2), "errors": sum(not g.ok for g in out),
            }
            if cuda:
                res["batched"][str(bs)]["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print("batched", bs, res["batched"][str(bs)], flush=True)
            write_json(args.out, {**res, "complete": False})
    write_json(args.out, {**res, "complete": True})
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(data_path("faithfulrag", "squad_kre_golden.json")),
                    help="FaithfulRAG-format JSON (question, context, answer)")
    ap.add_argument("--model", default="default", help="model for TransformersGenerator (default: SmolLM2)")
    ap.add_argument("--arch", default=None, choices=sorted(ARCHS),
                    help="measure a random-weight model of this shape on synthetic prompts instead (no data, "
                    "no HTTP; the GPU run: --arch llama-3.2-1b --device cuda)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--dtype", default="auto", help="TransformersGenerator dtype (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--n", type=int, default=None, help="prompts (the first N items; default 48, --arch 64)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 32, --arch 64")
    ap.add_argument("--batch-sizes", default=None,
                    help="comma-separated batch sizes for the batched runs (default 8,16; --arch 8,16,32)")
    ap.add_argument("--concurrency", type=int, default=16, help="HTTP requests in flight (0: skip HTTP)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default). On a CPU shared with other jobs, 1 is "
                    "much faster than oversubscribed threads")
    ap.add_argument("--prompt-words", type=int, default=300,
                    help="--arch: context words per prompt (varied +-50%%)")
    ap.add_argument("--loop-n", type=int, default=16, help="--arch: prompts timed in the one-at-a-time loop")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args(argv)
    for key, (real, arch) in MODE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, arch if args.arch else real)
    if args.arch:
        return random_weight_run(args, argv)

    data_file = Path(args.data)
    if not data_file.is_file():
        data_missing("generation", data_file, needs="FaithfulRAG JSON with question/context/answer")
        return 2
    items = json.loads(data_file.read_text(encoding="utf-8"))[: args.n]

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

    gen = TransformersGenerator(args.model, device=args.device, dtype=args.dtype,
                                settings={"max_new_tokens": args.max_new_tokens})
    t0 = time.perf_counter()
    gen.warm_up()
    load_s = time.perf_counter() - t0
    gen.generate(convs[:2])  # warm-up call (allocations, kernels), not timed
    n_prompt = [len(gen.tokenizer(gen.render(c), add_special_tokens=False)["input_ids"]) for c in convs]

    results: dict = {
        "machine": machine(),
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

    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
