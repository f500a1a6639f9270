"""CAAD: retrieval-based logit shaping from a small grounding space of truthful answers.

Context-aware adaptive decoding (arXiv 2508.02184) in three parts:

* :class:`GroundingSpace`: built once from a few annotated truthful Q/A pairs. Every truthful
  answer is teacher-forced through the target LLM; for each answer token we keep the normalised
  sentence embedding of the text window before it (last ``window`` tokens) as a *key* and the
  LLM's next-token logits at that position as the *value*. Values are stored as fp16 full-vocabulary
  rows or as top-k sparse rows; the space is saved with safetensors plus a JSON manifest that pins
  the tokenizer (a vocabulary fingerprint), the window and the embedder.
* :class:`CAADLogitsProcessor`: a transformers logits processor. At each step it decodes the last
  ``window`` tokens of every row, embeds all rows in one call, compares them to every key as one
  matrix product on the model's device, and adds ``alpha`` times the similarity-weighted mean of the
  values whose cosine is ``>= tau`` (optionally only the ``top_n`` best). Works with KV-cache
  ``generate``, left-padded batches, greedy and sampling.
* :func:`score_continuations`: teacher-forced log-likelihoods with the same logit shift (for
  multiple-choice evaluation such as TruthfulQA MC1/MC2).

The window is defined identically at build and generation time: the decode (special tokens kept,
no clean-up) of the same ``window`` token ids immediately before the predicted token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._lazy import require
from ..errors import ConfigError, InputError, ModelNotAvailableError
from ._steps import StepTracker

__all__ = [
    "CAAD",
    "QUICKSTART_EXAMPLES",
    "CAADLogitsProcessor",
    "CAADStats",
    "GroundingSpace",
    "GroundingSpaceMismatchError",
    "WindowEncoder",
    "quickstart_space",
    "score_continuations",
    "tokenizer_fingerprint",
    "window_texts",
]

FORMAT = "ctxkit-caad-space"
VERSION = 1
_TENSORS = "space.safetensors"
_MANIFEST = "manifest.json"

Storage = Literal["fp16", "topk"]


class GroundingSpaceMismatchError(ConfigError):
    """A grounding space does not fit the tokenizer / model it is used with."""


# -- tokenizer helpers ---------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary and special tokens (identifies token ids)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    blob = json.dumps([vocab, specials], ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def window_texts(tokenizer: Any, windows: Sequence[Sequence[int]]) -> list[str]:
    """The text of each token window: special tokens kept, no clean-up (same at build and decode)."""
    return tokenizer.batch_decode(
        [list(w) for w in windows], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


# -- window embedding ----------------------------------------------------------------------------
class WindowEncoder:
    """Embeds token windows with a sentence-transformers model through a low-overhead path.

    ``SentenceTransformer.encode`` sorts, batches and converts on every call; at one call per
    decoding step that overhead matters. This calls the model's modules directly under
    ``torch.inference_mode`` and returns L2-normalised float32 embeddings on the model's device.

    Args:
        embedder: ``"default"`` (all-MiniLM-L6-v2), a model name/path, or a
            :class:`ctxkit.models.Embedder`.
        device: Device for a model loaded here (``"auto"``, ``"cpu"``, ``"cuda"``...).
        max_length: Token cap of the embedder's input (windows are short).
    """

    def __init__(self, embedder: Any = "default", *, device: str = "auto", max_length: int = 64) -> None:
        self._embedder = embedder
        self.device_setting = device
        self.max_length = max_length
        self._st: Any = None
        self.name = embedder if isinstance(embedder, str) else getattr(embedder, "model_name", "custom")
        if self.name in ("default", "minilm", "all-MiniLM-L6-v2"):
            self.name = "sentence-transformers/all-MiniLM-L6-v2"

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer``."""
        if self._st is None:
            from ..models import get_embedder

            emb = self._embedder
            if isinstance(emb, str):
                emb = get_embedder(emb, device=self.device_setting)
            st = getattr(emb, "model", emb)
            if not hasattr(st, "encode"):
                raise ConfigError(f"WindowEncoder: {self._embedder!r} is not a sentence-transformers model")
            self._st = st
        return self._st

    @property
    def device(self) -> Any:
        """The ``torch.device`` of the embedder."""
        return self.model.device

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        st = self.model
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str], *, batch_size: int = 256, show_progress: bool = False) -> Any:
        """``(len(texts), dim)`` normalised float32 embeddings (torch, on the embedder's device)."""
        torch = require("torch")
        st = self.model
        prep = getattr(st, "preprocess", None) or st.tokenize
        if not texts:
            return torch.zeros((0, self.dim), device=self.device)
        outs = []
        starts = range(0, len(texts), batch_size)
        if show_progress and len(texts) > batch_size:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embed windows", unit="batch")
        with torch.inference_mode():
            for s in starts:
                feats = prep(texts[s : s + batch_size])
                feats = {k: (v[:, : self.max_length].to(st.device) if torch.is_tensor(v) else v)
                         for k, v in feats.items()}
                emb = st(feats)["sentence_embedding"].float()
                outs.append(torch.nn.functional.normalize(emb, dim=-1))
        return torch.cat(outs) if len(outs) > 1 else outs[0]


