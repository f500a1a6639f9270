"""Two-stage RW-Steering fine-tuning with the transformers ``Trainer`` (optional LoRA).

Stage 1 teaches the model to first *name* the inappropriate and the usable items of a mixed
context, then answer; its target reads ``"inappropriate: 3, 7; use: 1, 2, 4; answer: ..."``.
Stage 2 continues on low-contamination mixtures (few bad items), where the Rescorla-Wagner analysis
says models are hurt most. The loss covers only the target tokens. Checkpoints are written every
``save_steps`` and a stopped run resumes (``resume=True``); a finished stage is skipped on rerun.

Output layout under ``output_dir``: ``stage1/`` and ``stage2/`` (Trainer checkpoints,
``final/``, ``done.json``) and ``final/`` (the model to use, loadable by
:class:`~ctxkit.llm.TransformersGenerator`; plug it into the steering stage with
:func:`steering_detector`). The prompt and target formats live in
:mod:`ctxkit.faithfulness.steering.prompts` (importable without torch or transformers).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..._lazy import require
from ...errors import ConfigError, InputError
from .detectors import LLMDetector
from .prompts import STEER_TEMPLATE, format_items, parse_identification, steering_target
from .testbed import TestbedItem

__all__ = [
    "SteerExample",
    "SteerTrainConfig",
    "build_sft_examples",
    "parse_steered",
    "split_stages",
    "steered_messages",
    "steering_detector",
    "target_loss",
    "train_rw_steering",
]

log = logging.getLogger(__name__)

class SteerExample(BaseModel):
    """One SFT example: the user prompt and the target the model must produce."""

    model_config = ConfigDict(extra="forbid")

    id: str
    ratio: float
    prompt: str
    target: str


def steered_messages(item_or_question: TestbedItem | str, items: Sequence[str] | None = None) -> list[Any]:
    """The chat conversation used in training and at inference (``STEER_TEMPLATE``)."""
    from ...llm.base import Message

    if isinstance(item_or_question, TestbedItem):
        q, texts = item_or_question.question, [x.render() for x in item_or_question.items]
    else:
        if items is None:
            raise InputError("steered_messages: give the items with a plain question")
        q, texts = item_or_question, list(items)
    return [Message(role="user", content=STEER_TEMPLATE.format(question=q, context=format_items(texts)))]


def build_sft_examples(items: Sequence[TestbedItem]) -> list[SteerExample]:
    """SFT examples (prompt, stage-1 target) for testbed items."""
    out = []
    for it in items:
        if not it.reference:
            raise InputError(f"testbed item {it.id} has no reference answer; cannot build a target")
        out.append(SteerExample(id=it.id, ratio=it.ratio, prompt=steered_messages(it)[0].content,
                                target=steering_target(it)))
    return out


def split_stages(
    items: Sequence[TestbedItem], *, low_max_ratio: float = 0.3
) -> tuple[list[TestbedItem], list[TestbedItem]]:
    """Stage 1: all items (every ratio); stage 2: items with ``0 < ratio <= low_max_ratio``."""
    stage2 = [it for it in items if 0.0 < it.ratio <= low_max_ratio + 1e-9]
    return list(items), stage2


class SteerTrainConfig(BaseModel):
    """Settings of :func:`train_rw_steering`.

    Attributes:
        model: Base model (local dir, hub id, or ``"default"``: the offline SmolLM2-135M).
        output_dir: Where checkpoints and the final model go.
        stage1_epochs / stage2_epochs: Epochs per stage (``stage2_epochs=0`` skips stage 2).
        max_steps_stage1 / max_steps_stage2: Step caps (``-1``: from the epochs).
        learning_rate / stage2_learning_rate: Learning rates (stage 2 defaults to half).
        batch_size / grad_accum: Per-device batch and gradient accumulation.
        max_length: Examples longer than this many tokens are dropped (counted in the result).
        lora: Train LoRA adapters (``peft``) instead of all weights; merged into ``final/``.
        lora_r / lora_alpha / lora_dropout / lora_targets: LoRA settings.
        save_steps / save_total_limit / logging_steps: Checkpointing and logging.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        bf16: bfloat16 mixed precision: the forward and backward passes run under bf16 autocast
            while the weights, their gradients and the optimizer state stay float32 (fp32 master
            weights; the model is always loaded in float32 for training, whatever the device's
            default dtype). Off: everything in float32. The saved model is float32 either way.
        seed: Training seed.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    output_dir: str
    stage1_epochs: float = Field(1.0, ge=0)
    stage2_epochs: float = Field(1.0, ge=0)
    max_steps_stage1: int = -1
    max_steps_stage2: int = -1
    learning_rate: float = Field(5e-5, gt=0)
    stage2_learning_rate: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] | str = "all-linear"
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    device: str = "auto"
    bf16: bool = False
    seed: int = 0
    show_progress: bool = True


