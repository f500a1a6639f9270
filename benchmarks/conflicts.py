"""Conflict detection and localisation through the public API, on frozen dev / test splits.

**Detection** (what a user needs first: does this passage conflict with what I believe?). Each
item is one (belief, passage) pair scored by ``ConflictDetector().passage_scores`` and flagged
by ``ConflictDetector().detect_batch`` (a passage is flagged when it gets a conflict record),
with the library's default settings:

* ``squad`` / ``musique`` (SQuAD-KRE / MuSiQue-KRE): belief "question + golden answer"; the
  golden context supports it, the negative context (one fact substituted) conflicts.
* ``faitheval`` (FaithEval counterfactual): each context states an answer that contradicts
  common knowledge; the belief "question + that answer" is supported, the belief "question +
  another choice" (seeded by id) is contradicted by the same context.
* ``poisonedrag`` (PoisonedRAG, NQ + HotpotQA + MS MARCO; our second dev set, from another
  source: LLM-fabricated passages backing a false answer): belief "question + correct answer"
  against an adversarial text conflicts; "question + the incorrect answer it backs" is supported.

Each supporting item's belief is also read against the supporting passage of another id of the
same set (off-topic, as most of a retrieved list is), which must not be flagged either.

Metrics per set: ``auc`` (conflict vs supporting items by passage score), ``recall`` (conflicts
flagged), ``false_flag_rate`` (supporting items flagged), ``balanced_accuracy``,
``unrelated_flag_rate`` (off-topic items flagged). For ``squad`` / ``musique`` also
``passage_held_out``: the same metrics (and localisation) on the test ids whose passage no
``dev_train`` or ``dev`` id carries (the splits hash question ids, and several questions share a
passage, so most test ids carry a passage the judge trained or was calibrated on).

**Localisation** (``squad``, ``musique``): the sentences of the negative context ranked by
``ConflictDetector().rank``; ``recall@1`` / ``recall@5`` of a sentence holding the substituted
answer (pairs without such a sentence are left out).

Splits are frozen (:func:`ctxkit.faithfulness.judge.sources.split_of`: 25% ``dev_train``, 25%
``dev``, 50% ``test``). Without flags the script reports the ``test`` split with the shipped
defaults; choices are made on ``--split dev`` only, and ``--misses N`` (dev only) stores missed
items for audits. ``--baseline`` adds the span heuristics without the judge (``judge=None``).

Usage:
    python benchmarks/conflicts.py --out results.json [--split test|dev] [--data DIR]
        [--limit N] [--baseline] [--misses 40] [--speed 256] [--device auto]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import auc, data_missing, data_path, machine, write_json

from ctxkit.faithfulness.conflicts import Belief, ConflictDetector
from ctxkit.faithfulness.conflicts.detector import (
    PASSAGE_FEATURES,
    SIMILARITY_FEATURES,
    head_logit,
    polarity_capped,
)
from ctxkit.faithfulness.faithfulrag import clean_field
from ctxkit.faithfulness.judge.data import states
from ctxkit.faithfulness.judge.sources import poisonedrag_items, split_of
from ctxkit.retrievers import split_sentences
from ctxkit.types import Passage

SETS = ("squad", "musique", "faitheval", "poisonedrag")


def _seeded(key: str, n: int) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % n


def load_items(data: Path, name: str, split: str, limit: int | None) -> list[dict]:
    """Detection items of one set: ``{id, belief, text, conflict}`` (and, for KRE sets, the
    substituted answer for localisation)."""
    items: list[dict] = []
    fr = data / "faithfulrag"
    if name in ("squad", "musique"):
        gold = json.loads((fr / f"{name}_kre_golden.json").read_text())
        neg = {clean_field(r["id"]): r for r in json.loads((fr / f"{name}_kre_negative.json").read_text())}
        # passages of the ids the judge trained on (dev_train) or was selected and calibrated on
        # (dev): several questions share one passage, so a test id can carry a passage seen there
        seen = {clean_field(g["context"]) for g in gold if split_of(name, clean_field(g["id"])) != "test"}
        for g in gold:
            gid = clean_field(g["id"])
            if gid not in neg or split_of(name, gid) != split:
                continue
            belief = Belief.from_answer(clean_field(g["question"]), clean_field(g["answer"]))
            ctx = clean_field(g["context"])
            items.append({"id": gid, "belief": belief, "text": ctx, "conflict": False, "passage_seen": ctx in seen})
            items.append({"id": gid, "belief": belief, "text": clean_field(neg[gid]["context"]), "conflict": True,
                          "substitute": clean_field(neg[gid]["answer"]), "passage_seen": ctx in seen})
    elif name == "faitheval":
        for r in json.loads((fr / "faitheval_counterfactual.json").read_text()):
            rid = clean_field(str(r["id"]))
            if split_of("faitheval", rid) != split:
                continue
            q, a = clean_field(r["question"]), clean_field(r["answer"])
            others = [clean_field(c) for c in r["choices"] if clean_field(c) != a]
            if not others:
                continue
            wrong = others[_seeded(rid, len(others))]
            ctx = clean_field(r["context"])
            items.append({"id": rid, "belief": Belief.from_answer(q, a), "text": ctx, "conflict": False})
            items.append({"id": rid, "belief": Belief.from_answer(q, wrong), "text": ctx, "conflict": True})
    elif name == "poisonedrag":
        for src in ("nq", "hotpotqa", "msmarco"):
            path = data / "poisonedrag" / f"{src}_adv_targeted.json"
            if not path.is_file():
                continue
            for it in poisonedrag_items(path):
                iid = f"{src}:{it['id']}"
                if split_of("poisonedrag", iid) != split:
                    continue
                k = _seeded(iid, len(it["texts"]))  # one text per question, seeded
                text = it["texts"][k]
                items.append({"id": iid, "belief": Belief.from_answer(it["question"], it["correct"]), "text": text,
                              "conflict": True})
                items.append({"id": iid, "belief": Belief.from_answer(it["question"], it["incorrect"]),
                              "text": it["texts"][(k + 1) % len(it["texts"])], "conflict": False})
    if limit:
        ids = list(dict.fromkeys(i["id"] for i in items))[:limit]
        keep = set(ids)
        items = [i for i in items if i["id"] in keep]
    for it in items:
        it["kind"] = "conflict" if it["conflict"] else "support"
    return items + unrelated_items(items)


def as_strings(items: list[dict]) -> list[dict]:
    """The items with each belief given as a user would type it: the string "question answer"
    (read by :meth:`Belief.coerce`; a question without its "?" is split only where the boundary
    shows)."""
    return [{**it, "belief": Belief.coerce(f"{it['belief'].topic} {it['belief'].answer}")} for it in items]


def unrelated_items(items: list[dict]) -> list[dict]:
    """Off-topic passages, which a retrieved list always holds: each supporting item's belief
    against the supporting passage of the next id of the same set (never flagged by design)."""
    support = [it for it in items if it["kind"] == "support"]
    return [{"id": f"{it['id']}~{nxt['id']}", "belief": it["belief"], "text": nxt["text"], "conflict": False,
             "kind": "unrelated", **({"passage_seen": nxt["passage_seen"]} if "passage_seen" in nxt else {})}
            for it, nxt in zip(support, support[1:] + support[:1]) if nxt["id"] != it["id"]]


def detection(items: list[dict], det: ConflictDetector) -> tuple[dict, np.ndarray, np.ndarray]:
    """Scores and flags of every item through the public API, and the set's metrics."""
    beliefs = [[it["belief"]] for it in items]
    passages = [[Passage(id=f"p{i}", text=it["text"])] for i, it in enumerate(items)]
    scores = np.array([s[0] for s in det.passage_scores(beliefs, passages)])
    flags = np.array([bool(r) for r in det.detect_batch(beliefs, passages)])
    return detection_metrics(items, scores, flags), scores, flags


