"""Train the claim judge: pairs built offline (see :mod:`.data`), low-rank fine-tuning of the
encoder, temperature calibration on the dev split, and a small folder that :class:`ClaimJudge`
loads.

``ctxkit judge-train --data ../shared/data --out ./judge`` runs everything; the same seed gives
the same pairs and the same training order.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..._lazy import require
from ...errors import InputError
from .data import LABELS, JudgePair, PairBuilder, QARecord, SubstitutePool, balance
from .model import build_network, cpu_has_native_bf16

__all__ = ["JudgeTrainConfig", "build_pairs", "build_pairs_from_data", "fit_temperature", "train_judge"]

log = logging.getLogger(__name__)


class JudgeTrainConfig(BaseModel):
    """Settings of :func:`train_judge`.

    Attributes:
        base: The encoder to fine-tune (``"default"``: the packaged all-MiniLM-L6-v2, or a path).
        rank: Rank of the low-rank updates of every linear layer (0: full fine-tuning, which
            ships the whole encoder).
        lora_alpha: Scale of the low-rank updates (``alpha / rank``).
        epochs: Passes over the training pairs (fractions allowed).
        batch_size: Pairs per step.
        lr: Learning rate of the low-rank factors and layer norms.
        head_lr: Learning rate of the classification head.
        warmup: Share of the steps with a linearly rising learning rate.
        max_length: Longest input in tokens.
        label_smoothing: Cross-entropy label smoothing.
        eval_every: Steps between dev evaluations on ``dev_probe`` dev pairs (the best dev loss
            is kept and written as a checkpoint).
        dev_probe: Dev pairs of the periodic evaluations (all dev pairs calibrate at the end).
        init: A judge folder (same base and rank) to start from instead of a fresh head and
            zero updates: the second stage of a two-stage recipe.
        stop_after: Stop after this many steps while the learning-rate schedule still spans
            ``epochs`` (reproduces an earlier checkpoint of a longer run); ``None``: run it all.
        seed: Seed of the pairs' order, dropout and initialisation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        bf16: Autocast to bf16 (``"auto"``: on CUDA and on CPUs with native bf16).
    """

    model_config = ConfigDict(extra="forbid")

    base: str = "default"
    rank: int = Field(16, ge=0)
    lora_alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    head_lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.05, ge=0, lt=1)
    max_length: int = Field(128, ge=16)
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    eval_every: int = Field(500, ge=1)
    dev_probe: int = Field(2000, ge=1)
    init: str | None = None
    stop_after: int | None = Field(None, ge=1)
    seed: int = 0
    device: str = "auto"
    bf16: str = Field("auto", pattern="^(auto|on|off)$")


# -- pairs ------------------------------------------------------------------------------------
def build_pairs(
    records: Sequence[QARecord],
    passages: Sequence[Sequence[str]],
    claims: Sequence[tuple[str, str, list[str], list[str]]] = (),
    *,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    max_sentences: int | None = None,
    seed: int = 0,
    balanced: bool = True,
    record_repeats: int = 1,
) -> list[JudgePair]:
    """Labelled pairs from question-answer records, passages (lists of sentences) and claim lists.

    Args:
        records: Question-answer records (each gives support, conflict and unrelated pairs).
        passages: Passages as sentence lists, for cloze and statement pairs.
        claims: ``(question, best, true answers, false answers)`` tuples.
        embed: Text -> normalised vectors, to draw same-category substitutes (random without).
        max_sentences: Use at most this many passage sentences (a seeded sample).
        seed: Seed of every choice.
        balanced: Even out the labels with :func:`~ctxkit.faithfulness.judge.data.balance`.
        record_repeats: Build each record's pairs this many times (other random sentences and
            substitutes each time), to weigh real question-answer text against synthetic pairs.
    """
    from ..conflicts import extract_spans, span_kind
    from ..conflicts.text import OPPOSITES

    rng = random.Random(seed)
    sentence_items = [(s, p) for p in passages for s in p if 4 <= len(s.split()) <= 60]
    if max_sentences is not None and len(sentence_items) > max_sentences:
        sentence_items = rng.sample(sentence_items, max_sentences)
    all_sentences = [s for p in passages for s in p] + [s for r in records for s in r.sentences]
    if not all_sentences:
        raise InputError("build_pairs: no sentences to build pairs from")

    def spans(text: str) -> list[tuple[str, str, int, int]]:
        return [(sp.text, sp.kind, sp.start, sp.end) for sp in extract_spans(text)]

    values = [sp[0] for s, _ in sentence_items for sp in spans(s) if sp[1] == "entity"]
    values += [r.answer for r in records] + [a for r in records for a in r.wrong_answers]
    pool = SubstitutePool(values, span_kind, embed)
    pool.prepare([r.answer for r in records] + [sp[0] for s, _ in sentence_items for sp in spans(s)])
    builder = PairBuilder(pool, spans, OPPOSITES, seed=seed)
    pairs: list[JudgePair] = []
    for _ in range(record_repeats):
        for rec in records:
            pairs += builder.from_record(rec, [rng.choice(all_sentences) for _ in range(2)])
    for s, p in sentence_items:
        pairs += builder.from_sentence(s, [x for x in p if x != s], [rng.choice(all_sentences)])
    for q, best, true, false in claims:
        pairs += builder.from_claims(q, best, true, false, "truthfulqa")
    pairs = [p for p in pairs if p.belief.strip() and p.text.strip()]
    return balance(pairs, seed=seed) if balanced else pairs


def build_pairs_from_data(
    data_dir: str | Path,
    *,
    seed: int = 0,
    max_sentences: int | None = 40_000,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    record_repeats: int = 1,
) -> tuple[list[JudgePair], list[JudgePair]]:
    """Training and dev pairs from the evaluation data folder (``shared/data`` layout).

    Training: HotpotQA questions and paragraphs (minus the questions PoisonedRAG attacks), MS
    MARCO passages that no TREC DL query judged, TruthfulQA claims, and the ``dev_train`` split
    of SQuAD-KRE, MuSiQue-KRE and FaithEval. Dev: the ``dev`` split of the three sets. No test
    item, and nothing of PoisonedRAG (kept for evaluation), is used.
    """
    from .sources import (
        beir_passages,
        faitheval_records,
        hotpot_records,
        kre_records,
        poisonedrag_items,
        truthfulqa_claims,
    )

    root = Path(data_dir)
    fr = root / "faithfulrag"
    if not (fr / "squad_kre_golden.json").is_file():
        raise InputError(f"no FaithfulRAG data under {str(fr)!r}; pass --data <folder holding faithfulrag/, hotpotqa/...>")

    def sets(splits: tuple[str, ...]) -> list[QARecord]:
        return (kre_records(fr, "squad", splits) + kre_records(fr, "musique", splits)  # type: ignore[arg-type]
                + faitheval_records(fr, splits))  # type: ignore[arg-type]

    train_records, dev_records = sets(("dev_train",)), sets(("dev",))
    passages = [r.sentences for r in train_records] + [r.alt_sentences for r in train_records if r.alt_sentences]
    exclude: set[str] = set()
    pr = root / "poisonedrag" / "hotpotqa_adv_targeted.json"
    if pr.is_file():
        exclude = {it["id"] for it in poisonedrag_items(pr)}
    hp = root / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"
    if hp.is_file():
        hrec, hpar = hotpot_records(hp, exclude)
        train_records += hrec
        passages += hpar
    corpus = root / "retrieval" / "msmarco_trecdl2019" / "corpus.jsonl"
    if corpus.is_file():
        judged = set()
        qrels = corpus.parent / "qrels" / "test.tsv"
        if qrels.is_file():
            judged = {line.split("\t")[1] for line in qrels.read_text().splitlines() if line.strip()}
        from ...retrievers import split_sentences

        passages += [split_sentences(t) for t in beir_passages(corpus, judged)]
    tq = root / "truthfulqa" / "TruthfulQA.csv"
    claims = list(truthfulqa_claims(tq)) if tq.is_file() else []
    log.info("judge data: %d train records, %d passages, %d claim lists, %d dev records",
             len(train_records), len(passages), len(claims), len(dev_records))
    train = build_pairs(train_records, passages, claims, embed=embed, max_sentences=max_sentences, seed=seed,
                        record_repeats=record_repeats)
    dev = build_pairs(dev_records, [], (), embed=embed, seed=seed + 1, max_sentences=0)
    return train, dev


# -- training ---------------------------------------------------------------------------------
def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar length (shuffled within chunks of 50 batches)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i: i + chunk], key=lambda j: lengths[j])
        batches += [part[k: k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (grid + refinement)."""
    if not len(labels):
        return 1.0

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(labels)), labels].mean())

    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 60))
    best = min(grid, key=nll)
    fine = best * np.exp(np.linspace(-0.1, 0.1, 41))
    return float(min(fine, key=nll))


