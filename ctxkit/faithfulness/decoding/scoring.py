"""Teacher-forced continuation scoring, optionally with the CAAD shift (multiple-choice evaluation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._lazy import require
from ...errors import InputError

if TYPE_CHECKING:
    from .caad import CAADLogitsProcessor

__all__ = ["score_continuations"]


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
