"""Conflict localisation without an LLM on SQuAD-KRE / MuSiQue-KRE.

For each pair (same ``id`` in the golden and negative files) the belief is "question + golden
answer" and the retrieved text is the negative context, where one fact was substituted. The
*target* is the negative-context sentence(s) containing the substituted answer (the negative
file's ``answer``). Pairs where no sentence contains it are counted (``no_target``) and excluded.

Metrics (test split = every pair after the first ``--dev`` ids of each set, in file order):

* ``recall@1`` / ``recall@5``: a target sentence is among the top 1 / 5 of the ranking.
* ``flag_precision``: flags on target sentences / all flags raised, where flags are counted on
  the negative context *and* on the golden context of the same pair (which has no conflict, so
  every flag there is false).
* ``flag_recall``: pairs whose target sentence is flagged / pairs with a target.
* ``baseline_cosine``: plain cosine ranking of sentences against the belief text with
  all-MiniLM-L6-v2 (recall@1 / recall@5).

Flags: the detector flags a sentence when its mismatch >= threshold, its relevance >=
min_relevance and no sentence stating the believed value is more on topic. The pair-level flag
is the best-ranked flagged sentence (as ``detect(top_k=1)`` returns it): a true positive when
it is a target sentence; a false positive when it is another sentence or when anything is
flagged in the golden context.

Ranking features (see ``ctxkit.faithfulness.conflicts``): relevance ``alpha * cosine(question,
sentence) + (1 - alpha) * question-word overlap``, the typed value ``mismatch``, and the extra
features of ``DEFAULT_WEIGHTS`` (idf-weighted question-word overlap, the neighbours' overlap,
cosine of the sentence with the believed answer, partial answer words, "states the believed
value"). With ``--tune`` the weights are fitted on the dev split of *both* sets together (the
first ``--dev`` ids of each set) by a conditional logit (softmax over the sentences of a
context, L2-regularised, a grid over ``alpha``); the test split reports both the library
defaults and the freshly fitted weights, plus a feature ablation (each feature dropped and the
rest refitted on dev). The library defaults are the weights fitted this way.

Embeddings are cached on disk with ``--cache DIR`` (pickled shards keyed by text), so a rerun
costs only the feature computation.

Usage:
    python benchmarks/conflicts.py --out results.json [--data ../shared/data/faithfulrag]
        [--dev 300] [--tune] [--cache /tmp/ctxkit_conflicts_cache] [--misses 40] [--speed 128]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
from _common import data_missing, data_path, machine, write_json
from tqdm import tqdm

from ctxkit.faithfulness.conflicts import DEFAULT_WEIGHTS, Belief, ConflictDetector
from ctxkit.faithfulness.conflicts.text import _norm
from ctxkit.faithfulness.faithfulrag import clean_field
from ctxkit.retrievers import split_sentences

EXTRA = list(DEFAULT_WEIGHTS)
BASE = ["sim", "lex", "mismatch"]


def load_pairs(data: Path, name: str) -> list[dict]:
    gold = json.loads((data / f"{name}_kre_golden.json").read_text())
    neg = {clean_field(r["id"]): r for r in json.loads((data / f"{name}_kre_negative.json").read_text())}
    pairs = []
    for g in gold:
        gid = clean_field(g["id"])
        n = neg.get(gid)
        if n is None:
            continue
        pairs.append(
            {
                "id": gid,
                "question": clean_field(g["question"]),
                "gold_answer": clean_field(g["answer"]),
                "neg_answer": clean_field(n["answer"]),
                "gold_context": clean_field(g["context"]),
                "neg_context": clean_field(n["context"]),
            }
        )
    return pairs


def targets(sentences: list[str], answer: str) -> set[int]:
    a = f" {_norm(answer)} "
    if not a.strip():
        return set()
    return {i for i, s in enumerate(sentences) if a in f" {_norm(s)} "}


class CachedEmbedder:
    """Benchmark-only memo around the embedder, optionally persisted as shards in ``cache``."""

    def __init__(self, inner, cache: str | None = None) -> None:
        self.inner = inner
        self.cache = cache
        self.memo: dict[str, np.ndarray] = {}
        self.fresh: dict[str, np.ndarray] = {}
        if cache:
            os.makedirs(cache, exist_ok=True)
            for f in sorted(glob.glob(os.path.join(cache, "emb_shard_*.pkl"))):
                with open(f, "rb") as fh:
                    self.memo.update(pickle.load(fh))

    def encode(self, texts: list[str], batch_size: int | None = None, **kw) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if todo:
            vecs = np.asarray(self.inner.encode(todo, batch_size=batch_size or 128), dtype=np.float32)
            self.memo.update(zip(todo, vecs, strict=True))
            self.fresh.update(zip(todo, vecs, strict=True))
            if len(self.fresh) >= 4096:
                self.flush()
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def flush(self) -> None:
        if self.cache and self.fresh:
            k = len(glob.glob(os.path.join(self.cache, "emb_shard_*.pkl")))
            path = os.path.join(self.cache, f"emb_shard_{k:04d}_{os.getpid()}.pkl")
            with open(path + ".tmp", "wb") as fh:
                pickle.dump(self.fresh, fh, protocol=5)
            os.replace(path + ".tmp", path)
        self.fresh = {}


def _matrix(cands, n: int) -> dict:
    """Per-sentence feature matrix (sentence order) and flags of one context's candidates."""
    cols = BASE + EXTRA
    x = np.zeros((n, len(cols)), np.float32)
    flagged = np.zeros(n, bool)
    for c in cands:
        f = {"sim": c.similarity, "lex": c.info["lex"], "mismatch": c.mismatch, **c.info["features"]}
        x[c.chunk] = [f[k] for k in cols]
        flagged[c.chunk] = c.flagged
    return {"x": x, "flagged": flagged}


