"""Inappropriate-item detection on the RW-Steering pools, leave-one-category-out, tags OFF.

For each category: train the detector on mixtures of the three other categories, test on the
held-out one. Reports item-level precision / recall / F1 per held-out category and per
contamination ratio, for our set-aware detector (``SetDetector``) and, in the same run, the
baseline (MiniLM embedding of each item alone + logistic regression).

    python benchmarks/steering.py --out results.json
    python benchmarks/steering.py --export-head ctxkit/faithfulness/data/steering_head.json

Reads ``../shared/data/rw_steering_poisoned_context`` (``--data``); exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctxkit.faithfulness.detector import SetDetector
from ctxkit.faithfulness.testbed import CATEGORIES, DEFAULT_RATIOS, build_testbed, load_pools


def prf(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = int(np.sum((y == 1) & (pred == 1)))
    fp = int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    tn = int(np.sum((y == 0) & (pred == 0)))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4),
            "fpr": round(fp / (fp + tn), 4) if fp + tn else 0.0, "n_items": len(y)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "../shared/data/rw_steering_poisoned_context"))
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--n-queries", type=int, default=150, help="queries sampled per category")
    ap.add_argument("--n-items", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="mlp", choices=["mlp", "logreg"])
    ap.add_argument("--item-embedding", action="store_true",
                    help="primary variant also feeds each item's embedding (the set-only variant is reported too)")
    ap.add_argument("--emb-cache", default=None, help="npz file caching MiniLM embeddings between runs")
    ap.add_argument("--head-threshold", type=float, default=None,
                    help="decision threshold written into the exported head (default: F1-optimal on training data)")
    ap.add_argument("--export-head", default=None, help="train on all categories and save the head here")
    args = ap.parse_args()

    data = Path(args.data)
    if not data.exists():
        print(f"steering benchmark: data folder {data} not found (pass --data); skipping")
        return 0
    t0 = time.time()
    pools = load_pools(data)
    cats = [c for c in CATEGORIES if c in pools]
    items = {c: build_testbed(pools, categories=[c], n_queries=args.n_queries, n_items=args.n_items,
                              seed=args.seed, source_tags=False) for c in cats}
    det = SetDetector("default", item_embedding=args.item_embedding)
    texts = sorted({t for c in cats for it in items[c] for t in [it.question] + [x.text for x in it.items]})
    cache: dict[str, np.ndarray] = {}
    if args.emb_cache and Path(args.emb_cache).is_file():
        z = np.load(args.emb_cache, allow_pickle=False)
        cache = dict(zip(z["texts"].tolist(), z["vecs"], strict=True))
    todo = [t for t in texts if t.strip() not in cache]
    if todo:
        print(f"embedding {len(todo)} distinct texts ...", flush=True)
        cache.update(zip([t.strip() for t in todo], det.embedder.encode(todo, show_progress=True), strict=True))
        if args.emb_cache:
            np.savez(args.emb_cache, texts=np.array(list(cache)), vecs=np.stack(list(cache.values())))

    def lists(its):
        return [it.question for it in its], [[x.text for x in it.items] for it in its], [it.labels for it in its]

    if args.export_head:
        q, il, lab = lists([it for c in cats for it in items[c]])
        det.fit(q, il, lab, model=args.model, seed=args.seed, cache=cache)
        if args.head_threshold is not None:
            det.head["threshold"] = args.head_threshold
        det.save(args.export_head)
        print(f"saved head ({Path(args.export_head).stat().st_size} bytes) trained on {cats} -> {args.export_head}")
        return 0

    from sklearn.linear_model import LogisticRegression

    results: dict = {"heldout": {}, "baseline": {}}
    by_ratio_pred: dict[float, list] = {r: [] for r in DEFAULT_RATIOS}
    by_ratio_base: dict[float, list] = {r: [] for r in DEFAULT_RATIOS}
    for held in cats:
        train = [it for c in cats if c != held for it in items[c]]
        test = items[held]
        q, il, lab = lists(train)
        d = SetDetector(det.embedder, item_embedding=args.item_embedding).fit(q, il, lab, model=args.model,
                                                                            seed=args.seed, cache=cache)
        tq, til, tlab = lists(test)
        probs = d.score(tq, til, cache=cache)
        y = np.concatenate([np.asarray(v) for v in tlab])
        pred = np.concatenate([(p >= d.threshold).astype(int) for p in probs])
        # baseline: per-item logistic regression on the item's MiniLM embedding
        xb = np.stack([cache[t.strip()] for lst in il for t in lst])
        yb = np.concatenate([np.asarray(v) for v in lab])
        base = LogisticRegression(max_iter=2000, C=1.0).fit(xb, yb)
        xt = np.stack([cache[t.strip()] for lst in til for t in lst])
        bpred = base.predict(xt)
        results["heldout"][held] = {**prf(y, pred), "threshold": d.threshold}
        alt = SetDetector(det.embedder, item_embedding=not args.item_embedding).fit(
            q, il, lab, model=args.model, seed=args.seed, cache=cache)
        apred = np.concatenate([(p >= alt.threshold).astype(int) for p in alt.score(tq, til, cache=cache)])
        results.setdefault("ablation", {})[held] = prf(y, apred)
        results["baseline"][held] = prf(y, bpred)
        pos = 0
        for it, p in zip(test, probs, strict=True):
            n = len(it.items)
            by_ratio_pred[it.ratio].append((np.asarray(it.labels), (p >= d.threshold).astype(int)))
            by_ratio_base[it.ratio].append((np.asarray(it.labels), bpred[pos:pos + n]))
            pos += n
        print(f"held out {held}: ours {results['heldout'][held]}  ablation {results['ablation'][held]}  "
              f"baseline {results['baseline'][held]}", flush=True)

    def pooled(rows):
        return prf(np.concatenate([a for a, _ in rows]), np.concatenate([b for _, b in rows]))

    results["macro_f1"] = round(float(np.mean([results["heldout"][c]["f1"] for c in cats])), 4)
    results["ablation_macro_f1"] = round(float(np.mean([results["ablation"][c]["f1"] for c in cats])), 4)
    results["ablation_is"] = "set features only" if args.item_embedding else "set features + item embedding"
    results["baseline_macro_f1"] = round(float(np.mean([results["baseline"][c]["f1"] for c in cats])), 4)
    results["by_ratio"] = {f"{r:.2f}": {"ours": pooled(by_ratio_pred[r]), "baseline": pooled(by_ratio_base[r])}
                           for r in DEFAULT_RATIOS if by_ratio_pred[r]}
    results["config"] = {"n_queries_per_category": args.n_queries, "n_items": args.n_items, "seed": args.seed,
                         "model": args.model, "item_embedding": args.item_embedding, "source_tags": False,
                         "ratios": list(DEFAULT_RATIOS), "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"macro F1 ours {results['macro_f1']}  baseline {results['baseline_macro_f1']}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
