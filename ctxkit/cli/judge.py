"""``ctxkit judge-train``: build the claim judge's training pairs and train it."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

__all__ = ["add_commands"]

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``ctxkit judge-train``."""
    p = sub.add_parser(
        "judge-train",
        help="train the claim judge (support / conflict / unrelated) from the evaluation data folder",
        description="Builds labelled (belief, sentence) pairs offline from the data folder (HotpotQA, "
        "MS MARCO passages, TruthfulQA, and the dev_train split of SQuAD-KRE / MuSiQue-KRE / FaithEval), "
        "fine-tunes low-rank updates of the encoder, calibrates on the dev split and writes a folder "
        "that ClaimJudge(path) and ConflictDetector(judge=path) load.",
    )
    p.add_argument("--data", default="../shared/data", help="evaluation data folder (faithfulrag/, hotpotqa/, ...)")
    p.add_argument("--out", required=True, help="output folder (judge.json + judge.safetensors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs, their order and the initialisation")
    p.add_argument("--max-sentences", type=int, default=40_000, help="passage sentences turned into pairs")
    p.add_argument("--max-pairs", type=int, default=None, help="cap on training pairs (a seeded sample)")
    p.add_argument("--base", default="default", help="encoder to fine-tune (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--rank", type=int, default=16, help="rank of the low-rank updates (0: full fine-tuning)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the training pairs")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate of the encoder updates")
    p.add_argument("--max-length", type=int, default=128, help="longest input in tokens")
    p.add_argument("--eval-every", type=int, default=500, help="steps between dev evaluations")
    p.add_argument("--record-repeats", type=int, default=1,
                   help="build each question-answer record's pairs this many times (weighs real QA text)")
    p.add_argument("--init", default=None, help="a judge folder to continue training from (same base and rank)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps (the learning-rate schedule still spans --epochs): "
                   "reproduces a checkpoint of a longer run")
    p.add_argument("--no-embed", action="store_true",
                   help="draw substitute entities at random instead of by embedding similarity (faster)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run_judge_train)


def run_judge_train(args: argparse.Namespace) -> int:
    """Run ``ctxkit judge-train``."""
    import random

    from ctxkit.errors import InputError
    from ctxkit.faithfulness.judge.train import JudgeTrainConfig, build_pairs_from_data, train_judge

    logging.getLogger("ctxkit").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not Path(args.data).is_dir():
        raise InputError(f"data folder {args.data!r} not found; pass --data <folder with faithfulrag/, hotpotqa/...>")
    embed = None
    if not args.no_embed:
        from ctxkit.models import get_embedder

        embedder = get_embedder("default", device=args.device)

        def embed(texts: list[str]):
            return embedder.encode(texts, batch_size=256)

    t0 = time.perf_counter()
    train, dev = build_pairs_from_data(args.data, seed=args.seed, max_sentences=args.max_sentences, embed=embed,
                                       record_repeats=args.record_repeats)
    if args.max_pairs is not None and len(train) > args.max_pairs:
        train = random.Random(args.seed).sample(train, args.max_pairs)
    print(f"built {len(train)} training and {len(dev)} dev pairs in {time.perf_counter() - t0:.0f}s", flush=True)
    cfg = JudgeTrainConfig(base=args.base, rank=args.rank, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, max_length=args.max_length, eval_every=args.eval_every, seed=args.seed,
                           device=args.device, init=args.init, stop_after=args.stop_after)
    data_info = {"data": {"seed": args.seed, "max_sentences": args.max_sentences, "max_pairs": args.max_pairs,
                          "record_repeats": args.record_repeats, "embedded_substitutes": embed is not None}}
    metrics = train_judge(train, dev, args.out, cfg, extra_info=data_info)
    print(json.dumps(metrics, indent=1))
    return 0
