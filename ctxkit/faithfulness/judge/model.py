"""The claim judge: a cross-encoder over all-MiniLM-L6-v2 that reads (belief, text) together.

It outputs calibrated probabilities of ``support`` / ``conflict`` / ``unrelated``. What ships is
small: low-rank (LoRA) updates of every linear layer of the packaged encoder, its layer-norm
parameters and a linear head (a few MB, ``judge.safetensors`` + ``judge.json``). At load time the
low-rank updates are merged into the encoder's weights, so inference is a plain BERT forward pass
(fp16 on CUDA, fp32 or native bf16 on a CPU).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..._lazy import require
from ..._lru import LRUCache
from ...errors import ConfigError, InputError, ModelNotAvailableError
from ...models import cpu_has_native_bf16  # re-exported: train.py and callers import it from here
from .data import LABELS

__all__ = [
    "DEFAULT_JUDGE",
    "ClaimJudge",
    "build_network",
    "cached_verdicts",
    "cpu_has_native_bf16",
    "lora_targets",
    "merge_shipped_state",
    "shared_judge",
]

log = logging.getLogger(__name__)

DEFAULT_JUDGE = "default"
"""The packaged judge (``ctxkit/faithfulness/judge/weights/``)."""

_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def lora_targets(model: Any) -> list[str]:
    """Names of the linear layers of a BERT encoder that receive low-rank updates."""
    torch = require("torch")
    return [
        name for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.startswith("encoder.") and name.endswith(_TARGETS)
    ]


def _network_class() -> type:
    torch = require("torch")
    nn = torch.nn

    class _LoRALinear(nn.Module):
        def __init__(self, base: Any, rank: int, alpha: float, dropout: float) -> None:
            super().__init__()
            self.base = base
            self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
            self.scale = alpha / rank
            self.drop = nn.Dropout(dropout)

        def forward(self, x: Any) -> Any:
            return self.base(x) + (self.drop(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

        def merged_delta(self) -> Any:
            return (self.lora_b @ self.lora_a) * self.scale

    class JudgeNetwork(nn.Module):
        """Encoder + mean pooling + linear head over 3 labels (optionally with LoRA layers)."""

        def __init__(self, encoder: Any, rank: int = 0, alpha: float = 32.0, dropout: float = 0.1) -> None:
            super().__init__()
            self.encoder = encoder
            self.rank = rank
            hidden = encoder.config.hidden_size
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, len(LABELS)))
            if rank > 0:
                for name in lora_targets(encoder):
                    parent_name, _, child = name.rpartition(".")
                    parent = encoder.get_submodule(parent_name)
                    setattr(parent, child, _LoRALinear(getattr(parent, child), rank, alpha, dropout))

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(out.dtype)
            mean = (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(torch.cat([out[:, 0], mean], dim=-1))

        def trainable(self) -> list[Any]:
            """Parameters trained: low-rank factors, layer norms and the head (or everything
            when ``rank`` is 0)."""
            if self.rank == 0:
                return list(self.parameters())
            return [p for n, p in self.named_parameters() if "lora_" in n or "LayerNorm" in n or n.startswith("head.")]

        def shipped_state(self) -> dict[str, Any]:
            """What is saved: low-rank factors, layer norms and head (full weights if rank is 0)."""
            if self.rank == 0:
                return {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            return {n: p.detach().contiguous() for n, p in self.named_parameters()
                    if "lora_" in n or "LayerNorm" in n or n.startswith("head.")}

    return JudgeNetwork


def build_network(encoder: Any, rank: int = 0, alpha: float = 32.0, dropout: float = 0.1) -> Any:
    """Build the judge network (torch is imported on first use): encoder + pooled linear head,
    with low-rank adapters on every encoder linear layer when ``rank > 0``."""
    return _network_class()(encoder, rank=rank, alpha=alpha, dropout=dropout)


def _packaged_dir() -> Path:
    return Path(str(resources.files("ctxkit.faithfulness.judge") / "weights"))


class ClaimJudge:
    """Reads a belief and a text together; probabilities of support / conflict / unrelated.

    Args:
        path: ``"default"`` (the packaged judge) or a folder written by ``ctxkit judge-train``
            (``judge.json`` + ``judge.safetensors``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        batch_size: Pairs per forward pass.
        dtype: ``"auto"`` (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32), or
            ``"float32"``, ``"float16"``, ``"bfloat16"``.
        cache_size: ``(belief, text)`` verdicts of :meth:`predict` kept for reuse (least recently
            used dropped first; ``0``: none, ``None``: unbounded). Stages that read the same pairs
            (conflict detection and steering's belief conflicts) judge them once through
            :func:`shared_judge`.

    Example:
        >>> judge = ClaimJudge()
        >>> judge.predict(["When was the tower completed? Answer: 1889"],
        ...               ["The tower was completed in 1901."])[0].argmax()  # 1 = conflict
        1
    """

    def __init__(self, path: str = DEFAULT_JUDGE, *, device: str = "auto", batch_size: int = 64,
                 dtype: str = "auto", cache_size: int | None = 20_000) -> None:
        if batch_size < 1:
            raise ConfigError(f"ClaimJudge: batch_size must be >= 1, got {batch_size}")
        if cache_size is not None and cache_size < 0:
            raise ConfigError(f"ClaimJudge: cache_size must be >= 0 or None, got {cache_size}")
        self.path = path
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        folder = _packaged_dir() if path == DEFAULT_JUDGE else Path(path)
        cfg_file = folder / "judge.json"
        if not cfg_file.is_file():
            raise ModelNotAvailableError(
                f"no claim judge at {str(folder)!r} (judge.json missing); pass a folder written by "
                "`ctxkit judge-train`, or reinstall ctxkit for the packaged judge"
            )
        self.folder = folder
        self.config: dict[str, Any] = json.loads(cfg_file.read_text(encoding="utf-8"))
        self.temperature = float(self.config.get("temperature", 1.0))
        self._net: Any = None
        self._tok: Any = None
        self.cache: LRUCache | None = LRUCache(cache_size) if cache_size != 0 else None

    @property
    def max_length(self) -> int:
        """Longest input in tokens (belief + text); longer texts are cut from the end."""
        return int(self.config.get("max_length", 256))

    def warm_up(self) -> None:
        """Load the encoder, merge the judge's weights into it and move it to the device."""
        if self._net is not None:
            return
        torch = require("torch")
        transformers = require("transformers")
        from ...models import resolve_device, resolve_model

        base = resolve_model(self.config.get("base", "default"), kind="embedder").path
        dev = resolve_device(self.device)
        self._tok = transformers.AutoTokenizer.from_pretrained(base)
        encoder = transformers.AutoModel.from_pretrained(base)
        net = build_network(encoder, rank=0)
        safetensors = require("safetensors.torch")
        state = safetensors.load_file(str(self.folder / "judge.safetensors"))
        merge_shipped_state(net, state, float(self.config.get("lora_alpha", 32.0)))
        net.eval()
        dtype = self._dtype(dev, torch)
        self._net = net.to(dev, dtype=dtype)
        self._device, self._torch_dtype = dev, dtype
        log.info("claim judge loaded from %s on %s (%s)", self.folder, dev, dtype)

    def _dtype(self, dev: str, torch: Any) -> Any:
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if dev.startswith("cuda"):
            return torch.float16
        return torch.bfloat16 if dev == "cpu" and cpu_has_native_bf16() else torch.float32

    def logits(self, beliefs: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Raw head outputs, shape ``(n, 3)`` (before temperature scaling)."""
        if len(beliefs) != len(texts):
            raise InputError(f"ClaimJudge: {len(beliefs)} beliefs but {len(texts)} texts")
        if not len(beliefs):
            return np.zeros((0, len(LABELS)), np.float32)
        self.warm_up()
        torch = require("torch")
        order = np.argsort([len(b) + len(t) for b, t in zip(beliefs, texts, strict=True)])
        out = np.zeros((len(beliefs), len(LABELS)), np.float32)
        with torch.inference_mode():
            for i in range(0, len(order), self.batch_size):
                idx = order[i: i + self.batch_size]
                enc = self._tok([beliefs[j] for j in idx], [texts[j] for j in idx], padding=True,
                                truncation="longest_first", max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self._device) for k, v in enc.items()}
                out[idx] = self._net(**enc).float().cpu().numpy()
        return out

    def predict(self, beliefs: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, 3)``: columns support, conflict, unrelated
        (pairs judged before and still in :attr:`cache` are not judged again)."""
        if len(beliefs) != len(texts):
            raise InputError(f"ClaimJudge: {len(beliefs)} beliefs but {len(texts)} texts")

        def judge(bs: list[str], ts: list[str]) -> np.ndarray:
            z = self.logits(bs, ts) / self.temperature
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)

        return cached_verdicts(self.cache, beliefs, texts, judge)


def cached_verdicts(cache: LRUCache | None, beliefs: Sequence[str], texts: Sequence[str],
                    judge: Any) -> np.ndarray:
    """Verdict rows (``(n, 3)``) of ``(belief, text)`` pairs: those in ``cache`` reused, each other
    distinct pair sent to ``judge(beliefs, texts)`` once and added to the cache (``None``: none)."""
    pairs = list(zip(beliefs, texts, strict=True))
    known = {} if cache is None else {p: v for p in dict.fromkeys(pairs) if (v := cache.get(p)) is not None}
    todo = [p for p in dict.fromkeys(pairs) if p not in known]
    if todo:
        fresh = dict(zip(todo, np.asarray(judge([b for b, _ in todo], [t for _, t in todo])), strict=True))
        if cache is not None:
            cache.update(fresh)
        known.update(fresh)
    if not pairs:
        return np.zeros((0, len(LABELS)), np.float32)
    return np.stack([known[p] for p in pairs])


_SHARED: dict[tuple[str, str, int, str], ClaimJudge] = {}
_SHARED_LOCK = threading.Lock()


def shared_judge(path: str = DEFAULT_JUDGE, *, device: str = "auto", batch_size: int = 64,
                 dtype: str = "auto") -> ClaimJudge:
    """One :class:`ClaimJudge` per judge folder and settings in this process: stages that load the
    same judge share its weights and its verdict cache (a pipeline that runs conflict detection
    and steering's belief conflicts judges each pair once)."""
    folder = str(_packaged_dir() if path == DEFAULT_JUDGE else Path(path).resolve())
    key = (folder, device, batch_size, dtype)
    with _SHARED_LOCK:
        judge = _SHARED.get(key)
        if judge is None:
            judge = _SHARED[key] = ClaimJudge(path, device=device, batch_size=batch_size, dtype=dtype)
        return judge


def merge_shipped_state(net: Any, state: dict[str, Any], alpha: float) -> None:
    """Load a saved judge state into a plain (rank 0) network, merging low-rank factors."""
    torch = require("torch")
    params = dict(net.named_parameters())
    pending: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name, value in state.items():
            if ".lora_a" in name or ".lora_b" in name:
                layer, _, which = name.rpartition(".")
                pending.setdefault(layer, {})[which] = value
                continue
            key = name.replace(".base.", ".")
            if key not in params:
                raise ModelNotAvailableError(f"judge weights do not fit the encoder: unknown tensor {name!r}")
            params[key].copy_(value.to(params[key].dtype))
        for layer, ab in pending.items():
            a, b = ab["lora_a"].float(), ab["lora_b"].float()
            weight = params[f"{layer}.weight"]
            weight += ((b @ a) * (alpha / a.shape[0])).to(weight.dtype)
