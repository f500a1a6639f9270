"""The older set-structure detector (`detector: set`) on the RW-Steering pools, leave-one-category-out, tags OFF.

For each category: train the detector on mixtures of the three other categories, test on the
held-out one (decision threshold chosen on the training categories only). Reports item-level
precision / recall / F1 per held-out category and per contamination ratio, for our set-aware
detector (``SetDetector``), an ablation of its feature groups, and, in the same run, the baseline
(MiniLM embedding of each item alone + logistic regression). Features are computed once per
mixture; MiniLM embeddings of the distinct texts can be cached with ``--emb-cache``.

Diagnostics per held-out category say what limits the held-out F1: the ranking quality (AUC),
the F1 at the threshold that would be best on the held-out labels (an oracle, not a result), the
F1 when training and testing on disjoint queries of that category (is it learnable at all with
these features?), a category profile (mean cosine of bad / good items to their nearest
neighbour and to the query), and the F1 of a head that also sees the number of distinct items
in the list -- a testbed artifact (it follows from pool sizes and ratio), measured to show how
much a detector could gain by exploiting it; never shipped.

    python benchmarks/steering_set.py --out results.json --emb-cache /tmp/steering_emb.npz
    python benchmarks/steering_set.py --export-head ctxkit/faithfulness/steering/data/steering_head.json

Reads ``../shared/data/rw_steering_poisoned_context`` (``--data``); exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import data_missing, data_path, machine, prf, write_json

from ctxkit.faithfulness.steering import (
    CATEGORIES,
    DEFAULT_RATIOS,
    FEATURE_NAMES,
    SetDetector,
    build_testbed,
    load_pools,
)

VARIANTS: dict[str, tuple[list[str], bool]] = {
    # name: (set features used, item embedding on)
    "ours": (list(FEATURE_NAMES), False),
    "no_paraphrase_structure": (["lex_overlap_nn", "novel_words", "rel_length"], False),
    "no_lexical": (["nn_gap", "max_sim_others_z", "max_minus_mean", "in_top_pair", "mutual_nn", "rel_length"], False),
    "no_length": ([n for n in FEATURE_NAMES if n != "rel_length"], False),
}
ITEM_EMBEDDING_VARIANT = ("plus_item_embedding", (list(FEATURE_NAMES), True))


def profile(mixtures: list, cache: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean cosine of bad vs good distinct items to their nearest other item and to the query.

    Shows which cue marks the bad items of a category (ratios 0.1-0.85, where a list holds both
    bad items and at least two good ones).
    """
    acc: dict[str, list[float]] = {k: [] for k in ("nn_bad", "nn_good", "query_bad", "query_good")}
    for it in mixtures:
        if not 0.1 <= it.ratio <= 0.85:
            continue
        label = {x.text.strip(): x.inappropriate for x in it.items}
        texts = list(label)
        u = np.stack([cache[t] for t in texts])
        s = u @ u.T - 3.0 * np.eye(len(texts))
        qs = u @ cache[it.question.strip()]
        for i, t in enumerate(texts):
            tag = "bad" if label[t] else "good"
            acc[f"nn_{tag}"].append(float(s[i].max()))
            acc[f"query_{tag}"].append(float(qs[i]))
    return {k: round(float(np.mean(v)), 3) for k, v in acc.items() if v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(data_path("rw_steering_poisoned_context")))
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--n-queries", type=int, default=150, help="queries sampled per category")
    ap.add_argument("--n-items", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="logreg", choices=["mlp", "logreg"])
    ap.add_argument("--no-ablation", action="store_true", help="only the primary detector and the baseline")
    ap.add_argument("--item-embedding-ablation", action="store_true",
                    help="also train set features + the item's own embedding (slow: a 392-wide head per fold)")
    ap.add_argument("--emb-cache", default=None, help="npz file caching MiniLM embeddings between runs")
    ap.add_argument("--head-threshold", type=float, default=None,
                    help="decision threshold written into the exported head (default: F1-optimal on training data)")
    ap.add_argument("--export-head", default=None, help="train on all categories and save the head here")
    args = ap.parse_args()

    data = Path(args.data)
    if not data.exists():
        data_missing("steering", data)
        return 0
    t0 = time.time()
    pools = load_pools(data)
    cats = [c for c in CATEGORIES if c in pools]
    items = {c: build_testbed(pools, categories=[c], n_queries=args.n_queries, n_items=args.n_items,
                              seed=args.seed, source_tags=False) for c in cats}
    det = SetDetector("default", item_embedding=True)
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

    # features of every item, computed once: set features + the item's own embedding
    n_set = len(FEATURE_NAMES)
    feats: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    rows_of: dict[str, np.ndarray] = {}
    n_distinct: dict[str, np.ndarray] = {}
    for c in cats:
        print(f"features: {c} ({len(items[c])} mixtures)", flush=True)
        f = det.features([it.question for it in items[c]], [[x.text for x in it.items] for it in items[c]], cache)
        feats[c] = np.vstack(f)
        ys[c] = np.concatenate([np.asarray(it.labels) for it in items[c]])
        rows_of[c] = np.concatenate([np.full(len(it.items), it.row_id, dtype=object) for it in items[c]])
        n_distinct[c] = np.concatenate([np.full(len(it.items), len({x.text.strip() for x in it.items}))
                                        for it in items[c]])

    def train(cs: list[str], use: list[str], item_emb: bool) -> SetDetector:
        x = np.vstack([feats[c] if item_emb else feats[c][:, :n_set] for c in cs])
        y = np.concatenate([ys[c] for c in cs])
        d = SetDetector(det.embedder, item_embedding=item_emb)
        return d.fit_matrix(x, y, model=args.model, seed=args.seed, use=use)

    def predict(d: SetDetector, c: str) -> np.ndarray:
        x = feats[c] if d.item_embedding else feats[c][:, :n_set]
        return (d._forward(x) >= d.threshold).astype(int)

    if args.export_head:
        d = train(cats, list(FEATURE_NAMES), False)
        if args.head_threshold is not None:
            d.head["threshold"] = args.head_threshold
        d.save(args.export_head)
        w = dict(zip(FEATURE_NAMES, np.round(np.asarray(d.head["layers"][0]["w"])[:, 0], 3).tolist(), strict=True))
        print(f"saved head ({Path(args.export_head).stat().st_size} bytes, threshold {d.head['threshold']}) "
              f"trained on {cats} -> {args.export_head}\nstandardised weights: {w}")
        return 0

    from sklearn.linear_model import LogisticRegression

    variants = {"ours": VARIANTS["ours"]} if args.no_ablation else dict(VARIANTS)
    if args.item_embedding_ablation:
        variants[ITEM_EMBEDDING_VARIANT[0]] = ITEM_EMBEDDING_VARIANT[1]
    results: dict = {"heldout": {}, "baseline": {}, "flag_all": {}, "ablation": {v: {} for v in variants if v != "ours"},
                     "diagnostics": {}}

    def diagnose(d: SetDetector, held: str, train_cats: list[str]) -> dict:
        """Why held-out F1 is what it is: ranking quality, threshold transfer, learnability."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score

        y = ys[held]
        p = d._forward(feats[held][:, :n_set])
        grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
        oracle_t = max(grid, key=lambda t: prf(y, (p >= t).astype(int))["f1"])
        # in-domain: train and test on disjoint halves of the held-out category's own queries
        ids = sorted(set(rows_of[held].tolist()))
        half = np.isin(rows_of[held], ids[::2])
        f1s = []
        for tr_mask in (half, ~half):
            dd = SetDetector(det.embedder).fit_matrix(feats[held][tr_mask, :n_set], y[tr_mask],
                                                       model=args.model, seed=args.seed)
            f1s.append(prf(y[~tr_mask], (dd._forward(feats[held][~tr_mask, :n_set]) >= dd.threshold).astype(int))["f1"])
        # a testbed artifact: the number of distinct items in a list follows from the pool sizes
        # and the ratio, so a head that sees it "detects" by counting (never shipped)
        x_art = np.vstack([np.column_stack([feats[c][:, :n_set], n_distinct[c]]) for c in train_cats])
        y_art = np.concatenate([ys[c] for c in train_cats])
        mu, sd = x_art.mean(0), x_art.std(0) + 1e-6
        art = LogisticRegression(max_iter=3000).fit((x_art - mu) / sd, y_art)
        p_tr = art.predict_proba((x_art - mu) / sd)[:, 1]
        t_art = max(grid, key=lambda t: prf(y_art, (p_tr >= t).astype(int))["f1"])
        p_art = art.predict_proba((np.column_stack([feats[held][:, :n_set], n_distinct[held]]) - mu) / sd)[:, 1]
        return {"auc": round(float(roc_auc_score(y, p)), 4),
                "oracle_threshold_f1": prf(y, (p >= oracle_t).astype(int))["f1"], "oracle_threshold": float(oracle_t),
                "in_domain_f1": round(float(np.mean(f1s)), 4),
                "with_distinct_count_f1": prf(y, (p_art >= t_art).astype(int))["f1"]}

    by_ratio_pred: dict[float, list] = {r: [] for r in DEFAULT_RATIOS}
    by_ratio_base: dict[float, list] = {r: [] for r in DEFAULT_RATIOS}
    for held in cats:
        train_cats = [c for c in cats if c != held]
        y = ys[held]
        for name, (use, item_emb) in variants.items():
            d = train(train_cats, use, item_emb)
            pred = predict(d, held)
            row = {**prf(y, pred), "threshold": d.threshold}
            if name == "ours":
                results["heldout"][held] = row
                ours_pred = pred
                results["diagnostics"][held] = diagnose(d, held, train_cats)
            else:
                results["ablation"][name][held] = row
        # baseline: per-item logistic regression on the item's MiniLM embedding (identical rows are
        # merged with their count as sample weight: the same loss, far fewer rows)
        xb = np.vstack([feats[c][:, n_set:] for c in train_cats])
        yb = np.concatenate([ys[c] for c in train_cats])
        rows, _inv, cnt = np.unique(np.column_stack([xb, yb]), axis=0, return_inverse=True, return_counts=True)
        base = LogisticRegression(max_iter=2000, C=1.0).fit(rows[:, :-1], rows[:, -1].astype(int), sample_weight=cnt)
        bpred = base.predict(feats[held][:, n_set:])
        results["baseline"][held] = prf(y, bpred)
        results["flag_all"][held] = prf(y, np.ones_like(y))
        pos = 0
        for it in items[held]:
            n = len(it.items)
            lab = np.asarray(it.labels)
            by_ratio_pred[it.ratio].append((lab, ours_pred[pos:pos + n]))
            by_ratio_base[it.ratio].append((lab, bpred[pos:pos + n]))
            pos += n
        print(f"held out {held}: ours {results['heldout'][held]}  baseline {results['baseline'][held]}", flush=True)
        for name in results["ablation"]:
            print(f"    {name}: f1 {results['ablation'][name][held]['f1']}", flush=True)

    def pooled(rows):
        return prf(np.concatenate([a for a, _ in rows]), np.concatenate([b for _, b in rows]))

    def macro(table: dict, keep=cats) -> float:
        return round(float(np.mean([table[c]["f1"] for c in keep])), 4)

    no_priv = [c for c in cats if c != "privacy"]
    results["macro_f1"] = macro(results["heldout"])
    results["diagnostics_macro"] = {k: round(float(np.mean([results["diagnostics"][c][k] for c in cats])), 4)
                                    for k in ("auc", "oracle_threshold_f1", "in_domain_f1", "with_distinct_count_f1")}
    results["profile"] = {c: profile(items[c], cache) for c in cats}
    results["baseline_macro_f1"] = macro(results["baseline"])
    results["flag_all_macro_f1"] = macro(results["flag_all"])
    if no_priv != cats:
        results["macro_f1_without_privacy"] = macro(results["heldout"], no_priv)
        results["baseline_macro_f1_without_privacy"] = macro(results["baseline"], no_priv)
    results["ablation_macro_f1"] = {name: macro(t) for name, t in results["ablation"].items()}
    results["by_ratio"] = {f"{r:.2f}": {"ours": pooled(by_ratio_pred[r]), "baseline": pooled(by_ratio_base[r])}
                           for r in DEFAULT_RATIOS if by_ratio_pred[r]}
    results["config"] = {"n_queries_per_category": args.n_queries, "n_items": args.n_items, "seed": args.seed,
                         "model": args.model, "features": list(FEATURE_NAMES), "source_tags": False,
                         "ratios": list(DEFAULT_RATIOS), "seconds": round(time.time() - t0, 1)}
    results["machine"] = machine()
    write_json(args.out, results, indent=1)
    print(f"macro F1 ours {results['macro_f1']}  baseline {results['baseline_macro_f1']}  "
          f"ablations {results['ablation_macro_f1']}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
