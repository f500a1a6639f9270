"""Build hook (the project's metadata is in pyproject.toml).

The wheel ships ctxkit's documentation pages as the corpus of ``ctxkit quickstart``: ``build_py``
copies them from ``docs/`` (their only source) into ``ctxkit/cli/tour_docs/`` of the build, with
the rules in ``ctxkit/cli/tour_corpus.py``. An editable install reads ``docs/`` in place.
"""

from __future__ import annotations

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TOUR = runpy.run_path(str(ROOT / "ctxkit" / "cli" / "tour_corpus.py"))


class BuildPyWithTour(build_py):
    """``build_py`` plus the tour's pages under ``ctxkit/cli/tour_docs/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's docs/ is found directly
        target = Path(self.build_lib) / "ctxkit" / "cli" / TOUR["TOUR_DIR_NAME"]
        copied = TOUR["copy_tour"](ROOT / "docs", target)
        self.announce(f"copied {len(copied)} documentation pages to {target}", level=2)


setup(cmdclass={"build_py": BuildPyWithTour})
