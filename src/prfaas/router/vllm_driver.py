"""The router in front of stock `vllm serve` instances (`engine = "vllm"`): each request's two
halves driven as vLLM's disaggregation proxy drives them, and each instance's load read from
vLLM's own `/metrics`.

A request the policy sends to a prefill instance (PrfaaS or PD-P):

1. the prefill instance gets the prompt's token ids with `max_tokens = 1` and the PrfaaS
   connector's producer parameters (the decode instance's KV address, the transfer id); its
   connector streams the KV and state to the decode instance's `KVReceiver`;
2. its answer carries the first token and the consumer parameters (`kv_transfer_params`); the
   router streams the first token to the client at once;
3. the decode instance gets the prompt followed by the first token, `max_tokens - 1` and those
   parameters; its connector fills the blocks from the transfer (or, when the transfer is lost,
   late or corrupt, vLLM's `kv_load_failure_policy` recomputes) and it streams the rest.

When the prefill instance fails (gone, an error, an answer without the parameters), the
topology's `failure` policy applies: `recompute` sends the whole request to the decode instance,
which prefills it itself; `fail` ends it in an error. An instance that cannot be connected to is
marked down, so the next requests go elsewhere.

A request that stays on the decode instance (colocated) is one streamed completion. The
parameters' shapes are `prfaas.vllm.params`' (standard library only). Token ids travel both
ways (`return_token_ids`), so the router's own detokenizer and stop strings apply as for the
other engines. The instances' load comes from their `/metrics` (`vllm_metrics`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from prfaas.messages import GenerateRequest, PrefillResult, TokenDelta
from prfaas.router.decision import DispatchTrace
from prfaas.router.vllm_metrics import VLLM_ENGINE as VLLM_ENGINE
from prfaas.topology import InstanceConfig

log = logging.getLogger("prfaas.router")
_FINISH_REASONS = {"stop": "stop", "length": "length"}  # anything else ends in an error


class VllmAnswerError(Exception):
    """A vLLM instance answered something the router cannot use (the message says what)."""


def completion_body(
    request: GenerateRequest,
    model: str,
    prompt: list[int],
    max_tokens: int,
    *,
    stream: bool,
    kv_transfer_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A vLLM `/v1/completions` body for `request`'s sampling, on token ids both ways."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "ignore_eos": s.ignore_eos,
        "stop_token_ids": list(s.stop_token_ids),
        "return_token_ids": True,
        "stream": stream,
    }
    if s.top_k > 0:
        body["top_k"] = s.top_k
    if s.seed is not None:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if kv_transfer_params is not None:
        body["kv_transfer_params"] = kv_transfer_params
    return body


def producer_params(decode: InstanceConfig, transfer_id: str) -> dict[str, Any]:
    """What a prefill request tells the producer connector: where its KV goes, under which id."""
    from prfaas.vllm.params import ProducerParams

    assert decode.kv is not None  # a decode instance always has a KV receiver
    return dict(ProducerParams(decode.kv, transfer_id).to_dict())


def prefill_answer(reply: dict[str, Any]) -> tuple[int, str | None, dict[str, Any]]:
    """The first token, its finish reason and the consumer parameters of a prefill answer."""
    try:
        choice = reply["choices"][0]
        token_ids = choice["token_ids"]
        params = reply["kv_transfer_params"]
    except (KeyError, IndexError, TypeError):
        raise VllmAnswerError(
            "the prefill answer lacks choices[0].token_ids or kv_transfer_params"
        ) from None
    if not (isinstance(token_ids, list) and len(token_ids) == 1 and isinstance(params, dict)):
        raise VllmAnswerError(f"the prefill answer has {token_ids!r} as its one token")
    return int(token_ids[0]), choice.get("finish_reason"), params


async def answer_excerpt(reply: aiohttp.ClientResponse, num_bytes: int = 300) -> str:
    """The start of an instance's error answer, for a one-line error."""
    return (await reply.read())[:num_bytes].decode(errors="replace")


def stream_delta(req_id: str, event: dict[str, Any]) -> TokenDelta | None:
    """One SSE event of a streamed vLLM completion as a token delta (None: carries none)."""
    choices = event.get("choices")
    if not choices:
        return None
    choice = choices[0]
    token_ids = tuple(int(t) for t in choice.get("token_ids") or ())
    reason = choice.get("finish_reason")
    if reason is None:
        return TokenDelta(req_id, token_ids) if token_ids else None
    if reason in _FINISH_REASONS:
        return TokenDelta(req_id, token_ids, _FINISH_REASONS[reason])
    return TokenDelta(req_id, token_ids, "error", f"the decode instance finished: {reason}")


