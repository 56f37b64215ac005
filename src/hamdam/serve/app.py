"""``hamdam serve``: the ASGI app (FastAPI on uvicorn) and its guards: the API key, the per-client
rate limit, the request size limit, CORS only when configured.

Routes: ``GET /health`` (public), ``GET /v1/models``, ``POST /v1/chat/completions`` (plain and
server-sent events), ``GET /v1/sessions/{id}``, ``POST /v1/sessions/{id}/{good|bad|fix|forget}``,
``WS /ws/chat``, and the page at ``/`` with the public ``GET /info`` it reads (disclosure, crisis
resources, whether a key is needed). Nothing here logs chat text.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from omegaconf import DictConfig

from hamdam.errors import HamdamError
from hamdam.serve.openai_api import Completion, error_body, history_of, parse_request, sampling_of
from hamdam.serve.service import ChatService, RequestError, Sampling, Session, TurnResult

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
FEEDBACK = ("good", "bad", "fix", "forget")


class RateLimit:
    """A token bucket per client address: ``per_minute`` requests on average, ``burst`` at once.
    Hand-written: a rate-limiting library (slowapi, limits) would be a dependency for these lines."""

    def __init__(self, per_minute: float, burst: int):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def wait(self, client: str) -> float:
        """0 if ``client`` may go on now (a token is spent), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self.lock:
            tokens, then = self.buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self.buckets[client] = (tokens - 1, now)
                return 0.0
            self.buckets[client] = (tokens, now)
            if len(self.buckets) > 10_000:  # forget clients that have refilled
                self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < self.burst / self.rate}
            return (1 - tokens) / self.rate


