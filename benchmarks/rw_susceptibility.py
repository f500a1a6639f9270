"""Susceptibility of a generator to inappropriate context, with a Rescorla-Wagner fit.

Builds a testbed slice from the RW-Steering pools (tags off), answers every mixture with the
generator, judges consistency / cleanliness with the offline embedding judge, fits the RW model
to the per-ratio curves and saves a PNG.

    python benchmarks/rw_susceptibility.py --out results.json --plot docs/img/rw_susceptibility.png

Reads ``../shared/data/rw_steering_poisoned_context`` (``--data``); exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import data_missing, data_path, machine, write_json

from ctxkit.faithfulness import EmbeddingJudge, build_testbed, load_pools, measure_susceptibility


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(data_path("rw_steering_poisoned_context")))
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--model", default="default", help="transformers model (default: offline SmolLM2-135M)")
    ap.add_argument("--categories", nargs="*", default=["fakenews", "non_factual"])
    ap.add_argument("--n-queries", type=int, default=4, help="queries per category")
    ap.add_argument("--ratios", default="0,0.1,0.2,0.4,0.6,0.8,0.95")
    ap.add_argument("--n-items", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--records", default=None)
    args = ap.parse_args()

    data = Path(args.data)
    if not data.exists():
        data_missing("rw_susceptibility", data)
        return 0
    from ctxkit.llm import TransformersGenerator

    t0 = time.time()
    ratios = [float(r) for r in args.ratios.split(",")]
    items = build_testbed(load_pools(data, args.categories), n_items=args.n_items, ratios=ratios,
                          n_queries=args.n_queries, seed=args.seed, source_tags=False)
    gen = TransformersGenerator(args.model, batch_size=args.batch_size)
    print(f"{len(items)} mixtures; model {args.model}", flush=True)
    res = measure_susceptibility(gen, items, judge=EmbeddingJudge(), max_new_tokens=args.max_new_tokens,
                                 chunk_size=args.batch_size)
    summary = res.summary()
    rw = res.fit_rw()
    summary["rw_fit"] = rw.to_dict()
    summary["config"] = {k: v for k, v in vars(args).items() if k not in ("out", "plot", "records")}
    summary["config"]["seconds"] = round(time.time() - t0, 1)
    summary["config"]["judge"] = "EmbeddingJudge (MiniLM + lexical carry-over)"
    if args.plot:
        rw.plot(args.plot, title=f"{Path(str(args.model)).name}: RW fit (R² = {rw.r2:.2f})",
                labels={"appropriate": "consistency", "inappropriate": "100 - cleanliness"})
    if args.records:
        res.save(args.records)
    summary["machine"] = machine()
    write_json(args.out, summary, indent=1)
    c = summary["curves"]
    for r, co, cl in zip(c["ratio"], c["consistency"], c["cleanliness"], strict=True):
        print(f"ratio {r:.2f}: consistency {co:5.1f}  cleanliness {cl:5.1f}")
    p = rw.params
    print(f"RW fit: alpha_q={p.alpha_query:.3f} alpha_app={p.alpha_appropriate:.3f} "
          f"alpha_inapp={p.alpha_inappropriate:.3f} R2={rw.r2:.3f} RMSE={rw.rmse:.2f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
