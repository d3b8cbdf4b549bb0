"""The router's intake: from an HTTP request to a validated, tokenized `GenerateRequest`.

Checks the API key, parses the body against the OpenAI schemas, refuses what the engine does not
implement, tokenizes (with the chat template for chat), bounds `max_tokens` by the model's
context and builds the engine's `SamplingParams`. Everything it refuses is an `ApiError` (or a
`UserError`, answered 400) with an OpenAI-shaped body; nothing here touches an instance.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from prfaas.errors import UserError
from prfaas.messages import GenerateRequest
from prfaas.nodes.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseShape,
    check_unsupported,
    parse_body,
    sampling_params,
)
from prfaas.nodes.text import TextCodec
from prfaas.nodes.topology import Topology

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; used for chat too


class ApiError(Exception):
    """An error answered as OpenAI JSON with this status."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


@dataclass
class Prepared:
    """A validated request, ready to dispatch."""

    request: GenerateRequest
    shape: ResponseShape
    is_stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    arrived_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrived_at


class RequestIntake:
    """Validates and tokenizes requests for one deployment's model."""

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
            raise ApiError(
                401, "invalid or missing API key", "invalid_request_error", "invalid_api_key"
            )

    def prepare(self, body: Any, is_chat: bool) -> Prepared:
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
        prompt_ids = self._prompt_ids(req, is_chat)
        max_tokens = self._max_tokens(req, is_chat, len(prompt_ids))
        sampling = sampling_params(req, max_tokens, self.codec.eos_token_id)
        prefix = "chatcmpl" if is_chat else "cmpl"
        req_id = f"{prefix}-{uuid.uuid4().hex}"
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Prepared(
            GenerateRequest(req_id, tuple(prompt_ids), sampling),
            ResponseShape(is_chat, req_id, self.model_id),
            req.stream,
            include_usage,
            sampling.stop,
        )

    def _prompt_ids(self, req: Any, is_chat: bool) -> list[int]:
        if is_chat:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            ids = self.codec.encode(self.codec.chat_prompt(messages))
        elif isinstance(req.prompt, str):
            ids = self.codec.encode(req.prompt)
        elif req.prompt and all(isinstance(p, str) for p in req.prompt):
            if len(req.prompt) != 1:
                raise UserError("prompt: a list of several prompts is not supported (send one)")
            ids = self.codec.encode(req.prompt[0])
        else:
            ids = list(req.prompt)
            bad = next((t for t in ids if not 0 <= t < self.codec.vocab_size), None)
            if bad is not None:
                raise UserError(f"prompt: token id {bad} is outside [0, {self.codec.vocab_size})")
        if not ids:
            raise UserError("prompt is empty")
        return ids

    def _max_tokens(self, req: Any, is_chat: bool, num_prompt: int) -> int:
        asked = req.max_completion_tokens if is_chat and req.max_tokens is None else req.max_tokens
        max_tokens = DEFAULT_MAX_TOKENS if asked is None else asked
        if max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
        limit = self.codec.max_model_len
        if num_prompt + max_tokens > limit:
            raise ApiError(
                400,
                f"this model's maximum context length is {limit} tokens; the request has "
                f"{num_prompt} prompt tokens and asks for {max_tokens} more",
                "invalid_request_error",
                "context_length_exceeded",
            )
        return max_tokens
