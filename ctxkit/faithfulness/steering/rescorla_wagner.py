"""Rescorla-Wagner model of how an LLM absorbs a mixed context, and its fit to observed curves.

Each context item is one learning trial. The query is a cue present on every trial; each item adds
the cue of its content type. On a trial every present cue ``i`` moves by

    dV_i = alpha_i * beta * (lambda - sum_{j present} V_j)

After the whole list, the associative strength of each content type predicts how much of it the
answer carries. :func:`predict_curves` averages over random item orders (the testbed shuffles
items) and reads out either each type's *share* of the content strength (``readout="share"``,
default) or its raw strength over lambda (``"strength"``). Observed curves (0..1 or 0..100) are
matched through an optional affine map per curve (``lo + (hi - lo) * readout``), since a real
model's consistency at ratio 0 is rarely 100.

Identifiability: predictions depend on ``alpha_i * beta`` only, and on lambda only through an
overall scale that the share readout removes; :func:`fit` therefore fixes ``beta = lambda = 1``
and fits the three learning rates (query, appropriate, inappropriate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..._lazy import require
from ...errors import InputError

__all__ = ["CURVES", "RWFit", "RWParams", "fit", "plot_fit", "predict_curves", "simulate"]

CURVES: tuple[str, str] = ("appropriate", "inappropriate")
Readout = Literal["share", "strength"]


def simulate(
    sequence: Sequence[str],
    alpha: Mapping[str, float],
    *,
    beta: float = 1.0,
    lam: float = 1.0,
    query_cue: str | None = "query",
) -> tuple[list[str], np.ndarray]:
    """Run the Rescorla-Wagner updates over a sequence of content types.

    Args:
        sequence: Content type of each item, in order (e.g. ``["appropriate", "inappropriate"]``).
        alpha: Salience of each cue (every content type in ``sequence`` and ``query_cue``).
        beta: Learning rate of the outcome.
        lam: Asymptote (maximum total associative strength).
        query_cue: Name of the always-present query cue; ``None`` for no query cue.

    Returns:
        ``(cues, history)``: cue names and an array of shape ``(len(sequence) + 1, len(cues))``
        with the strengths before the first trial and after each trial.

    Raises:
        InputError: a cue without an alpha, or alpha / beta outside [0, 1].
    """
    types = list(dict.fromkeys(sequence))
    cues = ([query_cue] if query_cue else []) + [t for t in types if t != query_cue]
    missing = [c for c in cues if c not in alpha]
    if missing:
        raise InputError(f"simulate: no alpha for cues {missing}; give one per cue")
    a = np.array([float(alpha[c]) for c in cues])
    if np.any(a < 0) or np.any(a > 1) or not 0 <= beta <= 1:
        raise InputError("simulate: alpha values and beta must be in [0, 1]")
    idx = {c: i for i, c in enumerate(cues)}
    v = np.zeros(len(cues))
    hist = [v.copy()]
    for t in sequence:
        present = np.zeros(len(cues), dtype=bool)
        present[idx[t]] = True
        if query_cue:
            present[0] = True
        err = lam - v[present].sum()
        v = v + present * a * beta * err
        hist.append(v.copy())
    return cues, np.stack(hist)


@dataclass(frozen=True)
class RWParams:
    """Learning rates of the query cue and the two content cues (``beta``, ``lam`` usually 1)."""

    alpha_query: float = 0.05
    alpha_appropriate: float = 0.2
    alpha_inappropriate: float = 0.2
    beta: float = 1.0
    lam: float = 1.0

    def as_array(self) -> np.ndarray:
        """``[alpha_query, alpha_appropriate, alpha_inappropriate]``."""
        return np.array([self.alpha_query, self.alpha_appropriate, self.alpha_inappropriate])


def _orders(ratio: float, n_items: int, n_orders: int, rng: np.random.Generator) -> np.ndarray:
    n_bad = int(ratio * n_items + 0.5 + 1e-9)
    base = np.zeros(n_items, dtype=bool)
    base[:n_bad] = True
    return np.stack([rng.permutation(base) for _ in range(n_orders)])


def predict_curves(
    params: RWParams,
    ratios: Sequence[float],
    *,
    n_items: int = 20,
    n_orders: int = 64,
    seed: int = 0,
    readout: Readout = "share",
) -> dict[str, np.ndarray]:
    """Predicted incorporation (0..1) of each content type at each contamination ratio.

    Averages final strengths over ``n_orders`` random item orders (fixed by ``seed``, so the
    prediction is a smooth deterministic function of the parameters).
    """
    rng = np.random.default_rng(seed)
    a = params.as_array() * params.beta
    out = {c: np.zeros(len(ratios)) for c in CURVES}
    for k, r in enumerate(ratios):
        seq = _orders(float(r), n_items, n_orders, rng)  # (orders, items), True = inappropriate
        vq = np.zeros(n_orders)
        vg = np.zeros(n_orders)
        vb = np.zeros(n_orders)
        for t in range(n_items):
            bad = seq[:, t]
            err = params.lam - vq - np.where(bad, vb, vg)
            vq = vq + a[0] * err
            vg = vg + np.where(bad, 0.0, a[1] * err)
            vb = vb + np.where(bad, a[2] * err, 0.0)
        if readout == "share":
            tot = vg + vb
            share_b = np.divide(vb, tot, out=np.zeros_like(tot), where=tot > 0)
            out["inappropriate"][k] = share_b.mean()
            out["appropriate"][k] = 1.0 - share_b.mean()
        else:
            out["inappropriate"][k] = (vb / params.lam).mean()
            out["appropriate"][k] = (vg / params.lam).mean()
    return out


@dataclass
class RWFit:
    """Result of :func:`fit`.

    Attributes:
        params: Fitted learning rates.
        mapping: Per curve ``(lo, hi)`` of the affine readout map (in observed units / scale).
        ratios: The ratios of the observations.
        observed: Observed curves (in the caller's units).
        fitted: Fitted curves (same units).
        r2: Coefficient of determination over all points, and per curve (``r2_<curve>``).
        rmse: Root mean squared error over all points (same units).
        scale: 100 when observations were on a 0..100 scale, else 1.
    """

    params: RWParams
    mapping: dict[str, tuple[float, float]]
    ratios: list[float]
    observed: dict[str, list[float]]
    fitted: dict[str, list[float]]
    r2: float
    rmse: float
    scale: float
    n_items: int
    readout: str
    r2_per_curve: dict[str, float] = field(default_factory=dict)
    success: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        p = self.params
        return {
            "params": {
                "alpha_query": p.alpha_query,
                "alpha_appropriate": p.alpha_appropriate,
                "alpha_inappropriate": p.alpha_inappropriate,
                "beta": p.beta,
                "lambda": p.lam,
            },
            "mapping": {k: list(v) for k, v in self.mapping.items()},
            "ratios": self.ratios,
            "observed": self.observed,
            "fitted": self.fitted,
            "r2": self.r2,
            "r2_per_curve": self.r2_per_curve,
            "rmse": self.rmse,
            "scale": self.scale,
            "n_items": self.n_items,
            "readout": self.readout,
            "success": self.success,
        }

    def plot(self, path: str | Path, title: str | None = None, labels: Mapping[str, str] | None = None) -> Path:
        """Save observed-vs-fitted curves as a PNG; see :func:`plot_fit`."""
        return plot_fit(self, path, title=title, labels=labels)


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res < 1e-12 else 0.0)


def fit(
    ratios: Sequence[float],
    observed: Mapping[str, Sequence[float]],
    *,
    n_items: int = 20,
    fit_mapping: bool = True,
    readout: Readout = "share",
    n_orders: int = 64,
    seed: int = 0,
    init: RWParams | None = None,
) -> RWFit:
    """Fit the learning rates (and readout maps) to observed incorporation curves.

    Args:
        ratios: Contamination ratios of the observations.
        observed: ``{"appropriate": [...], "inappropriate": [...]}`` (one or both): how much of
            each content type the answers carry at each ratio, e.g. consistency and
            ``100 - cleanliness``; 0..1 or 0..100 (detected).
        n_items: Items per context list (N) of the testbed the curves came from.
        fit_mapping: Also fit an affine ``lo + (hi - lo) * readout`` per curve; otherwise the
            readout is compared directly.
        readout: ``"share"`` or ``"strength"`` (see :func:`predict_curves`).
        n_orders: Random item orders averaged per prediction.
        seed: Seed of those orders.
        init: Starting learning rates.

    Raises:
        InputError: no known curve, lengths that do not match ``ratios``, or fewer points than
            parameters.
    """
    opt = require("scipy.optimize")
    curves = [c for c in CURVES if c in observed]
    unknown = set(observed) - set(CURVES)
    if not curves or unknown:
        raise InputError(f"fit: observed needs keys among {list(CURVES)}; got {sorted(observed)}")
    r = np.asarray(ratios, dtype=float)
    obs = {c: np.asarray(observed[c], dtype=float) for c in curves}
    for c in curves:
        if obs[c].shape != r.shape:
            raise InputError(f"fit: curve {c!r} has {obs[c].size} points for {r.size} ratios")
    scale = 100.0 if max(float(np.nanmax(np.abs(v))) for v in obs.values()) > 1.5 else 1.0
    y = {c: obs[c] / scale for c in curves}
    n_params = 3 + (2 * len(curves) if fit_mapping else 0)
    if r.size * len(curves) < n_params:
        raise InputError(f"fit: {r.size * len(curves)} points cannot fit {n_params} parameters")
    init = init or RWParams()

    def unpack(x: np.ndarray) -> tuple[RWParams, dict[str, tuple[float, float]]]:
        p = RWParams(float(x[0]), float(x[1]), float(x[2]))
        mp: dict[str, tuple[float, float]] = {}
        for i, c in enumerate(curves):
            mp[c] = (float(x[3 + 2 * i]), float(x[4 + 2 * i])) if fit_mapping else (0.0, 1.0)
        return p, mp

    def model(x: np.ndarray) -> dict[str, np.ndarray]:
        p, mp = unpack(x)
        pred = predict_curves(p, r, n_items=n_items, n_orders=n_orders, seed=seed, readout=readout)
        return {c: mp[c][0] + (mp[c][1] - mp[c][0]) * pred[c] for c in curves}

    def residuals(x: np.ndarray) -> np.ndarray:
        m = model(x)
        return np.concatenate([m[c] - y[c] for c in curves])

    x0 = list(init.as_array())
    lo_b, hi_b = [1e-4] * 3, [1.0] * 3
    if fit_mapping:
        for c in curves:
            x0 += [float(np.clip(y[c].min(), 0, 1)), float(np.clip(y[c].max(), 0, 1))]
            lo_b += [-0.5, -0.5]
            hi_b += [1.5, 1.5]
    x0 = np.clip(np.asarray(x0), np.asarray(lo_b) + 1e-6, np.asarray(hi_b) - 1e-6)
    # A few starts: the query/content trade-off has shallow valleys.
    best = None
    for start in (x0, np.r_[[0.01, 0.3, 0.3], x0[3:]], np.r_[[0.2, 0.1, 0.1], x0[3:]]):
        res = opt.least_squares(residuals, start, bounds=(lo_b, hi_b), diff_step=1e-3, max_nfev=400)
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    params, mapping = unpack(best.x)
    fitted = model(best.x)
    all_y = np.concatenate([y[c] for c in curves])
    all_f = np.concatenate([fitted[c] for c in curves])
    return RWFit(
        params=params,
        mapping=mapping,
        ratios=[float(v) for v in r],
        observed={c: [float(v) for v in obs[c]] for c in curves},
        fitted={c: [float(v) * scale for v in fitted[c]] for c in curves},
        r2=_r2(all_y, all_f),
        rmse=float(np.sqrt(np.mean((all_y - all_f) ** 2))) * scale,
        scale=scale,
        n_items=n_items,
        readout=readout,
        r2_per_curve={c: _r2(y[c], fitted[c]) for c in curves},
        success=bool(best.success),
    )


def plot_fit(
    result: RWFit,
    path: str | Path,
    *,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Save a PNG with observed points and fitted Rescorla-Wagner curves.

    Args:
        result: A fit.
        path: Output PNG path (parent folders are created).
        title: Figure title.
        labels: Display names of the curves (e.g. ``{"appropriate": "consistency"}``).
    """
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = dict(labels or {})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"appropriate": "tab:blue", "inappropriate": "tab:red"}
    x = np.asarray(result.ratios) * 100
    dense = np.linspace(0, max(result.ratios), 60)
    pred = predict_curves(result.params, dense, n_items=result.n_items, readout=result.readout)  # type: ignore[arg-type]
    for c in result.observed:
        name = labels.get(c, c)
        lo, hi = result.mapping[c]
        ax.plot(x, result.observed[c], "o", color=colors.get(c), label=f"{name} (observed)")
        ax.plot(dense * 100, (lo + (hi - lo) * pred[c]) * result.scale, "-", color=colors.get(c),
                label=f"{name} (RW fit)")
    ax.set_xlabel("contamination ratio (% inappropriate items)")
    ax.set_ylabel("score" + (" (0-100)" if result.scale == 100 else ""))
    ax.set_title(title or f"Rescorla-Wagner fit (R² = {result.r2:.3f}, RMSE = {result.rmse:.3g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
