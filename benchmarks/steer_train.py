"""Two-stage RW-Steering fine-tuning, then before/after consistency and cleanliness per ratio.

Trains on mixtures of some queries of each category (stage 1: all ratios; stage 2: low
contamination), evaluates on held-out queries of the same categories: the base model answers with
the plain answer prompt, the fine-tuned model with the steering prompt (its answer is parsed after
``answer:``). Both are judged with the offline embedding judge. The fine-tuned model's stage-1
identification is also scored as a detector (item-level precision / recall / F1).

    python benchmarks/steer_train.py --out results.json              # SmolLM2-135M on CPU, minutes
    python benchmarks/steer_train.py --out r.json --model HuggingFaceTB/SmolLM2-1.7B-Instruct \\
        --device cuda --bf16 --n-train 200 --n-items 20 --lora        # GPU (see gpu_steer_train.sh)

Reads ``../shared/data/rw_steering_poisoned_context`` (``--data``); exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctxkit.faithfulness.steer_train import (
    SteerTrainConfig,
    build_sft_examples,
    parse_steered,
    split_stages,
    steered_messages,
    train_rw_steering,
)
from ctxkit.faithfulness.susceptibility import EmbeddingJudge, answer_messages
from ctxkit.faithfulness.testbed import CATEGORIES, build_mixture, load_pools


def curves(items, judged) -> dict:
    out: dict = {}
    for r in sorted({it.ratio for it in items}):
        idx = [i for i, it in enumerate(items) if it.ratio == r]
        out[f"{r:.2f}"] = {"consistency": round(float(np.mean([judged[i].consistency for i in idx])), 2),
                           "cleanliness": round(float(np.mean([judged[i].cleanliness for i in idx])), 2),
                           "n": len(idx)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "../shared/data/rw_steering_poisoned_context"))
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
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--gen-batch-size", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = Path(args.data)
    if not data.exists():
        print(f"steer_train benchmark: data folder {data} not found (pass --data); skipping")
        return 0
    from ctxkit.llm.transformers import TransformersGenerator

    t0 = time.time()
    ratios = [float(r) for r in args.ratios.split(",")]
    pools = load_pools(data, args.categories)
    train_items, test_items = [], []
    for cat in args.categories:
        rows = random.Random(f"{args.seed}|{cat}").sample(pools[cat], args.n_train + args.n_test)
        for k, row in enumerate(rows):
            dest = train_items if k < args.n_train else test_items
            dest += [build_mixture(row, r, n_items=args.n_items, seed=args.seed) for r in ratios]
    s1, s2 = split_stages(train_items, low_max_ratio=args.low_max_ratio)
    cfg = SteerTrainConfig(model=args.model, output_dir=args.output_dir, stage1_epochs=args.epochs,
                           stage2_epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                           lora=args.lora, device=args.device, bf16=args.bf16, seed=args.seed,
                           save_steps=25, logging_steps=5, max_length=1024)
    print(f"train: {len(s1)} stage-1 + {len(s2)} stage-2 examples; test: {len(test_items)} mixtures", flush=True)
    judge = EmbeddingJudge()

    base = TransformersGenerator(args.model, batch_size=args.gen_batch_size, device=args.device)
    gb = base.generate([answer_messages(it) for it in test_items], max_new_tokens=args.max_new_tokens)
    before = judge.judge(test_items, [g.text.strip() for g in gb])
    t_train = time.time()
    res = train_rw_steering(cfg, build_sft_examples(s1), build_sft_examples(s2))
    train_s = time.time() - t_train
    tuned = TransformersGenerator(res["final_dir"], batch_size=args.gen_batch_size, device=args.device)
    gt = tuned.generate([steered_messages(it) for it in test_items], max_new_tokens=args.max_new_tokens + 24)
    parsed = [parse_steered(g.text, len(it.items)) for g, it in zip(gt, test_items, strict=True)]
    answers = [p[2] or g.text.strip() for p, g in zip(parsed, gt, strict=True)]
    after = judge.judge(test_items, answers)
    y = np.concatenate([it.labels for it in test_items])
    pred = np.concatenate([[int(i + 1 in p[0]) for i in range(len(it.items))] for p, it in zip(parsed, test_items, strict=True)])
    tp, fp, fn = int(((y == 1) & (pred == 1)).sum()), int(((y == 0) & (pred == 1)).sum()), int(((y == 1) & (pred == 0)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    out = {
        "before": {"by_ratio": curves(test_items, before),
                   "mean_consistency": round(float(np.mean([j.consistency for j in before])), 2),
                   "mean_cleanliness": round(float(np.mean([j.cleanliness for j in before])), 2)},
        "after": {"by_ratio": curves(test_items, after),
                  "mean_consistency": round(float(np.mean([j.consistency for j in after])), 2),
                  "mean_cleanliness": round(float(np.mean([j.cleanliness for j in after])), 2)},
        "identification": {"precision": round(prec, 4), "recall": round(rec, 4),
                           "f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0,
                           "format_ok": round(float(np.mean(["inappropriate:" in g.text.lower() for g in gt])), 3)},
        "training": {k: {kk: vv for kk, vv in v.items() if kk != "losses"} | {"first_loss": (v.get("losses") or [None])[0],
                                                                            "last_loss": (v.get("losses") or [None])[-1]}
                     for k, v in res.items() if k.startswith("stage")},
        "examples": [{"ratio": it.ratio, "before": gb[i].text[:200], "after": gt[i].text[:300]}
                     for i, it in enumerate(test_items) if i % 6 == 2][:6],
        "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "train_seconds": round(train_s, 1),
                   "total_seconds": round(time.time() - t0, 1)},
    }
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    for r in out["before"]["by_ratio"]:
        b, a = out["before"]["by_ratio"][r], out["after"]["by_ratio"][r]
        print(f"ratio {r}: consistency {b['consistency']:5.1f} -> {a['consistency']:5.1f}   "
              f"cleanliness {b['cleanliness']:5.1f} -> {a['cleanliness']:5.1f}")
    print(f"identification {out['identification']}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