def scores(x: np.ndarray, p: dict) -> np.ndarray:
    a = p["alpha"]
    s = a * x[:, 0] + (1 - a) * x[:, 1] + p["mismatch_weight"] * x[:, 2]
    for j, f in enumerate(EXTRA):
        s = s + p["weights"].get(f, 0.0) * x[:, 3 + j]
    return s


def evaluate(rows: list[dict], p: dict) -> dict:
    """Ranking recall and flag precision/recall; the flag of a pair is the detector's top-1
    flagged sentence (``detect(top_k=1)``); ``*_all`` counts every flagged sentence."""
    r1 = r5 = tp = fp = n = 0
    tp_all = fp_all = 0
    neg_flagged = gold_flagged = 0
    for row in rows:
        if not row["targets"]:
            continue
        n += 1
        order = [int(i) for i in np.argsort(-scores(row["neg"]["x"], p), kind="stable")]
        r1 += order[0] in row["targets"]
        r5 += bool(set(order[:5]) & row["targets"])
        flagged = {int(i) for i in np.flatnonzero(row["neg"]["flagged"])}
        top_flag = next((ci for ci in order if ci in flagged), None)
        if top_flag is not None:
            tp += top_flag in row["targets"]
            fp += top_flag not in row["targets"]
        tp_all += bool(flagged & row["targets"])
        fp_all += len(flagged - row["targets"])
        neg_flagged += bool(flagged)
        g = int(row["gold"]["flagged"].sum())
        fp += bool(g)
        fp_all += g
        gold_flagged += bool(g)
    n_flags = tp + fp
    return {
        "n": n,
        "recall@1": round(r1 / max(n, 1), 4),
        "recall@5": round(r5 / max(n, 1), 4),
        "flag_precision": round(tp / n_flags, 4) if n_flags else 0.0,
        "flag_recall": round(tp / max(n, 1), 4),
        "flag_precision_all": round(tp_all / (tp_all + fp_all), 4) if tp_all + fp_all else 0.0,
        "flag_recall_all": round(tp_all / max(n, 1), 4),
        "pairs_flagged_negative": round(neg_flagged / max(n, 1), 4),
        "pairs_flagged_golden": round(gold_flagged / max(n, 1), 4),
    }


def fit(rows: list[dict], alpha: float, feats: list[str], l2: float = 1e-3) -> dict:
    """Conditional logit on dev: softmax over a context's sentences, all targets count as one
    outcome; parameters = weight of relevance (then divided out), mismatch and ``feats``."""
    from scipy.optimize import minimize

    rows = [r for r in rows if r["targets"]]
    cmax = max(len(r["neg"]["x"]) for r in rows)
    cols = ["mismatch", *feats]
    ci = [2 + (0 if f == "mismatch" else 1 + EXTRA.index(f)) for f in cols]
    X = np.zeros((len(rows), cmax, 1 + len(cols)))
    mask = np.zeros((len(rows), cmax), bool)
    tgt = np.zeros((len(rows), cmax), bool)
    for i, r in enumerate(rows):
        x = r["neg"]["x"]
        X[i, : len(x), 0] = alpha * x[:, 0] + (1 - alpha) * x[:, 1]
        X[i, : len(x), 1:] = x[:, ci]
        mask[i, : len(x)] = True
        tgt[i, list(r["targets"])] = True

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.where(mask, X @ theta, -np.inf)
        s = s - s.max(1, keepdims=True)
        e = np.exp(s)
        p = e / e.sum(1, keepdims=True)
        pt = (p * tgt).sum(1)
        loss = -np.log(pt + 1e-12).mean() + l2 * theta @ theta
        q = p * tgt / (pt[:, None] + 1e-12)  # posterior over the targets
        grad = ((p - q)[:, :, None] * np.where(mask[:, :, None], X, 0.0)).sum(1).mean(0) + 2 * l2 * theta
        return float(loss), grad

    theta0 = np.zeros(1 + len(cols))
    theta0[0] = 1.0
    res = minimize(nll, theta0, jac=True, method="L-BFGS-B")
    th = res.x
    scale = th[0] if th[0] > 1e-6 else 1.0
    w = {f: round(float(v / scale), 4) for f, v in zip(cols, th[1:], strict=True)}
    return {
        "alpha": alpha,
        "mismatch_weight": w.pop("mismatch"),
        "weights": {f: w.get(f, 0.0) for f in EXTRA},
        "dev_nll": round(float(res.fun), 4),
    }


