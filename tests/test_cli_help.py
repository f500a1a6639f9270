"""Every ``ctxkit`` sub-command and option says what it does in ``--help``."""

from __future__ import annotations

import argparse

from ctxkit.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("ctxkit",)):
    """Yield (command path, parser, help of the sub-command) for the parser and every sub-parser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_subcommand_has_help():
    missing = []
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                missing += [f"{' '.join(path)} {name}" for name in action.choices if not (helps.get(name) or "").strip()]
    assert not missing, f"sub-commands without help: {missing}"


def test_every_option_and_argument_has_help():
    missing = []
    n = 0
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            n += 1
            if action.help == argparse.SUPPRESS or not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert n > 50  # the walk reached the sub-commands
    assert not missing, f"options without help: {missing}"
