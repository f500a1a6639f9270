"""MkDocs hooks: pages generated from the code and the repo so they cannot drift.

- ``cli.md``: ``<!-- ctxkit:cli -->`` becomes the help of every ``ctxkit`` sub-command, taken
  from the real argparse parser (:func:`ctxkit.cli.build_parser`).
- ``getting-started.md``: ``<!-- ctxkit:readme-setup -->`` becomes the README's "Set up" section
  (the two commands CI runs verbatim).
- ``benchmarks.md``: ``<!-- ctxkit:benchmarks -->`` becomes ``benchmarks/README.md``; plots in
  ``benchmarks/results/`` are copied into the site.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLI_MARKER = "<!-- ctxkit:cli -->"
SETUP_MARKER = "<!-- ctxkit:readme-setup -->"
BENCH_MARKER = "<!-- ctxkit:benchmarks -->"
_ASSETS = (".png", ".svg", ".jpg", ".jpeg")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, sub, helps.get(name, "")))
    return out


def cli_reference_markdown() -> str:
    """Markdown help of ``ctxkit`` and every sub-command (recursively), from the real parser."""
    from ctxkit.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        parts = ["## ctxkit", "", "```text", parser.format_help().rstrip(), "```", ""]

        def walk(p: argparse.ArgumentParser, prefix: str, level: int) -> None:
            for name, sub, summary in _subcommands(p):
                full = f"{prefix} {name}"
                parts.extend([f"{'#' * level} {full}", ""])
                if summary:
                    parts.extend([summary[0].upper() + summary[1:] + ".", ""])
                parts.extend(["```text", sub.format_help().rstrip(), "```", ""])
                walk(sub, full, min(level + 1, 4))

        walk(parser, "ctxkit", 2)
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def readme_setup_markdown() -> str:
    """The README's "Set up" section body (without its heading)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if "## Set up" not in text:
        raise RuntimeError("README.md has no '## Set up' section for docs/getting-started.md")
    body = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return body.split("\n", 1)[1].strip() + "\n"


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def benchmarks_markdown() -> str:
    """``benchmarks/README.md`` for the site: its title dropped, local links made site-safe."""
    path = ROOT / "benchmarks" / "README.md"
    if not path.is_file():
        return "No benchmark results yet.\n"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"\A\s*# [^\n]*\n", "", text)

    def fix(m: re.Match[str]) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return m.group(0)
        rel = os.path.normpath(target)
        if bang and rel.lower().endswith(_ASSETS) and (ROOT / "benchmarks" / rel).is_file():
            return f"![{label}](benchmarks/{rel})"
        # scripts and JSON files live in the repository, not on the site
        shown = label if label and label != target else ""
        return f"{shown} (`benchmarks/{rel}`)" if shown else f"`benchmarks/{rel}`"

    return _LINK.sub(fix, text)


def on_files(files: Any, config: Any) -> Any:
    """Copy benchmark plots into the site next to the benchmarks page."""
    from mkdocs.structure.files import File

    results = ROOT / "benchmarks"
    for p in sorted(results.rglob("*")):
        if p.suffix.lower() in _ASSETS and p.is_file():
            uri = "benchmarks/" + p.relative_to(results).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(p)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the generated sections."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference_markdown())
    if SETUP_MARKER in markdown:
        markdown = markdown.replace(SETUP_MARKER, readme_setup_markdown())
    if BENCH_MARKER in markdown:
        markdown = markdown.replace(BENCH_MARKER, benchmarks_markdown())
    return markdown