def tune(dev: list[dict], feats: list[str]) -> dict:
    """Best of an alpha grid by dev recall@1 (ties: lower dev loss) with weights fitted per alpha."""
    best = None
    for a in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        p = fit(dev, a, feats)
        r1 = evaluate(dev, p)["recall@1"]
        key = (r1, -p["dev_nll"])
        if best is None or key > best[0]:
            best = (key, p)
    return best[1]


def baseline(rows: list[dict], emb) -> dict:
    r1 = r5 = n = 0
    for i in tqdm(range(0, len(rows), 64), desc="baseline", leave=False):
        batch = [r for r in rows[i : i + 64] if r["targets"]]
        if not batch:
            continue
        texts = [f"{r['question']} {r['gold_answer']}" for r in batch]
        sents = [s for r in batch for s in r["neg_sents"]]
        e = emb.encode(texts + sents, batch_size=128)
        bv, sv = e[: len(texts)], e[len(texts) :]
        off = 0
        for j, r in enumerate(batch):
            k = len(r["neg_sents"])
            sims = sv[off : off + k] @ bv[j]
            off += k
            order = list(np.argsort(-sims))
            n += 1
            r1 += int(order[0]) in r["targets"]
            r5 += bool({int(x) for x in order[:5]} & r["targets"])
    return {"recall@1": round(r1 / max(n, 1), 4), "recall@5": round(r5 / max(n, 1), 4), "n": n}


def featurise(rows: list[dict], det: ConflictDetector, name: str) -> None:
    for i in tqdm(range(0, len(rows), 64), desc=f"{name} detector"):
        batch = rows[i : i + 64]
        beliefs = [[Belief.from_answer(r["question"], r["gold_answer"])] for r in batch]
        both = det.rank(beliefs + beliefs, [r["neg_sents"] for r in batch] + [r["gold_sents"] for r in batch])
        neg, gold = both[: len(batch)], both[len(batch) :]
        for r, nc, gc in zip(batch, neg, gold, strict=True):
            r["neg"], r["gold"] = _matrix(nc, len(r["neg_sents"])), _matrix(gc, len(r["gold_sents"]))


def misses(rows: list[dict], p: dict, k: int, seed: int = 0) -> list[dict]:
    """A sample of ``k`` pairs whose top-ranked sentence is not a target, for a manual audit
    (question, both answers, the top sentence and the best-ranked target). Pairs are taken in
    the order of a hash of ``seed`` and their id, so a pair that stays a miss after a change
    stays in the sample."""
    import hashlib

    out = []
    for r in rows:
        if not r["targets"]:
            continue
        s = scores(r["neg"]["x"], p)
        top = int(np.argmax(s))
        if top in r["targets"]:
            continue
        tgt = max(r["targets"], key=lambda i: s[i])
        out.append({"id": r["id"], "question": r["question"], "gold_answer": r["gold_answer"],
                    "neg_answer": r["neg_answer"], "top": r["neg_sents"][top],
                    "best_target": r["neg_sents"][tgt], "targets": len(r["targets"]),
                    "sentences": len(r["neg_sents"])})
    return sorted(out, key=lambda m: hashlib.sha1(f"{seed}:{m['id']}".encode()).hexdigest())[:k]


