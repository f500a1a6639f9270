"""Two-stage RW-Steering fine-tuning, then before/after consistency and cleanliness per ratio.

Trains on mixtures of some queries of each category (stage 1: all ratios; stage 2: low
contamination), evaluates on held-out queries of the same categories: the base model answers with
the plain answer prompt, the fine-tuned model with the steering prompt (its answer is parsed after
``answer:``). Both are judged with the offline embedding judge. The fine-tuned model's stage-1
identification is also scored as a detector (item-level precision / recall / F1).

    python benchmarks/steer_train.py --out results.json              # SmolLM2-135M on CPU, minutes
    python benchmarks/steer_train.py --out r.json --model /path/to/Qwen2-1.5B-Instruct \\
        --device cuda --bf16 --lora --n-train 300 --n-test 25 --n-items 20 \\
        --ratios 0,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95 \\
        --low-max-ratio 0.3 --lr 1e-4 --batch-size 8 --max-length 4096 --save-steps 500 \\
        --logging-steps 20 --eval-max 200 --gen-batch-size 16 --identification-before   # GPU, 1-2B model

The prompts, targets and reply parsing are the library's (``ctxkit.faithfulness.steering``), so a
model trained here plugs into ``SteeringFilter(detector=steering_detector(dir))``. At GPU scale
``--eval-max`` evaluates an evenly spaced subset of the held-out mixtures and
``--identification-before`` also scores the base model's identification with the steering prompt.

Reads ``../shared/data/rw_steering_poisoned_context`` (``--data``); exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from _common import data_missing, data_path, machine, prf, write_json

from ctxkit.faithfulness.steering import (
    CATEGORIES,
    EmbeddingJudge,
    SteerTrainConfig,
    build_mixture,
    build_sft_examples,
    load_pools,
    parse_steered,
    split_stages,
    train_rw_steering,
)
from ctxkit.faithfulness.steering.susceptibility import answer_messages
from ctxkit.faithfulness.steering.train import steered_messages


def curves(items, judged) -> dict:
    out: dict = {}
    for r in sorted({it.ratio for it in items}):
        idx = [i for i, it in enumerate(items) if it.ratio == r]
        out[f"{r:.2f}"] = {"consistency": round(float(np.mean([judged[i].consistency for i in idx])), 2),
                           "cleanliness": round(float(np.mean([judged[i].cleanliness for i in idx])), 2),
                           "n": len(idx)}
    return out


def identification(items, gens, parsed) -> dict:
    """Item-level precision / recall / F1 of the replies' ``inappropriate:`` field, and format compliance."""
    y = np.concatenate([it.labels for it in items])
    pred = np.concatenate([[int(i + 1 in p[0]) for i in range(len(it.items))] for p, it in zip(parsed, items, strict=True)])
    scores = prf(y, pred)
    return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
            "format_ok": round(float(np.mean(["inappropriate:" in g.text.lower() for g in gens])), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(data_path("rw_steering_poisoned_context")))
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--model", default="default")
    ap.add_argument("--output-dir", default="/tmp/ctxkit_steer_train")
    ap.add_argument("--categories", nargs="*", default=list(CATEGORIES))
    ap.add_argument("--n-train", type=int, default=8, help="training queries per category")
    ap.add_argument("--n-test", type=int, default=3, help="held-out queries per category")
    ap.add_argument("--n-items", type=int, default=6)
    ap.add_argument("--ratios", default="0,0.2,0.35,0.5,0.65,0.8")
    ap.add_argument("--low-max-ratio", type=float, default=0.35)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 mixed-precision training (GPU)")
    ap.add_argument("--max-length", type=int, default=1024, help="training examples longer than this (tokens) are dropped")
    ap.add_argument("--save-steps", type=int, default=25, help="checkpoint every N training steps")
    ap.add_argument("--logging-steps", type=int, default=5)
    ap.add_argument("--gen-batch-size", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--eval-max", type=int, default=0,
                    help="evaluate every k-th held-out mixture, k = len // N (about N mixtures; 0: all)")
    ap.add_argument("--identification-before", action="store_true",
                    help="also score the base model's identification with the steering prompt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = Path(args.data)
    if not data.exists():
        data_missing("steer_train", data)
        return 0
    from ctxkit.llm import TransformersGenerator

    t0 = time.time()
    ratios = [float(r) for r in args.ratios.split(",")]
    pools = load_pools(data, args.categories)
    train_items, test_items = [], []
    for cat in args.categories:
        rows = random.Random(f"{args.seed}|{cat}").sample(pools[cat], args.n_train + args.n_test)
        for k, row in enumerate(rows):
            dest = train_items if k < args.n_train else test_items
            dest += [build_mixture(row, r, n_items=args.n_items, seed=args.seed) for r in ratios]
    if args.eval_max:
        test_items = test_items[:: max(1, len(test_items) // args.eval_max)]
    s1, s2 = split_stages(train_items, low_max_ratio=args.low_max_ratio)
    cfg = SteerTrainConfig(model=args.model, output_dir=args.output_dir, stage1_epochs=args.epochs,
                           stage2_epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                           lora=args.lora, device=args.device, bf16=args.bf16, seed=args.seed,
                           save_steps=args.save_steps, logging_steps=args.logging_steps, max_length=args.max_length)
    print(f"train: {len(s1)} stage-1 + {len(s2)} stage-2 examples; test: {len(test_items)} mixtures", flush=True)
    judge = EmbeddingJudge()

    base = TransformersGenerator(args.model, batch_size=args.gen_batch_size, device=args.device)
    gb = base.generate([answer_messages(it) for it in test_items], max_new_tokens=args.max_new_tokens)
    before = judge.judge(test_items, [g.text.strip() for g in gb])
    ident_before = None
    if args.identification_before:
        gs = base.generate([steered_messages(it) for it in test_items], max_new_tokens=args.max_new_tokens + 24)
        ident_before = identification(test_items, gs, [parse_steered(g.text, len(it.items))
                                                       for g, it in zip(gs, test_items, strict=True)])
        print(f"identification before training: {ident_before}", flush=True)
    t_train = time.time()
    res = train_rw_steering(cfg, build_sft_examples(s1), build_sft_examples(s2))
    train_s = time.time() - t_train
    tuned = TransformersGenerator(res["final_dir"], batch_size=args.gen_batch_size, device=args.device)
    gt = tuned.generate([steered_messages(it) for it in test_items], max_new_tokens=args.max_new_tokens + 24)
    parsed = [parse_steered(g.text, len(it.items)) for g, it in zip(gt, test_items, strict=True)]
    answers = [p[2] or g.text.strip() for p, g in zip(parsed, gt, strict=True)]
    after = judge.judge(test_items, answers)
    out = {
        "before": {"by_ratio": curves(test_items, before),
                   "mean_consistency": round(float(np.mean([j.consistency for j in before])), 2),
                   "mean_cleanliness": round(float(np.mean([j.cleanliness for j in before])), 2)},
        "after": {"by_ratio": curves(test_items, after),
                  "mean_consistency": round(float(np.mean([j.consistency for j in after])), 2),
                  "mean_cleanliness": round(float(np.mean([j.cleanliness for j in after])), 2)},
        "identification": identification(test_items, gt, parsed),
        "training": {k: {kk: vv for kk, vv in v.items() if kk != "losses"} | {"first_loss": (v.get("losses") or [None])[0],
                                                                            "last_loss": (v.get("losses") or [None])[-1]}
                     for k, v in res.items() if k.startswith("stage")},
        "examples": [{"ratio": it.ratio, "before": gb[i].text[:200], "after": gt[i].text[:300]}
                     for i, it in enumerate(test_items) if i % 6 == 2][:6],
        "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "train_seconds": round(train_s, 1),
                   "total_seconds": round(time.time() - t0, 1)},
        "machine": machine(),
    }
    if ident_before is not None:
        out["identification_before"] = ident_before
    write_json(args.out, out, indent=1)
    for r in out["before"]["by_ratio"]:
        b, a = out["before"]["by_ratio"][r], out["after"]["by_ratio"][r]
        print(f"ratio {r}: consistency {b['consistency']:5.1f} -> {a['consistency']:5.1f}   "
              f"cleanliness {b['cleanliness']:5.1f} -> {a['cleanliness']:5.1f}")
    print(f"identification {out['identification']}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
