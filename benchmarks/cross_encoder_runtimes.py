"""Does a different fp32 runtime change an untrained cross-encoder's top 10? (and is it faster?)

The cascade speed part (``benchmarks/cascade.py --parts speed``) compares top-10 lists across
systems. This script shows why it fits the cross-encoder head first: with the untrained 1-label
head the scores of all candidates lie within a few thousandths, so numerically tiny differences
(ONNX Runtime fp32 vs torch fp32) already reorder the top 10. It also times ONNX Runtime fp32
(with and without its BERT graph fusions) against torch on the same 2150 TREC DL pairs.

Needs ``onnx`` for the export (``pip install onnx``; onnxruntime comes with chromadb).

Usage:
    python benchmarks/cross_encoder_runtimes.py --out results.json [--data ../shared/data] [--head untrained|fitted]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cascade
import numpy as np
from _common import data_missing, data_root, machine, write_json


def top10(scores: np.ndarray, n_q: int, k: int) -> list[set[int]]:
    return [set(np.argsort(-scores[q * k : (q + 1) * k], kind="stable")[:10]) for q in range(n_q)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(data_root()), help="the shared data folder (retrieval/msmarco_trecdl2019)")
    ap.add_argument("--head", default="untrained", choices=["untrained", "fitted"])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args(argv)
    folder = Path(args.data) / "retrieval" / "msmarco_trecdl2019"
    if not (folder / "corpus.jsonl").exists():
        data_missing("cross_encoder_runtimes", folder, needs="the TREC DL 2019 corpus")
        sys.exit(1)
    try:
        import onnx  # noqa: F401
    except ImportError:
        sys.exit("this script exports to ONNX: pip install onnx")
    import bm25s
    import onnxruntime as ort
    import torch
    from onnxruntime.transformers import optimizer
    from sentence_transformers import CrossEncoder

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ctxkit_ce_rt_"))
    corpus, queries, _ = cascade.load_trecdl(folder)
    texts = [t for _, t in corpus.values()]
    retr = bm25s.BM25()
    retr.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    qtexts = list(queries.values())
    k = 50
    res, _ = retr.retrieve(bm25s.tokenize(qtexts, stopwords="en", show_progress=False), k=k, show_progress=False)
    pairs = [(q, texts[j]) for q, row in zip(qtexts, res, strict=True) for j in row]
    model_dir = cascade.make_cross_encoder(work / "minilm_cross_encoder")
    if args.head == "fitted":
        model_dir = cascade.fit_head(model_dir, work / "minilm_cross_encoder_fitted", texts)
    ce = CrossEncoder(str(model_dir), device="cpu")
    hf, tok = ce[0].model.eval(), ce.tokenizer

    def timed(fn):
        t0 = time.perf_counter()
        out = np.asarray(fn(), dtype=np.float64).reshape(-1)
        return out, time.perf_counter() - t0

    def logits_torch() -> np.ndarray:
        return ce.predict(pairs, batch_size=64, activation_fn=torch.nn.Identity())

    ref, t_torch = timed(logits_torch)
    onnx_path, opt_path = work / "model.onnx", work / "model_opt.onnx"
    enc = tok([pairs[0][0]], [pairs[0][1]], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(hf, tuple(enc[n] for n in names), str(onnx_path), dynamo=False, input_names=names,
                      output_names=["logits"], dynamic_axes={**{n: {0: "b", 1: "s"} for n in names}, "logits": {0: "b"}},
                      opset_version=17)
    cfg = hf.config
    optimizer.optimize_model(str(onnx_path), model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size).save_model_to_file(str(opt_path))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out: dict = {"pairs": len(pairs), "queries": len(qtexts), "head": args.head,
                 "torch_threads": torch.get_num_threads(), "score_std": round(float(ref.std()), 6),
                 "torch_fp32_s": round(t_torch, 2), "runtimes": {}}
    for name, path in (("onnxruntime_fp32", onnx_path), ("onnxruntime_fp32_fused", opt_path)):
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def run(sess=sess) -> np.ndarray:
            scores = np.zeros(len(pairs), dtype=np.float32)
            for s in range(0, len(order), 64):
                idx = order[s : s + 64]
                b = tok([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True, truncation=True,
                        max_length=ce.max_length, return_tensors="np")
                scores[idx] = sess.run(None, {n: b[n].astype(np.int64) for n in names})[0][:, 0]
            return scores

        got, t = timed(run)
        overlap = np.mean([len(a & b) / 10 for a, b in zip(top10(ref, len(qtexts), k), top10(got, len(qtexts), k),
                                                              strict=True)])
        out["runtimes"][name] = {"seconds": round(t, 2), "speedup_vs_torch": round(t_torch / t, 3),
                                 "max_abs_logit_diff": float(np.abs(got - ref).max()),
                                 "overlap@10_vs_torch": round(float(overlap), 4)}
        print(json.dumps({name: out["runtimes"][name]}), flush=True)
    out["machine"] = machine()
    write_json(args.out, out)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
