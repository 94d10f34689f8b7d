"""`modernlm serve`: the OpenAI-compatible server (chat and completions, streamed or not), /metrics and a chat page.

Loopback only unless --host says otherwise; a public host without --api-key is announced as open to anyone who can
reach it. Needs the `serve` extra: pip install 'modernlm[serve]'.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
from pathlib import Path

from .common import add_model_args, load_for

log = logging.getLogger("modernlm")
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
DEFAULT_CONTEXT = 2048  # the KV cache is max_batch x context positions, preallocated


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over the OpenAI API (with a chat page at /)",
        description="An OpenAI-compatible server with continuous batching and a prefix cache. "
        "Open http://HOST:PORT/ for the chat page.",
    )
    add_model_args(p, kv_cache=True)  # --model, --dtype, --device, --quantize, --kv-cache
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=os.environ.get("MODERNLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $MODERNLM_API_KEY; none: open)")  # fmt: skip
    p.add_argument("--model-id", default=None, help="the name clients use (default: the --model value)")
    p.add_argument("--embedding-model", default=None, metavar="SOURCE",
                   help="an encoder served at /v1/embeddings beside the chat model, e.g. all-minilm-l6-v2")  # fmt: skip
    g = p.add_argument_group("engine")
    g.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default: 8)")
    g.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond them; more get 429")
    g.add_argument("--context", type=int, default=None,
                   help=f"positions per sequence (default: the model's, at most {DEFAULT_CONTEXT})")  # fmt: skip
    g.add_argument("--prefix-cache-blocks", type=int, default=256, help="blocks of 16 tokens kept (0: off)")
    g.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens prefilled per step (default: 512)")
    g.add_argument("--time-limit", type=float, default=600.0, help="seconds a request may run (default: 600)")
    g.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens allowed (default: the context)")
    g.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default: 1 MiB)")
    p.set_defaults(func=run)


def _check(args) -> None:
    for name in ("port", "max_batch", "max_queue", "context", "prefill_chunk", "time_limit", "max_tokens", "max_body"):
        value = getattr(args, name)
        if value is not None and not 0 < value < math.inf:  # NaN fails this too
            raise ValueError(f"--{name.replace('_', '-')} must be a positive (finite) number, got {value}")
    if args.max_tokens is not None and args.context is not None and args.max_tokens > args.context:
        raise ValueError(f"--max-tokens {args.max_tokens} cannot exceed --context {args.context} (the positions a "
                         "sequence has, prompt included): lower --max-tokens")  # fmt: skip
    if args.prefix_cache_blocks < 0:
        raise ValueError(f"--prefix-cache-blocks must be >= 0, got {args.prefix_cache_blocks}")
    if args.port > 65535:
        raise ValueError(f"--port must be at most 65535, got {args.port}")
    if args.api_key is not None and not args.api_key:
        raise ValueError("--api-key is empty: give a key or leave the flag out")


def _check_host(host: str, port: int) -> None:
    """A --host this machine can listen on, found out before the model loads (not as a resolver error after it)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"--host {host!r} is not an address this machine can listen on ({e}); give an IP address "
                         "such as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None  # fmt: skip


def _context(args, limit: int) -> int:
    """The positions per sequence: --context (at most the model's), or the model's capped at DEFAULT_CONTEXT."""
    if args.context is not None and args.context > limit:
        raise ValueError(f"--context {args.context} is more than this model's context of {limit} positions; "
                         f"give at most {limit}")  # fmt: skip
    context = args.context or min(limit, DEFAULT_CONTEXT)
    if args.max_tokens is not None and args.max_tokens > context:
        raise ValueError(f"--max-tokens {args.max_tokens} cannot exceed the context of {context} positions (prompt "
                         "included): lower --max-tokens, or raise --context")  # fmt: skip
    return context


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _embedder(args):
    """The encoder of --embedding-model, behind /v1/embeddings (None without the flag)."""
    if args.embedding_model is None:
        return None
    from ..loading import load
    from ..serving.embeddings import Embedder

    model, tokenizer = load(args.embedding_model, device=args.device)
    name = Path(str(args.embedding_model).rstrip("/")).name  # a name, never a path on this machine
    log.info("embeddings: %s at /v1/embeddings", name)
    return Embedder(model, tokenizer, name)


def run(args) -> int:
    _check(args)
    try:
        import uvicorn

        from ..serving.api import create_app
    except ImportError as e:
        raise ValueError(f"serving needs FastAPI and uvicorn ({e}): pip install 'modernlm[serve]'") from None
    from ..serving.engine import Engine

    if not is_loopback(args.host) and args.api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model",
                    args.host)  # fmt: skip
    _check_host(args.host, args.port)
    model, tokenizer = load_for(args)
    if model.config.family != "decoder":
        raise ValueError(f"{args.model} is not a decoder: the server's chats and completions need one; an encoder's "
                         f"sentence embeddings are served beside it with --embedding-model {args.model}")  # fmt: skip
    embedder = _embedder(args)
    context = _context(args, model.config.max_seq_len)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue, context=context,
                    prefix_blocks=args.prefix_cache_blocks, prefill_chunk=args.prefill_chunk,
                    time_limit=args.time_limit)  # fmt: skip
    model_id = args.model_id or Path(str(args.model).rstrip("/")).name  # a name, never a path on this machine
    app = create_app(engine, model_id, api_key=args.api_key, max_body=args.max_body, max_tokens=args.max_tokens,
                     embedder=embedder)  # fmt: skip
    engine.start()
    cache_mb = (engine.cache.nbytes() + (engine.prefix.nbytes() if engine.prefix else 0)) / 2**20
    log.info("engine: %d sequences x %d positions, KV cache and prefix cache %.0f MiB", args.max_batch,
             engine.context, cache_mb)  # fmt: skip
    log.info("serving %s on http://%s:%d/ (chat page at /, API at /v1)", args.model, args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        engine.stop()
    return 0
