"""The OpenAI-compatible surface: request schemas (pydantic), their checks, and response bodies.

Supported: `/v1/completions` (prompt as a string, token ids, or a one-element list of either)
and `/v1/chat/completions` (messages with string or text-part content), `stream` with
`stream_options.include_usage`, `max_tokens` (`max_completion_tokens` for chat), `temperature`,
`top_p`, `top_k` (vLLM's extension; 0 or -1 = off), `seed`, `stop`, `ignore_eos`, `n` = 1.
Fields the engine does not implement (penalties, logprobs, echo, n > 1, ...) are refused with
a 400 naming them when set to anything but their neutral value; other unknown fields are ignored
as OpenAI's own server does. `with_request_schemas` adds these request schemas, the error
responses and the bearer-key scheme to the router's OpenAPI document (its handlers read the raw
body, so FastAPI cannot infer them).
"""

from __future__ import annotations

import copy
import math
import re
import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prfaas.errors import UserError
from prfaas.messages import SamplingParams

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    max_tokens: int | None = Field(default=None)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Any = None
    best_of: int | None = None
    echo: bool = False


class CompletionRequest(_SamplingFields):
    # a batch (several strings or several lists of ids) is refused by the intake, one line
    prompt: str | list[str] | list[int] | list[list[int]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise UserError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None


RequestSchema = TypeVar("RequestSchema", bound=_SamplingFields)
REQUEST_FIELDS = frozenset(CompletionRequest.model_fields) | frozenset(
    ChatCompletionRequest.model_fields
)
# fields of several shapes: what to say instead of pydantic's complaint about the first shape
_UNION_SHAPES = {
    "prompt": "expected a string, a list of strings, a list of token ids (integers) or a list "
    "of lists of token ids",
    "stop": "expected a string or a list of strings",
}


def parse_body(model: type[RequestSchema], body: object) -> RequestSchema:
    """Validate a decoded JSON body; UserError with pydantic's first complaint otherwise (for a
    field of several shapes, the shapes it accepts)."""
    if not isinstance(body, dict):
        raise UserError("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in _UNION_SHAPES and first["type"] != "missing":
            raise UserError(f"{field}: {_UNION_SHAPES[field]}") from None
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise UserError(f"{where}: {first['msg']}") from None


def error_param(message: str) -> str | None:
    """The request field an error message names at its start (`max_tokens must be >= 1`,
    `prompt: ...`, `messages.0.content: ...`): OpenAI's `param`; None when it names none."""
    head = re.match(r"[a-z_]+", message)
    return head.group() if head and head.group() in REQUEST_FIELDS else None


def check_unsupported(req: _SamplingFields) -> None:
    """400 for features this server does not implement, set to non-neutral values."""
    if req.n != 1:
        raise UserError(f"n must be 1 (got {req.n}); one choice per request is supported")
    if req.best_of not in (None, 1):
        raise UserError("best_of is not supported")
    if req.echo:
        raise UserError("echo is not supported")
    if req.logprobs not in (None, False, 0):
        raise UserError("logprobs are not supported")
    if req.presence_penalty != 0 or req.frequency_penalty != 0:
        raise UserError("presence_penalty and frequency_penalty are not supported")


def stop_strings(req: _SamplingFields) -> tuple[str, ...]:
    stop = req.stop
    items = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if len(items) > MAX_STOP_STRINGS:
        raise UserError(f"stop: at most {MAX_STOP_STRINGS} stop strings")
    if any(len(s) > MAX_STOP_CHARS for s in items):
        raise UserError(f"stop: each stop string has at most {MAX_STOP_CHARS} characters")
    return tuple(s for s in items if s)


def sampling_params(req: _SamplingFields, max_tokens: int) -> SamplingParams:
    """The engine's SamplingParams; UserError for values out of range (NaN and inf included):
    the finite and seed checks here, the ranges by `SamplingParams` itself."""
    for name in ("temperature", "top_p"):
        value = getattr(req, name)
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise UserError(f"seed must be in [0, 2^63), got {req.seed}")
    top_k = 0 if req.top_k == -1 else req.top_k
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=top_k,
        seed=req.seed,
        stop=stop_strings(req),
        ignore_eos=req.ignore_eos,
    )


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion_tokens,
        "total_tokens": num_prompt_tokens + num_completion_tokens,
    }


class ResponseShape:
    """Bodies of one request's responses: completion or chat, whole or as stream chunks."""

    def __init__(self, is_chat: bool, response_id: str, model: str) -> None:
        self.is_chat = is_chat
        self.id = response_id
        self.model = model
        self.created = int(time.time())

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, finish_reason: str | None, usage_: dict[str, int]) -> dict[str, Any]:
        if self.is_chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
            return {**self._base("chat.completion"), "choices": [choice], "usage": usage_}
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return {**self._base("text_completion"), "choices": [choice], "usage": usage_}

    def chunk(self, text: str, finish_reason: str | None, is_first: bool) -> dict[str, Any]:
        if self.is_chat:
            delta: dict[str, Any] = {"content": text}
            if is_first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish_reason,
                "logprobs": None,
            }
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return {**self._base("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage_: dict[str, int]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.is_chat else "text_completion"
        return {**self._base(kind), "choices": [], "usage": usage_}


# ---- the published OpenAPI document -------------------------------------------------------

_REQUEST_SCHEMAS = {
    "/v1/completions": "CompletionRequest",
    "/v1/chat/completions": "ChatCompletionRequest",
}
_ERROR_STATUSES = {
    "400": "invalid request: bad JSON, a missing or mistyped field, a value out of range",
    "401": "API keys are configured and this request has none or a wrong one",
    "404": "unknown model",
    "408": "request head or body too slow",
    "413": "request body too large",
    "429": "too many concurrent requests for this API key",
    "503": "no instance can serve, or the request failed after routing",
}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}


def with_request_schemas(openapi: dict[str, Any], model_id: str | None = None) -> dict[str, Any]:
    """A copy of the router's OpenAPI document with the request bodies of the two generation
    endpoints, their error responses (OpenAI's error shape) and the bearer API-key scheme.

    Fills only what is missing, so it is idempotent. `model_id` documents the served model as
    the only valid `model` value."""
    doc = copy.deepcopy(openapi)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {"type": "http", "scheme": "bearer"}
    schemas.setdefault("Error", _ERROR_SCHEMA)
    for model in (CompletionRequest, ChatCompletionRequest):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        if model_id is not None:
            body["properties"]["model"] = {"type": "string", "enum": [model_id]}
        schemas.setdefault(model.__name__, body)
    for path, schema_name in _REQUEST_SCHEMAS.items():
        operation = doc.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        ref = {"$ref": f"#/components/schemas/{schema_name}"}
        operation.setdefault(
            "requestBody", {"required": True, "content": {"application/json": {"schema": ref}}}
        )
        operation.setdefault("security", [{"apiKey": []}])
        responses = operation.setdefault("responses", {})
        for status, description in _ERROR_STATUSES.items():
            error = {"$ref": "#/components/schemas/Error"}
            content = {"application/json": {"schema": error}}
            responses.setdefault(status, {"description": description, "content": content})
    return doc
