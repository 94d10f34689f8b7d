"""The OpenAI-compatible HTTP app (FastAPI): /v1/chat/completions, /v1/completions (server-sent events or one JSON),
/v1/models, /health, /metrics (Prometheus text) and the chat page at /. A whole chat completion may carry each
reply token's attention row (`"return_attentions"`, serving/attention.py).

Every error, the client's or ours, leaves in the API's shape `{"error": {"message", "type", "param", "code"}}` with
400 (bad field), 401 (API key), 404 (unknown route or model), 405, 413 (body too large), 429 (queue full), 500 (a bug,
logged here, never a traceback in the response). Requests run on the engine's thread; its events cross to the event
loop with `call_soon_threadsafe`. A client that goes away (mid-stream or while waiting) cancels its sequences.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..checkpoints.generation_config import GREEDY, as_dict
from ..generation.inputs import encode_prompt
from . import params as P
from .attention import attention_rows, parse_spec
from .embeddings import Embedder, no_embedder
from .engine import Engine, Event, QueueFull
from .engine import Request as EngineRequest
from .params import APIError

log = logging.getLogger("modernlm")
WEB = Path(__file__).parent / "web"
FINISH = {"stop": "stop", "length": "length", "time_limit": "length", "cancelled": "stop"}


def create_app(
    engine: Engine,
    model_id: str,
    *,
    api_key: str | None = None,
    max_body: int = 1 << 20,
    max_tokens: int | None = None,
    embedder: Embedder | None = None,
) -> FastAPI:
    """The app over a started engine. `api_key`: required as `Authorization: Bearer KEY` on /v1 and /metrics;
    `max_body`: bytes a request body may have; `max_tokens`: the most a request may ask for (default: the context);
    `embedder`: an encoder served at /v1/embeddings (embeddings.py) beside the engine's model."""
    app = FastAPI(title="modernlm", docs_url=None, redoc_url=None, openapi_url=None)
    server = _Server(engine, model_id, api_key, max_body, max_tokens or engine.context)
    _error_handlers(app)
    app.add_middleware(_AccessLog)

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": engine.active, "queued": len(engine.waiting)}

    _model_routes(app, server, embedder)

    @app.get("/metrics")
    async def metrics(request: Request):
        server.authorize(request)
        blocks = len(engine.prefix) if engine.prefix is not None else 0
        engine.metrics.set_load(engine.active, len(engine.waiting))
        return PlainTextResponse(engine.metrics.prometheus(blocks), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        server.authorize(request)
        return await server.complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        server.authorize(request)
        return await server.complete(request, chat=False)

    @app.get("/")
    async def page():
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/web/{name}")
    async def asset(name: str):
        files = {p.name: p for p in WEB.iterdir() if p.is_file()}
        if name not in files:
            raise APIError(404, f"no file {name!r}", "not_found_error")
        return FileResponse(files[name])

    return app


def _model_routes(app: FastAPI, server: _Server, embedder: Embedder | None) -> None:
    """/v1/models (the chat model and the embedding model, if any) and /v1/embeddings."""

    @app.get("/v1/models")
    async def models(request: Request):
        server.authorize(request)
        return {"object": "list", "data": [server.model_card()] + ([embedder.card()] if embedder else [])}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        server.authorize(request)
        if embedder is not None and name == embedder.model_id:
            return embedder.card()
        server.check_model(name)
        return server.model_card()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        server.authorize(request)
        if embedder is None:
            raise no_embedder()
        return JSONResponse(await asyncio.to_thread(embedder, await server.body(request)))


class _AccessLog:
    """One line per request on the `modernlm.access` logger (INFO) when its response ends: client, method, path,
    status, seconds (a stream's whole length), as a web server's access log has it. Plain ASGI: the request's
    receive channel is left alone, so a client that goes away is still seen."""

    def __init__(self, app) -> None:
        self.app, self.log = app, logging.getLogger("modernlm.access")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-",)
            self.log.info('%s "%s %s" %d %.3fs', client[0], scope["method"], scope["path"], status[0],
                          time.perf_counter() - t0)  # fmt: skip


def _error_handlers(app: FastAPI) -> None:
    """Every error in the API's shape: ours (APIError), the router's (404, 405), and bugs (500, logged here)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        if e.status in (400, 413):  # a client's malformed body: one line, no traceback
            log.warning("serving: %s %s answered %d: %s", request.method, request.url.path, e.status, e.message)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return JSONResponse(APIError(e.status_code, message, kind).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        log.exception("serving: unhandled error on %s", request.url.path)
        return JSONResponse(APIError(500, "internal server error", "server_error").body(), status_code=500)


class _Server:
    def __init__(self, engine: Engine, model_id: str, api_key, max_body: int, max_tokens: int) -> None:
        self.engine, self.model_id, self.api_key = engine, model_id, api_key
        self.max_body, self.max_tokens = max_body, max_tokens
        self.tokenizer = engine.tokenizer
        self.created = int(time.time())
        self.defaults = getattr(engine.model, "generation_config", None) or GREEDY  # a field not sent takes these

    def model_card(self) -> dict:
        """OpenAI's model object, and the sampling defaults a request gets (the chat page shows them)."""
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "modernlm",
                "generation_config": as_dict(self.defaults)}  # fmt: skip

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):  # constant time
            what = "no API key given" if not header else "invalid API key"
            raise APIError(
                401, f"{what}: send 'Authorization: Bearer KEY'", "authentication_error", code="invalid_api_key"
            )

    def check_model(self, name) -> None:
        if name is not None and name != self.model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {self.model_id!r}",
                           "not_found_error", "model", "model_not_found")  # fmt: skip

    async def body(self, request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise APIError(413, f"the request body is over the limit of {self.max_body} bytes", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise APIError(
                    413, f"the request body is over the limit of {self.max_body} bytes", code="body_too_large"
                )
            chunks.append(chunk)
        return P.parse_body(b"".join(chunks))

    # ---- completions --------------------------------------------------------------------------------------------
    async def complete(self, request: Request, chat: bool):
        body = P.check_fields(await self.body(request), P.CHAT_FIELDS if chat else P.COMPLETION_FIELDS)
        self.check_model(body.get("model"))
        s = P.sampling(body, self.max_tokens, chat, self.defaults)
        attentions = parse_spec(body.get("return_attentions"), self.engine.model.config, s.stream) if chat else None
        prompts = [self.chat_prompt(body)] if chat else [self.completion_prompt(p) for p in P.prompts(body, 0)]
        requests = [self.engine_request(ids, s, chat) for ids in prompts for _ in range(s.n)]
        for i, r in enumerate(requests):
            if r.seed is not None:
                r.seed += i % s.n  # n choices of one seeded request differ from each other, reproducibly
        run = _Run(self.engine, requests)
        run.start()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        meta = dict(rid=rid, created=int(time.time()), model=self.model_id, chat=chat, s=s, n_prompts=len(prompts),
                    attentions=attentions)  # fmt: skip
        if s.stream:
            return StreamingResponse(self.stream(request, run, meta), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        body = await self.whole(request, run, meta)
        if body is None:  # the client went away: nobody reads an answer (499, nginx's "client closed request")
            return Response(status_code=499)
        return JSONResponse(body)

    def chat_prompt(self, body: dict) -> list[int]:
        messages = P.messages(body)
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template: use /v1/completions", param="messages")
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except ValueError as e:  # e.g. a template that insists on alternating roles; its words, not our paths
            message = str(e)
            source = getattr(self.tokenizer, "source", None)
            if source:
                message = message.replace(str(source), "this model")
            raise APIError(400, f"the chat template refused the messages: {message}", param="messages") from None
        return encode_prompt(self.tokenizer, text, chat=True)

    def completion_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise P.bad("prompt", "'prompt' is empty")
            return encode_prompt(self.tokenizer, prompt)
        return prompt

    def engine_request(self, ids: list[int], s: P.Sampling, chat: bool) -> EngineRequest:
        room = self.engine.room(len(ids))
        if room < 1:
            raise P.bad("messages" if chat else "prompt",
                        f"the prompt has {len(ids)} tokens, more than this model's context of {self.engine.context}",
                        "context_length_exceeded")  # fmt: skip
        max_tokens = s.max_tokens
        if max_tokens is None:
            max_tokens = min(room, self.max_tokens) if chat else min(room, 16)
        elif max_tokens > room:
            raise P.bad("max_tokens",
                        f"this model's context is {self.engine.context} tokens: the prompt has {len(ids)}, which "
                        f"leaves room for {room} new tokens, but max_tokens is {max_tokens}",
                        "context_length_exceeded")  # fmt: skip
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        r = EngineRequest(
            ids, max_tokens, s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty, s.presence_penalty,
            s.frequency_penalty, s.seed, list(s.stop), frozenset(eos + self.defaults.eos_ids()), s.logprobs,
        )  # fmt: skip
        try:
            self.engine.check(r)
        except ValueError as e:
            raise P.bad("prompt", str(e)) from None
        return r

    async def whole(self, request: Request, run: _Run, meta: dict) -> dict | None:
        texts = [[] for _ in run.requests]
        logprobs = [[] for _ in run.requests]
        finals: list[Event | None] = [None] * len(run.requests)
        async for i, event in run.events(request):
            if event.kind == "token":
                texts[i].append(event.text)
                logprobs[i].append(event)
            else:
                finals[i] = event
        if any(f is None for f in finals):
            return None
        choices = []
        for i, final in enumerate(finals):
            text = "".join(texts[i])
            choice = {"index": i, "finish_reason": FINISH[final.finish_reason]}
            if meta["chat"]:
                choice["message"] = {"role": "assistant", "content": text}
                choice["logprobs"] = self.chat_logprobs(logprobs[i]) if run.requests[i].logprobs is not None else None
                if meta["attentions"] is not None:  # beside the engine, off the event loop
                    choice["attentions"] = await asyncio.to_thread(
                        attention_rows, self.engine.model, self.token_text, run.requests[i].prompt,
                        [e.token for e in logprobs[i]], meta["attentions"])  # fmt: skip
            else:
                choice["text"] = text
                choice["logprobs"] = (
                    self.completion_logprobs(logprobs[i]) if run.requests[i].logprobs is not None else None
                )
            choices.append(choice)
        return {**self.head(meta, chat_object="chat.completion"), "choices": choices, "usage": usage(finals, meta)}

    async def stream(self, request: Request, run: _Run, meta: dict):
        chat, s = meta["chat"], meta["s"]
        finals: list[Event | None] = [None] * len(run.requests)
        head = self.head(meta, chat_object="chat.completion.chunk")
        extra = {"usage": None} if s.include_usage else {}
        try:
            if chat:
                for i in range(len(run.requests)):
                    delta = {"role": "assistant", "content": ""}
                    yield _sse({**head, "choices": [_chunk(i, delta, None, None, True)], **extra})
            async for i, event in run.events(request):
                wants = run.requests[i].logprobs is not None
                if event.kind == "token":
                    if not event.text and not wants:
                        continue
                    if chat:
                        lp = self.chat_logprobs([event]) if wants else None
                        choice = _chunk(i, {"content": event.text}, lp, None, True)
                    else:
                        lp = self.completion_logprobs([event]) if wants else None
                        choice = {"index": i, "text": event.text, "logprobs": lp, "finish_reason": None}
                else:
                    finals[i] = event
                    reason = FINISH[event.finish_reason]
                    choice = _chunk(i, {}, None, reason, True) if chat else _chunk(i, "", None, reason, False)
                yield _sse({**head, "choices": [choice], **extra})
            if s.include_usage:
                yield _sse({**head, "choices": [], "usage": usage(finals, meta)})
            yield "data: [DONE]\n\n"
        except APIError as e:  # the engine failed this request after the response began: say so in the stream
            yield _sse(e.body())
        except Exception:  # a bug here: logged, and the client gets the error shape instead of a cut stream
            log.exception("serving: a stream failed")
            yield _sse(APIError(500, "internal server error", "server_error").body())
        finally:
            run.cancel()

    def head(self, meta: dict, chat_object: str) -> dict:
        obj = chat_object if meta["chat"] else "text_completion"
        return {"id": meta["rid"], "object": obj, "created": meta["created"], "model": meta["model"]}

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def chat_logprobs(self, events: list[Event]) -> dict:
        def entry(token: int, logprob: float) -> dict:
            text = self.token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        content = [
            {**entry(e.token, e.logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs]} for e in events
        ]
        return {"content": content}

    def completion_logprobs(self, events: list[Event]) -> dict:
        tokens = [self.token_text(e.token) for e in events]
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in events],
            "top_logprobs": [{self.token_text(t): lp for t, lp in e.top_logprobs} for e in events],
            "text_offset": offsets,
        }


class _Run:
    """The engine requests of one HTTP request (n choices x prompts) and the events coming back to the event loop."""

    def __init__(self, engine: Engine, requests: list[EngineRequest]) -> None:
        self.engine, self.requests = engine, requests
        self.handles = []
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def deliver(i: int, event: Event) -> None:  # on the engine thread
            if not loop.is_closed():  # a closed loop: the server is shutting down and nobody reads this any more
                loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))

        try:
            for i, r in enumerate(self.requests):
                self.handles.append(self.engine.submit(r, on_event=lambda event, i=i: deliver(i, event)))
        except QueueFull as e:
            self.cancel()
            raise APIError(429, str(e), "rate_limit_error", code="queue_full") from None

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    async def events(self, request: Request):
        """(choice index, event) until every choice is done; cancels all if the client goes away."""
        open_ = len(self.handles)
        checked = time.monotonic()
        try:
            while open_:
                try:
                    i, event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    i, event = None, None
                if time.monotonic() - checked > 0.5:  # at most twice a second, tokens flowing or not
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                if event is None:
                    continue
                if event.kind == "error":
                    raise APIError(500, event.text or "internal error", "server_error")
                if event.kind == "done":
                    open_ -= 1
                yield i, event
        finally:
            self.cancel()


def usage(finals: list[Event | None], meta: dict) -> dict:
    """Prompt tokens once per prompt (its n choices share it), completion tokens of every choice."""
    done = [f for f in finals if f is not None]
    n = meta["s"].n
    prompt = sum(f.prompt_tokens for f in done[::n])
    cached = sum(f.cached_tokens for f in done[::n])
    completion = sum(f.completion_tokens for f in done)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _chunk(i: int, delta, logprobs, finish_reason, chat: bool) -> dict:
    if chat:
        return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"index": i, "text": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
