"""GPU throughput of TransformersGenerator: batched vs one prompt at a time (random weights).

Usage (on a CUDA machine)::

    python benchmarks/gpu_generation.py --out results.json

Speed does not depend on the weights, so the model is a randomly initialised Llama with the
shape of Llama-3.2-1B (hidden 2048, 16 layers, 32 heads / 8 KV heads, vocab 128256; ``--arch
smollm2-135m`` for the small one) in bf16, and the tokenizer is a small BPE trained on the spot,
so nothing is downloaded. Prompts are RAG-shaped (instructions, a ``<context>`` block of
``--prompt-words`` words, a question) rendered with a chat template. Every row generates exactly
``--max-new-tokens`` tokens (EOS is suppressed) so all methods do the same work.

Reports prompts/s and generated tokens/s for the loop and for each batch size, and the speed-up.
``--device cpu --arch tiny`` checks the script itself on a laptop.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


class NoEOS:
    """Suppress EOS so every row generates exactly max_new_tokens (equal work for all methods)."""

    def __init__(self, eos: int) -> None:
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores[:, self.eos] = -float("inf")
        return scores


def build(out: Path, arch: str):
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="llama-3.2-1b", choices=sorted(ARCHS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n", type=int, default=64, help="prompts")
    ap.add_argument("--prompt-words", type=int, default=300, help="context words per prompt (varied +-50%%)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--loop-n", type=int, default=16, help="prompts timed in the one-at-a-time loop")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_generation: CUDA is not available; run on a GPU machine or pass --device cpu --arch tiny",
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

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        res: dict = {
            "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
            "arch": args.arch, "dtype": str(gen.model.dtype), "n": args.n,
            "max_new_tokens": args.max_new_tokens,
            "prompt_tokens_mean": round(sum(len(tok(gen.render(c))["input_ids"]) for c in convs) / len(convs), 1),
            "torch": torch.__version__,
            "command": "python benchmarks/gpu_generation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
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
            if args.device.startswith("cuda"):
                res["batched"][str(bs)]["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print("batched", bs, res["batched"][str(bs)], flush=True)
    Path(args.out).write_text(json.dumps(res, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