class _Collator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, feats: list[dict[str, list[int]]]) -> dict[str, Any]:
        torch = require("torch")
        n = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(feats), n), dtype=torch.long)
        labels = torch.full((len(feats), n), -100, dtype=torch.long)
        for i, f in enumerate(feats):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            mask[i, :k] = 1
            labels[i, :k] = torch.tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _encode(examples: Sequence[SteerExample], gen: Any, max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    from ...llm.base import Message

    tok = gen.tokenizer
    eos = tok.eos_token or ""
    rows, dropped = [], 0
    for ex in examples:
        prompt = gen.render([Message(role="user", content=ex.prompt)])
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tok(" " + ex.target + eos if not prompt.endswith((" ", "\n")) else ex.target + eos,
                    add_special_tokens=False)["input_ids"]
        if len(p_ids) + len(t_ids) > max_length:
            dropped += 1
            continue
        rows.append({"input_ids": p_ids + t_ids, "labels": [-100] * len(p_ids) + t_ids})
    return rows, dropped


def _stage_done(d: Path) -> bool:
    return (d / "done.json").is_file() and (d / "final").is_dir()


def _run_stage(
    name: str, model: Any, gen: Any, examples: Sequence[SteerExample], cfg: SteerTrainConfig,
    stage_dir: Path, epochs: float, max_steps: int, lr: float, resume: bool,
) -> tuple[Any, dict[str, Any]]:
    transformers = require("transformers")
    rows, dropped = _encode(examples, gen, cfg.max_length)
    if not rows:
        raise InputError(f"{name}: no example fits max_length={cfg.max_length}; raise it or shorten contexts")
    if cfg.lora:
        peft = require("peft")
        lcfg = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                               target_modules=cfg.lora_targets, task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, lcfg)
    use_cpu = str(cfg.device).startswith("cpu") or (cfg.device == "auto" and str(gen.device).startswith("cpu"))
    args = transformers.TrainingArguments(
        output_dir=str(stage_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        use_cpu=use_cpu,
        bf16=cfg.bf16,
        seed=cfg.seed,
        remove_unused_columns=False,
        disable_tqdm=not cfg.show_progress,
        dataloader_num_workers=0,
        lr_scheduler_type="linear",
        warmup_steps=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   data_collator=_Collator(int(gen.tokenizer.pad_token_id or 0)))
    ckpts = sorted(stage_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    resume_from = str(ckpts[-1]) if resume and ckpts else None
    if resume_from:
        log.info("%s: resuming from %s", name, resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    if cfg.lora:
        model = trainer.model.merge_and_unload()
    else:
        model = trainer.model
    final = stage_dir / "final"
    model.save_pretrained(final)
    gen.tokenizer.save_pretrained(final)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    info = {"examples": len(rows), "dropped_too_long": dropped, "global_step": trainer.state.global_step,
            "losses": losses, "resumed_from": resume_from}
    (stage_dir / "done.json").write_text(json.dumps(info), encoding="utf-8")
    return model, info


def train_rw_steering(
    config: SteerTrainConfig | dict[str, Any],
    stage1: Sequence[SteerExample],
    stage2: Sequence[SteerExample] = (),
    *,
    resume: bool = True,
) -> dict[str, Any]:
    """Run the two training stages; returns per-stage info and ``final_dir``.

    Args:
        config: Settings (a dict is validated into :class:`SteerTrainConfig`).
        stage1: Examples over all ratios (see :func:`build_sft_examples`, :func:`split_stages`).
        stage2: Low-contamination examples (empty or ``stage2_epochs == 0``: stage 2 skipped).
        resume: Continue an interrupted stage from its last checkpoint; skip finished stages.

    Raises:
        ConfigError: invalid settings. InputError: no examples.
    """
    try:
        cfg = config if isinstance(config, SteerTrainConfig) else SteerTrainConfig(**config)
    except ValueError as exc:
        raise ConfigError(f"invalid steer-train settings: {exc}") from None
    if not stage1:
        raise InputError("train_rw_steering: stage 1 needs examples")
    torch = require("torch")
    from ...llm.transformers import TransformersGenerator

    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=1), encoding="utf-8")
    result: dict[str, Any] = {"output_dir": str(out)}
    s1, s2 = out / "stage1", out / "stage2"
    do2 = bool(stage2) and (cfg.stage2_epochs > 0 or cfg.max_steps_stage2 > 0)
    if resume and _stage_done(s1):
        result["stage1"] = {**json.loads((s1 / "done.json").read_text()), "skipped": True}
        start = str(s1 / "final")
    else:
        start = cfg.model
    # fp32 master weights: bf16 runs as autocast (TrainingArguments(bf16=True)), never as bf16 weights
    gen = TransformersGenerator(start, device=cfg.device, dtype="float32")
    gen.warm_up()
    model = gen.model
    model.train()
    result["precision"] = {"weights": str(next(model.parameters()).dtype).replace("torch.", ""),
                           "compute": "bfloat16 autocast" if cfg.bf16 else "float32"}
    if "stage1" not in result:
        model, result["stage1"] = _run_stage("stage1", model, gen, stage1, cfg, s1, cfg.stage1_epochs,
                                             cfg.max_steps_stage1, cfg.learning_rate, resume)
    final_src = s1 / "final"
    if do2:
        if resume and _stage_done(s2):
            result["stage2"] = {**json.loads((s2 / "done.json").read_text()), "skipped": True}
        else:
            model, result["stage2"] = _run_stage(
                "stage2", model, gen, stage2, cfg, s2, cfg.stage2_epochs, cfg.max_steps_stage2,
                cfg.stage2_learning_rate or cfg.learning_rate / 2, resume)
        final_src = s2 / "final"
    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(final_src, final)
    result["final_dir"] = str(final)
    return result


def target_loss(model: Any, examples: Sequence[SteerExample], *, batch_size: int = 8, max_length: int = 1024) -> float:
    """Mean cross-entropy of the target tokens (what training minimises) for ``examples``.

    Args:
        model: A :class:`~ctxkit.llm.TransformersGenerator` or a model directory / name.
        examples: SFT examples.
    """
    torch = require("torch")
    from ...llm.transformers import TransformersGenerator

    gen = model if isinstance(model, TransformersGenerator) else TransformersGenerator(str(model), device="cpu", dtype="float32")
    gen.warm_up()
    rows, _ = _encode(examples, gen, max_length)
    if not rows:
        raise InputError("target_loss: no example fits max_length")
    collate = _Collator(int(gen.tokenizer.pad_token_id or 0))
    total, count = 0.0, 0
    net = gen.model
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(net.device) for k, v in collate(rows[i : i + batch_size]).items()}
            logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            lab = batch["labels"][:, 1:]
            lp = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(lp)
            count += int((lab != -100).sum())
    net.train(was_training)
    return total / max(count, 1)


def steering_detector(model_dir: str | Path, **generator_settings: Any) -> LLMDetector:
    """An :class:`LLMDetector` that uses a fine-tuned model's stage-1 identification.

    Plug it into :class:`~ctxkit.faithfulness.steering.stage.SteeringFilter` (``detector=...``).
    """
    from ...llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(model_dir), **generator_settings)
    return LLMDetector(gen, template=STEER_TEMPLATE)


def parse_steered(text: str, n_items: int | None = None) -> tuple[list[int], list[int], str]:
    """Parse a steered reply into (inappropriate, use, answer); see :func:`parse_identification`."""
    return parse_identification(text, n_items)