def detection_metrics(items: list[dict], scores: np.ndarray, flags: np.ndarray) -> dict:
    """AUC, recall, false flags... of scored and flagged items (see the module docstring)."""
    kind = np.array([it["kind"] for it in items])
    y, sup, unr = kind == "conflict", kind == "support", kind == "unrelated"
    recall = float(flags[y].mean()) if y.any() else float("nan")
    ffr = float(flags[sup].mean()) if sup.any() else float("nan")
    res = {
        "auc": round(auc(scores[y], scores[sup]), 4),
        "balanced_accuracy": round((recall + 1 - ffr) / 2, 4),
        "false_flag_rate": round(ffr, 4),
        "recall": round(recall, 4),
        "unrelated_flag_rate": round(float(flags[unr].mean()), 4) if unr.any() else float("nan"),
        # of the flags among this set's items (one conflicting, one supporting and one off-topic
        # passage per id): what a flag is worth where conflicts are that common
        "precision": round(float(flags[y].sum() / flags.sum()), 4) if flags.any() else float("nan"),
        "n_conflict": int(y.sum()),
        "n_support": int(sup.sum()),
        "n_unrelated": int(unr.sum()),
    }
    return res


def localisation(items: list[dict], det: ConflictDetector) -> dict:
    """recall@1 / @5 of a sentence holding the substituted answer among the negative context's
    sentences ranked by the detector."""
    rows = [it for it in items if it.get("substitute")]
    sents = [split_sentences(it["text"]) for it in rows]
    tgts = [{i for i, s in enumerate(ss) if states(s, it["substitute"])} for it, ss in zip(rows, sents, strict=True)]
    keep = [i for i, t in enumerate(tgts) if t]
    ranked = det.rank([[rows[i]["belief"]] for i in keep], [sents[i] for i in keep])
    hits1 = hits5 = 0
    for i, cands in zip(keep, ranked, strict=True):
        order = [c.chunk for c in cands]
        hits1 += order[0] in tgts[i]
        hits5 += bool(set(order[:5]) & tgts[i])
    n = max(1, len(keep))
    return {"recall@1": round(hits1 / n, 4), "recall@5": round(hits5 / n, 4), "pairs": len(keep),
            "no_target": len(rows) - len(keep)}


