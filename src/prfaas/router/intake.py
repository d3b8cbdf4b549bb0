"""The router's intake: from an HTTP request to a validated, tokenized `GenerateRequest`.

Checks the API key, decodes the JSON body (`parse_json_body`: any bytes give a value or a 400,
deep nesting and huge integers included), parses it against the OpenAI schemas, refuses what the
engine does not implement, tokenizes (with the chat template for chat) into the tuple of token
ids the request keeps to the instances, checks the ids against the vocabulary, builds the
engine's `SamplingParams` (which checks its own ranges, `max_tokens` >= 1 among them) and bounds
prompt plus `max_tokens` by the model's context. These are the router's only checks of a
request's content: later steps take it as checked. Everything it refuses is an `ApiError` (or a
`UserError`, answered 400) with an OpenAI-shaped body, logged as one JSON line with its reason
(never the key); nothing here touches an instance.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import cast

from fastapi import Request

from prfaas.errors import UserError
from prfaas.messages import GenerateRequest
from prfaas.router.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseShape,
    check_unsupported,
    parse_body,
    sampling_params,
)
from prfaas.service.text import TextCodec
from prfaas.topology import Topology

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; used for chat too

log = logging.getLogger("prfaas.router")


class ApiError(Exception):
    """An error answered as OpenAI JSON with this status."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


def parse_json_body(raw: bytes) -> object:
    """The request body as JSON; ApiError 400 (`invalid_json`) for anything else: invalid UTF-8
    or JSON, integers past Python's 4300-digit limit, nesting past the recursion limit."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        message = f"request body is not valid JSON: {reason}"
        error = ApiError(400, message, "invalid_request_error", "invalid_json")
        log_rejected(error)
        raise error from None


def log_rejected(exc: ApiError | UserError, client: str = "") -> None:
    """One JSON line per refused request, with its status and reason."""
    status, code = (exc.status, exc.code) if isinstance(exc, ApiError) else (400, "invalid_request")
    fields = {"event": "rejected", "status": status, "code": code, "reason": str(exc)[:300]}
    if client:
        fields["client"] = client
    log.info(json.dumps(fields))


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to dispatch."""

    request: GenerateRequest
    shape: ResponseShape
    is_stream: bool
    include_usage: bool
    arrived_at: float = field(default_factory=time.monotonic)

    @property
    def stop(self) -> tuple[str, ...]:
        return self.request.sampling.stop


class RequestIntake:
    """Validates and tokenizes requests for one deployment's model: every check of what a client
    sends (the schema, the vocabulary, the context length, the sampling ranges) happens here,
    once; what it hands on is not checked again on the router."""

    def __init__(self, topology: Topology, codec: TextCodec) -> None:
        self.topology, self.codec = topology, codec
        self.model_id = topology.model.served_name

    def check_auth(self, request: Request) -> None:
        keys = self.topology.router.api_keys
        if not keys:
            return
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            error = ApiError(
                401, "invalid or missing API key", "invalid_request_error", "invalid_api_key"
            )
            client = request.client
            log_rejected(error, f"{client.host}:{client.port}" if client else "")
            raise error

    def prepare(self, body: object, is_chat: bool) -> Prepared:
        """The validated, tokenized request; ApiError or UserError (logged) otherwise."""
        try:
            return self._prepare(body, is_chat)
        except (ApiError, UserError) as exc:
            log_rejected(exc)
            raise

    def _prepare(self, body: object, is_chat: bool) -> Prepared:
        schema: type[CompletionRequest | ChatCompletionRequest]
        schema = ChatCompletionRequest if is_chat else CompletionRequest
        req = parse_body(schema, body)
        check_unsupported(req)
        if req.model != self.model_id:
            raise ApiError(
                404,
                f"model {req.model!r} does not exist; serving {self.model_id!r}",
                "invalid_request_error",
                "model_not_found",
            )
        prompt_ids = self._prompt_ids(req)
        sampling = sampling_params(req, _asked_max_tokens(req))
        self._check_context(len(prompt_ids), sampling.max_tokens)
        prefix = "chatcmpl" if is_chat else "cmpl"
        req_id = f"{prefix}-{uuid.uuid4().hex}"
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Prepared(
            GenerateRequest(req_id, prompt_ids, sampling),
            ResponseShape(is_chat, req_id, self.model_id),
            req.stream,
            include_usage,
        )

    def _prompt_ids(self, req: CompletionRequest | ChatCompletionRequest) -> tuple[int, ...]:
        """The prompt's token ids, as the tuple every later step keeps."""
        if isinstance(req, ChatCompletionRequest):
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            ids = tuple(self.codec.encode(self.codec.chat_prompt(messages)))
        else:
            ids = self._completion_ids(_single_prompt(req.prompt))
        if not ids:
            raise UserError("prompt is empty")
        return ids

    def _completion_ids(self, prompt: str | list[int]) -> tuple[int, ...]:
        """A completion prompt's token ids: a string encoded, token ids checked for the
        vocabulary."""
        if isinstance(prompt, str):
            return tuple(self.codec.encode(prompt))
        bad = next((t for t in prompt if not 0 <= t < self.codec.vocab_size), None)
        if bad is not None:
            raise UserError(f"prompt: token id {bad} is outside [0, {self.codec.vocab_size})")
        return tuple(prompt)

    def _check_context(self, num_prompt: int, max_tokens: int) -> None:
        limit = self.codec.max_model_len
        if num_prompt + max_tokens > limit:
            raise ApiError(
                400,
                f"this model's maximum context length is {limit} tokens; the request has "
                f"{num_prompt} prompt tokens and asks for {max_tokens} more",
                "invalid_request_error",
                "context_length_exceeded",
            )


def _single_prompt(
    prompt: str | list[str] | list[int] | list[list[int]],
) -> str | list[int]:
    """The one prompt of a completion request: a string or token ids, alone or as the only
    element of a list; UserError for a batch of several."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return cast("str | list[int]", prompt)
    if len(prompt) != 1:
        raise UserError(
            f"prompt: a batch of {len(prompt)} prompts is not supported (send one per request)"
        )
    return prompt[0]


def _asked_max_tokens(req: CompletionRequest | ChatCompletionRequest) -> int:
    """`max_tokens` (for chat, `max_completion_tokens` when `max_tokens` is unset), or the
    default; `SamplingParams` refuses values below 1."""
    asked = req.max_tokens
    if asked is None and isinstance(req, ChatCompletionRequest):
        asked = req.max_completion_tokens
    return DEFAULT_MAX_TOKENS if asked is None else asked
