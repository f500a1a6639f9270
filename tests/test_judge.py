"""The claim judge's mechanics: pair building, splits, training on a tiny BERT, merged loading,
the training command on a tiny data folder, and the LLM judge (tiny models, no shared data)."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from ctxkit.cli import main
from ctxkit.errors import InputError, ModelNotAvailableError
from ctxkit.faithfulness.conflicts import extract_spans, span_kind
from ctxkit.faithfulness.conflicts.text import OPPOSITES
from ctxkit.faithfulness.judge import (
    ClaimJudge,
    JudgeTrainConfig,
    LLMClaimJudge,
    build_pairs,
    split_of,
    train_judge,
)
from ctxkit.faithfulness.judge.data import (
    CONFLICT,
    SUPPORT,
    UNRELATED,
    PairBuilder,
    QARecord,
    SubstitutePool,
    balance,
)
from ctxkit.faithfulness.judge.llm import parse_verdict
from ctxkit.faithfulness.judge.perturb import (
    flip_negation,
    other_date,
    other_number,
    restyle,
    swap_opposite,
)


def _spans(text: str) -> list[tuple[str, str, int, int]]:
    return [(s.text, s.kind, s.start, s.end) for s in extract_spans(text)]


RECORD = QARecord(
    question="In what country is Normandy located?", answer="France",
    sentences=["The Normans settled in the north.", "Normandy is a region in France.", "Rollo led them."],
    source="toy", alt_answer="Spain",
    alt_sentences=["The Normans settled in the north.", "Normandy is a region in Spain.", "Rollo led them."],
    wrong_answers=["Spain", "Italy"],
)
POOL_VALUES = ["France", "Spain", "Italy", "Germany", "Portugal", "Paris", "Rollo"]


def test_perturbations_change_the_value_and_keep_its_form() -> None:
    rng = random.Random(0)
    for _ in range(20):
        n = other_number("1,250 people", rng)
        assert n and n != "1,250 people" and n.endswith(" people")
        value = n[: -len(" people")]
        assert value.replace(",", "").isdigit() and ("," in value) == (int(value.replace(",", "")) >= 1000)
        d = other_date("3 May 1901", rng)
        assert d and d != "3 May 1901"
    assert other_number("seven", rng) not in (None, "seven")
    assert other_number("none here", rng) is None
    assert other_date("no date", rng) is None
    assert flip_negation("The tower was built in 1889.") == "The tower was not built in 1889."
    assert flip_negation("The tower wasn't built in 1889.") == "The tower was built in 1889."
    assert flip_negation("It works.") == "It does not work."
    assert swap_opposite("Sales increased before 2020.", OPPOSITES, random.Random(1)) in (
        "Sales decreased before 2020.", "Sales increased after 2020.")


def test_restyle_rewords_but_keeps_the_values() -> None:
    text = "The tower (a landmark of Paris) was completed in 1889 and is located on the Champ de Mars."
    outs = {restyle(text, random.Random(i), keep=["1889", "Champ de Mars"], neighbours=["It is tall."])
            for i in range(30)}
    assert len(outs) > 5  # several different rewordings
    assert all("1889" in o and "Champ de Mars" in o for o in outs)
    assert any("finished" in o or "situated" in o for o in outs)  # near-synonyms
    assert any("(a landmark of Paris)" not in o for o in outs)  # a parenthesis dropped
    # a rewording that would lose a value is not made
    assert all("Paris" in restyle(text, random.Random(i), keep=["Paris"]) for i in range(30))


def test_rewritten_passages_give_paraphrase_and_rewrite_pairs() -> None:
    rec = QARecord(question="q", answer="Paris", source="toy", sentences=[
        "The museum opened in the centre of Paris in 1793 after the revolution.",
        "It holds the Mona Lisa, painted by Leonardo da Vinci in Florence."],
        alt_sentences=["The museum opened in the heart of Paris in 1793 after the revolution.",
                       "It holds the Mona Lisa, painted by Raphael in Rome."], alt_answer="Rome")
    builder = PairBuilder(SubstitutePool(POOL_VALUES, span_kind), _spans, OPPOSITES, seed=0)
    pairs = {p.source: p for p in builder._aligned(rec)}
    assert pairs["toy:aligned_paraphrase"].label == SUPPORT
    assert pairs["toy:aligned_rewrite"].label == CONFLICT


def test_pair_builder_labels_each_construction() -> None:
    pool = SubstitutePool(POOL_VALUES, span_kind)
    builder = PairBuilder(pool, _spans, OPPOSITES, seed=3)
    pairs = builder.from_record(RECORD, ["Penicillin was discovered in 1928."])
    by = {p.source: p for p in pairs}
    support = by["toy:support"]
    assert support.label == SUPPORT and "region in France" in support.text  # possibly reworded around it
    assert support.belief.startswith("In what country is Normandy located?") and support.belief.endswith("France")
    swap = by["toy:text_swap"]
    assert swap.label == CONFLICT and "France" not in swap.text and "Normandy is a region in " in swap.text
    assert by["toy:belief_swap"].label == CONFLICT and "France" not in by["toy:belief_swap"].belief
    assert by["toy:counterfactual"].text == "Normandy is a region in Spain." and by["toy:counterfactual"].label == CONFLICT
    assert by["toy:counterfactual_support"].label == SUPPORT and by["toy:counterfactual_support"].belief.endswith("Spain")
    assert by["toy:same_passage"].label == UNRELATED and "France" not in by["toy:same_passage"].text
    assert by["toy:other_passage"].label == UNRELATED

    cloze = builder.from_sentence("The Eiffel Tower was completed in 1889 in Paris.", ["It is tall."], ["Rollo led."])
    labels = {p.source: p.label for p in cloze}
    assert labels["cloze:support"] == SUPPORT and labels["cloze:same_passage"] == UNRELATED
    assert labels.get("statement:restyled", SUPPORT) == SUPPORT
    assert any(lab == CONFLICT for lab in labels.values())
    claims = builder.from_claims("Can you see the Great Wall from space?", "No, it is not visible from space",
                                 ["It cannot be seen from orbit with the naked eye", "I have no comment"],
                                 ["Yes, the Great Wall is visible from the Moon"], "tq")
    assert {p.label for p in claims if p.source == "tq:true"} == {SUPPORT}
    assert {p.label for p in claims if p.source.startswith("tq:false")} == {CONFLICT}
    assert not any("no comment" in p.text for p in claims)


def test_balance_follows_the_shares() -> None:
    pairs = build_pairs([RECORD] * 30, [["The Eiffel Tower was completed in 1889 in Paris.", "Paris is in France."]] * 30,
                        seed=1, balanced=False)
    bal = balance(pairs, seed=0, shares=(0.4, 0.4, 0.2))
    counts = np.bincount([p.label for p in bal], minlength=3) / len(bal)
    assert np.allclose(counts, [0.4, 0.4, 0.2], atol=0.03)
    with pytest.raises(InputError):
        build_pairs([], [])


def test_split_of_is_frozen_and_proportional() -> None:
    splits = [split_of("squad", f"id{i}") for i in range(4000)]
    assert split_of("squad", "id7") == splits[7]  # stable
    share = {s: splits.count(s) / len(splits) for s in ("dev_train", "dev", "test")}
    assert abs(share["dev_train"] - 0.25) < 0.03 and abs(share["dev"] - 0.25) < 0.03 and abs(share["test"] - 0.5) < 0.03
    assert split_of("squad", "id7") != split_of("musique", "id7") or split_of("squad", "id8") != split_of("musique", "id8")


def test_training_writes_a_judge_whose_merged_weights_match_the_trained_network(tmp_path, tiny_bert_dir) -> None:
    import torch
    import transformers

    from ctxkit.faithfulness.judge.model import build_network

    pairs = build_pairs([RECORD] * 12, [["The Eiffel Tower was completed in 1889 in Paris.", "Paris is big."]] * 12,
                        seed=0)
    cfg = JudgeTrainConfig(base=str(tiny_bert_dir), rank=4, epochs=3, batch_size=8, lr=5e-3, head_lr=5e-3,
                           eval_every=5, max_length=64, device="cpu", bf16="off")
    metrics = train_judge(pairs, pairs[:16], tmp_path / "judge", cfg)
    info = json.loads((tmp_path / "judge" / "judge.json").read_text())
    assert info["rank"] == 4 and info["base"] == str(tiny_bert_dir) and metrics["temperature"] > 0
    assert metrics["steps"] == 3 * -(-len(pairs) // 8)
    judge = ClaimJudge(str(tmp_path / "judge"), device="cpu", dtype="float32")
    beliefs, texts = [p.belief for p in pairs[:6]], [p.text for p in pairs[:6]]
    probs = judge.predict(beliefs, texts)
    assert probs.shape == (6, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # the shipped (merged) weights give exactly what the low-rank network computes
    net = build_network(transformers.AutoModel.from_pretrained(tiny_bert_dir), rank=4, alpha=cfg.lora_alpha)
    from safetensors.torch import load_file

    missing, unexpected = net.load_state_dict(load_file(str(tmp_path / "judge" / "judge.safetensors")), strict=False)
    assert not unexpected and all(".lora_" not in m and "LayerNorm" not in m for m in missing)
    net.eval()
    enc = judge._tok(beliefs, texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert np.allclose(net(**enc).numpy(), judge.logits(beliefs, texts), atol=1e-4)


def test_missing_judge_folder_says_what_to_do(tmp_path) -> None:
    with pytest.raises(ModelNotAvailableError, match="judge-train"):
        ClaimJudge(str(tmp_path))


def _write_data_folder(root) -> None:
    fr = root / "faithfulrag"
    fr.mkdir(parents=True)
    gold, neg, fe = [], [], []
    for i in range(16):
        q, a, b = f"Where was person {i} born?", "Paris", "Lyon"
        gold.append({"id": f"s{i}", "question": q, "answer": a, "choices": [a, b],
                     "context": f"Person {i} was a painter. Person {i} was born in {a} in 1900. He died young."})
        neg.append({"id": f"s{i}", "question": q, "answer": b, "choices": [a, b],
                    "context": f"Person {i} was a painter. Person {i} was born in {b} in 1900. He died young."})
        fe.append({"id": f"f{i}", "question": q, "answer": b, "choices": [a, b],
                   "context": f"Records show person {i} was born in {b}."})
    for name in ("squad", "musique"):
        (fr / f"{name}_kre_golden.json").write_text(json.dumps(gold))
        (fr / f"{name}_kre_negative.json").write_text(json.dumps(neg))
    (fr / "faitheval_counterfactual.json").write_text(json.dumps(fe))
    (root / "hotpotqa").mkdir()
    rows = [{"_id": f"h{i}", "question": f"Which city hosts museum {i}?", "answer": "Rome",
             "supporting_facts": [["Museum", 0]], "context": [["Museum", [f"Museum {i} is in Rome.", "It opened in 1950."]]]}
            for i in range(6)]
    (root / "hotpotqa" / "hotpot_dev_distractor_500.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "truthfulqa").mkdir()
    with open(root / "truthfulqa" / "TruthfulQA.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Best Incorrect Answer", "Correct Answers",
                    "Incorrect Answers", "Source"])
        w.writerow(["A", "B", "What happens if you crack your knuckles?", "Nothing in particular happens",
                    "You get arthritis", "Nothing happens; Your knuckles are fine", "You will get arthritis", "x"])


def test_judge_train_command_runs_end_to_end_on_a_tiny_data_folder(tmp_path, tiny_bert_dir, capsys) -> None:
    _write_data_folder(tmp_path / "data")
    out = tmp_path / "judge"
    rc = main(["judge-train", "--data", str(tmp_path / "data"), "--out", str(out), "--base", str(tiny_bert_dir),
               "--no-embed", "--max-sentences", "40", "--epochs", "1", "--batch-size", "8", "--eval-every", "2",
               "--max-length", "64", "--device", "cpu"])
    assert rc == 0
    info = json.loads((out / "judge.json").read_text())
    assert info["data"]["embedded_substitutes"] is False and info["metrics"]["train_pairs"] > 20
    assert info["metrics"]["dev_pairs"] > 0  # the dev split of the toy sets calibrates
    assert "built" in capsys.readouterr().out
    assert main(["judge-train", "--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_stop_after_ends_a_run_early_and_a_seeded_run_reproduces_its_weights(tmp_path, tiny_bert_dir) -> None:
    from safetensors.numpy import load_file

    pairs = build_pairs([RECORD] * 12, [["The Eiffel Tower was completed in 1889 in Paris.", "Paris is big."]] * 12,
                        seed=0)
    base = {"base": str(tiny_bert_dir), "rank": 4, "epochs": 2, "batch_size": 8, "max_length": 64, "device": "cpu",
            "bf16": "off"}
    short = train_judge(pairs, pairs[:16], tmp_path / "short", JudgeTrainConfig(**base, eval_every=3, stop_after=3))
    assert short["steps"] == 3
    full = train_judge(pairs, pairs[:16], tmp_path / "full", JudgeTrainConfig(**base, eval_every=1000))
    assert full["steps"] == 2 * -(-len(pairs) // 8) > 3
    # the same seed and steps give the same shipped weights
    probe = train_judge(pairs, pairs[:16], tmp_path / "probe", JudgeTrainConfig(**base, stop_after=3, eval_every=1000))
    a, b = load_file(str(tmp_path / "short" / "judge.safetensors")), load_file(str(tmp_path / "probe" / "judge.safetensors"))
    assert probe["steps"] == 3 and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_llm_judge_parses_verdicts_and_scores_with_a_generator(tiny_llm_dir) -> None:
    assert parse_verdict("Contradict.") == 1
    assert parse_verdict("The text supports it") == 0
    assert parse_verdict("neither") == 2
    assert parse_verdict("no idea") is None
    from ctxkit.llm import TransformersGenerator

    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    judge = LLMClaimJudge(gen, batch_size=2)
    probs = judge.predict(["The tower is 330 m tall."] * 3, ["It is 330 m tall.", "It is 20 m tall.", "Cats purr."])
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1.0)
    # a pair judged before comes from the cache: the generator is not asked again
    asked = []
    real_score = gen.score
    gen.score = lambda convs, conts, **kw: asked.append(len(convs)) or real_score(convs, conts, **kw)
    again = judge.predict(["The tower is 330 m tall.", "New."], ["Cats purr.", "Other."])
    assert np.allclose(again[0], probs[2]) and asked == [3]  # only the new pair's three answer words
    assert LLMClaimJudge(gen, cache_size=0).cache is None
    parsed = LLMClaimJudge(gen, use_scores=False)
    p2 = parsed.predict(["a"], ["b"])
    assert np.allclose(p2.sum(1), 1.0) and parsed.parse_failures + int(p2.max() == 0.9) >= 1
    with pytest.raises(InputError):
        LLMClaimJudge(gen, prompt="no slots")


def test_uncalibrated_judge_says_so_and_an_explicit_threshold_silences_it(caplog) -> None:
    from ctxkit.faithfulness.conflicts import ConflictDetector

    class Uncalibrated:
        def __init__(self) -> None:
            self.config: dict = {}

        def predict(self, beliefs, texts):
            return np.tile([0.1, 0.8, 0.1], (len(beliefs), 1))

    with caplog.at_level("WARNING", logger="ctxkit.faithfulness.conflicts.detector"):
        det = ConflictDetector(judge=Uncalibrated())
    assert det.threshold == 0.5 and "no calibration" in caplog.text and "--calibrate" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ctxkit.faithfulness.conflicts.detector"):
        assert ConflictDetector(judge=Uncalibrated(), threshold=0.9).threshold == 0.9
    assert "no calibration" not in caplog.text
