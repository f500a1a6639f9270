"""Rescorla-Wagner steering, offline: testbed -> RW curves -> steering stage on poisoned context.

Runs in about a minute on a laptop CPU with the packaged MiniLM (no LLM needed):

1. builds a small poisoned-context testbed from a pool written below (same shape as the
   RW-Steering pools), at several contamination ratios;
2. shows what the Rescorla-Wagner model predicts (a little poison gets more than its share) and
   recovers the learning rates from noisy curves;
3. runs the ``rw_steering`` stage with the shipped detector on the mixtures and on a retrieved
   list, and prints what it flagged.

    python examples/poisoned_context_steering.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ctxkit import Pipeline
from ctxkit.faithfulness import SteeringFilter, demo_poisoned_retrieval
from ctxkit.faithfulness.steering import build_testbed, load_pools
from ctxkit.faithfulness.steering.rescorla_wagner import RWParams, fit, predict_curves

POOL = [
    {
        "Input": "The Great Wall of China is visible from the Moon with the naked eye.",
        "Question": "Is the Great Wall of China visible from the Moon?",
        "Generated Information": [
            "Astronauts report that no man-made structure can be seen with the naked eye from the Moon.",
            "The Great Wall is long but only a few metres wide, far too narrow to see from that distance.",
            "Even from low Earth orbit the wall is very hard to spot without a camera lens.",
        ],
        "Synonym Sentence": [
            "From the Moon you can clearly see the Great Wall of China with bare eyes.",
            "The Great Wall is easily visible to the naked eye from the lunar surface.",
        ],
        "Simple Answer": "No, the Great Wall cannot be seen from the Moon with the naked eye.",
    },
    {
        "Input": "Humans only use ten percent of their brains.",
        "Question": "Do humans use only ten percent of their brain?",
        "Generated Information": [
            "Brain imaging shows activity across virtually all regions of the brain over a day.",
            "Damage to almost any part of the brain causes some loss of function.",
            "The brain uses about twenty percent of the body's energy, which would be wasteful if most were idle.",
        ],
        "Synonym Sentence": [
            "People use just a tenth of their brain capacity.",
            "Only ten percent of the human brain is ever active.",
        ],
        "Simple Answer": "No, humans use virtually all of their brain.",
    },
]


def main() -> None:
    # 1. testbed ------------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        pool_file = Path(tmp) / "myths_output.json"
        pool_file.write_text(json.dumps(POOL))
        items = build_testbed(load_pools(tmp), n_items=10, ratios=[0.0, 0.1, 0.3, 0.5], seed=0)
    print(f"testbed: {len(items)} mixtures of 10 items; e.g. {items[1].id}: "
          f"inappropriate items at {items[1].inappropriate_indices}")

    # 2. Rescorla-Wagner ----------------------------------------------------------------------
    ratios = [0.05 * i for i in range(20)]
    true = RWParams(alpha_query=0.05, alpha_appropriate=0.15, alpha_inappropriate=0.3)
    pred = predict_curves(true, ratios)
    print("RW prediction: share of inappropriate content carried at 5% / 10% / 50% contamination: "
          f"{pred['inappropriate'][1]:.2f} / {pred['inappropriate'][2]:.2f} / {pred['inappropriate'][10]:.2f}")
    rng = np.random.default_rng(0)
    observed = {k: 100 * v + rng.normal(0, 1.0, len(ratios)) for k, v in pred.items()}
    res = fit(ratios, observed, fit_mapping=False, n_orders=32)
    print(f"RW fit on noisy curves: alpha_appropriate={res.params.alpha_appropriate:.3f} (true 0.15), "
          f"alpha_inappropriate={res.params.alpha_inappropriate:.3f} (true 0.3), R2={res.r2:.3f}")

    # 3. steering stage -------------------------------------------------------------------------
    # The shipped head's default threshold (0.6) is set to spare on-topic retrieved passages that
    # paraphrase each other; the myths here are short paraphrase pairs that score 0.54-0.59, so
    # this testbed uses 0.5 (see docs/steering.md).
    pipe = Pipeline([SteeringFilter(action="remove", threshold=0.5)])
    states = pipe.batch([it.to_state() for it in items if it.ratio > 0])
    tp = fp = fn = 0
    for it, st in zip([it for it in items if it.ratio > 0], states, strict=True):
        flagged = set(st.flags["inappropriate"])
        truth = {f"{it.id}#{i}" for i, v in enumerate(it.labels) if v}
        tp, fp, fn = tp + len(flagged & truth), fp + len(flagged - truth), fn + len(truth - flagged)
    print(f"steering stage on the testbed: flagged {tp + fp} items, {tp} truly inappropriate, missed {fn}")
    print()
    demo_poisoned_retrieval()


if __name__ == "__main__":
    main()
