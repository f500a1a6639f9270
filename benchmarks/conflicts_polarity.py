"""Does the conflict detector read the answer of a yes / no belief, or only its topic?

A detector that reads the answer flags a passage against "question + No" and not against
"question + Yes" (or the other way round). This script scores the same passages against each
yes / no belief and against the same belief with the answer flipped, through the public API with
the defaults (``ConflictDetector().passage_scores``):

* ``quickstart``: the tour's own yes / no belief against its planted notes (no shared data needed);
* ``poisonedrag`` (``--split dev`` by default; the split rules of ``benchmarks/conflicts.py``): the
  PoisonedRAG items whose answer is yes / no, conflicting and supporting passages alike.

For each item: the passage score under the belief and under the flipped belief, as the judge
reads them (``polarity_check=False``), and whether each is flagged. ``flagged_both`` is the share
of items flagged under both answers (the judge reads the topic, not the claim); ``auc`` separates
conflicting from supporting passages by the score, and ``auc_contrast`` by the score minus the
flipped belief's score. ``default`` is what the default detector (its polarity check on: a
passage that conflicts with the flipped answer at least as much is capped at 0.5) flags.

    python benchmarks/conflicts_polarity.py --out benchmarks/results/conflicts_polarity.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import auc, data_path, machine, write_json
from conflicts import load_items

from ctxkit.cli.quickstart import PLANTED_NOTES, TRUSTED_BELIEFS
from ctxkit.faithfulness.conflicts import Belief, ConflictDetector
from ctxkit.types import Passage


def _flipped(belief: Belief) -> Belief:
    flipped = belief.opposite()
    assert flipped is not None, "only yes / no beliefs are flipped"
    return flipped


def score_pairs(det: ConflictDetector, beliefs: list[Belief], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Passage scores of each text under its belief and under the flipped belief."""
    both = [[b] for b in beliefs] + [[_flipped(b)] for b in beliefs]
    scores = det.passage_scores(both, [[Passage(id="p", text=t)] for t in texts + texts])
    s = np.array([x[0] for x in scores])
    return s[: len(texts)], s[len(texts):]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--data", default=str(data_path()))
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    det = ConflictDetector(device=args.device, polarity_check=False)
    default = ConflictDetector(device=args.device)
    thr = det.threshold

    def default_flags(beliefs: list[Belief], texts: list[str]) -> np.ndarray:
        return np.array([bool(r) for r in default.detect_batch([[b] for b in beliefs],
                                                                [[Passage(id="p", text=t)] for t in texts])])
    out: dict = {"command": " ".join(["python", "benchmarks/conflicts_polarity.py", *sys.argv[1:]]),
                 "threshold": thr, "machine": machine()}

    rows = [(Belief.coerce(b), name, text) for bs in TRUSTED_BELIEFS.values() for b in bs
            for name, text in PLANTED_NOTES.items() if Belief.coerce(b).is_yes_no]
    s, f = score_pairs(det, [r[0] for r in rows], [r[2] for r in rows])
    d = default_flags([r[0] for r in rows], [r[2] for r in rows])
    out["quickstart"] = [{"belief": r[0].text, "flipped": _flipped(r[0]).text, "note": r[1],
                          "score": round(float(a), 4), "flipped_score": round(float(b), 4),
                          "flagged": bool(a >= thr), "flipped_flagged": bool(b >= thr), "default_flagged": bool(g)}
                         for r, a, b, g in zip(rows, s, f, d, strict=True)]

    folder = Path(args.data) / "poisonedrag"
    if folder.is_dir():
        items = [it for it in load_items(Path(args.data), "poisonedrag", args.split, None)
                 if it["kind"] != "unrelated" and it["belief"].is_yes_no]
        s, f = score_pairs(det, [it["belief"] for it in items], [it["text"] for it in items])
        y = np.array([it["kind"] == "conflict" for it in items])
        d = default_flags([it["belief"] for it in items], [it["text"] for it in items])
        out["poisonedrag"] = {
            "split": args.split, "items": len(items), "conflicting": int(y.sum()),
            "auc": round(auc(s[y], s[~y]), 4), "auc_contrast": round(auc((s - f)[y], (s - f)[~y]), 4),
            "flagged_both": round(float(np.mean((s >= thr) & (f >= thr))), 4),
            "recall": round(float(np.mean(s[y] >= thr)), 4), "false_flag_rate": round(float(np.mean(s[~y] >= thr)), 4),
            "default": {"recall": round(float(d[y].mean()), 4), "false_flag_rate": round(float(d[~y].mean()), 4)},
        }
    else:
        out["poisonedrag"] = None
        print(f"conflicts_polarity: {folder} not found; only the quickstart rows were scored", file=sys.stderr)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
