"""``ctxkit caad-build`` / ``ctxkit caad-answer`` on the tiny random Llama (real CLI, real files)."""

from __future__ import annotations

import json

import pytest

from ctxkit.cli import main
from ctxkit.cli.caad import read_examples
from ctxkit.errors import InputError


def test_build_then_answer(tiny_llm_dir, tmp_path, capsys, minilm):
    ex = tmp_path / "ex.jsonl"
    ex.write_text("\n".join(json.dumps({"question": q, "answer": a}) for q, a in
                            [("who discovered penicillin", "fleming"), ("the fox", "jumps")]))
    out = tmp_path / "space"
    assert main(["caad-build", "--examples", str(ex), "--model", str(tiny_llm_dir), "--out", str(out),
                 "--storage", "topk", "--top-k", "8", "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["storage"] == "topk" and manifest["n_examples"] == 2 and manifest["model"] == str(tiny_llm_dir)
    assert main(["caad-answer", "who discovered penicillin", "--space", str(out), "--max-new-tokens", "3",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "plain:" in text and "CAAD :" in text and '"steps": 3' in text


def test_read_examples_formats(tmp_path):
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("Question,Best Answer\nWhy is the sky blue?,Rayleigh scattering\n")
    assert read_examples(csv_file) == [("Why is the sky blue?", "Rayleigh scattering")]
    js = tmp_path / "t.json"
    js.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    assert read_examples(js) == [("q", "a")]
    js.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(InputError, match="answer"):
        read_examples(js)
    with pytest.raises(InputError, match="does not exist"):
        read_examples(tmp_path / "nope.jsonl")
