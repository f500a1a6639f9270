"""Embedded generation with Hugging Face transformers: batched, left-padded, KV-cached.

:class:`TransformersGenerator` loads a causal LM lazily (local path, hub id, or the packaged
offline SmolLM2 GGUF), renders each conversation with the tokenizer's chat template, and runs
``model.generate`` on batches of similar-length prompts. It exposes the loaded ``model`` and
``tokenizer`` and passes ``logits_processors`` through to ``generate`` (CAAD plugs in there).

Truncation never cuts the question or the instructions: only text between the context markers
(``<context>`` ... ``</context>`` by default) inside message contents is shortened, token-accurately,
from the end of the last block backwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from .._lazy import require
from ..errors import ConfigError, InputError
from .base import (
    CONTEXT_CLOSE,
    CONTEXT_OPEN,
    BaseGenerator,
    Generation,
    Message,
    SamplingSettings,
    as_messages,
)
from .budget import PromptTooLong as _TooLong
from .budget import TokenizerCounter, encode_prompt, fit_context, render_chat

__all__ = ["CONTEXT_CLOSE", "CONTEXT_OPEN", "ROW_PREFILL_MIN_TOKENS", "TransformersGenerator", "model_cache_dir"]

log = logging.getLogger(__name__)

ROW_PREFILL_MIN_TOKENS = 256
"""``prefill="auto"`` reads prompts one row at a time on a CPU from this prompt length on."""


def model_cache_dir() -> Path:
    """Where converted models are cached: ``$CTXKIT_CACHE/models`` or ``~/.cache/ctxkit/models``."""
    root = os.environ.get("CTXKIT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ctxkit"
    return base / "models"


def _gguf_cache_path(name: str, gguf_path: Path) -> Path:
    st = gguf_path.stat()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    key = hashlib.sha1(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return model_cache_dir() / f"{safe}-{key}"


class TransformersGenerator(BaseGenerator):
    """A causal LM from transformers as a batched :class:`~ctxkit.llm.base.Generator`.

    Args:
        model: Local directory, ``.gguf`` file, hub id, or ``"default"`` (SmolLM2-135M-Instruct,
            packaged offline as GGUF; converted once and cached, see :func:`model_cache_dir`).
        device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda:0"``...
        dtype: ``"auto"`` (bf16/fp16 on CUDA, fp32 elsewhere), ``"float32"``, ``"float16"``,
            ``"bfloat16"``.
        batch_size: Conversations per ``generate`` call (prompts are sorted by length first).
        max_batch_tokens: Cap on the padded prompt tokens of one call (rows x longest prompt);
            a call takes fewer than ``batch_size`` rows when their prompts are long. ``None``
            (default): no cap. Useful on a CPU, where prefill is compute-bound and every
            padding token costs as much as a real one.
        prefill: How a multi-row call reads its prompts. ``"batch"``: one left-padded forward
            pass (best on a GPU). ``"rows"``: each prompt alone (no padding tokens, no attention
            over padding), then the rows' KV caches are left-padded into one cache and decoding
            runs batched; greedy outputs are the same as ``"batch"``. ``"auto"`` (default):
            ``"rows"`` on a CPU when the longest prompt of the call has at least
            ``ROW_PREFILL_MIN_TOKENS`` tokens, else ``"batch"``. Models whose cache is not a
            plain per-layer key/value cache (sliding-window or recurrent layers) always use
            ``"batch"``.
        max_input_tokens: Prompt budget in tokens; ``None`` uses the model's context size minus
            ``max_new_tokens``. Longer prompts lose context text (never other text).
        settings: Default :class:`SamplingSettings` (greedy by default).
        logits_processors: ``transformers.LogitsProcessor`` objects applied at every decoding
            step (override per call with ``generate(..., logits_processors=[...])``).
        chat_template: Apply the tokenizer's chat template (``True``), or a Jinja template
            string to use instead. ``False`` joins message contents with blank lines.
        context_markers: The (open, close) strings that delimit truncatable context.
        strip_context_markers: Remove the markers from the prompt the model sees (they still
            delimit what may be truncated). Off by default: the tags also tell the model where
            the context is.
        trust_remote_code: Passed to ``from_pretrained`` (off by default).
        show_progress: Show a progress bar over batches.

    Example:
        >>> gen = TransformersGenerator("default", batch_size=8)
        >>> gen.generate([[Message(role="user", content="Capital of France?")]])[0].text
    """

    def __init__(
        self,
        model: str = "default",
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        max_batch_tokens: int | None = None,
        prefill: Literal["auto", "batch", "rows"] = "auto",
        max_input_tokens: int | None = None,
        settings: SamplingSettings | dict[str, Any] | None = None,
        logits_processors: Sequence[Any] | None = None,
        chat_template: bool | str = True,
        context_markers: tuple[str, str] = (CONTEXT_OPEN, CONTEXT_CLOSE),
        strip_context_markers: bool = False,
        trust_remote_code: bool = False,
        show_progress: bool = False,
    ) -> None:
        try:
            super().__init__(settings)
        except ValueError as exc:
            raise ConfigError(f"TransformersGenerator: invalid sampling settings: {exc}") from None
        if not isinstance(model, str | os.PathLike) or not str(model).strip():
            raise ConfigError("TransformersGenerator: model must be a non-empty name or path")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"TransformersGenerator: batch_size must be an int >= 1, got {batch_size!r}")
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ConfigError(
                f"TransformersGenerator: max_batch_tokens must be an int >= 1 or None, got {max_batch_tokens!r}"
            )
        if prefill not in ("auto", "batch", "rows"):
            raise ConfigError(f"TransformersGenerator: prefill must be 'auto', 'batch' or 'rows', got {prefill!r}")
        if max_input_tokens is not None and (not isinstance(max_input_tokens, int) or max_input_tokens < 1):
            raise ConfigError(
                f"TransformersGenerator: max_input_tokens must be an int >= 1 or None, got {max_input_tokens!r}"
            )
        if dtype not in ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16"):
            raise ConfigError(
                f"TransformersGenerator: unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16"
            )
        if (
            not isinstance(context_markers, tuple | list)
            or len(context_markers) != 2
            or not all(isinstance(m, str) and m for m in context_markers)
            or context_markers[0] == context_markers[1]
        ):
            raise ConfigError(
                "TransformersGenerator: context_markers must be two different non-empty strings"
            )
        self.model_name = str(model)
        self.device_setting = device
        self.dtype_setting = dtype
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.prefill = prefill
        self.max_input_tokens = max_input_tokens
        self.logits_processors = list(logits_processors or [])
        self.chat_template = chat_template
        self.context_markers = (context_markers[0], context_markers[1])
        self.strip_context_markers = bool(strip_context_markers)
        self.trust_remote_code = trust_remote_code
        self.show_progress = show_progress
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.RLock()
        self.loaded_from: str | None = None

    # -- loading ---------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the model and tokenizer now (otherwise done on first use)."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                self._load()

    @property
    def model(self) -> Any:
        """The loaded ``PreTrainedModel`` (loads on first access)."""
        self.warm_up()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer, with left padding and a pad token (loads on first access)."""
        self.warm_up()
        return self._tokenizer

    @property
    def device(self) -> Any:
        """The ``torch.device`` the model runs on."""
        return self.model.device

    def to_spec(self) -> dict[str, Any]:
        """The spec dict that :func:`ctxkit.llm.build_generator` turns back into this generator."""
        spec: dict[str, Any] = {"backend": "transformers", "model": self.model_name}
        for key, default in (
            ("device", "auto"), ("dtype", "auto"), ("batch_size", 8), ("max_batch_tokens", None),
            ("prefill", "auto"), ("max_input_tokens", None),
            ("chat_template", True), ("trust_remote_code", False),
        ):
            value = getattr(self, "device_setting" if key == "device" else "dtype_setting" if key == "dtype" else key)
            if value != default:
                spec[key] = value
        if self.context_markers != (CONTEXT_OPEN, CONTEXT_CLOSE):
            spec["context_markers"] = list(self.context_markers)
        if self.strip_context_markers:
            spec["strip_context_markers"] = True
        if self.default_settings != SamplingSettings():
            spec["settings"] = self.default_settings.model_dump(exclude_defaults=True)
        return spec

    def _load(self) -> None:
        from ..models import resolve_device, resolve_dtype, resolve_model

        tf = require("transformers")
        resolved = resolve_model(self.model_name, "llm")
        device = resolve_device(self.device_setting)
        dtype = resolve_dtype(device, self.dtype_setting)
        path, gguf = resolved.path, resolved.gguf_file
        if gguf:
            path, gguf = self._gguf_converted(path, gguf)
        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if gguf:
            kw["gguf_file"] = gguf
        tok = tf.AutoTokenizer.from_pretrained(path, **kw)
        model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        model.to(device)
        model.eval()
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            eos = tok.eos_token or (tok.convert_ids_to_tokens(model.config.eos_token_id) if isinstance(
                model.config.eos_token_id, int) else None)
            if eos is None:
                raise ConfigError(f"model {self.model_name!r} has neither a pad nor an eos token")
            tok.pad_token = eos
        self._tokenizer = tok
        self._model = model
        self.loaded_from = path
        log.info("loaded %s from %s on %s (%s)", self.model_name, path, device, dtype)

    def _gguf_converted(self, directory: str, gguf_file: str) -> tuple[str, str | None]:
        """A saved transformers copy of a GGUF checkpoint (converted on first use, then cached)."""
        tf = require("transformers")
        src = Path(directory) / gguf_file
        target = _gguf_cache_path(self.model_name if self.model_name != "default" else "SmolLM2-135M-Instruct", src)
        if (target / "config.json").is_file():
            return str(target), None
        log.warning("converting %s (GGUF) to transformers once; cached in %s", src.name, target)
        tok = tf.AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        model = tf.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
        if any("gguf" in type(m).__name__.lower() for m in model.modules()):
            return directory, gguf_file  # weights kept packed (GGUF kernels): not a dense copy to save
        # The weights are de-quantised into plain tensors: save them as an ordinary checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not (target / "config.json").is_file():
                    raise
        except OSError as exc:  # read-only cache: keep working from the GGUF itself
            log.warning("cannot cache the converted model in %s (%s); loading from GGUF", target, exc)
            return directory, gguf_file
        return str(target), None

    # -- prompt rendering and truncation ---------------------------------------------------------
    def render(self, conversation: list[Message] | list[dict[str, str]] | str) -> str:
        """The prompt text for one conversation (chat template + generation prompt), untruncated."""
        return self._render(as_messages(conversation))

    def prompt(
        self, conversation: list[Message] | list[dict[str, str]] | str, *, max_new_tokens: int | None = None
    ) -> str:
        """The exact prompt text the model would see, after context truncation.

        Raises:
            InputError: the prompt cannot fit even with all context removed.
        """
        self.warm_up()
        budget = self._budget(max_new_tokens or self.default_settings.max_new_tokens)
        try:
            ids, _ = self._prepare(as_messages(conversation), budget)
        except _TooLong as exc:
            raise InputError(f"prompt too long: {exc}") from None
        return self._tokenizer.decode(ids)

    def _render(self, messages: list[Message]) -> str:
        tok = self.tokenizer
        if self.strip_context_markers:
            o, c = self.context_markers
            messages = [Message(role=m.role, content=m.content.replace(o, "").replace(c, "")) for m in messages]
        return render_chat(messages, tok, self.chat_template)

    def _encode(self, text: str) -> list[int]:
        return encode_prompt(self._tokenizer, text, self.chat_template)

    def _budget(self, max_new_tokens: int) -> int:
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        cfg = self.model.config
        ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        tml = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tml, int) and tml < 10**8:
            ctx = min(ctx, tml)
        return max(ctx - max_new_tokens, 1)

    def _prepare(self, messages: list[Message], budget: int) -> tuple[list[int], int]:
        """Token ids of the prompt within ``budget``; returns (ids, context tokens removed)."""
        ids, _, removed = fit_context(
            messages, budget, encode=lambda ms: self._encode(self._render(ms)),
            counter=TokenizerCounter(self._tokenizer), markers=self.context_markers,
        )
        return ids, removed

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        batch: list[list[Message]] | list[Any],
        settings: SamplingSettings | None = None,
        *,
        logits_processors: Sequence[Any] | None = None,
        **overrides: Any,
    ) -> list[Generation]:
        """Generate one answer per conversation; failures are recorded per item.

        Args:
            batch: Conversations (lists of :class:`Message` or role/content dicts, or strings).
            settings: Sampling settings for this call (defaults: the instance's).
            logits_processors: Replace the instance's processors for this call (``[]`` disables).
            **overrides: Individual :class:`SamplingSettings` fields, e.g. ``max_new_tokens=32``.

        Returns:
            One :class:`Generation` per conversation, in input order.
        """
        cfg = self._sampling(settings, overrides)
        if isinstance(batch, str):
            raise InputError("generate expects a list of conversations; wrap a single prompt in a list")
        results: list[Generation | None] = [None] * len(batch)
        if not batch:
            return []
        self.warm_up()
        budget = self._budget(cfg.max_new_tokens)
        prepared: list[tuple[int, list[int], int]] = []
        for i, conv in enumerate(batch):
            try:
                ids, removed = self._prepare(as_messages(conv), budget)
                prepared.append((i, ids, removed))
            except _TooLong as exc:
                results[i] = Generation(error=f"prompt too long: {exc}", finish_reason="error")
            except Exception as exc:  # noqa: BLE001 - a bad item must not abort the batch
                results[i] = Generation(error=f"{type(exc).__name__}: {exc}", finish_reason="error")
        procs = self.logits_processors if logits_processors is None else list(logits_processors)
        order = sorted(prepared, key=lambda t: len(t[1]), reverse=True)
        chunks = self._chunks(order, lambda t: len(t[1]))
        bar = None
        if self.show_progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(order), desc="generate", unit="prompt")
        for chunk in chunks:
            try:
                outs = self._generate_chunk([ids for _, ids, _ in chunk], cfg, procs)
            except Exception as exc:  # noqa: BLE001 - retry one by one to isolate the bad item
                if len(chunk) == 1:
                    outs = [Generation(error=f"{type(exc).__name__}: {exc}", finish_reason="error")]
                else:
                    outs = []
                    for _, ids, _ in chunk:
                        try:
                            outs.extend(self._generate_chunk([ids], cfg, procs))
                        except Exception as exc1:  # noqa: BLE001
                            outs.append(Generation(error=f"{type(exc1).__name__}: {exc1}",
                                                   finish_reason="error"))
            for (i, ids, removed), g in zip(chunk, outs, strict=True):
                g.n_prompt_tokens = len(ids)
                if removed:
                    g.info["truncated_context_tokens"] = removed
                results[i] = g
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return [r if r is not None else Generation(error="not generated", finish_reason="error") for r in results]

    def stream(
        self,
        conversation: list[Message] | list[Any] | str,
        settings: SamplingSettings | None = None,
        *,
        logits_processors: Sequence[Any] | None = None,
        **overrides: Any,
    ) -> Iterator[str]:
        """Generate one answer and yield its text as the tokens are decoded.

        Same prompt budget, sampling settings and logits processors as :meth:`generate` (one
        conversation, no batching); text after a stop string is never yielded.

        Raises:
            InputError: the prompt does not fit the token budget.
        """
        tf = require("transformers")
        cfg = self._sampling(settings, overrides)
        self.warm_up()
        try:
            ids, _ = self._prepare(as_messages(conversation), self._budget(cfg.max_new_tokens))
        except _TooLong as exc:
            raise InputError(f"prompt too long: {exc}") from None
        procs = self.logits_processors if logits_processors is None else list(logits_processors)
        streamer = tf.TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._generate_chunk([ids], cfg, procs, streamer=streamer)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, name="ctxkit-stream", daemon=True)
        thread.start()
        hold = max((len(s) for s in cfg.stop), default=1) - 1  # a stop string may span pieces
        text, sent = "", 0
        for piece in streamer:
            text += piece
            cut = _first_stop(text, cfg.stop)
            if cut is not None:
                if cut > sent:
                    yield text[sent:cut]
                for _ in streamer:  # drain: the worker finishes the (unseen) rest
                    pass
                break
            if len(text) - hold > sent:
                yield text[sent : len(text) - hold]
                sent = len(text) - hold
        else:
            if len(text) > sent:
                yield text[sent:]
        thread.join()
        if failure:
            raise failure[0]

    def _sampling(self, settings: SamplingSettings | dict[str, Any] | None, overrides: dict[str, Any]) -> SamplingSettings:
        if isinstance(settings, dict):
            overrides = {**settings, **overrides}
            settings = None
        try:
            return self._settings(settings, overrides)
        except ValueError as exc:
            raise InputError(f"invalid sampling settings: {exc}") from None

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.model.config.eos_token_id,
                    self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, list | tuple):
                ids.update(int(x) for x in src)
        return sorted(ids)

    def _generate_chunk(
        self, rows: list[list[int]], cfg: SamplingSettings, procs: list[Any], streamer: Any = None
    ) -> list[Generation]:
        torch = require("torch")
        tf = require("transformers")
        tok, model = self.tokenizer, self.model
        pad_id = tok.pad_token_id
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):  # left padding
            if r:
                input_ids[k, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[k, width - len(r):] = 1
        eos = self._eos_ids()
        gen_cfg = tf.GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=not cfg.greedy,
            pad_token_id=pad_id,
            eos_token_id=eos or None,
            bos_token_id=tok.bos_token_id,
        )
        if cfg.repetition_penalty != 1.0:
            gen_cfg.repetition_penalty = cfg.repetition_penalty
        if not cfg.greedy:
            gen_cfg.temperature = cfg.temperature
            gen_cfg.top_p = cfg.top_p
            gen_cfg.top_k = cfg.top_k if cfg.top_k is not None else 0
        kwargs: dict[str, Any] = {}
        if cfg.stop:
            gen_cfg.stop_strings = list(cfg.stop)
            kwargs["tokenizer"] = tok
        if procs:
            kwargs["logits_processor"] = tf.LogitsProcessorList(procs)
        if streamer is not None:
            kwargs["streamer"] = streamer
        dev = model.device
        with self._lock, torch.inference_mode(), contextlib.ExitStack() as stack:
            # one generate at a time (global seed, memory)
            for p in procs:  # e.g. CAAD embeds its windows on a spare core during the forward pass
                if callable(getattr(p, "prefetching", None)):
                    stack.enter_context(p.prefetching(model))
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
            if self._row_prefill(rows, dev):
                cache = self._rows_cache(rows, width, dev)
                if cache is not None:
                    kwargs[self._cache_kwarg()] = cache
            out = model.generate(
                input_ids=input_ids.to(dev), attention_mask=mask.to(dev), generation_config=gen_cfg, **kwargs
            )
        new = out[:, width:].tolist()
        eos_set = set(eos)
        gens = []
        for seq in new:
            n, hit_eos = 0, False
            for t in seq:
                if t in eos_set:
                    hit_eos = True
                    break
                n += 1
            if not hit_eos and cfg.stop and pad_id not in eos_set:
                while n and seq[n - 1] == pad_id:  # a row ended by a stop string is padded after it
                    n -= 1
            toks = seq[:n]
            text = tok.decode(toks, skip_special_tokens=True)
            reason: Literal["stop", "length"] = "stop" if hit_eos else "length"
            cut = _first_stop(text, cfg.stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
            gens.append(Generation(text=text.strip(), finish_reason=reason, n_tokens=n + int(hit_eos)))
        return gens

    def _row_prefill(self, rows: list[list[int]], dev: Any) -> bool:
        if len(rows) < 2 or min(len(r) for r in rows) < 2 or self.prefill == "batch":
            return False
        return self.prefill == "rows" or (
            getattr(dev, "type", str(dev)) == "cpu" and max(len(r) for r in rows) >= ROW_PREFILL_MIN_TOKENS
        )

    def _forward_params(self) -> Any:
        import inspect

        return inspect.signature(self.model.forward).parameters

    def _cache_kwarg(self) -> str:
        return "cache" if "cache" in self._forward_params() else "past_key_values"

    def _rows_cache(self, rows: list[list[int]], width: int, dev: Any) -> Any:
        """Prefill each row alone (all but its last token) and left-pad the caches into one.

        Returns ``None`` (the caller then prefills the padded batch) when the model's cache is
        not a plain per-layer key/value cache.
        """
        torch = require("torch")
        tf = require("transformers")
        model = self.model
        name = self._cache_kwarg()
        extra = {"logits_to_keep": 1} if "logits_to_keep" in self._forward_params() else {}
        per_layer: list[list[tuple[Any, Any]]] = []
        for r in rows:
            cache = tf.DynamicCache(config=model.config)
            model(input_ids=torch.tensor([r[:-1]], device=dev), use_cache=True, **{name: cache}, **extra)
            layers = getattr(cache, "layers", None)
            if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
                return None
            pad = width - len(r)
            per_layer.append([
                (torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)),
                 torch.nn.functional.pad(layer.values, (0, 0, pad, 0)))
                for layer in layers
            ])
        merged = [
            (torch.cat([row[i][0] for row in per_layer]), torch.cat([row[i][1] for row in per_layer]))
            for i in range(len(per_layer[0]))
        ]
        return tf.DynamicCache(ddp_cache_data=merged, config=model.config)

    # -- scoring ---------------------------------------------------------------------------------
    def score(
        self,
        batch: list[list[Message]] | list[Any],
        continuations: list[str],
        *,
        reduce: Literal["sum", "mean"] = "sum",
    ) -> list[float]:
        """Log-likelihood of each continuation as the assistant's reply to its conversation.

        Args:
            batch: Conversations (the chat template's generation prompt is appended).
            continuations: One text per conversation.
            reduce: ``"sum"`` of token log-probs, or ``"mean"`` per continuation token.

        Returns:
            One float per pair; ``nan`` for a pair that cannot be scored (e.g. too long, empty
            continuation), with the reason logged.

        Memory: rows are left-padded so that the model computes logits only for the last
        positions (``logits_to_keep``, where its forward takes it); the log-softmax runs in float32
        blocks over the continuation positions only, never over ``batch x length x vocab``.
        """
        torch = require("torch")
        if reduce not in ("sum", "mean"):
            raise InputError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        if len(batch) != len(continuations):
            raise InputError(
                f"score needs one continuation per conversation: {len(batch)} conversations, "
                f"{len(continuations)} continuations"
            )
        self.warm_up()
        tok, model = self.tokenizer, self.model
        out = [math.nan] * len(batch)
        rows: list[tuple[int, list[int], int]] = []  # (index, ids, n_continuation)
        for i, (conv, cont) in enumerate(zip(batch, continuations, strict=True)):
            try:
                cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
                if not cont_ids:
                    log.warning("score: empty continuation at %d", i)
                    continue
                budget = self._budget(len(cont_ids))
                ids, _ = self._prepare(as_messages(conv), budget)
                rows.append((i, ids + cont_ids, len(cont_ids)))
            except Exception as exc:  # noqa: BLE001 - one bad pair gives nan, not a failed batch
                log.warning("score: cannot score item %d: %s", i, exc)
        rows.sort(key=lambda r: len(r[1]), reverse=True)
        pad_id = tok.pad_token_id
        params = self._forward_params()
        # Left padding puts every continuation at the end of its row, so only the last positions'
        # logits are needed (``logits_to_keep``). It needs explicit position ids; a model whose
        # forward takes none is right-padded (natural positions) and returns full logits.
        left = "position_ids" in params
        keep_arg = left and "logits_to_keep" in params
        dev = model.device
        for chunk in self._chunks(rows, lambda r: len(r[1])):
            width = max(len(r[1]) for r in chunk)
            keep = max(n for _, _, n in chunk) + 1
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (_, r, _) in enumerate(chunk):
                span = slice(width - len(r), width) if left else slice(0, len(r))
                ids[j, span] = torch.tensor(r)
                mask[j, span] = 1
            kw: dict[str, Any] = {}
            if left:
                kw["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(dev)
            if keep_arg:
                kw["logits_to_keep"] = keep
            with self._lock, torch.inference_mode():
                logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), **kw).logits
                for j, (i, r, n) in enumerate(chunk):
                    end = logits.shape[1] if left else len(r)  # one past the row's last position
                    targets = torch.tensor(r[len(r) - n :], device=logits.device)
                    total = float(_token_logprobs(logits[j, end - n - 1 : end - 1], targets).sum())
                    out[i] = total / n if reduce == "mean" else total
        return out

    def _chunks(self, rows: list[Any], length: Callable[[Any], int]) -> list[list[Any]]:
        """Consecutive batches of ``rows`` (sorted longest first) within the row and token caps."""
        out: list[list[Any]] = []
        for r in rows:
            cur = out[-1] if out else None
            if (
                cur is None
                or len(cur) >= self.batch_size
                or (self.max_batch_tokens is not None and (len(cur) + 1) * length(cur[0]) > self.max_batch_tokens)
            ):
                out.append([r])
            else:
                cur.append(r)
        return out

    def __repr__(self) -> str:
        return f"TransformersGenerator(model={self.model_name!r}, device={self.device_setting!r}, batch_size={self.batch_size})"


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


_SCORE_BLOCK_ELEMENTS = 1 << 24
"""Logits converted to float32 at a time when scoring (16M values: 64 MB, 128 rows of a 128k vocabulary)."""


def _token_logprobs(logits: Any, targets: Any) -> Any:
    """``log_softmax(logits)[k, targets[k]]`` per row, in float32 blocks of rows.

    ``logits`` is ``(n, V)`` in the model's dtype; no ``(n, V)`` float32 copy is made at once.
    """
    torch = require("torch")
    step = max(1, _SCORE_BLOCK_ELEMENTS // max(int(logits.shape[-1]), 1))
    parts = []
    for s in range(0, int(logits.shape[0]), step):
        z = logits[s : s + step].float()
        parts.append(z.gather(-1, targets[s : s + step, None]).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.cat(parts) if parts else torch.zeros(0, device=logits.device)
