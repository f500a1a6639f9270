"""The CAAD grounding space: keys (window embeddings) and values (next-token logits) of truthful answers.

:class:`GroundingSpace` is built once from a few annotated truthful Q/A pairs. Every truthful
answer is teacher-forced through the target LLM; for each answer token we keep the normalised
sentence embedding of the text window before it (last ``window`` tokens) as a *key* and the
LLM's next-token logits at that position as the *value*. Values are stored as fp16 full-vocabulary
rows or as top-k sparse rows; the space is saved with safetensors plus a JSON manifest that pins
the tokenizer (a vocabulary fingerprint), the window and the embedder.

On a GPU the dense table is not copied: a full-logit space is searched as top-k sparse rows there
(``device_storage="auto"``; 100k entries x a 128k vocabulary is 25 GB in fp16, 100k x 64 is 13 MB).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..._lazy import require
from ...errors import ConfigError, InputError
from .windows import WindowEncoder, tokenizer_fingerprint, window_texts

__all__ = ["FORMAT", "VERSION", "DeviceStorage", "GroundingSpace", "GroundingSpaceMismatchError", "Storage"]

FORMAT = "ctxkit-caad-space"
VERSION = 1
_TENSORS = "space.safetensors"
_MANIFEST = "manifest.json"

Storage = Literal["fp16", "topk"]
DeviceStorage = Literal["auto", "fp16", "topk"]
_TOPK_BLOCK_ROWS = 1024  # dense rows converted to top-k at a time (bounds the float32 copy)


class GroundingSpaceMismatchError(ConfigError):
    """A grounding space does not fit the tokenizer / model it is used with."""


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
        device_storage: How a full-logit (``"fp16"``) space is held on the device it is searched
            on: ``"auto"`` (default) keeps the top ``device_top_k`` logits of each entry on a GPU
            (never the dense table) and the stored rows on the CPU; ``"topk"`` always, ``"fp16"``
            never (the dense table is copied to the GPU as is). A top-k space stays top-k.
        device_top_k: Logits kept per entry when a dense space is searched as sparse rows.
    """

    keys: Any
    manifest: dict[str, Any]
    logits: Any = None
    topk_indices: Any = None
    topk_values: Any = None
    token_ids: Any = None
    device_storage: DeviceStorage = "auto"
    device_top_k: int = 64
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
            embedder: Window key: ``"default"`` (all-MiniLM-L6-v2), ``"minilm"``, ``"static"`` (a
                model2vec distillation of MiniLM, much cheaper per decoding step; see
                :class:`WindowEncoder`), a model name/path or a :class:`WindowEncoder`. Recorded
                in the manifest; a processor refuses another key.
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
            "embedder_fingerprint": enc.fingerprint,
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
        if base is not None:
            dim = int(base.keys.shape[1])  # the base's window key decides the dimension
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
            idx, vals = _topk_rows(self.logits, top_k)
            m = dict(self.manifest, storage="topk", top_k=top_k)
            return GroundingSpace(self.keys, m, topk_indices=idx, topk_values=vals, token_ids=self.token_ids,
                                  device_storage=self.device_storage, device_top_k=self.device_top_k)
        if storage == "fp16":
            dense = torch.zeros((len(self), self.vocab_size), dtype=torch.float32)
            dense.scatter_(1, self.topk_indices, self.topk_values.float())
            m = dict(self.manifest, storage="fp16", top_k=None)
            return GroundingSpace(self.keys, m, logits=dense.half(), token_ids=self.token_ids,
                                  device_storage=self.device_storage, device_top_k=self.device_top_k)
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

    def check_embedder(self, encoder: WindowEncoder, *, load: bool = True) -> None:
        """Raise :class:`GroundingSpaceMismatchError` unless ``encoder`` is the window key the
        space was built with (same name, and for a static key the same table fingerprint; with
        ``load``, also the same dimension). An encoder of unknown name (``"custom"``: a model object
        without a name) is checked by dimension only."""
        built = self.manifest.get("embedder")
        if built and encoder.name != "custom" and built != "custom" and encoder.name != built:
            raise GroundingSpaceMismatchError(
                f"this grounding space was built with the window key {built!r}, but the processor embeds "
                f"windows with {encoder.name!r}: keys from different embedders are not comparable. Use "
                f"embedder={_key_hint(built)!r} (or omit embedder= to use the space's own), or rebuild the "
                "space with GroundingSpace.build(..., embedder=...)"
            )
        if not load:
            return
        fp = self.manifest.get("embedder_fingerprint")
        if fp and encoder.is_static and encoder.fingerprint != fp:
            raise GroundingSpaceMismatchError(
                f"this grounding space was built with the static window key {built!r} ({fp}), but the key "
                f"in use has another table ({encoder.fingerprint}); rebuild the space or use the same key folder"
            )
        dim = self.manifest.get("embedder_dim", int(self.keys.shape[1]))
        if encoder.dim != int(dim):
            raise GroundingSpaceMismatchError(
                f"this grounding space has {dim}-dimensional keys ({built!r}), but the window embedder "
                f"{encoder.name!r} gives {encoder.dim}: rebuild the space with this embedder or use its own"
            )

    # -- lookup ------------------------------------------------------------------------------
    def storage_on(self, device: Any) -> Storage:
        """The storage searched on ``device``: ``"topk"`` for a dense space on a GPU under
        ``device_storage="auto"`` (see the class attributes), else as set or stored."""
        if self.storage == "topk" or self.device_storage == "fp16":
            return self.storage
        if self.device_storage == "topk":
            return "topk"
        if self.device_storage != "auto":
            raise ConfigError(f"device_storage must be 'auto', 'fp16' or 'topk', got {self.device_storage!r}")
        return "fp16" if getattr(device, "type", str(device).split(":")[0]) == "cpu" else "topk"

    def on(self, device: Any) -> dict[str, Any]:
        """The space's tensors on ``device`` (moved once and cached; see :meth:`storage_on`)."""
        torch = require("torch")
        device = torch.device(device)
        key = str(device)
        if key not in self._device_cache:
            self._device_cache.clear()
            keys = self.keys.to(device, dtype=torch.float32)
            storage = self.storage_on(device)
            if storage == "topk" and self.storage == "fp16":
                if not isinstance(self.device_top_k, int) or self.device_top_k < 1:
                    raise ConfigError(f"device_top_k must be an int >= 1, got {self.device_top_k!r}")
                idx, vals = _topk_rows(self.logits, self.device_top_k, device=device)
            else:
                idx = None if self.topk_indices is None else self.topk_indices.to(device)
                vals = None if self.topk_values is None else self.topk_values.to(device)
            self._device_cache[key] = {
                "storage": storage,
                "keys": keys,
                # (dim, N) contiguous: a (B, dim) @ (dim, N) product streams the keys once, row-major
                # (measured 2-4x faster on CPU than multiplying by the transposed view)
                "keys_t": keys.T.contiguous(),
                "logits": self.logits.to(device) if storage == "fp16" else None,
                "idx": idx,
                "vals": vals,
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
        if t["storage"] == "topk":
            idx, vals = t["idx"][cols], t["vals"][cols].float()  # (m, k)
            contrib = wn[:, :, None] * vals[None]  # (B, m, k)
            z.scatter_add_(1, idx.reshape(1, -1).expand(b, -1), contrib.reshape(b, -1))
        else:
            for s in range(0, cols.numel(), chunk):
                c = cols[s : s + chunk]
                z += wn[:, s : s + chunk] @ t["logits"][c].float()
        return z, matched, mean_sim


def _key_hint(name: str) -> str:
    """The ``embedder=`` value that selects the key recorded as ``name``."""
    if name.startswith("ctxkit-static:"):
        from .static_key import StaticKeyConfig

        return "static" if name == StaticKeyConfig().name else name
    return "minilm" if name == "sentence-transformers/all-MiniLM-L6-v2" else name


def _topk_rows(logits: Any, k: int, *, device: Any = None) -> tuple[Any, Any]:
    """Top-``k`` ``(indices, values - kth value)`` of each dense row, in blocks of rows.

    Blocks are moved to ``device`` (default: where ``logits`` are) before the float32 top-k, so a
    dense table on the CPU never needs a full float32 copy nor a full copy on the GPU.
    """
    torch = require("torch")
    k = min(k, int(logits.shape[1]))
    dev = logits.device if device is None else torch.device(device)
    idx_parts, val_parts = [], []
    for s in range(0, int(logits.shape[0]), _TOPK_BLOCK_ROWS):
        vals, idx = logits[s : s + _TOPK_BLOCK_ROWS].to(dev).float().topk(k, dim=-1)
        idx_parts.append(idx)
        val_parts.append((vals - vals[:, -1:]).half())
    if not idx_parts:
        return (torch.zeros((0, k), dtype=torch.long, device=dev), torch.zeros((0, k), dtype=torch.float16, device=dev))
    return torch.cat(idx_parts), torch.cat(val_parts)