def misses(items: list[dict], scores: np.ndarray, flags: np.ndarray, k: int) -> list[dict]:
    """Up to ``k`` wrongly decided items (missed conflicts and false flags), in id-hash order."""
    out = []
    for it, s, f in zip(items, scores, flags, strict=True):
        if bool(f) != it["conflict"]:
            out.append({"id": it["id"], "kind": "missed_conflict" if it["conflict"] else f"false_flag_{it['kind']}",
                        "belief": it["belief"].text, "text": it["text"][:600], "score": round(float(s), 4)})
    return sorted(out, key=lambda m: hashlib.sha1(f"{m['id']}:{m['kind']}".encode()).hexdigest())[:k]


def speed(items: list[dict], det: ConflictDetector, baseline: ConflictDetector | None, n: int) -> dict:
    """Sentence pairs per second of the default detector (and of the span heuristics) on the
    first ``n`` items, after a warm-up call."""
    rows = items[:n]
    beliefs = [[it["belief"]] for it in rows]
    chunks = [split_sentences(it["text"]) for it in rows]
    pairs = sum(len(c) for c in chunks)
    out = {"items": len(rows), "sentence_pairs": pairs}
    for name, d in (("judge", det), ("heuristic", baseline)):
        if d is None:
            continue
        d.rank(beliefs[:2], chunks[:2])
        t = time.perf_counter()
        d.rank(beliefs, chunks)
        dt = time.perf_counter() - t
        out[f"{name}_s"] = round(dt, 2)
        out[f"{name}_pairs_per_s"] = round(pairs / dt, 1)
    return out


def read_features(det: ConflictDetector, beliefs: list[Belief], texts: list[str]) -> np.ndarray:
    """The passage head's features (:data:`PASSAGE_FEATURES`) of each (belief, passage), from the judge."""
    ranked = det.rank([[b] for b in beliefs], [split_sentences(t) for t in texts])
    return np.array([[cs[0].info["passage_features"][f] if cs else 0.0 for f in PASSAGE_FEATURES]
                     for cs in ranked]).reshape(len(beliefs), len(PASSAGE_FEATURES))


def opposite_features(items: list[dict], det: ConflictDetector) -> np.ndarray:
    """Features against the opposite answer of each yes / no belief (NaN rows for other beliefs)."""
    out = np.full((len(items), len(PASSAGE_FEATURES)), np.nan)
    yn = [i for i, it in enumerate(items) if it["belief"].is_yes_no]
    if yn:
        out[yn] = read_features(det, [items[i]["belief"].opposite() for i in yn], [items[i]["text"] for i in yn])
    return out


