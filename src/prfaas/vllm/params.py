"""The `kv_transfer_params` the PrfaaS vLLM connector reads and returns: what a router passes to a
producer (prefill) request, and what the producer returns for the consumer (decode) request.

Standard library only, so a router can build and check them without vLLM. Shapes (JSON objects):

    to the producer:   {"do_remote_decode": true, "remote_kv_address": "host:port",
                        "transfer_id": "<unique id>"}
    producer returns:  {"do_remote_prefill": true, "transfer_id": "<same id>",
                        "num_prompt_tokens": N, "first_token_id": t1}

The consumer request's prompt is the producer's N prompt tokens followed by `first_token_id`
(N + 1 tokens): the consumer loads the KV and state of the N tokens and computes the first
token's own step, so a recurrent state is never advanced twice over the prompt's last token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prfaas.transport.sender import parse_address

_MAX_TRANSFER_ID_CHARS = 256


class TransferParamsError(ValueError):
    """`kv_transfer_params` present but malformed: the message names the field."""


@dataclass(frozen=True, slots=True)
class ProducerParams:
    """Where a prefill request's KV goes: the consumer's KV receiver and the transfer's id."""

    remote_kv_address: str  # host:port of the consumer's KVReceiver
    transfer_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "do_remote_decode": True,
            "remote_kv_address": self.remote_kv_address,
            "transfer_id": self.transfer_id,
        }


@dataclass(frozen=True, slots=True)
class ConsumerParams:
    """What a decode request needs to find its KV: the transfer and the prompt it covers."""

    transfer_id: str
    num_prompt_tokens: int  # N: tokens whose KV and state the transfer carries
    first_token_id: int  # the producer's sampled token; the consumer prompt's last token

    def to_dict(self) -> dict[str, Any]:
        return {
            "do_remote_prefill": True,
            "transfer_id": self.transfer_id,
            "num_prompt_tokens": self.num_prompt_tokens,
            "first_token_id": self.first_token_id,
        }

    def prompt_mismatch(self, prompt_token_ids: list[int]) -> str | None:
        """Why `prompt_token_ids` is not the producer's prompt plus its first token, or None."""
        expected = self.num_prompt_tokens + 1
        if len(prompt_token_ids) != expected:
            return (
                f"the decode prompt has {len(prompt_token_ids)} tokens; it must be the "
                f"{self.num_prompt_tokens} prefilled tokens followed by first_token_id"
            )
        if prompt_token_ids[-1] != self.first_token_id:
            return (
                f"the decode prompt ends with token {prompt_token_ids[-1]}, "
                f"not first_token_id {self.first_token_id}"
            )
        return None


def producer_params(params: dict[str, Any] | None) -> ProducerParams | None:
    """The producer's parameters of a request, None when it is not to be sent."""
    if not params or not params.get("do_remote_decode"):
        return None
    address = params.get("remote_kv_address")
    if not isinstance(address, str):
        raise TransferParamsError("kv_transfer_params.remote_kv_address must be 'host:port'")
    try:
        parse_address(address)
    except ValueError as exc:
        raise TransferParamsError(f"kv_transfer_params.remote_kv_address: {exc}") from None
    return ProducerParams(address, _transfer_id(params))


def consumer_params(params: dict[str, Any] | None) -> ConsumerParams | None:
    """The consumer's parameters of a request, None when its KV is not to be loaded."""
    if not params or not params.get("do_remote_prefill"):
        return None
    return ConsumerParams(
        transfer_id=_transfer_id(params),
        num_prompt_tokens=_count(params, "num_prompt_tokens", minimum=1),
        first_token_id=_count(params, "first_token_id", minimum=0),
    )


def _transfer_id(params: dict[str, Any]) -> str:
    value = params.get("transfer_id")
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TRANSFER_ID_CHARS:
        raise TransferParamsError(
            f"kv_transfer_params.transfer_id must be a string of 1 to "
            f"{_MAX_TRANSFER_ID_CHARS} characters"
        )
    return value


def _count(params: dict[str, Any], key: str, minimum: int) -> int:
    value = params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TransferParamsError(f"kv_transfer_params.{key} must be an integer >= {minimum}")
    return value
