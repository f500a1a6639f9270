"""Every script in examples/ runs offline and prints what it promises (smoke test, runs in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# Text each example prints when it worked (examples not listed must exit 0 and print something).
MARKERS = {
    "quickstart.py": ["quickstart: ok", "hybrid="],
    "langchain_chain.py": ["langchain_chain: ok", "[conflict (entity)", "A: "],
    "llamaindex_query_engine.py": ["llamaindex_query_engine: ok", "conflicts=['date", "async answer: "],
    "serve_pipeline.py": ["serve_pipeline: ok", "new document found: ", "without the token: 401"],
}


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.py", "langchain_chain.py", "llamaindex_query_engine.py"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    res = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, f"{script.name} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    assert res.stdout.strip(), f"{script.name} printed nothing"
    for marker in MARKERS.get(script.name, []):
        assert marker in res.stdout, f"{script.name}: expected {marker!r} in its output:\n{res.stdout[-3000:]}"
