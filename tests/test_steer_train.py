"""RW-Steering fine-tuning (tiny random Llama), susceptibility measurement and the CLI commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctxkit.cli import main
from ctxkit.errors import ConfigError, InputError
from ctxkit.faithfulness.steering import (
    PoolRow,
    SteerTrainConfig,
    build_sft_examples,
    build_testbed,
    parse_steered,
    split_stages,
    steering_target,
    target_loss,
    train_rw_steering,
)
from ctxkit.llm.base import BaseGenerator, Generation


def pools() -> dict[str, list[PoolRow]]:
    rows = [
        PoolRow(id=f"r{i}", category="toy", question=f"who is {i}?",
                appropriate=[f"{i} is a fox", f"the fox {i} is quick"],
                inappropriate=[f"{i} is a dog", f"the lazy dog {i}"], reference=f"{i} is a fox.")
        for i in range(3)
    ]
    return {"toy": rows}


def write_pool_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = [{"Question": r.question, "Generated Information": r.appropriate, "Synonym Sentence": r.inappropriate,
             "Simple Answer": r.reference, "Input": r.inappropriate[0]} for r in pools()["toy"]]
    (root / "toy_output.json").write_text(json.dumps(data))
    return root


def test_targets_and_stage_split() -> None:
    items = build_testbed(pools(), n_items=4, ratios=[0.0, 0.25, 0.5, 0.75], seed=0)
    it = next(x for x in items if x.ratio == 0.5)
    target = steering_target(it)
    bad, use, answer = parse_steered(target, 4)
    assert bad == it.inappropriate_indices and use == it.appropriate_indices and answer == it.reference
    assert steering_target(next(x for x in items if x.ratio == 0.0)).startswith("inappropriate: none; use: 1, 2, 3, 4")
    s1, s2 = split_stages(items, low_max_ratio=0.3)
    assert len(s1) == len(items) and {x.ratio for x in s2} == {0.25}
    ex = build_sft_examples(s2)
    assert "<context>" in ex[0].prompt and "[4]" in ex[0].prompt and ex[0].target.startswith("inappropriate: ")


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        train_rw_steering({"output_dir": "x", "batch_size": 0}, [])
    with pytest.raises(InputError, match="stage 1"):
        train_rw_steering({"output_dir": "x"}, [])


def test_two_stage_training_lowers_loss_and_resumes(tiny_llm_dir: Path, tmp_path: Path) -> None:
    items = build_testbed(pools(), n_items=4, ratios=[0.0, 0.25, 0.5], seed=0)
    s1, s2 = split_stages(items, low_max_ratio=0.3)
    ex1, ex2 = build_sft_examples(s1), build_sft_examples(s2)
    before = target_loss(tiny_llm_dir, ex1)
    cfg = SteerTrainConfig(model=str(tiny_llm_dir), output_dir=str(tmp_path / "run"), max_steps_stage1=4,
                           max_steps_stage2=2, save_steps=2, learning_rate=3e-3, batch_size=3, device="cpu",
                           logging_steps=1, show_progress=False, max_length=512)
    res = train_rw_steering(cfg, ex1, ex2)
    assert res["stage1"]["global_step"] == 4 and res["stage2"]["global_step"] == 2
    final = Path(res["final_dir"])
    assert (final / "config.json").is_file()
    after = target_loss(final, ex1)
    assert after < before - 0.1, (before, after)
    # interrupt stage 1 after its checkpoint at step 4, ask for 6 steps: it resumes, not restarts
    s1_dir = tmp_path / "run" / "stage1"
    assert (s1_dir / "checkpoint-4").is_dir()
    (s1_dir / "done.json").unlink()
    shutil.rmtree(s1_dir / "final")
    res2 = train_rw_steering(cfg.model_copy(update={"max_steps_stage1": 6}), ex1, ex2)
    assert res2["stage1"]["resumed_from"].endswith("checkpoint-4")
    assert res2["stage1"]["global_step"] == 6
    assert res2["stage2"].get("skipped") is True
    # the fine-tuned model's stage-1 identification plugs into the steering stage
    from ctxkit.faithfulness.steering import SteeringFilter, steering_detector

    det = steering_detector(final, device="cpu")
    states = [it.to_state() for it in items[:2]]
    SteeringFilter(detector=det, action="annotate")(states)
    assert all("inappropriate" in st.flags for st in states)
    assert all("rw_steering" in p.scores for st in states for p in st.passages)
    assert len(det.last_outputs) == 2


def test_bf16_training_keeps_fp32_master_weights(tiny_llm_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """bf16=True is autocast over float32 weights, even where the device's default dtype is bf16
    (emulated here: "auto" resolves to bfloat16 as it does on CUDA)."""
    import torch
    from safetensors.torch import load_file

    import ctxkit.models

    real = ctxkit.models.resolve_dtype
    monkeypatch.setattr(ctxkit.models, "resolve_dtype",
                        lambda device, dtype="auto": torch.bfloat16 if dtype == "auto" else real(device, dtype))
    items = build_testbed(pools(), n_items=4, ratios=[0.25, 0.5], seed=0)
    cfg = SteerTrainConfig(model=str(tiny_llm_dir), output_dir=str(tmp_path / "bf16"), max_steps_stage1=2,
                           stage2_epochs=0, learning_rate=1e-2, batch_size=2, device="cpu", bf16=True,
                           show_progress=False, max_length=512)
    res = train_rw_steering(cfg, build_sft_examples(items))
    trained = load_file(str(Path(res["final_dir"]) / "model.safetensors"))
    base = load_file(str(tiny_llm_dir / "model.safetensors"))
    assert {t.dtype for t in trained.values()} == {torch.float32}
    assert res["precision"] == {"weights": "float32", "compute": "bfloat16 autocast"}
    changed = [k for k in base if not torch.equal(base[k], trained[k])]
    assert changed  # the steps really updated float32 weights (not lost to bf16 rounding)


def test_lora_training_merges(tiny_llm_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    items = build_testbed(pools(), n_items=4, ratios=[0.25, 0.5], seed=0)
    cfg = SteerTrainConfig(model=str(tiny_llm_dir), output_dir=str(tmp_path / "lora"), max_steps_stage1=2,
                           stage2_epochs=0, lora=True, lora_r=4, learning_rate=1e-2, batch_size=2,
                           device="cpu", show_progress=False, max_length=512)
    res = train_rw_steering(cfg, build_sft_examples(items))
    assert "stage2" not in res
    final = Path(res["final_dir"])
    assert not (final / "adapter_config.json").exists()  # merged into a plain model
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(str(final), device="cpu")
    assert gen.generate([[{"role": "user", "content": "who is 1?"}]], max_new_tokens=3)[0].ok


class MajorityGenerator(BaseGenerator):
    """Deterministic test double: answers with the context item that appears most often.

    A controlled "follows the majority of the context" model, so the curves have a known shape.
    """

    def generate(self, batch, settings=None, **overrides):
        out = []
        for conv in batch:
            lines = [ln.split("] ", 1)[1] for ln in conv[-1].content.splitlines() if ln.startswith("[")]
            best = max(set(lines), key=lambda t: (lines.count(t), t))
            out.append(Generation(text=best + "."))
        return out


def test_susceptibility_curves_and_rw_fit(minilm, tmp_path: Path) -> None:
    from ctxkit.faithfulness.steering import EmbeddingJudge, measure_susceptibility

    items = build_testbed(pools(), n_items=10, ratios=[0.0, 0.2, 0.4, 0.6, 0.8], seed=0)
    res = measure_susceptibility(MajorityGenerator(), items, judge=EmbeddingJudge(minilm), show_progress=False)
    c = res.curves()
    assert c["ratio"] == [0.0, 0.2, 0.4, 0.6, 0.8] and c["n"] == [3] * 5
    assert c["consistency"][0] > c["consistency"][-1] + 20
    assert c["cleanliness"][0] > c["cleanliness"][-1] + 20
    assert c["cleanliness"][0] >= 90
    rw = res.fit_rw()
    assert rw.scale == 100.0
    # the fitted curves follow the measured ones: more inappropriate content as the ratio grows
    assert rw.fitted["inappropriate"][-1] > rw.fitted["inappropriate"][0] + 20
    assert rw.fitted["appropriate"][0] > rw.fitted["appropriate"][-1] + 20
    summary = res.summary()
    assert set(summary["by_category"]) == {"toy"}
    res.save(tmp_path / "answers.jsonl")
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == len(items)


def test_rw_fit_of_measured_answers_recovers_known_parameters() -> None:
    """Answers whose consistency / cleanliness follow a known RW model (plus judge noise): the fit
    through SusceptibilityResult (grouping, 100 - cleanliness, 0..100 scale) recovers the rates."""
    from ctxkit.faithfulness.steering import (
        DEFAULT_RATIOS,
        RWParams,
        SusceptibilityResult,
        predict_curves,
    )
    from ctxkit.faithfulness.steering.susceptibility import AnswerRecord

    true = RWParams(0.05, 0.15, 0.35)
    ratios = list(DEFAULT_RATIOS)
    clean = predict_curves(true, ratios)
    rng = np.random.default_rng(1)
    records = [
        AnswerRecord(id=f"{k}-{j}", category="toy", ratio=r, answer="",
                     consistency=float(100 * clean["appropriate"][k] + rng.normal(0, 2)),
                     cleanliness=float(100 * (1 - clean["inappropriate"][k]) + rng.normal(0, 2)))
        for k, r in enumerate(ratios) for j in range(8)
    ]
    rw = SusceptibilityResult(records=records, n_items=20).fit_rw(fit_mapping=False, n_orders=32)
    assert rw.scale == 100.0 and rw.r2 > 0.98
    assert rw.params.alpha_appropriate == pytest.approx(0.15, rel=0.25)
    assert rw.params.alpha_inappropriate == pytest.approx(0.35, rel=0.25)
    assert rw.params.alpha_inappropriate / rw.params.alpha_appropriate == pytest.approx(0.35 / 0.15, rel=0.15)


def test_llm_judge_parses_ratings() -> None:
    from ctxkit.faithfulness.steering import LLMJudge

    class Rater(BaseGenerator):
        def generate(self, batch, settings=None, **overrides):
            return [Generation(text="Consistency: 5\nCleanliness: 2"), Generation(text="no idea")][: len(batch)]

    items = build_testbed(pools(), n_items=4, ratios=[0.5], seed=0)[:2]
    j = LLMJudge(Rater()).judge(items, ["a", "b"])
    assert (j[0].consistency, j[0].cleanliness) == (100.0, 25.0)
    assert (j[1].consistency, j[1].cleanliness) == (50.0, 50.0) and j[1].info["parse_failed"]


def test_cli_testbed_fit_and_steer_train(tmp_path: Path, tiny_llm_dir: Path, capsys) -> None:
    pool = write_pool_dir(tmp_path / "pools")
    tb = tmp_path / "tb.jsonl"
    assert main(["rw-testbed", "--pools", str(pool), "--out", str(tb), "--n-items", "4",
                 "--ratios", "0,0.25,0.5"]) == 0
    assert len(tb.read_text().splitlines()) == 9
    curves = tmp_path / "curves.json"
    ratios = [0.05 * i for i in range(10)]
    curves.write_text(json.dumps({"ratio": ratios, "consistency": [80 - 50 * r for r in ratios],
                                  "cleanliness": [100 - 80 * r ** 0.5 for r in ratios]}))
    png = tmp_path / "fit.png"
    assert main(["rw-fit", str(curves), "--plot", str(png), "--out", str(tmp_path / "fit.json")]) == 0
    assert png.is_file() and "R2=" in capsys.readouterr().out
    out = tmp_path / "cli_run"
    assert main(["steer-train", "--testbed", str(tb), "--output-dir", str(out), "--model", str(tiny_llm_dir),
                 "--max-steps-stage1", "1", "--max-steps-stage2", "1", "--device", "cpu",
                 "--max-length", "512"]) == 0
    assert (out / "final" / "config.json").is_file()
    assert main(["rw-testbed", "--pools", str(tmp_path / "nope"), "--out", str(tb)]) == 2


def test_cli_rw_detect_with_packaged_head(tmp_path: Path, minilm, capsys) -> None:
    pool = write_pool_dir(tmp_path / "pools")
    tb = tmp_path / "tb.jsonl"
    assert main(["rw-testbed", "--pools", str(pool), "--out", str(tb), "--n-items", "6",
                 "--ratios", "0.33,0.5"]) == 0
    out = tmp_path / "m.json"
    assert main(["rw-detect", "--testbed", str(tb), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["n_items"] == 36 and 0.0 <= m["f1"] <= 1.0
    assert "precision" in capsys.readouterr().out
