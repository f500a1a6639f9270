"""`ctxkit quickstart` (without the LLM step): cascade trace, steering and conflict records."""

from __future__ import annotations

import pytest

from ctxkit.cli import main


@pytest.mark.slow
def test_quickstart_shows_cascade_conflicts_and_caught_poison(capsys):
    assert main(["quickstart", "--no-llm"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # no progress bars (weight loading, hub downloads, encoder batches) in the tour's output
    for bar in ("it/s", "|█", "s/it", "0%|"):
        assert bar not in out and bar not in captured.err, bar
    assert "hybrid -> bi_encoder -> feedback_ranker -> rw_steering -> conflict_check -> arrange" in out
    # the batch's trace is printed once, not under each question
    assert out.count("trace: hybrid") == 1
    # the planted note contradicting the trusted embedder fact is reported as a conflict
    assert "CONFLICT [entity]" in out and "team-note-embedder.md" in out
    # both planted "uploads your documents" notes are caught by steering, and no chunk of the docs
    flagged = [line for line in out.splitlines() if "STEERING flagged" in line]
    assert any("forum-post-upload.md" in line for line in flagged)
    assert any("blog-leak.md" in line for line in flagged)
    assert all("/notes/" in line for line in flagged), flagged
    assert "recorded 'like'" in out


def test_quickstart_missing_docs_is_a_one_line_error(capsys, tmp_path):
    assert main(["quickstart", "--docs", str(tmp_path / "nope"), "--no-llm"]) == 2
    err = capsys.readouterr().err
    assert "docs folder" in err and "--docs" in err and "Traceback" not in err


def test_answer_text_is_complete_sentences_with_cited_passages():
    from ctxkit.cli.quickstart import cite, complete_sentences
    from ctxkit.types import Passage

    assert complete_sentences("It fuses them.  It is fast. And then it goes on and on and") == "It fuses them. It is fast."
    assert complete_sentences("One sentence only. Then a cut-off one") == "One sentence only."
    assert complete_sentences("Listen on 0.0.0.0 port 8080.\n\n1. Install") == "Listen on 0.0.0.0 port 8080."
    assert complete_sentences("no sentence end at all") == "no sentence end at all …"
    passages = [
        Passage(id="docs/a.md#0", text="Reciprocal rank fusion combines the dense and BM25 lists."),
        Passage(id="docs/b.md#3", text="The default embedder is all-MiniLM-L6-v2."),
    ]
    # the model's own citations, by id or by number, come first
    assert cite("It is MiniLM [docs/b.md#3].", passages) == ["docs/b.md#3"]
    assert cite("Fusion [1], MiniLM [2].", passages) == ["docs/a.md#0", "docs/b.md#3"]
    # else the passage holding most of the answer's words; none when no passage holds half of them
    assert cite("ctxkit combines dense and BM25 lists with reciprocal rank fusion.", passages) == ["docs/a.md#0"]
    assert cite("Bananas are yellow fruit grown in warm countries.", passages) == []
    # a lead-in with nothing after it is no answer (and cites nothing)
    from ctxkit.cli.quickstart import _show

    assert _show("plain:", "The answer is:\n", passages).strip() == "plain: (no answer)"
    assert "[docs/b.md#3]" in _show("plain:", "It uses all-MiniLM-L6-v2 by default.", passages)


@pytest.mark.slow
def test_answer_step_shows_plain_and_caad_side_by_side(capsys):
    """The tour's answer step with the real offline SmolLM2 (one question, short answers)."""
    from ctxkit.cli.quickstart import _answer, _quiet_progress
    from ctxkit.types import ContextState, Passage

    state = ContextState(
        query="Which embedding model does ctxkit use by default?",
        passages=[Passage(id="docs/getting-started.md#0",
                          text="ctxkit runs offline: the default embedder is all-MiniLM-L6-v2.")],
    )
    with _quiet_progress():  # as run_quickstart runs it
        _answer([state], max_new_tokens=24)
    captured = capsys.readouterr()
    out = captured.out
    lines = out.splitlines()
    plain = [ln for ln in lines if ln.strip().startswith("plain:")]
    caad = [ln for ln in lines if ln.strip().startswith("CAAD:")]
    assert len(plain) == 1 and len(caad) == 1, out
    assert "CAAD shifted the logits at" in out
    assert "it/s" not in out + captured.err