# -- grounding space -----------------------------------------------------------------------------
def _examples(examples: Iterable[Any]) -> list[tuple[str, str]]:
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, dict):
            q, a = ex.get("question"), ex.get("answer")
        elif isinstance(ex, Sequence) and not isinstance(ex, str) and len(ex) == 2:
            q, a = ex
        else:
            q = a = None
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            raise InputError(
                f"grounding example {i} must be a (question, answer) pair or a dict with non-empty "
                f"'question' and 'answer' strings, got {ex!r}"
            )
        out.append((q, a))
    if not out:
        raise InputError("a grounding space needs at least one (question, answer) example")
    return out


def _chat_prompt_ids(tokenizer: Any, question: str, system: str | None) -> list[int]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(question + "\n", add_special_tokens=True)["input_ids"])


@dataclass
class GroundingSpace:
    """Keys (window embeddings) and values (next-token logits) of truthful answer tokens.

    Build with :meth:`build` / :meth:`from_generator`, persist with :meth:`save` / :meth:`load`.

    Attributes:
        keys: ``(N, dim)`` float32, L2-normalised window embeddings.
        logits: ``(N, V)`` fp16 full logits (``storage="fp16"``), else ``None``.
        topk_indices: ``(N, k)`` int64 token ids of the kept logits (``storage="topk"``).
        topk_values: ``(N, k)`` fp16 kept logits minus each row's k-th value (``storage="topk"``).
        token_ids: ``(N,)`` the truthful next token of each entry.
        manifest: model, tokenizer fingerprint, vocabulary width, window, embedder, storage.
    """

    keys: Any
    manifest: dict[str, Any]
    logits: Any = None
    topk_indices: Any = None
    topk_values: Any = None
    token_ids: Any = None
    _device_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- properties --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def storage(self) -> Storage:
        """``"fp16"`` (full rows) or ``"topk"`` (sparse rows)."""
        return self.manifest["storage"]

    @property
    def vocab_size(self) -> int:
        """Width of the stored logit rows (the model's output width at build time)."""
        return int(self.manifest["vocab_size"])

    @property
    def window(self) -> int:
        """Tokens of preceding text embedded as the key."""
        return int(self.manifest["window"])

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        examples: Iterable[Any],
        model: Any,
        tokenizer: Any,
        *,
        model_name: str | None = None,
        prompt_ids: Callable[[str], list[int]] | None = None,
        system: str | None = None,
        window: int = 8,
        storage: Storage = "fp16",
        top_k: int = 64,
        embedder: Any = "default",
        include_eos: bool = True,
        label_weight: float = 0.0,
        batch_size: int = 8,
        show_progress: bool = False,
    ) -> GroundingSpace:
        """Teacher-force each truthful answer and store one entry per answer token.

        Args:
            examples: ``(question, answer)`` pairs or dicts with ``question``/``answer`` (>= 1;
                the method is designed for as few as 10).
            model: A transformers causal LM (any device).
            tokenizer: Its tokenizer.
            model_name: Recorded in the manifest (defaults to ``model.name_or_path``).
            prompt_ids: Question -> prompt token ids; must match how generation renders prompts.
                Default: the tokenizer's chat template with the generation prompt (as
                :class:`~ctxkit.llm.TransformersGenerator` does), with ``system`` if given.
            system: Optional system message for the default prompt.
            window: Tokens of preceding text that form each key (paper: 8).
            storage: ``"fp16"`` full-vocabulary rows or ``"topk"`` sparse rows.
            top_k: Logits kept per entry with ``storage="topk"``.
            embedder: Window embedder (``"default"``: all-MiniLM-L6-v2) or a :class:`WindowEncoder`.
            include_eos: Also store the step that predicts end-of-sequence after each answer.
            label_weight: Added to the stored logit of the truthful next token (0 = the paper:
                pure model logits; > 0 also votes for the annotated token, kNN-LM style).
            batch_size: Sequences per teacher-forcing forward pass.
            show_progress: Progress bars.

        Raises:
            InputError: malformed examples. ConfigError: bad settings.
        """
        torch = require("torch")
        pairs = _examples(examples)
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"GroundingSpace: window must be an int >= 1, got {window!r}")
        if storage not in ("fp16", "topk"):
            raise ConfigError(f"GroundingSpace: storage must be 'fp16' or 'topk', got {storage!r}")
        if storage == "topk" and (not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"GroundingSpace: top_k must be an int >= 1, got {top_k!r}")
        enc = embedder if isinstance(embedder, WindowEncoder) else WindowEncoder(embedder)
        render = prompt_ids or (lambda q: _chat_prompt_ids(tokenizer, q, system))
        eos = tokenizer.eos_token_id
        seqs: list[tuple[list[int], int]] = []  # (ids, answer start)
        for q, a in pairs:
            p = list(render(q))
            ans = list(tokenizer(a, add_special_tokens=False)["input_ids"])
            if include_eos and eos is not None:
                ans.append(int(eos))
            seqs.append((p + ans, len(p)))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        dev = model.device
        win_ids: list[list[int]] = []
        targets: list[int] = []
        rows: list[Any] = []
        order = range(0, len(seqs), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            order = tqdm(order, desc="teacher-force", unit="batch")
        for s in order:
            chunk = seqs[s : s + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids_t = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (ids, _) in enumerate(chunk):  # right padding keeps natural positions
                ids_t[j, : len(ids)] = torch.tensor(ids)
                mask[j, : len(ids)] = 1
            with torch.inference_mode():
                out = model(input_ids=ids_t.to(dev), attention_mask=mask.to(dev)).logits
            for j, (ids, start) in enumerate(chunk):
                pos = list(range(start, len(ids)))
                sel = out[j, [t - 1 for t in pos]].float()
                if label_weight:
                    sel[torch.arange(len(pos)), torch.tensor([ids[t] for t in pos])] += float(label_weight)
                if storage == "topk":
                    k = min(top_k, sel.shape[1])
                    vals, idx = sel.topk(k, dim=-1)
                    rows.append((idx.cpu(), (vals - vals[:, -1:]).half().cpu()))
                else:
                    rows.append(sel.half().cpu())
                for t in pos:
                    win_ids.append(ids[max(t - window, 0) : t])
                    targets.append(ids[t])
        keys = enc.encode(window_texts(tokenizer, win_ids), show_progress=show_progress).float().cpu()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": model_name or str(getattr(model, "name_or_path", "") or "unknown"),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "tokenizer_len": len(tokenizer),
            "tokenizer_source": str(getattr(tokenizer, "name_or_path", "") or ""),
            "vocab_size": int(out.shape[-1]),
            "window": window,
            "embedder": enc.name,
            "embedder_dim": int(keys.shape[1]),
            "storage": storage,
            "top_k": top_k if storage == "topk" else None,
            "n_entries": len(win_ids),
            "n_examples": len(pairs),
            "include_eos": include_eos,
            "label_weight": float(label_weight),
        }
        space = cls(keys=keys, manifest=manifest, token_ids=torch.tensor(targets, dtype=torch.long))
        if storage == "topk":
            space.topk_indices = torch.cat([r[0] for r in rows])
            space.topk_values = torch.cat([r[1] for r in rows])
        else:
            space.logits = torch.cat(rows)
        return space

    @classmethod
    def from_generator(cls, generator: Any, examples: Iterable[Any], **kwargs: Any) -> GroundingSpace:
        """:meth:`build` for a :class:`~ctxkit.llm.TransformersGenerator`, rendering prompts the
        way that generator does (chat template, no system message unless the question has one)."""
        generator.warm_up()
        kwargs.setdefault("model_name", generator.model_name)
        kwargs.setdefault("prompt_ids", lambda q: generator._encode(generator.render(q)))
        space = cls.build(examples, generator.model, generator.tokenizer, **kwargs)
        space.manifest["tokenizer_source"] = str(generator.loaded_from or generator.model_name)
        return space

    @classmethod
    def synthetic(
        cls,
        n: int,
        *,
        vocab_size: int,
        dim: int = 384,
        storage: Storage = "topk",
        top_k: int = 64,
        window: int = 8,
        seed: int = 0,
        base: GroundingSpace | None = None,
    ) -> GroundingSpace:
        """Random keys/values (for speed tests), optionally appended to a real ``base`` space."""
        torch = require("torch")
        g = torch.Generator().manual_seed(seed)
        m = n - (len(base) if base is not None else 0)
        if m < 0:
            raise ConfigError(f"synthetic: n={n} is smaller than the base space ({len(base)})")
        keys = torch.nn.functional.normalize(torch.randn(m, dim, generator=g), dim=-1)
        manifest = dict(base.manifest) if base is not None else {
            "format": FORMAT, "version": VERSION, "model": "synthetic", "tokenizer_fingerprint": "synthetic",
            "tokenizer_len": vocab_size, "tokenizer_source": "", "window": window,
            "embedder": "sentence-transformers/all-MiniLM-L6-v2", "embedder_dim": dim, "include_eos": False,
            "label_weight": 0.0,
        }
        manifest.update(vocab_size=vocab_size, storage=storage, top_k=top_k if storage == "topk" else None,
                        n_entries=n)
        space = cls(keys=keys, manifest=manifest, token_ids=torch.randint(0, vocab_size, (m,), generator=g))
        if storage == "topk":
            space.topk_indices = torch.randint(0, vocab_size, (m, top_k), generator=g)
            space.topk_values = (torch.rand(m, top_k, generator=g) * 8).half()
        else:
            space.logits = torch.randn(m, vocab_size, generator=g).half()
        if base is not None:
            b = base.to_storage(storage, top_k=top_k)
            space.keys = torch.cat([b.keys, space.keys])
            space.token_ids = torch.cat([b.token_ids, space.token_ids])
            if storage == "topk":
                space.topk_indices = torch.cat([b.topk_indices, space.topk_indices])
                space.topk_values = torch.cat([b.topk_values, space.topk_values])
            else:
                space.logits = torch.cat([b.logits, space.logits])
        return space

    def to_storage(self, storage: Storage, *, top_k: int = 64) -> GroundingSpace:
        """A copy with another storage (``"fp16"`` -> ``"topk"`` keeps the top-k of each row)."""
        torch = require("torch")
        if storage == self.storage and (storage == "fp16" or self.manifest.get("top_k") == top_k):
            return self
        if storage == "topk":
            if self.storage != "fp16":
                raise ConfigError("to_storage: a top-k space cannot be re-sparsified to another k")
            vals, idx = self.logits.float().topk(min(top_k, self.logits.shape[1]), dim=-1)
            m = dict(self.manifest, storage="topk", top_k=top_k)
            return GroundingSpace(self.keys, m, topk_indices=idx, topk_values=(vals - vals[:, -1:]).half(),
                                  token_ids=self.token_ids)
        if storage == "fp16":
            dense = torch.zeros((len(self), self.vocab_size), dtype=torch.float32)
            dense.scatter_(1, self.topk_indices, self.topk_values.float())
            m = dict(self.manifest, storage="fp16", top_k=None)
            return GroundingSpace(self.keys, m, logits=dense.half(), token_ids=self.token_ids)
        raise ConfigError(f"storage must be 'fp16' or 'topk', got {storage!r}")

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``space.safetensors`` + ``manifest.json`` into directory ``path``."""
        st = require("safetensors.torch")
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"keys": self.keys.contiguous(), "token_ids": self.token_ids.contiguous()}
        if self.storage == "topk":
            tensors["topk_indices"] = self.topk_indices.contiguous()
            tensors["topk_values"] = self.topk_values.contiguous()
        else:
            tensors["logits"] = self.logits.contiguous()
        st.save_file({k: v.cpu() for k, v in tensors.items()}, str(d / _TENSORS))
        (d / _MANIFEST).write_text(json.dumps(self.manifest, indent=2))
        return d

    @classmethod
    def load(cls, path: str | Path, *, tokenizer: Any = None, window: int | None = None) -> GroundingSpace:
        """Load a saved space; with ``tokenizer``, refuse one built for another tokenizer.

        Raises:
            InputError: ``path`` holds no grounding space.
            GroundingSpaceMismatchError: tokenizer fingerprint or window differ.
        """
        st = require("safetensors.torch")
        d = Path(path)
        if not (d / _MANIFEST).is_file() or not (d / _TENSORS).is_file():
            raise InputError(
                f"{str(d)!r} is not a CAAD grounding space (expected {_MANIFEST} and {_TENSORS}); "
                "build one with GroundingSpace.build(...).save(path)"
            )
        manifest = json.loads((d / _MANIFEST).read_text())
        if manifest.get("format") != FORMAT or int(manifest.get("version", 0)) > VERSION:
            raise InputError(f"{str(d)!r}: unknown grounding space format {manifest.get('format')!r} "
                             f"v{manifest.get('version')}; upgrade ctxkit or rebuild the space")
        t = st.load_file(str(d / _TENSORS))
        space = cls(keys=t["keys"].float(), manifest=manifest, logits=t.get("logits"),
                    topk_indices=t.get("topk_indices"), topk_values=t.get("topk_values"),
                    token_ids=t.get("token_ids"))
        if tokenizer is not None:
            space.check_tokenizer(tokenizer)
        if window is not None and window != space.window:
            raise GroundingSpaceMismatchError(
                f"the space was built with window={space.window} tokens, not {window}; rebuild it or "
                "use its window"
            )
        return space

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise :class:`GroundingSpaceMismatchError` unless ``tokenizer`` is the one it was built for."""
        fp = tokenizer_fingerprint(tokenizer)
        if fp != self.manifest.get("tokenizer_fingerprint"):
            raise GroundingSpaceMismatchError(
                f"this grounding space was built for the tokenizer of {self.manifest.get('model')!r} "
                f"({self.manifest.get('tokenizer_fingerprint')}), but the tokenizer in use "
                f"({getattr(tokenizer, 'name_or_path', '?')}, {fp}) has different token ids. Rebuild "
                "the space with GroundingSpace.build(...) for this model"
            )

    # -- lookup ------------------------------------------------------------------------------
    def on(self, device: Any) -> dict[str, Any]:
        """The space's tensors on ``device`` (moved once and cached)."""
        key = str(device)
        if key not in self._device_cache:
            self._device_cache.clear()
            keys = self.keys.to(device, dtype=require("torch").float32)
            self._device_cache[key] = {
                "keys": keys,
                # (dim, N) contiguous: a (B, dim) @ (dim, N) product streams the keys once, row-major
                # (measured 2-4x faster on CPU than multiplying by the transposed view)
                "keys_t": keys.T.contiguous(),
                "logits": None if self.logits is None else self.logits.to(device),
                "idx": None if self.topk_indices is None else self.topk_indices.to(device),
                "vals": None if self.topk_values is None else self.topk_values.to(device),
            }
        return self._device_cache[key]

    def shift(
        self, queries: Any, *, tau: float = 0.7, top_n: int | None = None, chunk: int = 2048
    ) -> tuple[Any, Any, Any]:
        """Similarity-weighted mean logits for a batch of query embeddings.

        Args:
            queries: ``(B, dim)`` normalised embeddings (on the device to compute on).
            tau: Keep entries with cosine ``>= tau``.
            top_n: Keep at most the ``top_n`` most similar entries per row.
            chunk: Entries gathered per matrix product (bounds memory with fp16 storage).

        Returns:
            ``(z_bar, matched, mean_sim)``: ``(B, V)`` float32 (zeros for rows with no match;
            defined up to a per-row constant, which softmax ignores), ``(B,)`` match counts,
            ``(B,)`` mean similarity of the matches (0 where none).
        """
        torch = require("torch")
        t = self.on(queries.device)
        sims = queries.float() @ t["keys_t"]  # (B, N), one matrix product
        keep = sims >= tau
        if top_n is not None and top_n < sims.shape[1]:
            thr = sims.topk(top_n, dim=1).values[:, -1:]
            keep &= sims >= thr
        w = torch.where(keep, sims.clamp_min(1e-6), torch.zeros((), device=sims.device))
        matched = keep.sum(1)
        total = w.sum(1, keepdim=True)
        mean_sim = torch.where(matched > 0, (sims * keep).sum(1) / matched.clamp_min(1), torch.zeros_like(total[:, 0]))
        b = queries.shape[0]
        z = torch.zeros((b, self.vocab_size), device=queries.device, dtype=torch.float32)
        cols = keep.any(0).nonzero().squeeze(1)
        if cols.numel() == 0:
            return z, matched, mean_sim
        wn = w[:, cols] / total.clamp_min(1e-12)  # (B, m) normalised weights
        if self.storage == "topk":
            idx, vals = t["idx"][cols], t["vals"][cols].float()  # (m, k)
            contrib = wn[:, :, None] * vals[None]  # (B, m, k)
            z.scatter_add_(1, idx.reshape(1, -1).expand(b, -1), contrib.reshape(b, -1))
        else:
            for s in range(0, cols.numel(), chunk):
                c = cols[s : s + chunk]
                z += wn[:, s : s + chunk] @ t["logits"][c].float()
        return z, matched, mean_sim


# -- the logits processor ------------------------------------------------------------------------
@dataclass
class CAADStats:
    """Per-step match statistics of a :class:`CAADLogitsProcessor` (current generation).

    Attributes:
        steps: Decoding steps seen.
        steps_with_match: Steps where at least one row had a match.
        matches_per_row: ``(steps, B)`` number of matched entries.
        mean_similarity: ``(steps, B)`` mean cosine of the matches (0 where none).
        prefetch_hits: Steps whose window embedding was computed during the forward pass
            (see :meth:`CAADLogitsProcessor.prefetching`).
        prefetch_misses: Steps where a prefetched embedding did not match the real windows and
            was recomputed (results are identical either way).
    """

    steps: int = 0
    steps_with_match: int = 0
    matches_per_row: list[list[int]] = field(default_factory=list)
    mean_similarity: list[list[float]] = field(default_factory=list)
    prefetch_hits: int = 0
    prefetch_misses: int = 0

    @property
    def match_rate(self) -> float:
        """Fraction of (step, row) pairs that were shifted."""
        cells = [m for row in self.matches_per_row for m in row]
        return sum(1 for m in cells if m > 0) / len(cells) if cells else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        cells = [m for row in self.matches_per_row for m in row]
        sims = [s for r, row in zip(self.matches_per_row, self.mean_similarity, strict=True)
                for m, s in zip(r, row, strict=True) if m > 0]
        return {
            "steps": self.steps,
            "steps_with_match": self.steps_with_match,
            "match_rate": self.match_rate,
            "mean_matches": sum(cells) / len(cells) if cells else 0.0,
            "mean_similarity": sum(sims) / len(sims) if sims else 0.0,
            "prefetch_hits": self.prefetch_hits,
            "prefetch_misses": self.prefetch_misses,
        }


class CAADLogitsProcessor:
    """Adds ``alpha`` x the retrieved grounding logits to the model's next-token scores.

    A transformers-compatible logits processor: pass it to
    ``model.generate(..., logits_processor=LogitsProcessorList([proc]))`` or to
    ``TransformersGenerator(..., logits_processors=[proc])``. Nothing is recomputed: each step
    decodes the last ``window`` tokens of every row, embeds the whole batch in one call, and scores
    it against every key in one matrix product on the scores' device.

    Args:
        space: A :class:`GroundingSpace` or the path of a saved one.
        tokenizer: The generating model's tokenizer (checked against the space). Optional: without
            it, the tokenizer recorded in the space is loaded on first use.
        alpha: Weight of the grounding logits (paper: 0.5). 0 leaves every score untouched.
        tau: Cosine threshold (paper: 0.7).
        top_n: Use at most the ``top_n`` most similar entries per step (``None``: all above tau).
        embedder: Window embedder; default: the one the space was built with.
        record_stats: Keep per-step match statistics (see :attr:`stats`).
        prefetch: Inside :meth:`prefetching`, embed each step's windows on a spare CPU core while
            the model runs its forward pass. ``None`` (auto): on when the embedder is on the CPU
            and torch leaves a core free (``torch.get_num_threads() < os.cpu_count()``).
    """

    def __init__(
        self,
        space: GroundingSpace | str | Path,
        tokenizer: Any = None,
        *,
        alpha: float = 0.5,
        tau: float = 0.7,
        top_n: int | None = None,
        embedder: Any = None,
        record_stats: bool = True,
        prefetch: bool | None = None,
    ) -> None:
        if not isinstance(space, GroundingSpace):
            space = GroundingSpace.load(space)
        if not isinstance(alpha, int | float) or not math.isfinite(alpha):
            raise ConfigError(f"CAADLogitsProcessor: alpha must be a finite number, got {alpha!r}")
        if not isinstance(tau, int | float) or not -1.0 <= tau <= 1.0:
            raise ConfigError(f"CAADLogitsProcessor: tau must be a cosine in [-1, 1], got {tau!r}")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            raise ConfigError(f"CAADLogitsProcessor: top_n must be an int >= 1 or None, got {top_n!r}")
        self.space = space
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.top_n = top_n
        self.window = space.window
        if isinstance(embedder, WindowEncoder):
            self.encoder = embedder
        else:
            self.encoder = WindowEncoder(embedder or space.manifest.get("embedder", "default"))
        self.record_stats = record_stats
        self.prefetch = prefetch
        self.tokenizer: Any = None
        self._tracker = StepTracker()
        self._matches: list[Any] = []
        self._sims: list[Any] = []
        self._windows: list[list[int]] | None = None  # windows of the last step
        self._pending: tuple[list[list[int]], Any] | None = None  # (windows, future)
        self._hits = self._misses = 0
        if tokenizer is not None:
            self.bind(tokenizer)

    @classmethod
    def load(cls, path: str | Path, tokenizer: Any = None, **kwargs: Any) -> CAADLogitsProcessor:
        """A processor over the grounding space saved at ``path``."""
        return cls(GroundingSpace.load(path, tokenizer=tokenizer), tokenizer, **kwargs)

    @classmethod
    def for_generator(cls, space: GroundingSpace | str | Path, generator: Any, **kwargs: Any) -> CAADLogitsProcessor:
        """A processor bound to a :class:`~ctxkit.llm.TransformersGenerator`'s tokenizer."""
        return cls(space, generator.tokenizer, **kwargs)

    def bind(self, tokenizer: Any) -> CAADLogitsProcessor:
        """Use ``tokenizer`` to decode windows (it must be the space's tokenizer)."""
        if self.space.manifest.get("tokenizer_fingerprint") != "synthetic":
            self.space.check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self._tracker = StepTracker(tokenizer.pad_token_id)
        return self

    def _ensure_tokenizer(self) -> None:
        if self.tokenizer is not None:
            return
        src = self.space.manifest.get("tokenizer_source") or ""
        if not src or not Path(src).exists():
            raise ConfigError(
                "CAADLogitsProcessor has no tokenizer: pass tokenizer=... (or use "
                "CAADLogitsProcessor.for_generator(space, generator)); the space's recorded "
                f"tokenizer source {src!r} is not available here"
            )
        tf = require("transformers")
        try:
            tok = tf.AutoTokenizer.from_pretrained(src)
        except OSError as exc:
            raise ModelNotAvailableError(f"cannot load the space's tokenizer from {src!r}: {exc}") from exc
        self.bind(tok)

    def reset(self) -> None:
        """Forget the current generation and its statistics."""
        self._tracker.reset()
        self._matches, self._sims = [], []
        self._windows, self._pending = None, None
        self._hits = self._misses = 0

    @property
    def stats(self) -> CAADStats:
        """Match statistics of the last (or current) generation."""
        m = [x.tolist() for x in self._matches]
        s = [x.tolist() for x in self._sims]
        return CAADStats(steps=len(m), steps_with_match=sum(1 for r in m if any(v > 0 for v in r)),
                         matches_per_row=m, mean_similarity=s,
                         prefetch_hits=self._hits, prefetch_misses=self._misses)

    def _prefetch_enabled(self) -> bool:
        if self.prefetch is not None:
            return bool(self.prefetch)
        torch = require("torch")
        return self.encoder.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1)

    @contextlib.contextmanager
    def prefetching(self, model: Any) -> Iterator[CAADLogitsProcessor]:
        """Overlap the window embedding with ``model``'s forward pass during ``generate``.

        The windows of step ``t`` are known before the forward pass of step ``t`` starts (they end
        with the token sampled at step ``t - 1``). Inside this context a forward pre-hook on
        ``model`` starts embedding them in a worker thread, and the processor call of that step
        takes the result. On a CPU this puts the embedder on a core the decoding step leaves idle,
        which hides most of its cost. Each step checks that the prefetched windows are exactly
        the step's real windows and recomputes them otherwise, so outputs are identical with and
        without it. Does nothing when prefetching is off (see ``prefetch``).

        Example:
            ``with proc.prefetching(model): model.generate(..., logits_processor=[proc])``
        """
        if not self._prefetch_enabled():
            yield self
            return
        from concurrent.futures import ThreadPoolExecutor

        self._ensure_tokenizer()
        _ = self.encoder.model  # load it here, not in the worker thread
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="caad-prefetch")

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            wins = self._next_windows(ids)
            if wins is not None:
                texts = window_texts(self.tokenizer, wins)
                self._pending = (wins, pool.submit(self.encoder.encode, texts))

        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self._pending = None
            pool.shutdown(wait=True)

    def _next_windows(self, ids: Any) -> list[list[int]] | None:
        """The windows the next processor call will see, from the forward pass's input ids."""
        if ids is None or getattr(ids, "ndim", 0) != 2:
            return None
        w = self.window
        if ids.shape[1] == 1 and self._windows is not None and len(self._windows) == ids.shape[0]:
            return [(prev + [t])[-w:] for prev, t in zip(self._windows, ids[:, 0].tolist(), strict=True)]
        # A full sequence (prefill, or decoding without a cache): strip the left padding as
        # StepTracker does for a new generation.
        pad = self._tracker.pad_token_id
        tail = ids[:, -w:].tolist()
        if pad is None:
            return tail
        out = []
        for row, full in zip(tail, ids.tolist(), strict=True):
            real = [k for k, t in enumerate(full) if t != pad]
            start = real[0] if real else len(full)
            out.append(row[max(start - (len(full) - len(row)), 0):])
        return out

    def shift_windows(self, windows: Sequence[Sequence[int]], scores: Any) -> Any:
        """``scores + alpha * z_bar`` for rows whose preceding windows are ``windows``.

        The core of :meth:`__call__`, also used to teacher-force with the same shift. Returns a
        new tensor (``scores`` is not modified); rows without a match are returned unchanged.
        """
        self._ensure_tokenizer()
        vs, vk = int(scores.shape[-1]), self.space.vocab_size
        if vs < int(self.space.manifest.get("tokenizer_len", 0)):
            raise GroundingSpaceMismatchError(
                f"the scores have {vs} columns but the space's tokenizer has "
                f"{self.space.manifest.get('tokenizer_len')} tokens: wrong model for this space"
            )
        q = self._embed_windows(windows).to(scores.device)
        z, matched, mean_sim = self.space.shift(q, tau=self.tau, top_n=self.top_n)
        if self.record_stats:
            self._matches.append(matched)
            self._sims.append(mean_sim)
        if self.alpha == 0.0:
            return scores
        rows = (matched > 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return scores
        out = scores.clone()
        w = min(vs, vk)
        upd = out[rows, :w].float() + self.alpha * z[rows, :w]
        out[rows, :w] = upd.to(out.dtype)
        return out

    def _embed_windows(self, windows: Sequence[Sequence[int]]) -> Any:
        pending, self._pending = self._pending, None
        if pending is not None:
            if [list(w) for w in windows] == pending[0]:
                self._hits += 1
                return pending[1].result()
            self._misses += 1
            pending[1].cancel()
        return self.encoder.encode(window_texts(self.tokenizer, windows))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """One decoding step for the whole batch (transformers ``LogitsProcessor`` protocol)."""
        self._ensure_tokenizer()
        if self._tracker.update(input_ids):
            self._matches, self._sims = [], []
            self._hits = self._misses = 0
        self._windows = self._tracker.windows(input_ids, self.window)
        return self.shift_windows(self._windows, scores)

    def __repr__(self) -> str:
        return (f"CAADLogitsProcessor(entries={len(self.space)}, alpha={self.alpha}, tau={self.tau}, "
                f"top_n={self.top_n}, window={self.window})")


CAAD = CAADLogitsProcessor


# -- teacher-forced scoring with the same shift --------------------------------------------------
def score_continuations(
    model: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    processor: CAADLogitsProcessor | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
) -> list[float]:
    """Sum of log-probabilities of each continuation after its prompt (token ids).

    With a CAAD ``processor``, the logits at every continuation position get exactly the shift
    generation would apply there (same windows, one batched embedding call per forward batch).

    Returns:
        One float per pair (``nan`` for an empty continuation).
    """
    torch = require("torch")
    if len(prompts) != len(continuations):
        raise InputError(f"score_continuations: {len(prompts)} prompts but {len(continuations)} continuations")
    out = [math.nan] * len(prompts)
    items = [(i, list(p) + list(c), len(p)) for i, (p, c) in enumerate(zip(prompts, continuations, strict=True))
             if len(c) and len(p)]
    items.sort(key=lambda x: len(x[1]), reverse=True)
    dev = model.device
    starts = range(0, len(items), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="score", unit="batch")
    for s in starts:
        chunk = items[s : s + batch_size]
        width = max(len(x[1]) for x in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (_, seq, _) in enumerate(chunk):
            ids[j, : len(seq)] = torch.tensor(seq)
            mask[j, : len(seq)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
            rows, pos, tgt, wins = [], [], [], []
            for j, (_, seq, p) in enumerate(chunk):
                for t in range(p, len(seq)):
                    rows.append(j)
                    pos.append(t - 1)
                    tgt.append(seq[t])
                    if processor is not None:
                        wins.append(seq[max(t - processor.window, 0) : t])
            sel = logits[torch.tensor(rows, device=logits.device), torch.tensor(pos, device=logits.device)]
            if processor is not None:
                rec, processor.record_stats = processor.record_stats, False
                try:
                    sel = processor.shift_windows(wins, sel)
                finally:
                    processor.record_stats = rec
            lp = torch.log_softmax(sel.float(), dim=-1)
            tok_lp = lp[torch.arange(len(tgt), device=lp.device), torch.tensor(tgt, device=lp.device)].cpu()
        k = 0
        for i, seq, p in chunk:
            n = len(seq) - p
            out[i] = float(tok_lp[k : k + n].sum())
            k += n
    return out


# -- quickstart ----------------------------------------------------------------------------------
QUICKSTART_EXAMPLES: list[tuple[str, str]] = [
    ("What is ctxkit?", "ctxkit is a Python library for context engineering in retrieval-augmented generation."),
    ("What does CAAD do in ctxkit?", "CAAD shifts the next-token logits towards those seen on truthful answers."),
    ("Does ctxkit need the internet?", "No. ctxkit runs offline with packaged default models."),
    ("Which embedder does ctxkit use by default?", "By default ctxkit uses all-MiniLM-L6-v2 for embeddings."),
    ("Which LLM does ctxkit use by default?", "By default ctxkit uses SmolLM2-135M-Instruct, a small instruct model."),
    ("How does ctxkit retrieve passages?", "ctxkit retrieves passages with Chroma, BM25 or a hybrid of both."),
    ("Can ctxkit run inside LangChain?", "Yes. A ctxkit pipeline can be used as a LangChain retriever."),
    ("Can ctxkit run inside LlamaIndex?", "Yes. A ctxkit pipeline can be used as a LlamaIndex postprocessor."),
    ("What is a grounding space?", "A grounding space stores window embeddings and logits of truthful answers."),
    ("Is the CAAD shift applied when nothing matches?", "No. When no stored window is similar enough, decoding is unchanged."),
]


def quickstart_space(generator: Any, *, alpha: float = 0.5, tau: float = 0.7,
                     storage: Storage = "fp16") -> tuple[GroundingSpace, CAADLogitsProcessor]:
    """A tiny grounding space from built-in truthful Q/A pairs about ctxkit, and its processor.

    Args:
        generator: A :class:`~ctxkit.llm.TransformersGenerator` (loaded on demand).
        alpha: CAAD weight. tau: cosine threshold. storage: ``"fp16"`` or ``"topk"``.

    Returns:
        ``(space, processor)``; pass the processor as
        ``generator.generate(..., logits_processors=[processor])``.
    """
    space = GroundingSpace.from_generator(generator, QUICKSTART_EXAMPLES, storage=storage)
    return space, CAADLogitsProcessor.for_generator(space, generator, alpha=alpha, tau=tau)
