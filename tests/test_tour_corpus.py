"""The quickstart tour's corpus ships in the wheel: built from docs/, found without the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ctxkit.cli.tour_corpus import TOUR_SUFFIXES, find_tour_docs, tour_files

ROOT = Path(__file__).resolve().parents[1]


def test_tour_ships_what_ingest_reads():
    from ctxkit.retrievers.store.loaders import SUPPORTED_SUFFIXES

    assert TOUR_SUFFIXES == SUPPORTED_SUFFIXES
    # in a checkout (or an editable install) the tour reads docs/ itself
    assert find_tour_docs() == ROOT / "docs"
    assert Path("index.md") in tour_files(ROOT / "docs")


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source tree, unpacked as pip would install it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ctxkit", "docs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    [wheel] = list((tmp / "dist").glob("ctxkit-*.whl"))
    site = tmp / "site-packages"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def test_wheel_holds_the_docs_pages_unchanged(installed_wheel: Path):
    shipped = installed_wheel / "ctxkit" / "cli" / "tour_docs"
    assert tour_files(shipped) == tour_files(ROOT / "docs")
    for rel in tour_files(ROOT / "docs"):
        assert (shipped / rel).read_bytes() == (ROOT / "docs" / rel).read_bytes(), rel


def test_installed_quickstart_finds_its_corpus_outside_the_checkout(installed_wheel: Path, tmp_path: Path):
    """What `pip install ctxkit-*.whl` gives: no docs/ beside site-packages; the tour still finds
    its pages (it used to look for site-packages/docs and stop)."""
    assert not (installed_wheel / "docs").exists()
    code = ("import ctxkit, ctxkit.cli.quickstart as q; print(ctxkit.__file__); print(q._find_docs(None))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         check=False, env={**os.environ, "PYTHONPATH": str(installed_wheel)})
    assert res.returncode == 0, res.stderr[-2000:]
    module, docs = res.stdout.split()
    assert Path(module).is_relative_to(installed_wheel)  # the unpacked wheel, not the checkout
    assert Path(docs) == installed_wheel / "ctxkit" / "cli" / "tour_docs"
