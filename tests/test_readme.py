"""The README's two set-up commands are exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, flags=re.DOTALL)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert 'pip install "torch==2.13.0"' in cmds[0] and cmds[0].endswith("ctxkit quickstart")
    assert "pytest" in cmds[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [line.strip() for line in ci.splitlines()]
    for cmd in cmds:
        assert cmd in ci_lines, f"CI does not run the README command: {cmd}"


def test_readme_python_example_runs(tmp_path):
    """The README's "Using it" block runs as written (from a folder holding a copy of docs/)."""
    import os
    import shutil
    import subprocess
    import sys

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks, "the README has no python example"
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    res = subprocess.run(
        [sys.executable, "-c", blocks[0]], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "'hybrid':" in res.stdout and "StageRecord(stage='hybrid'" in res.stdout
