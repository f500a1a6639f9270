"""benchmarks/faithfulness.py mechanics: metrics, checkpoint/resume, context cap (tiny LLM, own data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def harness(bench_module):
    return bench_module("faithfulness")


def _rec(pred: str, answer: str = "Spain", golden: str | None = "France", jf: bool = False) -> dict:
    preds = {m: pred for m in ("full_context", "faithful_direct", "faithful_cot", "faithful_scheduled_cot")}
    return {"set": "s", "id": pred, "answer": answer, "golden_answer": golden, "context_truncated": False,
            "gold_in_context": True, "pred": preds, "seconds": {"full_context": 2.0},
            "json_failed": {"faithful_cot": jf, "faithful_scheduled_cot": False}}


def test_summarise_metrics(harness):
    recs = [_rec("Spain."), _rec("in France, of course", jf=True), _rec(""), _rec("the spain region")]
    out = harness.summarise(recs)
    fc = out["full_context"]
    assert out["n"] == 4
    assert fc["em"] == 0.25 and fc["accuracy"] == 0.5  # "Spain." exact; "the spain region" contains it
    assert fc["empty_rate"] == 0.25 and fc["memorisation"] == 0.25 and fc["unparsable_rate"] is None
    assert out["faithful_cot"]["unparsable_rate"] == 0.25 and out["faithful_scheduled_cot"]["unparsable_rate"] == 0.0
    assert fc["seconds_per_item"] == 2.0
    # the same answer in both files is not a memorisation case
    assert "memorisation" not in harness.summarise([_rec("Spain", golden="Spain")])["full_context"]


def test_checkpoint_ignores_a_line_cut_by_a_kill(harness, tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"config": {"n": 2}}) + "\n" + json.dumps(_rec("a")) + "\n" + '{"set": "s", "id')
    header, recs = harness.read_checkpoint(p)
    assert header == {"n": 2} and [r["id"] for r in recs] == ["a"]


def _data(folder: Path) -> Path:
    folder.mkdir()
    long = " ".join(f"Filler sentence number {i} about nothing in particular." for i in range(12))
    rows = [
        {"id": 1, "question": "In what country is Normandy?", "choices": [], "answer": " Spain ",
         "context": f"Normandy is a region in Spain. {long}"},
        {"id": 2, "question": "Who wrote Hamlet?", "choices": [], "answer": "Marlowe ",
         "context": "Hamlet was written by Marlowe."},
        {"id": 3, "question": "What is the capital of Italy?", "choices": [], "answer": "Milan",
         "context": "The capital of Italy is Milan."},
    ]
    golden = [dict(r, answer={1: "France", 2: "Shakespeare", 3: "Rome"}[r["id"]]) for r in rows]
    mc = [dict(r, choices=[" Spain", "I don't know "], answer="Spain") for r in rows]
    for name, content in {
        "faitheval_counterfactual.json": rows, "squad_kre_negative.json": rows, "squad_kre_golden.json": golden,
        "musique_kre_negative.json": rows, "musique_kre_golden.json": golden, "realtimeqa_2022_nota.json": mc,
    }.items():
        (folder / name).write_text(json.dumps(content))
    return folder


def test_run_resume_and_report(harness, tiny_llm_dir, minilm, tmp_path, monkeypatch, capsys, one_torch_thread):
    data = _data(tmp_path / "data")
    out = tmp_path / "res.json"
    args = ["faithfulness.py", "--model", str(tiny_llm_dir), "--n", "2", "--device", "cpu", "--batch-size", "4",
            "--context-tokens", "64", "--max-input-tokens", "500", "--facts-tokens", "4", "--answer-tokens", "3", "--cot-tokens", "4",
            "--data", str(data), "--out", str(out)]
    monkeypatch.setattr("sys.argv", args)
    assert harness.main() == 0
    res = json.loads(out.read_text())
    ckpt = out.with_suffix(".items.jsonl")
    lines = ckpt.read_text().splitlines()
    assert len(lines) == 1 + 4 * 2  # header + 2 items x 4 sets
    for name in harness.SETS:
        assert res[name]["n"] == 2 and res[name]["planned"] == 2 and res[name]["complete"] is True
        for m in harness.METHODS:
            assert 0.0 <= res[name][m]["accuracy"] <= 1.0
    assert "memorisation" in res["squad_neg"]["full_context"] and "memorisation" not in res["faitheval"]["full_context"]
    recs = [json.loads(x) for x in lines[1:]]
    assert all(r["answer"] == r["answer"].strip() for r in recs)
    # only item 1's long context is cut to 64 tokens
    assert all(r["context_truncated"] == (r["id"] == "1") for r in recs)

    # same command again: everything is already in the checkpoint
    assert harness.main() == 0
    assert ckpt.read_text().splitlines() == lines
    assert "resuming: 8 items" in capsys.readouterr().out
    # other settings: refused, not mixed
    monkeypatch.setattr("sys.argv", [*args, "--context-tokens", "32"])
    assert harness.main() == 2
    assert "--fresh" in capsys.readouterr().out
    # --report summarises the checkpoint only
    rep = tmp_path / "rep.json"
    monkeypatch.setattr("sys.argv", ["faithfulness.py", "--report", "--checkpoint", str(ckpt), "--out", str(rep)])
    assert harness.main() == 0
    assert json.loads(rep.read_text())["squad_neg"]["full_context"] == res["squad_neg"]["full_context"]


def test_speed_mode(harness, tiny_llm_dir, minilm, tmp_path, monkeypatch, one_torch_thread):
    data = _data(tmp_path / "data")
    out = tmp_path / "speed.json"
    monkeypatch.setattr("sys.argv", [
        "faithfulness.py", "--model", str(tiny_llm_dir), "--speed", "--n", "3", "--batch-size", "3", "--device", "cpu",
        "--max-input-tokens", "500", "--facts-tokens", "3", "--answer-tokens", "3", "--data", str(data), "--out", str(out)])
    assert harness.main() == 0
    sp = json.loads(out.read_text())["speed"]
    assert sp["n"] == 3 and sp["batch_size"] == 3
    assert sp["batched_items_per_s"] > 0 and sp["one_at_a_time_items_per_s"] > 0 and sp["speedup"] > 0
    # batching must not change a single answer (greedy decoding, left padding, row prefill)
    assert len(sp["answers"]) == 3 and any(sp["answers"])
    assert sp["answers"] == sp["one_at_a_time_answers"] and sp["same_answers_as_one_at_a_time"] == 3
    assert not out.with_suffix(".items.jsonl").exists()  # no checkpoint in speed mode
