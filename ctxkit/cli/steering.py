"""CLI commands of the Rescorla-Wagner steering tools.

``ctxkit rw-testbed``, ``ctxkit rw-fit``, ``ctxkit rw-susceptibility``, ``ctxkit rw-detect`` and
``ctxkit steer-train``. Heavy imports happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ctxkit.errors import InputError

__all__ = ["add_commands"]


def _ratios(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--ratios must be comma-separated numbers, got {text!r}") from None


def add_commands(sub: Any) -> None:
    """Register the RW-steering sub-commands."""
    p = sub.add_parser("rw-testbed", help="build a poisoned-context testbed (JSONL) from RW-Steering pools")
    p.add_argument("--pools", required=True, help="folder of <category>_output.json files, or one JSON file")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--n-items", type=int, default=20, help="items per context list (default 20)")
    p.add_argument("--ratios", default=None, help="comma-separated ratios (default 0,0.05,...,0.95)")
    p.add_argument("--n-queries", type=int, default=None, help="queries sampled per category (default all)")
    p.add_argument("--categories", nargs="*", default=None,
                   help="pool categories to use, e.g. fakenews privacy (default: every pool found)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    p.add_argument("--source-tags", action="store_true", help="prefix items with source tags")
    p.set_defaults(func=_testbed)

    p = sub.add_parser("rw-fit", help="fit the Rescorla-Wagner model to incorporation curves")
    p.add_argument("curves", help="JSON with 'ratio' and 'consistency'/'cleanliness' (or 'appropriate'/"
                   "'inappropriate') lists, or the summary written by rw-susceptibility")
    p.add_argument("--n-items", type=int, default=20, help="items per context list of the curves (default 20)")
    p.add_argument("--no-mapping", action="store_true", help="compare the RW readout directly (no affine map)")
    p.add_argument("--plot", default=None, help="PNG of observed vs fitted curves")
    p.add_argument("--out", default=None, help="fit result JSON")
    p.set_defaults(func=_fit)

    p = sub.add_parser("rw-susceptibility", help="answer a testbed with a model, judge answers, fit RW")
    p.add_argument("--testbed", required=True, help="JSONL from rw-testbed")
    p.add_argument("--model", default="default", help="generator model (transformers name/path)")
    p.add_argument("--judge", choices=["embedding", "llm"], default="embedding",
                   help="how answers are judged: embedding similarity (default) or an LLM judge")
    p.add_argument("--judge-model", default=None, help="model of the LLM judge (default: --model)")
    p.add_argument("--limit", type=int, default=None, help="use the first N items only")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length in tokens (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per generator call (default 8)")
    p.add_argument("--out", default="susceptibility.json", help="summary + RW fit JSON")
    p.add_argument("--records", default=None, help="per-answer JSONL")
    p.add_argument("--plot", default=None, help="PNG of the RW fit")
    p.set_defaults(func=_susceptibility)

    p = sub.add_parser("rw-detect", help="score testbed items with an inappropriate-item detector")
    p.add_argument("--testbed", required=True, help="JSONL from rw-testbed")
    p.add_argument("--detector", default="default",
                   help="'default' (composite), 'set' (older set detector), a head JSON path, or llm:<model>")
    p.add_argument("--limit", type=int, default=None, help="use the first N items only")
    p.add_argument("--out", default=None, help="metrics JSON")
    p.set_defaults(func=_detect)

    p = sub.add_parser("steer-train", help="two-stage RW-Steering fine-tuning (transformers Trainer)")
    p.add_argument("--testbed", required=True, help="training JSONL from rw-testbed")
    p.add_argument("--output-dir", required=True, help="folder for checkpoints and the final model")
    p.add_argument("--model", default="default", help="base model (local dir or hub id; default: the offline SmolLM2-135M)")
    p.add_argument("--low-max-ratio", type=float, default=0.3, help="stage 2 uses 0 < ratio <= this")
    p.add_argument("--stage1-epochs", type=float, default=1.0, help="epochs of stage 1, all ratios (default 1)")
    p.add_argument("--stage2-epochs", type=float, default=1.0,
                   help="epochs of stage 2, low ratios (default 1; 0 skips stage 2)")
    p.add_argument("--max-steps-stage1", type=int, default=-1, help="step cap of stage 1 (default -1: from the epochs)")
    p.add_argument("--max-steps-stage2", type=int, default=-1, help="step cap of stage 2 (default -1: from the epochs)")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5; stage 2 uses half)")
    p.add_argument("--batch-size", type=int, default=4, help="per-device batch size (default 4)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--max-length", type=int, default=1024,
                   help="examples longer than this many tokens are dropped (default 1024)")
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (a stopped run resumes; default 50)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (with --lora; default 16)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda...")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 mixed precision (weights, gradients and optimizer state stay float32)")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.set_defaults(func=_steer_train)


def _testbed(args: argparse.Namespace) -> int:
    from ctxkit.faithfulness.steering.testbed import DEFAULT_RATIOS, build_testbed, save_jsonl

    items = build_testbed(args.pools, n_items=args.n_items, ratios=_ratios(args.ratios) or DEFAULT_RATIOS,
                          n_queries=args.n_queries, categories=args.categories, seed=args.seed,
                          source_tags=args.source_tags)
    n = save_jsonl(items, args.out)
    cats = sorted({it.category for it in items})
    print(f"wrote {n} mixtures ({len(cats)} categories: {', '.join(cats)}) to {args.out}")
    return 0


def _load_curves(path: str) -> tuple[list[float], dict[str, list[float]]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read curves {path!r}: {exc}") from exc
    if "curves" in data and isinstance(data["curves"], dict):
        data = data["curves"]
    ratios = data.get("ratio") or data.get("ratios")
    if not ratios:
        raise InputError(f"{path}: needs a 'ratio' list")
    obs: dict[str, list[float]] = {}
    if "consistency" in data:
        obs["appropriate"] = list(data["consistency"])
    if "cleanliness" in data:
        top = 100.0 if max(data["cleanliness"]) > 1.5 else 1.0
        obs["inappropriate"] = [top - v for v in data["cleanliness"]]
    for key in ("appropriate", "inappropriate"):
        if key in data:
            obs[key] = list(data[key])
    if not obs:
        raise InputError(f"{path}: needs 'consistency'/'cleanliness' or 'appropriate'/'inappropriate' lists")
    return list(ratios), obs


def _fit(args: argparse.Namespace) -> int:
    from ctxkit.faithfulness.steering.rescorla_wagner import fit

    ratios, obs = _load_curves(args.curves)
    res = fit(ratios, obs, n_items=args.n_items, fit_mapping=not args.no_mapping)
    p = res.params
    print(f"alpha_query={p.alpha_query:.4f} alpha_appropriate={p.alpha_appropriate:.4f} "
          f"alpha_inappropriate={p.alpha_inappropriate:.4f}  R2={res.r2:.4f} RMSE={res.rmse:.3f}")
    if args.plot:
        print(f"plot: {res.plot(args.plot)}")
    if args.out:
        Path(args.out).write_text(json.dumps(res.to_dict(), indent=1), encoding="utf-8")
    return 0


def _susceptibility(args: argparse.Namespace) -> int:
    from ctxkit.faithfulness.steering.susceptibility import (
        EmbeddingJudge,
        LLMJudge,
        measure_susceptibility,
    )
    from ctxkit.faithfulness.steering.testbed import load_jsonl
    from ctxkit.llm.transformers import TransformersGenerator

    items = load_jsonl(args.testbed)[: args.limit]
    gen = TransformersGenerator(args.model, batch_size=args.batch_size)
    judge = EmbeddingJudge() if args.judge == "embedding" else LLMJudge(
        gen if not args.judge_model else TransformersGenerator(args.judge_model, batch_size=args.batch_size))
    res = measure_susceptibility(gen, items, judge=judge, max_new_tokens=args.max_new_tokens)
    summary = res.summary()
    try:
        rw = res.fit_rw()
        summary["rw_fit"] = rw.to_dict()
        if args.plot:
            rw.plot(args.plot, labels={"appropriate": "consistency", "inappropriate": "100 - cleanliness"})
    except InputError as exc:
        summary["rw_fit"] = {"error": str(exc)}
    Path(args.out).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if args.records:
        res.save(args.records)
    c = summary["curves"]
    for r, co, cl in zip(c["ratio"], c["consistency"], c["cleanliness"], strict=True):
        print(f"ratio {r:.2f}: consistency {co:5.1f}  cleanliness {cl:5.1f}")
    if "r2" in summary["rw_fit"]:
        print(f"RW fit R2={summary['rw_fit']['r2']:.3f}")
    print(f"summary: {args.out}")
    return 0


def _detect(args: argparse.Namespace) -> int:
    import numpy as np

    from ctxkit.faithfulness.steering.detectors import LLMDetector, SetDetector, default_detector
    from ctxkit.faithfulness.steering.testbed import load_jsonl

    items = load_jsonl(args.testbed)[: args.limit]
    if args.detector == "default":
        from ctxkit.faithfulness.steering.composite import CompositeDetector

        det: Any = CompositeDetector("default")
    elif args.detector == "set":
        det = default_detector()
    elif args.detector.startswith("llm:"):
        det = LLMDetector(args.detector[4:])
    elif Path(args.detector).is_file() and "ctxkit.composite_head/1" in Path(args.detector).read_text(encoding="utf-8"):
        from ctxkit.faithfulness.steering.composite import CompositeDetector

        det = CompositeDetector(args.detector)
    else:
        det = SetDetector.load(args.detector)
    probs = det.score([it.question for it in items], [[x.text for x in it.items] for it in items])
    y = np.concatenate([np.asarray(it.labels) for it in items])
    pred = np.concatenate([(p >= det.threshold).astype(int) for p in probs])
    tp, fp, fn = int(((y == 1) & (pred == 1)).sum()), int(((y == 0) & (pred == 1)).sum()), int(((y == 1) & (pred == 0)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    out = {"precision": prec, "recall": rec, "f1": f1, "n_items": len(y)}
    print(f"precision {prec:.3f} recall {rec:.3f} F1 {f1:.3f} over {len(y)} items")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


def _steer_train(args: argparse.Namespace) -> int:
    from ctxkit.faithfulness.steering.testbed import load_jsonl
    from ctxkit.faithfulness.steering.train import (
        SteerTrainConfig,
        build_sft_examples,
        split_stages,
        train_rw_steering,
    )

    items = load_jsonl(args.testbed)
    s1, s2 = split_stages(items, low_max_ratio=args.low_max_ratio)
    cfg = SteerTrainConfig(
        model=args.model, output_dir=args.output_dir, stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs, max_steps_stage1=args.max_steps_stage1,
        max_steps_stage2=args.max_steps_stage2, learning_rate=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_length=args.max_length, save_steps=args.save_steps,
        lora=args.lora, lora_r=args.lora_r, device=args.device, bf16=args.bf16,
    )
    res = train_rw_steering(cfg, build_sft_examples(s1), build_sft_examples(s2), resume=not args.no_resume)
    for stage in ("stage1", "stage2"):
        if stage in res:
            info = res[stage]
            losses = info.get("losses") or [float("nan")]
            print(f"{stage}: {info['examples']} examples, {info['global_step']} steps, "
                  f"loss {losses[0]:.3f} -> {losses[-1]:.3f}{' (skipped: done)' if info.get('skipped') else ''}")
    print(f"final model: {res['final_dir']}")
    return 0
