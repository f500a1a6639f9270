"""The documentation cannot rot: its Python blocks run, the site builds strictly, generated
pages match the code."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# A block preceded by this comment is not executed; each use must say why (keep them rare).
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+?)\)\s*-->\s*$")
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
HEAVY = ("TransformersGenerator", "ingest(", "get_embedder", "SmolLM")


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of ``page`` not marked to skip."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if SKIP.search(before):
            continue
        out.append((text[: m.start()].count("\n") + 2, m.group(1)))
    return out


def _hooks():
    spec = importlib.util.spec_from_file_location("ctxkit_docs_hooks", DOCS / "hooks" / "ctxkit_docs.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def docs_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a long context (the LlamaIndex prompts are long)."""
    import torch
    from conftest import build_tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("docs_llm")
    tok = build_tiny_tokenizer(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _param(page: Path):
    code = "".join(c for _, c in python_blocks(page))
    marks = [pytest.mark.slow] if any(h in code for h in HEAVY) else []
    return pytest.param(page, id=str(page.relative_to(DOCS)), marks=marks)


PAGES_WITH_CODE = [_param(p) for p in _pages() if python_blocks(p)]


def test_skip_markers_are_rare_and_justified():
    skips = []
    for page in _pages():
        for line in page.read_text(encoding="utf-8").splitlines():
            m = SKIP.search(line)
            if m:
                assert len(m.group(1).strip()) > 15, f"{page.name}: a skip needs a real reason: {line}"
                skips.append(page.name)
    assert len(skips) <= 2, f"too many skipped doc blocks: {skips}"


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_python_blocks_run(page: Path, tmp_path: Path, request: pytest.FixtureRequest):
    """All python blocks of a page run in order, in one fresh interpreter (like a reader would).

    The default LLM is pointed at a tiny random model (``CTXKIT_DEFAULT_LLM``): the blocks check
    the API, not answer quality, and SmolLM2 itself runs in the examples' smoke test.
    """
    parts = []
    for line, code in python_blocks(page):
        parts.append(f"# --- {page.name}, block at line {line}\n{code}")
    script = tmp_path / f"doc_{page.stem}.py"
    script.write_text("\n".join(parts), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if "TransformersGenerator" in script.read_text(encoding="utf-8"):
        env["CTXKIT_DEFAULT_LLM"] = str(request.getfixturevalue("docs_llm_dir"))
    res = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, f"{page.name} code failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *a: None)
    cfg = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)

    def walk(items):
        for item in items:
            for value in item.values() if isinstance(item, dict) else [item]:
                if isinstance(value, list):
                    yield from walk(value)
                else:
                    yield value

    nav = set(walk(cfg["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in _pages()}
    assert nav - pages == set(), f"nav entries without a page: {nav - pages}"
    assert pages - nav == set(), f"pages missing from the nav: {pages - nav}"
    theme = cfg["theme"]
    assert theme["font"] is False
    plugins = [next(iter(p)) if isinstance(p, dict) else p for p in cfg["plugins"]]
    assert not {"privacy", "social"} & set(plugins), "no plugins that fetch from the network"


def test_cli_reference_covers_every_subcommand():
    from ctxkit.cli import build_parser

    md = _hooks().cli_reference_markdown()
    parser = build_parser()
    names = [a for a in parser._subparsers._group_actions[0].choices]  # type: ignore[union-attr]
    assert names, "the CLI has no sub-commands"
    for name in names:
        assert f"## ctxkit {name}" in md
        assert f"usage: ctxkit {name}" in md
    assert "<!-- ctxkit:cli -->" in (DOCS / "cli.md").read_text(encoding="utf-8")


def test_getting_started_shows_the_readme_commands():
    md = _hooks().readme_setup_markdown()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    cmds = re.findall(r"```bash\n(.*?)```", setup, flags=re.DOTALL)
    assert len(cmds) == 2 and all(c in md for c in cmds)
    assert "<!-- ctxkit:readme-setup -->" in (DOCS / "getting-started.md").read_text(encoding="utf-8")


def test_benchmarks_page_includes_the_benchmarks_readme():
    md = _hooks().benchmarks_markdown()
    readme = ROOT / "benchmarks" / "README.md"
    if readme.is_file():
        sections = re.findall(r"^## (.+)$", readme.read_text(encoding="utf-8"), flags=re.MULTILINE)
        for s in sections:
            assert f"## {s}" in md
    assert "<!-- ctxkit:benchmarks -->" in (DOCS / "benchmarks.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        check=False,
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stderr[-6000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "usage: ctxkit" in cli
    api = (site / "api" / "core" / "index.html").read_text(encoding="utf-8")
    assert "Pipeline" in api and "ContextState" in api
    gs = (site / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert "ctxkit quickstart" in gs
