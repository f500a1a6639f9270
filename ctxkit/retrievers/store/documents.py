"""Documents as the store takes them: :class:`Document`, and the normalisation of input dicts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import InputError

__all__ = ["Document", "as_document", "sanitize_meta"]


@dataclass
class Document:
    """A document to index.

    Attributes:
        id: Stable document id (a file path, a BEIR ``_id``...). Chunk ids derive from it.
        text: The full text.
        title: Optional title, prepended to every chunk (it often carries the topic).
        metadata: Scalars kept on every chunk (filterable with ``where``).
    """

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def sanitize_meta(meta: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """Metadata Chroma accepts: ``None`` values dropped, non-scalars JSON-encoded."""
    out: dict[str, str | int | float | bool] = {}
    for k, v in meta.items():
        if v is None:
            continue
        if isinstance(v, bool | int | float | str):
            out[str(k)] = v
        else:
            out[str(k)] = json.dumps(v, ensure_ascii=False, default=str)
    return out


def as_document(raw: Document | dict[str, Any]) -> Document:
    """A validated :class:`Document` from a ``Document`` or a dict (``id``/``_id``, ``text``...).

    Raises:
        InputError: no id, an id ending in ``#<number>`` (reserved for chunk ids), or non-text.
    """
    if isinstance(raw, Document):
        doc = raw
    elif isinstance(raw, dict):
        doc_id = raw.get("id", raw.get("_id"))
        if doc_id is None:
            raise InputError(f"a document dict needs an 'id' (or '_id'); got keys {sorted(raw)}")
        doc = Document(
            id=str(doc_id), text=raw.get("text", ""), title=str(raw.get("title") or ""),
            metadata=dict(raw.get("metadata") or {}),
        )
    else:
        raise InputError(f"documents must be Document objects or dicts, got {type(raw).__name__}")
    if not doc.id or "#" in doc.id and doc.id.rsplit("#", 1)[-1].isdigit():
        raise InputError(f"invalid document id {doc.id!r}: must be non-empty and not end in '#<number>'")
    if not isinstance(doc.text, str):
        raise InputError(f"document {doc.id!r}: text must be a string")
    return doc
