"""The OpenAI chat-completions shape that vLLM, llama.cpp's server and LitServe also speak: the request
(fields checked, unknown ones refused with a 400 that names them) and the response and stream chunks.
hamdam's own additions ride in a ``hamdam`` object (session id, reply kind, crisis resources)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hamdam.serve.service import RequestError, Sampling, TurnResult

SUPPORTED = (
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "n",
    "user",
    "session_id",
)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    session_id: str | None = None


def parse_request(body: Any, max_tokens: int, max_chars: int) -> ChatCompletionRequest:
    """The request, or a RequestError (400) saying what is wrong with it in one paragraph."""
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = ".".join(str(p) for p in error["loc"]) or "body"
            if error["type"] == "extra_forbidden":
                problems.append(f"'{where}' is not supported")
            else:
                problems.append(f"'{where}': {error['msg']}")
        raise RequestError(
            400,
            "Invalid chat completion request: " + "; ".join(problems) + ". hamdam serve "
            f"accepts {', '.join(SUPPORTED)}.",
        ) from None
    if request.n != 1:
        raise RequestError(
            400, f"n={request.n}: hamdam serve writes one reply per request; send n=1 (or leave it out)."
        )
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None and limit > max_tokens:
        raise RequestError(
            400, f"max_tokens={limit} is above this server's limit of {max_tokens} (serve.max_tokens); ask for fewer."
        )
    if any(m.role in ("system", "developer") for m in request.messages):
        raise RequestError(
            400,
            "System messages are not supported: the companion's voice comes from the model it "
            "was trained as, not from an instruction. Send user and assistant messages only.",
        )
    if request.messages[-1].role != "user" or not request.messages[-1].text.strip():
        raise RequestError(400, "The last message must be the user's, and not empty: it is the message to answer.")
    if len(request.messages[-1].text) > max_chars:
        raise RequestError(
            400,
            f"The message is {len(request.messages[-1].text)} characters long; this server takes "
            f"at most {max_chars} (serve.max_message_chars). Send a shorter one.",
        )
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > 4:
        raise RequestError(400, f"stop has {len(stops)} strings; send at most 4.")
    return request


def sampling_of(request: ChatCompletionRequest) -> Sampling:
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return Sampling(
        request.temperature,
        request.top_p,
        request.top_k,
        request.repetition_penalty,
        request.max_completion_tokens or request.max_tokens,
        stops,
        request.seed,
    )


def history_of(request: ChatCompletionRequest) -> list[tuple[str, str]]:
    """The (user, assistant) pairs before the last message, for a session the server does not know."""
    pairs, pending = [], None
    for message in request.messages[:-1]:
        if message.role == "user":
            pending = message.text
        elif pending is not None:
            pairs.append((pending, message.text))
            pending = None
    return pairs


class Completion:
    """Builds the response objects of one completion (same id and creation time throughout)."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def usage(result: TurnResult) -> dict[str, int]:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }

    @staticmethod
    def extra(result: TurnResult, disclosure: str | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"session_id": result.session_id, "kind": result.kind, "turn_id": result.turn_id}
        if disclosure:
            extra["disclosure"] = disclosure
        if result.resources:
            extra["resources"] = result.resources
        return extra

    def response(self, result: TurnResult, disclosure: str | None) -> dict[str, Any]:
        return {
            **self._base("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.reply},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self.usage(result),
            "hamdam": self.extra(result, disclosure),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            **self._base("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            **extra,
        }

    def usage_chunk(self, result: TurnResult) -> dict[str, Any]:
        return {**self._base("chat.completion.chunk"), "choices": [], "usage": self.usage(result)}


def error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        409: "conflict_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_busy",
    }
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": None, "code": status}}
