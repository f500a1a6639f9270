"""A static window key for CAAD: a model2vec distillation of the packaged all-MiniLM-L6-v2.

MiniLM runs a 6-layer transformer on the decoding windows at every step; a static key replaces it
by a lookup table (one vector per MiniLM token, mean-pooled over the window and normalised), which
costs well under a millisecond per step. The table is distilled offline from the local MiniLM
with `model2vec <https://github.com/MinishLab/model2vec>`_ (each vocabulary token is embedded by
MiniLM, the vectors are reduced by PCA and weighted by token rank with SIF), and saved as a local
sentence-transformers folder (a ``StaticEmbedding`` module) under the ctxkit cache.

The distillation is deterministic (PCA by eigendecomposition, no sampling); the folder's name
carries a hash of its configuration, and ``ctxkit_window_key.json`` inside it records the
configuration, the source model and a fingerprint of the table, which a grounding space built with
the key pins in its manifest.

Build it once (a few minutes on a laptop CPU; it is also built on first use)::

    pip install 'ctxkit[caad-static]'
    python -m ctxkit.faithfulness.decoding.static_key            # prints the folder
    python -m ctxkit.faithfulness.decoding.static_key --pca-dims 128 --out ./my-key

and use it with ``GroundingSpace.build(..., embedder="static")`` (or the printed path).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError, MissingDependencyError

__all__ = [
    "KEY_FILE",
    "STATIC_KEY_NAMES",
    "StaticKeyConfig",
    "build_static_key",
    "static_key_cache_dir",
    "static_key_path",
]

log = logging.getLogger(__name__)

KEY_FILE = "ctxkit_window_key.json"
"""The description of a static key inside its folder (name, configuration, fingerprint)."""
STATIC_KEY_NAMES = ("static", "minilm-static")
"""Names that select the default static key (built on first use)."""
_INSTALL = "pip install 'ctxkit[caad-static]'"


@dataclass(frozen=True)
class StaticKeyConfig:
    """How a static key is distilled (all of it is recorded with the key).

    Attributes:
        source: The sentence-transformers model distilled (``"default"``: the packaged
            all-MiniLM-L6-v2, resolved offline by :func:`ctxkit.models.resolve_model`).
        pca_dims: Dimensions kept by the PCA (model2vec's default: 256).
        sif_coefficient: SIF weighting of tokens by rank (model2vec's default: 1e-4).
        seed: Seeds torch and numpy before distilling (the procedure itself is deterministic).
    """

    source: str = "default"
    pca_dims: int = 256
    sif_coefficient: float = 1e-4
    seed: int = 0

    @property
    def name(self) -> str:
        """The key's name, recorded in the manifest of every space built with it."""
        src = "all-MiniLM-L6-v2" if self.source == "default" else Path(self.source).name or self.source
        return f"ctxkit-static:{src}:pca{self.pca_dims}:sif{self.sif_coefficient:g}"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def static_key_cache_dir() -> Path:
    """``$CTXKIT_CACHE/window_keys`` or ``~/.cache/ctxkit/window_keys``."""
    root = os.environ.get("CTXKIT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ctxkit"
    return base / "window_keys"


def _cache_path(cfg: StaticKeyConfig) -> Path:
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in cfg.name.replace("ctxkit-static:", ""))
    return static_key_cache_dir() / f"{slug}-{cfg.digest()}"


def static_key_path(config: StaticKeyConfig | None = None, *, build: bool = True) -> Path:
    """The folder of the static key for ``config`` in the cache; built there first if missing.

    Raises:
        MissingDependencyError: the key is not built yet and model2vec is not installed.
    """
    cfg = config or StaticKeyConfig()
    path = _cache_path(cfg)
    if (path / KEY_FILE).is_file():
        return path
    if not build:
        raise ConfigError(f"the static window key {cfg.name!r} is not built yet ({path})")
    log.warning("building the CAAD static window key %s from %s (once; a few minutes on a CPU) into %s",
                cfg.name, cfg.source, path)
    return build_static_key(cfg, path)


def _require_model2vec() -> Any:
    try:
        from model2vec.distill import distill_from_model
    except ImportError as exc:
        raise MissingDependencyError(
            f"the CAAD static window key is distilled with model2vec, which is not installed ({exc}). "
            f"Install it with: {_INSTALL}  (or use embedder='minilm')"
        ) from exc
    return distill_from_model


def _fingerprint(weights: Any) -> str:
    import numpy as np

    arr = np.ascontiguousarray(np.asarray(weights, dtype=np.float32))
    return "sha256:" + hashlib.sha256(arr.tobytes()).hexdigest()[:32]


def build_static_key(config: StaticKeyConfig | None = None, out: str | Path | None = None,
                     *, device: str = "cpu", static_model: Any = None) -> Path:
    """Distil ``config.source`` with model2vec and save it as a sentence-transformers folder.

    Nothing is downloaded: the source is resolved to local files (the packaged MiniLM by default)
    and loaded from there.

    Args:
        config: The distillation settings (default: :class:`StaticKeyConfig`).
        out: Folder to write (default: the cache folder :func:`static_key_path` uses). Replaced
            atomically when complete.
        device: Where MiniLM embeds the vocabulary.
        static_model: A ``model2vec.StaticModel`` already distilled with ``config`` (skips the
            distillation; for tests and for re-packaging).

    Returns:
        The folder.

    Raises:
        MissingDependencyError: model2vec is not installed.
    """
    cfg = config or StaticKeyConfig()
    if not isinstance(cfg.pca_dims, int) or cfg.pca_dims < 2:
        raise ConfigError(f"static key: pca_dims must be an int >= 2, got {cfg.pca_dims!r}")
    from ..._lazy import require

    distill_from_model = _require_model2vec() if static_model is None else None
    torch = require("torch")
    np = require("numpy")
    sbert = require("sentence_transformers")
    from ...models import resolve_model

    src_path = resolve_model(cfg.source, "embedder").path
    if distill_from_model is not None:
        tf = require("transformers")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        model = tf.AutoModel.from_pretrained(src_path)
        tok = tf.AutoTokenizer.from_pretrained(src_path)
        static_model = distill_from_model(model, tok, device=device, pca_dims=cfg.pca_dims,
                                          sif_coefficient=cfg.sif_coefficient, quantize_to="float32")
    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers < 6.1
        from sentence_transformers.models import StaticEmbedding
    emb = np.asarray(static_model.embedding, dtype=np.float32)
    fold = getattr(StaticEmbedding, "_fold_model2vec_weights", None)
    if fold is not None:  # token mapping / weights of quantised vocabularies (None here)
        emb = np.asarray(fold(emb, getattr(static_model, "token_mapping", None),
                              getattr(static_model, "weights", None)), dtype=np.float32)
    module = StaticEmbedding(static_model.tokenizer, embedding_weights=torch.from_numpy(emb.copy()))
    st = sbert.SentenceTransformer(modules=[module], device="cpu")
    dest = Path(out) if out is not None else _cache_path(cfg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)
        st.save(str(tmp))
        meta = {
            "name": cfg.name,
            "kind": "model2vec-static",
            "config": asdict(cfg),
            "source_path": str(src_path),
            "dim": int(emb.shape[1]),
            "vocab": int(emb.shape[0]),
            "fingerprint": _fingerprint(emb),
            "model2vec_version": _version("model2vec"),
        }
        (tmp / KEY_FILE).write_text(json.dumps(meta, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.warning("CAAD static window key %s written to %s (%d tokens x %d dims)", cfg.name, dest, *emb.shape)
    return dest


def read_key_file(path: str | Path) -> dict[str, Any] | None:
    """The ``ctxkit_window_key.json`` of a key folder, or ``None`` when ``path`` has none."""
    f = Path(path) / KEY_FILE
    if not f.is_file():
        return None
    return json.loads(f.read_text())


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description="Distil the CAAD static window key (model2vec) from a local "
                                             "sentence-transformers model; prints the folder.")
    ap.add_argument("--source", default="default", help="model to distil (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--pca-dims", type=int, default=256)
    ap.add_argument("--sif-coefficient", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder to write (default: the ctxkit cache)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cfg = StaticKeyConfig(args.source, args.pca_dims, args.sif_coefficient, args.seed)
    path = build_static_key(cfg, args.out, device=args.device) if args.out else static_key_path(cfg)
    print(path)
    return path


if __name__ == "__main__":
    main()