def features(items: list[dict], det: ConflictDetector) -> np.ndarray:
    """Per item, :func:`read_features` against its belief, then :func:`opposite_features`:
    ``(items, 2 x features)``."""
    x = read_features(det, [it["belief"] for it in items], [it["text"] for it in items])
    return np.concatenate([x, opposite_features(items, det)], axis=1)


def head_scores(head: dict, f: np.ndarray, polarity_check: bool) -> np.ndarray:
    """Passage scores of feature rows (see :func:`features`) as ``ConflictDetector`` computes them."""
    k = len(PASSAGE_FEATURES)

    def score(cols: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-head_logit(head, dict(zip(PASSAGE_FEATURES, cols.T, strict=True)))))

    s = score(f[:, :k])
    if polarity_check:
        yn = ~np.isnan(f[:, k])
        s = np.where(yn, polarity_capped(s, score(np.nan_to_num(f[:, k:]))), s)
    return s


HEAD_C = 0.1
"""Inverse L2 strength of the passage head's logistic fit (standardised features, their squares
and pairwise products). Cross-fitted dev recall at the 10% false-flag threshold was level at
0.1 / 0.3 / 1 (0.03 let out-of-fold false flags pass 10%); 0.3 flagged a docs chunk of
``ctxkit quickstart`` (0.798 against its threshold 0.776), so the more regularised 0.1 ships."""