class BodyLimit:
    """Refuses a request body over ``limit`` bytes (413), declared or streamed, before it is read whole.
    One limit for the whole app, answered in the OpenAI error shape (Starlette's is set per route and
    answers in its own)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(self.limit, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(self.limit, send)


class _TooLarge(Exception):
    pass


async def _too_large(limit: int, send: Any) -> None:
    body = json.dumps(
        error_body(
            413,
            f"The request is larger than this server takes ({limit} bytes, "
            "serve.max_request_bytes). Send a shorter message.",
        )
    ).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(cfg: DictConfig) -> str | None:
    """The key clients must send; binding beyond loopback without one is refused."""
    key = cfg.serve.get("api_key") or os.environ.get("HAMDAM_API_KEY") or None
    host = str(cfg.serve.host)
    if not _loopback(host) and not key:
        raise HamdamError(
            f"serve.host={host} would let anyone on the network talk to the companion and read its sessions. "
            "Set an API key (HAMDAM_API_KEY=... or serve.api_key=...), which clients send as "
            "'Authorization: Bearer KEY', or keep the default serve.host=127.0.0.1."
        )
    return key


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


AGE_HEADER = "X-Hamdam-Age-Confirmed"


def create_app(cfg: DictConfig, service: ChatService, load: bool = True) -> FastAPI:
    key = api_key(cfg)
    limits = RateLimit(float(cfg.serve.rate_limit.per_minute), int(cfg.serve.rate_limit.burst))
    max_tokens, max_chars = int(cfg.serve.max_tokens), int(cfg.serve.max_message_chars)
    # serve.age_gate: a confirmation each client asks its user for (the page asks on the first visit).
    age_gate = int(cfg.serve.age_gate) if cfg.serve.get("age_gate") else None
    age_refusal = f"This companion talks only with people aged {age_gate} or older (serve.age_gate)."

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load:  # the server answers /health (503) while the model loads
            threading.Thread(target=_load, args=(service,), daemon=True, name="hamdam-load").start()
        yield
        await asyncio.to_thread(service.close)

    app = FastAPI(title="hamdam", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if cfg.serve.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.serve.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Session-ID", AGE_HEADER],
            expose_headers=["X-Session-ID"],
        )
    app.add_middleware(BodyLimit, limit=int(cfg.serve.max_request_bytes))
    if _loopback(str(cfg.serve.host)):
        # A page elsewhere cannot reach a loopback server under another name (DNS rebinding).
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"])
    origins = {o.rstrip("/") for o in cfg.serve.cors_origins}

    def authorized(header: str | None) -> bool:
        if key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(_digest(token.strip()), _digest(key))

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/") and request.method != "OPTIONS":  # CORS preflights carry no key
            ok = authorized(request.headers.get("authorization"))
            if not ok or request.method == "POST":  # wrong keys count against the limit too
                wait = limits.wait(_client(request))
                if wait:
                    message = (
                        f"Too many requests from this client; try again in {math.ceil(wait)} s (serve.rate_limit)."
                    )
                    return _error(RequestError(429, message, retry_after=wait))
            if not ok:
                message = "Missing or wrong API key: send 'Authorization: Bearer KEY' with the server's HAMDAM_API_KEY."
                return _error(RequestError(401, message))
            kind = request.headers.get("content-type", "").split(";")[0].strip()
            if request.method == "POST" and kind != "application/json" and await request.body():
                # A page elsewhere may post text/plain without asking first; JSON it must ask for.
                return _error(RequestError(415, "Send the request body as JSON (Content-Type: application/json)."))
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return _error(err)

    @app.get("/health")
    async def health() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ok", "model": service.model_id})
        if service.load_error:  # the details are in the server's log, not for anyone who asks
            return JSONResponse({"status": "failed"}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})

    # The page shows these before the model is loaded (and with safety off, the disclosure still).
    disclosure = dict(cfg.safety.get("disclosure") or {})
    resources = {k: list(v) for k, v in (cfg.safety.get("resources") or {}).items()}
    default_lang = str(cfg.safety.get("default_lang") or "fa")

    @app.get("/info")
    async def info(lang: str = "fa") -> dict[str, Any]:
        return {
            "ready": service.ready,
            "model": service.model_id,
            "auth_required": key is not None,
            "age_gate": age_gate,
            "disclosure": disclosure.get(lang) or disclosure.get(default_lang),
            "resources": resources.get(lang) or resources.get(default_lang, []),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(service.model_dir.stat().st_mtime) if service.model_dir else 0
        return {
            "object": "list",
            "data": [{"id": service.model_id, "object": "model", "created": created, "owned_by": "hamdam"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            raise RequestError(400, "The request body is not JSON. Send a chat completion request as JSON.") from None
        parsed = parse_request(body, max_tokens, max_chars)
        if age_gate and request.headers.get(AGE_HEADER, "").strip().lower() != "true":
            raise RequestError(403, age_refusal + f" An API client asks its user, then sends '{AGE_HEADER}: true'.")
        session = service.admit(request.headers.get("x-session-id") or parsed.session_id)
        completion = Completion(service.model_id)
        events, result = _run(service, session, parsed.messages[-1].text, sampling_of(parsed), history_of(parsed))
        headers = {"X-Session-ID": session.client_id}
        if not parsed.stream:
            disclosure = None
            async for event in events:
                if event["type"] == "session":
                    disclosure = event["disclosure"]
            outcome = await _result(result)
            if isinstance(outcome, RequestError):
                return _error(outcome)
            return JSONResponse(completion.response(outcome, disclosure), headers=headers)
        usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        return StreamingResponse(
            _sse(completion, events, result, usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )

    @app.get("/v1/sessions/{session_id}")
    async def history(session_id: str) -> dict[str, Any]:
        turns = await asyncio.to_thread(service.history, session_id)
        return {"session_id": session_id, "turns": turns}

    @app.post("/v1/sessions/{session_id}/{action}")
    async def feedback(session_id: str, action: str, request: Request) -> dict[str, Any]:
        if action not in FEEDBACK:
            raise RequestError(404, f"No feedback '{action}': use one of {', '.join(FEEDBACK)}.")
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RequestError(400, 'The body must be a JSON object, such as {"turn_id": 12} or {"reply": "..."}.')
        text = str(body.get("reply") or "").strip()
        if action == "fix" and not text:
            raise RequestError(400, 'fix needs the better reply: send {"reply": "..."}.')
        turn_id = _turn_id(body.get("turn_id"))
        message = await asyncio.to_thread(service.feedback, session_id, action, text, turn_id)
        return {"session_id": session_id, "action": action, "message": message}

    @app.websocket("/ws/chat")
    async def ws_chat(socket: WebSocket) -> None:
        await socket.accept()
        origin = socket.headers.get("origin")
        if (
            origin is not None
            and origin.rstrip("/") not in origins
            and urlsplit(origin).netloc != socket.headers.get("host")
        ):
            # Browsers let any page open a WebSocket anywhere: only this server's page, or a configured one.
            await socket.send_json(_ws_error(403, f"Origin {origin} may not use this server (serve.cors_origins)."))
            await socket.close(code=4403)
            return
        ok = authorized(socket.headers.get("authorization"))
        old_enough = not age_gate or socket.headers.get(AGE_HEADER, "").strip().lower() == "true"
        session_id = socket.query_params.get("session") or None
        try:
            while True:
                try:
                    payload = json.loads(await socket.receive_text())
                    if not isinstance(payload, dict):
                        raise ValueError
                except ValueError:
                    await socket.send_json(_ws_error(400, 'Send JSON objects: {"message": "..."}.'))
                    continue
                if not ok:
                    if payload.get("type") == "auth" and authorized(f"Bearer {payload.get('key') or ''}"):
                        ok = True
                        await socket.send_json({"type": "auth", "ok": True})
                        continue
                    await socket.send_json(
                        _ws_error(401, 'Missing or wrong API key: send {"type": "auth", "key": KEY} first.')
                    )
                    await socket.close(code=4401)
                    return
                if payload.get("type") == "age":  # the page asked its user (serve.age_gate)
                    old_enough = payload.get("confirmed") is True
                    await socket.send_json({"type": "age", "ok": old_enough})
                    continue
                if not old_enough and payload.get("message") is not None:
                    await socket.send_json(_ws_error(403, age_refusal + ' Send {"type": "age", "confirmed": true} '
                                                     "after asking the user."))  # fmt: skip
                    continue
                wait = limits.wait(_client(socket))
                if wait:
                    await socket.send_json(_ws_error(429, f"Too many messages; try again in {math.ceil(wait)} s."))
                    continue
                try:
                    session_id = ChatService.check_id(payload.get("session_id")) or session_id
                    session_id = await _ws_turn(socket, service, payload, session_id, max_chars, max_tokens)
                except RequestError as err:
                    await socket.send_json(_ws_error(err.status, str(err), err.retry_after))
        except WebSocketDisconnect:
            return

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _load(service: ChatService) -> None:
    try:
        service.load()
    except Exception:  # noqa: BLE001 - reported by /health, and logged by load()
        pass


def _client(connection: Request | WebSocket) -> str:
    return connection.client.host if connection.client else "?"


def _error(err: RequestError) -> JSONResponse:
    headers = {"Retry-After": f"{max(1, round(err.retry_after))}"} if err.retry_after else None
    return JSONResponse(error_body(err.status, str(err)), status_code=err.status, headers=headers)


def _ws_error(status: int, message: str, retry_after: float | None = None) -> dict[str, Any]:
    return {"type": "error", "status": status, "message": message, "retry_after": retry_after}


def _run(
    service: ChatService,
    session: Session,
    message: str,
    sampling: Sampling,
    history: list[tuple[str, str]] | None = None,
):
    """Start an admitted turn; its events as an async iterator, and its result."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    result = asyncio.wrap_future(service.submit(session, message, sampling, emit, history))
    result.add_done_callback(lambda _: queue.put_nowait({"type": "end"}))

    async def events() -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await queue.get()
            if event["type"] == "end":
                return
            yield event

    return events(), result