def speed(rows: list[dict], embedder, n: int, repeats: int = 2) -> dict:
    """Seconds of ``ConflictDetector.rank`` on the negative contexts of the first ``n`` rows,
    with and without phrase candidates, on ``embedder`` without the cache: the best of
    ``repeats`` alternating runs of each, after one warm-up call."""
    rows = rows[:n]
    beliefs = [[Belief.from_answer(r["question"], r["gold_answer"])] for r in rows]
    chunks = [r["neg_sents"] for r in rows]
    embedder.encode(["warm up"])
    best = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for on in (True, False):
            d = ConflictDetector(phrase_candidates=on)
            d._embedder = embedder
            t = time.perf_counter()
            d.rank(beliefs, chunks)
            best[on] = min(best[on], time.perf_counter() - t)
    return {"pairs": len(rows), "phrase_candidates_s": round(best[True], 2),
            "no_phrase_candidates_s": round(best[False], 2), "ratio": round(best[True] / best[False], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(data_path("faithfulrag")))
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--dev", type=int, default=300, help="first N ids of each set form the dev split")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N pairs of each set")
    ap.add_argument("--tune", action="store_true", help="fit the ranking weights on dev, ablate features")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", default=None, help="folder for an on-disk embedding cache")
    ap.add_argument("--sets", default="squad,musique", help="comma-separated: squad, musique")
    ap.add_argument("--misses", type=int, default=0, help="store N test misses per set (ordered by a hash of the pair id) for audits")
    ap.add_argument("--speed", type=int, default=0,
                    help="time the detector on N test pairs per set with and without phrase candidates")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "squad_kre_golden.json").exists():
        data_missing("conflicts", data, needs="squad_kre_*.json, musique_kre_*.json")
        return 0
    det = ConflictDetector(device=args.device)
    raw = det.embedder
    emb = CachedEmbedder(raw, args.cache)
    det._embedder = emb
    default = {"alpha": det.alpha, "mismatch_weight": det.mismatch_weight, "weights": dict(det.weights)}
    results: dict = {"config": {"dev": args.dev, "limit": args.limit, "embedder": "all-MiniLM-L6-v2",
                                "device": args.device, "defaults": default,
                                "threshold": det.threshold, "min_relevance": det.min_relevance}}
    t0 = time.time()
    sets: dict[str, tuple[list[dict], list[dict]]] = {}
    for name in args.sets.split(","):
        rows = []
        for p in load_pairs(data, name)[: args.limit]:
            ns, gs = split_sentences(p["neg_context"]), split_sentences(p["gold_context"])
            rows.append({**p, "neg_sents": ns, "gold_sents": gs, "targets": targets(ns, p["neg_answer"])})
        featurise(rows, det, name)
        emb.flush()
        sets[name] = (rows[: args.dev], rows[args.dev :])
    settings = {"library_default": default}
    if args.tune:
        dev_all = [r for dev, _ in sets.values() for r in dev]
        on = [f for f in EXTRA if default["weights"].get(f)]
        settings["previous_release (alpha=0.3, mismatch_weight=0.25)"] = {
            "alpha": 0.3, "mismatch_weight": 0.25, "weights": {}}
        settings["refit: relevance + mismatch only"] = tune(dev_all, [])
        settings["refit: default features"] = tune(dev_all, on)
        for f in on:
            settings[f"refit: default features without {f}"] = tune(dev_all, [x for x in on if x != f])
        for f in EXTRA:
            if f not in on:
                settings[f"refit: default features + {f}"] = tune(dev_all, [*on, f])
        settings["refit: all features"] = tune(dev_all, EXTRA)
        settings["default without mismatch (weight 0)"] = {**default, "mismatch_weight": 0.0}
        results["fitted"] = settings["refit: default features"]
        print("fitted on dev:", json.dumps(results["fitted"]))
    for name, (dev, test) in sets.items():
        res = evaluate(test, default)
        res["no_target"] = sum(1 for r in test if not r["targets"])
        res["pairs"] = len(test)
        res["baseline_cosine"] = baseline(test, emb)
        res["dev"] = evaluate(dev, default)
        res["dev"]["baseline_cosine"] = baseline(dev, emb)
        if args.tune:
            res["settings"] = {k: {"test": evaluate(test, p), "dev_recall@1": evaluate(dev, p)["recall@1"]}
                               for k, p in settings.items()}
        if args.misses:
            res["miss_sample"] = misses(test, default, args.misses)
        if args.speed:
            res["speed"] = speed(test, raw, args.speed)
        results[name] = res
        print(name, json.dumps({k: v for k, v in res.items() if k not in ("settings", "miss_sample")}, indent=1))
        if args.tune:
            for k, v in res["settings"].items():
                print(f"  {k:32s} test r@1 {v['test']['recall@1']:.4f} r@5 {v['test']['recall@5']:.4f}"
                      f"  dev r@1 {v['dev_recall@1']:.4f}")
    results["config"]["seconds"] = round(time.time() - t0, 1)
    results["machine"] = machine()
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