def fit_statement_head(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict:
    """The head for beliefs without an answer: a linear logistic one over the judge's features
    and :func:`~ctxkit.faithfulness.conflicts.detector.stated` (no similarity features)."""
    from sklearn.linear_model import LogisticRegression

    names = [f for f in PASSAGE_FEATURES if f not in SIMILARITY_FEATURES]
    cols = [PASSAGE_FEATURES.index(f) for f in names]
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(x[:, cols], y, sample_weight=w)
    return {"bias": round(float(lr.intercept_[0]), 4),
            "weights": {f: round(float(c), 4) for f, c in zip(names, lr.coef_[0], strict=True)}}


def fit_head(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict:
    """A logistic passage head over the features, their squares and pairwise products (fitted on
    standardised features, written as weights of the raw terms ``"a"`` and ``"a*b"``)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    pairs = [(i, j) for i in range(x.shape[1]) for j in range(i, x.shape[1])]
    zz = np.concatenate([z, np.stack([z[:, i] * z[:, j] for i, j in pairs], axis=1)], axis=1)
    lr = LogisticRegression(C=HEAD_C, max_iter=10000).fit(zz, y, sample_weight=w)
    coef, n = lr.coef_[0], x.shape[1]
    bias, weights = float(lr.intercept_[0]), dict.fromkeys(PASSAGE_FEATURES, 0.0)
    # c * z_i = c / s_i * x_i - c m_i / s_i;  c * z_i z_j = c / (s_i s_j) * (x_i - m_i)(x_j - m_j)
    for i in range(n):
        weights[PASSAGE_FEATURES[i]] += coef[i] / scale[i]
        bias -= coef[i] * mean[i] / scale[i]
    for c, (i, j) in zip(coef[n:], pairs, strict=True):
        c = c / (scale[i] * scale[j])
        a, b = PASSAGE_FEATURES[i], PASSAGE_FEATURES[j]
        weights[f"{a}*{b}"] = weights.get(f"{a}*{b}", 0.0) + c
        weights[a] -= c * mean[j]
        weights[b] -= c * mean[i]
        bias += c * mean[i] * mean[j]
    return {"bias": float(f"{bias:.6g}"), "weights": {t: float(f"{v:.6g}") for t, v in weights.items()}}


def rates(s: np.ndarray, kind: np.ndarray, thr: float) -> dict:
    """AUC (conflicting vs supporting) and, at ``thr``, recall and the false-flag rates on
    supporting and off-topic items, of one set's passage scores ``s``."""
    pos, sup, unr = kind == "conflict", kind == "support", kind == "unrelated"
    return {"auc": round(auc(s[pos], s[sup]), 4), "recall": round(float((s[pos] >= thr).mean()), 4),
            "false_flag_rate": round(float((s[sup] >= thr).mean()), 4),
            "unrelated_flag_rate": round(float((s[unr] >= thr).mean()), 4) if unr.any() else None}


def calibrate(per_set: dict[str, tuple[np.ndarray, np.ndarray]], target: float, polarity_check: bool = True) -> dict:
    """Fit the passage head (:func:`fit_head` over the pooled dev items, each set weighted
    equally; ``per_set`` maps a set to its :func:`features` and item kinds) and the statement
    head (:func:`fit_statement_head`, its bias moved so that its own threshold falls on the
    head's), and choose the lowest threshold at which every set's dev false-flag rate on supporting passages,
    and on off-topic ones, is at most ``target`` (passage scores after the detector's
    ``polarity_check`` when set); report dev AUC / recall / false flags per set for the head and for
    the highest sentence conflict probability alone."""
    k = len(PASSAGE_FEATURES)
    x = np.concatenate([f[:, :k] for f, _ in per_set.values()])
    y = np.concatenate([kind == "conflict" for _, kind in per_set.values()])
    w = np.concatenate([np.full(len(kind), 1.0 / len(kind)) for _, kind in per_set.values()])
    head = fit_head(x, y, w * len(y) / w.sum())

    def score(f: np.ndarray, h: dict = head) -> np.ndarray:
        return head_scores(h, f, polarity_check)

    def lowest_threshold(h: dict) -> float:
        # the lowest threshold at which no set flags more than `target` of its supporting (or of
        # its off-topic) passages
        thr = max(float(np.quantile(score(f[kind == k], h), 1 - target, method="higher")) + 1e-6
                  for f, kind in per_set.values() for k in ("support", "unrelated") if (kind == k).any())
        return min(max(thr, 0.05), 0.99)

    thr = lowest_threshold(head)
    # the statement head's bias moves its own threshold onto the head's: one threshold for both
    statement = fit_statement_head(x, y, w * len(y) / w.sum())
    own = lowest_threshold(statement)
    statement["bias"] = round(statement["bias"] + float(np.log(thr / (1 - thr)) - np.log(own / (1 - own))), 4)
    statement["fitted_threshold"] = round(own, 4)
    report = {}
    for n, (f, kind) in per_set.items():
        cmax = f[:, 0]
        report[n] = {**rates(score(f), kind, thr),
                     "auc_conflict_max_only": round(auc(cmax[kind == "conflict"], cmax[kind == "support"]), 4),
                     "items": len(kind)}
    return {"threshold": round(thr, 4), "head": head, "statement_head": statement, "polarity_check": polarity_check,
            "target_false_flag_rate": target, "dev": report}


def crossfit(per_set: dict[str, tuple[np.ndarray, np.ndarray]], ids: dict[str, list[str]], target: float,
             folds: int = 5, polarity_check: bool = True) -> dict:
    """What the calibration promises on items it did not see: folds by question id (hashed), the
    head and threshold fitted by :func:`calibrate` on the other folds, each set's recall and
    false-flag rates pooled over the held-out folds."""
    fold = {n: np.array([int(hashlib.sha1(i.split("~")[0].encode()).hexdigest()[:8], 16) % folds for i in ids[n]])
            for n in per_set}
    flags: dict[str, np.ndarray] = {n: np.zeros(len(k), bool) for n, (_, k) in per_set.items()}
    for k in range(folds):
        cal = calibrate({n: (f[fold[n] != k], kind[fold[n] != k]) for n, (f, kind) in per_set.items()}, target,
                        polarity_check)
        for n, (f, _) in per_set.items():
            held = fold[n] == k
            flags[n][held] = head_scores(cal["head"], f[held], polarity_check) >= cal["threshold"]
    out = {}
    for n, (_, kind) in per_set.items():
        out[n] = {m: round(float(flags[n][kind == k].mean()), 4) if (kind == k).any() else None
                  for m, k in (("recall", "conflict"), ("false_flag_rate", "support"), ("unrelated_flag_rate", "unrelated"))}
    out["max_false_flag_rate"] = max(max(v["false_flag_rate"] or 0.0, v["unrelated_flag_rate"] or 0.0)
                                     for v in out.values() if isinstance(v, dict))
    return {"folds": folds, **out}


def leave_one_set_out(per_set: dict[str, tuple[np.ndarray, np.ndarray]], target: float,
                      polarity_check: bool = True) -> dict:
    """What the calibration holds on a kind of data it never saw: for each set, the head and
    threshold fitted by :func:`calibrate` on the other sets alone, scored on all of its items."""
    out = {}
    for held, (f, kind) in per_set.items():
        cal = calibrate({n: v for n, v in per_set.items() if n != held}, target, polarity_check)
        out[held] = {"threshold": cal["threshold"],
                     **rates(head_scores(cal["head"], f, polarity_check), kind, cal["threshold"])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--data", default=str(data_path()), help="the shared data folder (faithfulrag/, poisonedrag/)")
    ap.add_argument("--split", default="test", choices=["test", "dev"])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--limit", type=int, default=None, help="at most N ids per set")
    ap.add_argument("--baseline", action="store_true", help="also report the span heuristics (judge=None)")
    ap.add_argument("--misses", type=int, default=0, help="store N wrongly decided dev items per set")
    ap.add_argument("--speed", type=int, default=0, help="time the detectors on N items of each set")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--llm-judge", default=None, metavar="GENERATOR",
                    help="score with LLMClaimJudge over this generator instead of the packaged judge: a model "
                    "name/path ('default': the offline SmolLM2-135M) or a generator spec as JSON; its passage "
                    "head and threshold are the ConflictDetector defaults (no calibration of its own), so "
                    "read its AUC, not its flags")
    ap.add_argument("--belief-form", default="fields", choices=["fields", "string"],
                    help="'fields': beliefs built with Belief.from_answer(question, answer); 'string': the plain "
                    "string 'question answer' (what a user may pass; questions without '?' included)")
    ap.add_argument("--span-rank-weight", type=float, default=None,
                    help="ConflictDetector(span_rank_weight=...) for localisation (default: the library default; "
                    "choose it with --split dev)")
    ap.add_argument("--calibrate", default=None, metavar="JUDGE_DIR",
                    help="fit the detector's passage head and threshold on the dev split and write them "
                    "into JUDGE_DIR/judge.json")
    ap.add_argument("--target-false-flags", type=float, default=0.10,
                    help="largest dev false-flag rate on any set's supporting passages for --calibrate "
                    "(the 10%% promise)")
    ap.add_argument("--no-polarity-check", action="store_true",
                    help="with --calibrate: calibrate for ConflictDetector(polarity_check=False) (yes / no beliefs "
                    "scored like any other)")
    ap.add_argument("--features-cache", default=None,
                    help="with --calibrate: save the dev features here (.npz); an existing file is read instead "
                    "of scoring the dev items again (same judge only)")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "faithfulrag" / "squad_kre_golden.json").is_file():
        data_missing("conflicts.py", data, needs="faithfulrag/*_kre_*.json")
        return 0
    if args.misses and args.split != "dev":
        ap.error("--misses audits the dev split only: add --split dev")
    if args.calibrate:
        judge_json = Path(args.calibrate) / "judge.json"
        det = ConflictDetector(judge=str(args.calibrate), device=args.device, head={}, span_rank_weight=0.0,
                               polarity_check=False)
        det.similarity_features = True
        cache = Path(args.features_cache) if args.features_cache else None
        cached = np.load(cache) if cache is not None and cache.is_file() else None
        per_set, ids = {}, {}
        for name in args.sets.split(","):
            items = load_items(data, name, "dev", args.limit)
            if not items:
                continue
            kinds = np.array([it["kind"] for it in items])
            if cached is not None:
                if f"{name}_x" not in cached or not np.array_equal(cached[f"{name}_y"], kinds) \
                        or cached[f"{name}_x"].shape[1] != 2 * len(PASSAGE_FEATURES):
                    ap.error(f"--features-cache {cache} does not match the dev items of {name} or the passage "
                             "features: delete it")
                per_set[name] = (cached[f"{name}_x"], kinds)
            else:
                per_set[name] = (features(items, det), kinds)
            ids[name] = [it["id"] for it in items]
        if cache is not None and cached is None:
            np.savez(cache, **{f"{n}_x": f for n, (f, _) in per_set.items()},
                     **{f"{n}_y": y for n, (_, y) in per_set.items()})
        polarity = not args.no_polarity_check
        cal = calibrate(per_set, args.target_false_flags, polarity)
        cal["rule"] = (f"threshold: the lowest at which no dev set flags more than {args.target_false_flags:.0%} of its "
                       "supporting or of its off-topic passages" + (
                           " (yes / no beliefs: after the polarity check)" if polarity else "") +
                       "; cross_fitted_dev: the same fit without each fold, scored on it (what unseen items get)"
                       "; leave_one_set_out: the same fit on the other sets alone, scored on one (what a kind of data "
                       "the calibration never saw gets)")
        cal["cross_fitted_dev"] = crossfit(per_set, ids, args.target_false_flags, polarity_check=polarity)
        if len(per_set) > 2:
            cal["leave_one_set_out"] = leave_one_set_out(per_set, args.target_false_flags, polarity)
        cal["calibrated_on"] = f"dev split of {', '.join(per_set)} (benchmarks/conflicts.py --calibrate)"
        info = json.loads(judge_json.read_text())
        info["detector"] = cal
        judge_json.write_text(json.dumps(info, indent=1))
        print(json.dumps(cal, indent=1))
        return 0
    from ctxkit.faithfulness.judge import ClaimJudge

    # the packaged judge keeping every verdict: the benchmark reads each item three times (passage
    # scores, flags, localisation); same model, calibration and outputs as ConflictDetector()'s
    if args.llm_judge:
        from ctxkit.faithfulness.judge import LLMClaimJudge

        spec = json.loads(args.llm_judge) if args.llm_judge.lstrip().startswith("{") else args.llm_judge
        det = ConflictDetector(device=args.device, judge=LLMClaimJudge(spec, cache_size=None), threshold=0.5)
    else:
        det = ConflictDetector(device=args.device, judge=ClaimJudge(device=args.device, cache_size=None),
                               **({} if args.span_rank_weight is None else {"span_rank_weight": args.span_rank_weight}))
    base = ConflictDetector(judge=None, device=args.device) if args.baseline else None
    results: dict = {"command": " ".join(["python", "benchmarks/conflicts.py", *sys.argv[1:]]), "split": args.split,
                     "machine": machine(), "detection": {}, "localisation": {},
                     "belief_form": args.belief_form,
                     "defaults": {"judge": f"llm: {args.llm_judge}" if args.llm_judge else "default",
                                  "span_rank_weight": det.span_rank_weight,
                                  "threshold": det.threshold, "head": det.head}}
    if base is not None:
        results["baseline_heuristic"] = {"detection": {}, "localisation": {}}
    t0 = time.perf_counter()
    for name in args.sets.split(","):
        items = load_items(data, name, args.split, args.limit)
        if not items:
            print(f"{name}: no items (data missing?)", file=sys.stderr)
            continue
        if args.belief_form == "string":
            items = as_strings(items)
        res, scores, flags = detection(items, det)
        results["detection"][name] = res
        if args.misses:
            res["misses"] = misses(items, scores, flags, args.misses)
        if name in ("squad", "musique"):
            results["localisation"][name] = localisation(items, det)
            # the same metrics on the ids whose passage no dev_train / dev id carries
            held = np.array([not it["passage_seen"] for it in items])
            sub = [it for it, h in zip(items, held, strict=True) if h]
            if any(it["kind"] == "conflict" for it in sub):  # else: no held-out id in this run
                res["passage_held_out"] = detection_metrics(sub, scores[held], flags[held])
                results["localisation"][name]["passage_held_out"] = localisation(sub, det)
        if base is not None:
            results["baseline_heuristic"]["detection"][name] = detection(items, base)[0]
            if name in ("squad", "musique"):
                results["baseline_heuristic"]["localisation"][name] = localisation(items, base)
        if args.speed:
            # the judge's own pair rate: no span ranking pass (detect_batch adds one for flagged passages)
            results.setdefault("speed", {})[name] = speed(items, ConflictDetector(device=args.device, span_rank_weight=0.0),
                                                          base, args.speed)
        print(name, json.dumps({k: v for k, v in res.items() if k != "misses"}),
              json.dumps(results["localisation"].get(name, {})), flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