class VllmDriver:
    """Drives one request over vLLM instances; yields its token deltas."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        model: str,
        read_timeout_s: float,
        failure: str = "recompute",
        mark_down: Callable[[str, str], None] = lambda name, reason: None,
    ) -> None:
        """`failure`: the topology's policy when the prefill side fails ("recompute": the decode
        instance prefills the request itself; "fail": the request ends in an error).
        `mark_down(name, reason)`: told of an instance that cannot be connected to."""
        self.client, self.model, self.failure, self.mark_down = client, model, failure, mark_down
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10.0, sock_read=read_timeout_s
        )

    async def run(
        self, trace: DispatchTrace, request: GenerateRequest
    ) -> AsyncIterator[TokenDelta]:
        d = trace.decision
        prompt = list(request.prompt_token_ids)
        max_tokens = request.sampling.max_tokens
        if d.prefill is None:
            body = completion_body(request, self.model, prompt, max_tokens, stream=True)
            async for delta in self._stream(trace, body):
                yield delta
            return
        first = await self._prefill(trace, request)
        if isinstance(first, TokenDelta) and self.failure == "recompute":
            log.warning(json.dumps({"event": "prefill_failed_recompute", **trace.log_fields()}))
            body = completion_body(request, self.model, prompt, max_tokens, stream=True)
            async for delta in self._stream(trace, body):
                yield delta
            return
        if isinstance(first, TokenDelta):  # the prefill failed, and the policy is to fail
            yield first
            return
        token_id, reason, params = first
        trace.first_token_at = time.monotonic()
        if max_tokens == 1 or reason == "stop":
            yield TokenDelta(request.req_id, (token_id,), "length" if max_tokens == 1 else "stop")
            return
        yield TokenDelta(request.req_id, (token_id,))
        body = completion_body(
            request,
            self.model,
            [*prompt, token_id],
            max_tokens - 1,
            stream=True,
            kv_transfer_params=params,
        )
        async for delta in self._stream(trace, body):
            yield delta

    async def _prefill(
        self, trace: DispatchTrace, request: GenerateRequest
    ) -> tuple[int, str | None, dict[str, Any]] | TokenDelta:
        d = trace.decision
        assert d.prefill is not None
        params = producer_params(d.decode.config, d.transfer_id)
        body = completion_body(
            request,
            self.model,
            list(request.prompt_token_ids),
            1,
            stream=False,
            kv_transfer_params=params,
        )
        started_at = time.monotonic()
        url = f"http://{d.prefill.config.http}/v1/completions"
        try:
            async with self.client.post(url, json=body, timeout=self.timeout) as reply:
                if reply.status != 200:
                    text = await answer_excerpt(reply)
                    raise VllmAnswerError(f"answered {reply.status}: {text}")
                token_id, reason, returned = prefill_answer(await reply.json())
        except (aiohttp.ClientError, TimeoutError, ValueError, VllmAnswerError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
                self.mark_down(d.prefill.config.name, str(exc))
            error = f"prefill instance {d.prefill.config.name} failed: {exc}"
            trace.result = PrefillResult(request.req_id, d.transfer_id, ok=False, error=error)
            return TokenDelta(request.req_id, (), "error", error)
        trace.result = PrefillResult(
            request.req_id,
            d.transfer_id,
            ok=True,
            first_token_id=token_id,
            num_kv_bytes=int(returned.get("num_kv_bytes", 0)),
            prefill_s=time.monotonic() - started_at,
        )
        return token_id, reason, returned

    async def _stream(
        self, trace: DispatchTrace, body: dict[str, Any]
    ) -> AsyncIterator[TokenDelta]:
        d = trace.decision
        req_id = d.req_id
        url = f"http://{d.decode.config.http}/v1/completions"
        trace.decode_sent_at = time.monotonic()
        try:
            async with self.client.post(url, json=body, timeout=self.timeout) as reply:
                if reply.status != 200:
                    text = await answer_excerpt(reply)
                    yield TokenDelta(
                        req_id, (), "error", f"decode instance answered {reply.status}: {text}"
                    )
                    return
                async for raw in reply.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    delta = stream_delta(req_id, json.loads(line[len("data:") :]))
                    if delta is not None:
                        yield delta
                        if delta.finish_reason is not None:
                            return
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            yield TokenDelta(
                req_id, (), "error", f"decode instance {d.decode.config.name} failed: {exc!r}"
            )
            return
        yield TokenDelta(req_id, (), "error", "the decode stream ended without a finish reason")
