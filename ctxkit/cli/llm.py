"""``ctxkit serve``: an OpenAI-compatible chat-completions server for a local model."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``serve`` on the ``ctxkit`` command line."""
    p = sub.add_parser(
        "serve",
        help="serve a local model with the OpenAI chat-completions API",
        description="Serve a transformers model (local path, hub id, .gguf, or 'default' = SmolLM2) at "
        "http://HOST:PORT/v1/chat/completions. Concurrent requests are batched together.",
    )
    p.add_argument("--model", default="default", help="model path / hub id / 'default' (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--name", default=None, help="model id reported by the API (default: --model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16 (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="requests per generate call (default: %(default)s)")
    p.add_argument("--max-input-tokens", type=int, default=None, help="prompt budget; context is truncated")
    p.add_argument("--max-new-tokens", type=int, default=256, help="default max_tokens (default: %(default)s)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ctxkit.llm.server import serve
    from ctxkit.llm.transformers import TransformersGenerator

    gen = TransformersGenerator(
        args.model,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_input_tokens=args.max_input_tokens,
        settings={"max_new_tokens": args.max_new_tokens},
    )
    gen.warm_up()
    serve(gen, host=args.host, port=args.port, model_name=args.name or args.model,
          max_batch_size=args.batch_size, api_key=args.api_key)
    return 0
