"""``ctxkit ingest`` / ``ctxkit query``: real files, a real index, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxkit.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "docs").mkdir()
    (root / "docs" / "fleming.md").write_text(
        "# Fleming\n\nAlexander Fleming discovered penicillin in 1928 at St Mary's Hospital.", encoding="utf-8"
    )
    (root / "docs" / "tower.txt").write_text("The Eiffel Tower in Paris was completed in 1889.", encoding="utf-8")
    (root / "docs" / "broken.txt").write_bytes(b"\xff\xfe not utf-8 \xfa")
    long_text = " ".join(f"Volcano fact number {i} says lava is hot." for i in range(60))
    (root / "beir.jsonl").write_text(
        json.dumps({"_id": "v1", "title": "Volcano", "text": long_text}) + "\n"
        + json.dumps({"_id": "p1", "title": "Python", "text": "Python is a programming language."}) + "\n",
        encoding="utf-8",
    )
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "Is lava hot in a volcano?"}) + "\n"
        + json.dumps({"_id": "q2", "text": "who discovered penicillin"}) + "\n",
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def cli_index(corpus: Path, minilm) -> Path:
    index = corpus / "index"
    cwd = os.getcwd()
    os.chdir(corpus)
    try:
        rc = main(["ingest", "docs", "beir.jsonl", "--index", str(index), "--device", "cpu", "--quiet"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return index


def test_ingest_skips_unreadable_files_and_is_idempotent(corpus: Path, cli_index: Path, capsys, monkeypatch):
    monkeypatch.chdir(corpus)
    rc = main(["ingest", "docs", "beir.jsonl", "--index", str(cli_index), "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "0 written, 4 unchanged" in out and "1 skipped" in out
    assert "broken.txt" in err and "UTF-8" in err
    assert "4 documents" in out


def test_query_prints_ranked_documents(cli_index: Path, capsys):
    rc = main(["query", "--index", str(cli_index), "--device", "cpu", "--k", "2", "who discovered penicillin?"])
    out, _ = capsys.readouterr()
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln[:4].strip().rstrip(".").isdigit()]
    assert len(lines) == 2
    assert "docs/fleming.md" in lines[0] and "hybrid=" in lines[0]


@pytest.mark.parametrize("retriever", ["dense", "bm25", "hybrid"])
def test_query_file_writes_a_document_level_run(cli_index: Path, corpus: Path, tmp_path: Path, retriever: str):
    run = tmp_path / "run.jsonl"
    rc = main([
        "query", "--index", str(cli_index), "--queries", str(corpus / "queries.jsonl"), "--k", "3",
        "--retriever", retriever, "--out", str(run), "--device", "cpu",
    ])
    assert rc == 0
    rows = [json.loads(line) for line in run.read_text().splitlines()]
    assert [r["query_id"] for r in rows] == ["q1", "q2"]
    for r in rows:
        ids = [x["id"] for x in r["results"]]
        assert len(ids) == len(set(ids)) and 1 <= len(ids) <= 3  # one entry per document
        assert all(isinstance(x["score"], float) for x in r["results"])
        scores = [x["score"] for x in r["results"]]
        assert scores == sorted(scores, reverse=True)
    assert rows[0]["results"][0]["id"] == "v1"  # many volcano chunks collapse into one document
    assert rows[1]["results"][0]["id"] == "docs/fleming.md"


def test_bad_inputs_give_one_line_errors(cli_index: Path, corpus: Path, tmp_path: Path, capsys):
    cases = [
        (["query", "--index", str(cli_index), "   "], "query is empty"),
        (["query", "--index", str(tmp_path / "nowhere"), "what?"], "no ctxkit index"),
        (["query", "--index", str(cli_index), "--queries", str(tmp_path / "none.jsonl")], "no such file"),
        (["query", "--index", str(cli_index), "--k", "0", "q"], "--k"),
        (["query", "--index", str(cli_index), "--where", "{bad", "q"], "--where"),
        (["ingest", str(tmp_path / "missing.md"), "--index", str(tmp_path / "i")], "no such file"),
    ]
    for argv, needle in cases:
        rc = main(argv)
        _, err = capsys.readouterr()
        assert rc == 2, argv
        assert needle in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["query", "--index", str(cli_index), "--retriever", "magic", "q"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_subprocess_missing_index_has_no_traceback(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "ctxkit.cli", "query", "--index", str(tmp_path / "none"), "hello"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("ctxkit query: error: no ctxkit index")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``ctxkit`` in a subprocess: its real logging and stderr, as a user sees them."""
    return subprocess.run([sys.executable, "-m", "ctxkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_ingest_with_nothing_to_index_fails_and_warns_once(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    res = _cli(["ingest", "empty", "--index", "i1", "--device", "cpu", "--quiet"], tmp_path)
    assert res.returncode == 2 and "nothing was indexed" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    res = _cli(["ingest", "bad", "--index", "i2", "--device", "cpu", "--quiet"], tmp_path)
    assert res.returncode == 2 and "nothing was indexed" in res.stderr
    assert res.stderr.count("latin1.txt") == 1, res.stderr  # each warning printed once


def test_ingest_duplicate_ids_error_or_keep_last(tmp_path: Path, minilm, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dup.jsonl").write_text(
        json.dumps({"_id": "x", "text": "The first record."}) + "\n"
        + json.dumps({"_id": "x", "text": "The second record, which must not vanish silently."}) + "\n",
        encoding="utf-8",
    )
    rc = main(["ingest", "dup.jsonl", "--index", "idx", "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and "'x' appears twice" in err and "--on-duplicate keep-last" in err
    assert "unchanged" not in out
    rc = main(["ingest", "dup.jsonl", "--index", "idx", "--device", "cpu", "--quiet", "--on-duplicate", "keep-last"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "1 duplicate ids (last kept)" in out and "0 unchanged" in out
    assert err.count("duplicate document id 'x'") == 1
    assert "holds 1 documents" in out
