"""Helpers shared by the benchmark scripts: paths, metrics, result files, machine description.

The scripts run as ``python benchmarks/<name>.py``: Python puts the script's folder on
``sys.path``, so ``import _common`` works without path edits, and ``import ctxkit`` finds the
installed package (``pip install -e .``).

Data: the benchmark data sets live outside the repository, in ``../shared/data`` next to the
repository root. Set ``CTXKIT_BENCH_DATA`` to use another folder (each script's ``--data`` flag
still wins). A script whose data is absent prints :func:`data_missing`'s message and exits
without running.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "DATA_ENV",
    "REPO_ROOT",
    "RESULTS_DIR",
    "cpu_info",
    "data_missing",
    "data_path",
    "data_root",
    "gpu_memory",
    "machine",
    "ndcg_at",
    "prf",
    "recall_at",
    "write_json",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DATA_ENV = "CTXKIT_BENCH_DATA"


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def data_root() -> Path:
    """The shared data folder: ``$CTXKIT_BENCH_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A path inside :func:`data_root` (``data_path("faithfulrag")``)."""
    return data_root().joinpath(*parts)


def data_missing(script: str, path: str | Path, *, needs: str = "", flag: str = "--data") -> None:
    """Print the message of a benchmark that skips because its data is absent (to stderr)."""
    what = f" (needs {needs})" if needs else ""
    print(f"{script}: data not found at {path}{what}; pass {flag} PATH or set {DATA_ENV}. Skipping.",
          file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def ndcg_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """trec_eval-style nDCG@k with linear gains (gain = grade), log2 discount, ideal from all judged grades.

    For exponential gains pass ``{d: 2**g - 1 for d, g in qrels.items()}``.
    """
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100, min_grade: int = 1) -> float:
    """Share of the documents with grade >= ``min_grade`` found in the top ``k`` (NaN if none)."""
    rel = {d for d, g in qrels.items() if g >= min_grade}
    if not rel:
        return float("nan")
    return len(rel & set(ranked[:k])) / len(rel)


def prf(y: Any, pred: Any) -> dict[str, float]:
    """Item-level precision, recall, F1 and false-positive rate of binary predictions (rounded to 4)."""
    import numpy as np

    y, pred = np.asarray(y), np.asarray(pred)
    tp = int(np.sum((y == 1) & (pred == 1)))
    fp = int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    tn = int(np.sum((y == 0) & (pred == 0)))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4),
            "fpr": round(fp / (fp + tn), 4) if fp + tn else 0.0, "n_items": len(y)}


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
def gpu_memory() -> dict[str, Any] | None:
    """Peak GPU memory of this process so far (``torch.cuda.max_memory_allocated``), or ``None``
    when CUDA is not in use (torch not imported, no GPU, or CUDA never initialised)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    dev = torch.cuda.current_device()
    peak = int(torch.cuda.max_memory_allocated(dev))
    return {"device": torch.cuda.get_device_name(dev), "peak_allocated_bytes": peak,
            "peak_allocated_gib": round(peak / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / 2**30, 3)}


def write_json(path: str | Path, data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON (UTF-8, trailing newline), creating the parent folder.

    A result dict written by a process that used a GPU also gets ``"gpu_memory"``: the peak
    allocated (and reserved) GPU memory of the run so far (see :func:`gpu_memory`).
    """
    mem = gpu_memory() if isinstance(data, dict) else None
    if mem is not None:
        data = {**data, "gpu_memory": mem}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# machine description
# ---------------------------------------------------------------------------------------------
# the CPU flags that decide which torch / oneDNN kernels run (vector width, int8 / bf16 / fp16 units)
_FLAGS = re.compile(r"^(sse4_2|fma|f16c|avx\w*|amx\w*|\w*vnni\w*|\w*bf16\w*|\w*fp16\w*)$")


def cpu_info() -> dict[str, Any]:
    """CPU model and its SIMD / matrix flags, from ``lscpu`` or ``/proc/cpuinfo``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model, flags = fields.get("Model name", ""), fields.get("Flags", "").split()
    if not (model and flags):
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if not model and key.strip() == "model name":
                model = val.strip()
            elif not flags and key.strip() == "flags":
                flags = val.split()
    return {"cpu": model or platform.processor() or platform.machine(),
            "cpu_flags": sorted({f for f in flags if _FLAGS.match(f)}),
            "cpu_count": os.cpu_count()}


def machine() -> dict[str, Any]:
    """Where a benchmark ran: OS, Python, CPU model and flags, torch version and threads, GPU name.

    Call it after the script has set its torch thread count, so ``torch_threads`` is the one used.
    """
    out: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), **cpu_info()}
    try:
        import torch
    except ImportError:
        return out
    out["torch"] = torch.__version__
    out["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cuda"] = torch.version.cuda
    return out


def auc(pos: Any, neg: Any) -> float:
    """Probability that a positive item scores above a negative one (ties count half; NaN when
    either side is empty): the Mann-Whitney statistic from average ranks."""
    import numpy as np

    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if not len(pos) or not len(neg):
        return float("nan")
    allv = np.concatenate([pos, neg])
    ranks = allv.argsort().argsort().astype(float) + 1
    for v in np.unique(allv):  # average ranks of ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