def train_judge(
    train: Sequence[JudgePair],
    dev: Sequence[JudgePair],
    out_dir: str | Path,
    config: JudgeTrainConfig | None = None,
    *,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune the judge on ``train``, keep the step with the best ``dev`` loss, calibrate its
    temperature on ``dev`` and write ``judge.json`` + ``judge.safetensors`` to ``out_dir``.

    Returns:
        The metrics written into ``judge.json`` (dev loss/accuracy before calibration, the
        temperature, dev log-loss after it, steps, seconds).
    """
    cfg = config or JudgeTrainConfig()
    if not train:
        raise InputError("train_judge: no training pairs")
    torch = require("torch")
    transformers = require("transformers")
    safetensors = require("safetensors.torch")
    from ...models import resolve_device, resolve_model

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    base = resolve_model(cfg.base, kind="embedder").path
    dev_name = resolve_device(cfg.device)
    tok = transformers.AutoTokenizer.from_pretrained(base)
    net = build_network(transformers.AutoModel.from_pretrained(base), rank=cfg.rank, alpha=cfg.lora_alpha,
                        dropout=cfg.dropout).to(dev_name)
    if cfg.init:
        start = safetensors.load_file(str(Path(cfg.init) / "judge.safetensors"))
        _, unexpected = net.load_state_dict(start, strict=False)
        if unexpected:
            raise InputError(f"train_judge: init judge {cfg.init!r} does not fit (base/rank differ): {unexpected[:3]}")
        log.info("judge: starting from %s", cfg.init)
    if cfg.rank > 0:
        for p in net.parameters():
            p.requires_grad_(False)
        for p in net.trainable():
            p.requires_grad_(True)
    use_bf16 = cfg.bf16 == "on" or (cfg.bf16 == "auto" and (dev_name.startswith("cuda") or cpu_has_native_bf16()))
    amp_device = "cuda" if dev_name.startswith("cuda") else "cpu"

    def encode(pairs: Sequence[JudgePair]) -> dict[str, Any]:
        return tok([p.belief for p in pairs], [p.text for p in pairs], truncation="longest_first",
                   max_length=cfg.max_length)

    t0 = time.perf_counter()
    enc_train, enc_dev = encode(train), encode(dev) if dev else None
    y_train = np.array([p.label for p in train])
    y_dev = np.array([p.label for p in dev]) if dev else np.zeros(0, int)
    lengths = [len(x) for x in enc_train["input_ids"]]
    log.info("judge: %d train / %d dev pairs tokenised in %.1fs (labels %s)", len(train), len(dev),
             time.perf_counter() - t0, dict(Counter(LABELS[y] for y in y_train)))

    def collate(enc: dict[str, Any], idx: Sequence[int]) -> dict[str, Any]:
        feats = [{k: enc[k][i] for k in enc} for i in idx]
        batch = tok.pad(feats, return_tensors="pt")
        return {k: v.to(dev_name) for k, v in batch.items()}

    head = [p for n, p in net.named_parameters() if n.startswith("head.") and p.requires_grad]
    body = [p for n, p in net.named_parameters() if not n.startswith("head.") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, int(steps_per_epoch * cfg.epochs))
    warm = int(total * cfg.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    probe = sorted(random.Random(cfg.seed).sample(range(len(dev)), min(len(dev), cfg.dev_probe)))

    def dev_logits(rows: Sequence[int] | None = None) -> np.ndarray:
        rows = list(range(len(y_dev))) if rows is None else list(rows)
        net.eval()
        out = np.zeros((len(y_dev), len(LABELS)), np.float32)
        order = [rows[i] for i in np.argsort([len(enc_dev["input_ids"][j]) for j in rows])] if enc_dev else []
        with torch.no_grad(), torch.autocast(amp_device, dtype=torch.bfloat16, enabled=use_bf16):
            for i in range(0, len(order), 128):
                idx = order[i: i + 128]
                out[idx] = net(**collate(enc_dev, idx)).float().cpu().numpy()
        net.train()
        return out[rows]

    def dev_metrics() -> dict[str, float]:
        z, y = dev_logits(probe), y_dev[probe]
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(z), torch.from_numpy(y)))
        return {"dev_loss": loss, "dev_accuracy": float((z.argmax(1) == y).mean())}

    out = Path(out_dir)

    def save(temperature: float, metrics: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.float().cpu().contiguous() for k, v in net.shipped_state().items()}
        safetensors.save_file(state, str(out / "judge.safetensors"))
        info = {
            "base": cfg.base, "rank": cfg.rank, "lora_alpha": cfg.lora_alpha, "max_length": cfg.max_length,
            "labels": list(LABELS), "temperature": temperature, "train_config": cfg.model_dump(),
            "metrics": metrics, **(extra_info or {}),
        }
        (out / "judge.json").write_text(json.dumps(info, indent=1), encoding="utf-8")

    best: tuple[float, dict[str, Any], dict[str, float]] | None = None
    step, seen, t_start, run_loss = 0, 0, time.perf_counter(), 0.0
    net.train()
    last = total if cfg.stop_after is None else min(total, cfg.stop_after)
    while step < last:
        for idx in _batches(lengths, cfg.batch_size, rng):
            if step >= last:
                break
            batch = collate(enc_train, idx)
            labels = torch.from_numpy(y_train[idx]).to(dev_name)
            with torch.autocast(amp_device, dtype=torch.bfloat16, enabled=use_bf16):
                logits = net(**batch)
            loss = loss_fn(logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            seen += len(idx)
            run_loss = 0.98 * run_loss + 0.02 * float(loss.detach()) if step > 1 else float(loss.detach())
            if step % 50 == 0 or step == total:
                rate = seen / (time.perf_counter() - t_start)
                log.info("judge step %d/%d loss %.4f %.1f pairs/s eta %.0f min", step, total, run_loss, rate,
                         (total - step) * cfg.batch_size / rate / 60)
            if dev and (step % cfg.eval_every == 0 or step == last):
                m = dev_metrics()
                log.info("judge step %d dev loss %.4f accuracy %.4f", step, m["dev_loss"], m["dev_accuracy"])
                if best is None or m["dev_loss"] < best[0]:
                    best = (m["dev_loss"], {k: v.detach().clone() for k, v in net.state_dict().items()}, {**m, "step": step})
                    save(fit_temperature(dev_logits(probe), y_dev[probe]), {**m, "step": step, "checkpoint": True})
    if best is not None:
        net.load_state_dict(best[1])
    metrics: dict[str, Any] = dict(best[2]) if best else {}
    temperature = 1.0
    if dev:
        z = dev_logits()
        temperature = fit_temperature(z, y_dev)
        zt = z / temperature
        zt -= zt.max(1, keepdims=True)
        logp = zt - np.log(np.exp(zt).sum(1, keepdims=True))
        metrics["dev_log_loss_calibrated"] = float(-logp[np.arange(len(y_dev)), y_dev].mean())
    metrics.update(steps=step, seconds=round(time.perf_counter() - t0, 1), temperature=temperature,
                   train_pairs=len(train), dev_pairs=len(dev))
    save(temperature, metrics)
    log.info("judge written to %s (%s)", out, {k: metrics[k] for k in ("dev_loss", "dev_accuracy") if k in metrics})
    return metrics