async def _result(result: asyncio.Future) -> TurnResult | RequestError:
    try:
        return await result
    except RequestError as err:
        return err
    except Exception as err:  # noqa: BLE001 - one failed reply must not take the server down
        log.error("a reply failed (%s: %s)", type(err).__name__, err)
        return RequestError(500, f"The reply could not be written ({type(err).__name__}); the server logged it.")


async def _sse(
    completion: Completion, events: AsyncIterator, result: asyncio.Future, usage: bool
) -> AsyncIterator[str]:
    def line(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    disclosure, shown = None, ""
    async for event in events:
        if event["type"] == "session":
            disclosure = event["disclosure"]
            yield line(
                completion.chunk(
                    {"role": "assistant", "content": ""},
                    hamdam={"session_id": event["session_id"], "disclosure": disclosure},
                )
            )
        elif event["type"] == "delta" and event["text"]:
            shown += event["text"]
            yield line(completion.chunk({"content": event["text"]}))
    outcome = await _result(result)  # the turn is committed: now its end
    if isinstance(outcome, RequestError):
        yield line(error_body(outcome.status, str(outcome)))
    else:
        if outcome.replace is not None:
            # What was shown does not lead to the final reply (the guard withheld it): the reply follows
            # on a line of its own, and hamdam.replace says to show only it.
            text = ("\n\n" if shown else "") + outcome.replace
            yield line(completion.chunk({"content": text}, hamdam={"replace": outcome.replace}))
        elif outcome.tail:
            yield line(completion.chunk({"content": outcome.tail}))
        yield line(completion.chunk({}, outcome.finish_reason, hamdam=Completion.extra(outcome, disclosure)))
        if usage:
            yield line(completion.usage_chunk(outcome))
    yield "data: [DONE]\n\n"


async def _ws_turn(
    socket: WebSocket,
    service: ChatService,
    payload: dict[str, Any],
    session_id: str | None,
    max_chars: int,
    max_tokens: int,
) -> str | None:
    """One WebSocket message: a feedback command or a message to answer; returns the session id."""
    if payload.get("command"):
        action = str(payload["command"]).lstrip("/")
        if action not in FEEDBACK or not session_id:
            raise RequestError(400, f"command must be one of {', '.join(FEEDBACK)}, in a session that has a reply.")
        text, turn_id = str(payload.get("text") or ""), _turn_id(payload.get("turn_id"))
        ack = await asyncio.to_thread(service.feedback, session_id, action, text, turn_id)
        await socket.send_json({"type": "ack", "command": action, "message": ack, "turn_id": turn_id})
        return session_id
    message = payload.get("message")
    if not isinstance(message, str) or not message.strip():
        raise RequestError(400, 'Nothing to answer: send {"message": "..."} with some text.')
    if len(message) > max_chars:
        raise RequestError(400, f"The message is {len(message)} characters long; the limit is {max_chars}.")
    limit = payload.get("max_tokens")
    if limit is not None and (type(limit) is not int or not 1 <= limit <= max_tokens):
        raise RequestError(400, f"max_tokens must be an integer from 1 to {max_tokens}.")
    session = service.admit(session_id)
    events, result = _run(service, session, message, Sampling(max_tokens=limit))
    async for event in events:
        if event["type"] == "session":
            await socket.send_json(event)
        elif event["type"] == "delta" and event["text"]:
            await socket.send_json({"type": "token", "text": event["text"]})
    outcome = await _result(result)
    if isinstance(outcome, RequestError):
        raise outcome
    if outcome.replace is not None:
        await socket.send_json({"type": "replace", "text": outcome.replace})
    elif outcome.tail:
        await socket.send_json({"type": "token", "text": outcome.tail})
    await socket.send_json(
        {
            "type": "done",
            "reply": outcome.reply,
            "kind": outcome.kind,
            "turn_id": outcome.turn_id,
            "finish_reason": outcome.finish_reason,
            "resources": outcome.resources,
        }
    )
    return session.client_id


def _turn_id(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise RequestError(400, "turn_id must be the integer a reply gave (hamdam.turn_id).")
    return value


def serve(cfg: DictConfig) -> None:
    """``hamdam serve``: run until Ctrl-C or SIGTERM; replies in hand are finished and stored first."""
    import torch
    import uvicorn

    from hamdam.chat.session import persona_of
    from hamdam.serve.models import resolve_model

    api_key(cfg)  # a key that is needed, the model folder and the persona are checked before anything is created
    persona_of(cfg)
    model_dir = resolve_model(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    service = ChatService(cfg, model_dir)
    app = create_app(cfg, service)
    log.info("hamdam serve on http://%s:%s (the page at /, the API at /v1)", cfg.serve.host, cfg.serve.port)
    config = uvicorn.Config(
        app,
        host=str(cfg.serve.host),
        port=int(cfg.serve.port),
        log_config=None,
        access_log=bool(cfg.serve.access_log),
        ws_max_size=int(cfg.serve.max_request_bytes),
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()
