"""`ctxkit quickstart` (without the LLM step): cascade trace, steering and conflict records."""

from __future__ import annotations

import pytest

from ctxkit.cli import main


@pytest.mark.slow
def test_quickstart_shows_cascade_conflicts_and_caught_poison(capsys):
    assert main(["quickstart", "--no-llm"]) == 0
    out = capsys.readouterr().out
    assert "hybrid -> bi_encoder -> feedback_ranker -> rw_steering -> conflict_check -> arrange" in out
    assert out.count("trace: hybrid") == 3
    # the planted note contradicting the trusted embedder fact is reported as a conflict
    assert "CONFLICT [entity]" in out and "team-note-embedder.md" in out
    # at least one of the two planted "uploads your documents" notes is caught by steering
    flagged = [line for line in out.splitlines() if "STEERING flagged" in line]
    assert any("forum-post-upload.md" in line or "blog-leak.md" in line for line in flagged)
    assert "recorded 'like'" in out


def test_quickstart_missing_docs_is_a_one_line_error(capsys, tmp_path):
    assert main(["quickstart", "--docs", str(tmp_path / "nope"), "--no-llm"]) == 2
    err = capsys.readouterr().err
    assert "docs folder" in err and "--docs" in err and "Traceback" not in err
