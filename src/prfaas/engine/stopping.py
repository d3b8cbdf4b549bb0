"""When a request ends, and what its deltas emit: the finishing rules both engines apply.

A request ends with "stop" on a stop token id or EOS (unless `ignore_eos`), neither of which is
emitted, or on a stop string in its decoded output (`prfaas.messages.stop_strings`, the rule the
router's text stream applies to the same text); with "length" at `max_tokens` or when the next
token would need a position past the model's. Pure functions of a `RequestProgress`; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from prfaas.engine.sequence import RequestProgress
from prfaas.engine.tokenizer import Tokenizer
from prfaas.messages import SamplingParams, TokenDelta
from prfaas.messages.stop_strings import StopStrings


def is_stop_token(params: SamplingParams, token: int, eos_token_id: int | None) -> bool:
    """A token that ends the request and is not emitted: a stop token id, or EOS."""
    return token in params.stop_token_ids or (token == eos_token_id and not params.ignore_eos)


def finish_reason(
    state: RequestProgress, tokenizer: Tokenizer | None, max_positions: int | None
) -> str | None:
    """Why the request ends after its latest token, or None while it goes on. Without a
    tokenizer there is no EOS and no text to match stop strings on."""
    params = state.sampling
    eos = None if tokenizer is None else tokenizer.eos_token_id
    if is_stop_token(params, state.last_token_id, eos) or hits_stop_string(state, tokenizer):
        return "stop"
    if len(state.output_token_ids) >= params.max_tokens:
        return "length"
    if max_positions is not None and state.num_computed_tokens >= max_positions:
        return "length"  # the next token would need a position past the model's
    return None


def hits_stop_string(state: RequestProgress, tokenizer: Tokenizer | None) -> bool:
    """Whether the decoded output now holds one of the request's stop strings."""
    stops = StopStrings.of(state.sampling.stop)
    if not stops or tokenizer is None:
        return False
    tail = output_tail_text(state.output_token_ids, stops.tail_chars, tokenizer)
    return stops.first_index(tail) is not None


def output_tail_text(output: Sequence[int], num_chars: int, tokenizer: Tokenizer) -> str:
    """The decoded end of the output, at least `num_chars` characters long (or all of it).

    Tokens per character vary: one per ASCII byte and three per CJK character with the byte
    tokenizer, fractions of one with BPE, none for skipped specials. So the tail starts at
    `num_chars` tokens and doubles until its text is long enough.
    """
    num_tokens = num_chars
    while True:
        text = tokenizer.decode(output[-num_tokens:])
        if len(text) >= num_chars or num_tokens >= len(output):
            return text
        num_tokens *= 2


def token_delta(
    state: RequestProgress,
    new: Sequence[int],
    finish_reason: str | None,
    eos_token_id: int | None,
) -> TokenDelta:
    """A delta of `new` tokens; a stop token that ended the request is not emitted."""
    drops_last = (
        finish_reason == "stop"
        and bool(new)
        and is_stop_token(state.sampling, new[-1], eos_token_id)
    )
    emitted = tuple(new[:-1] if drops_last else new)
    error = state.error if finish_reason == "error" else None
    return TokenDelta(state.req_id, emitted, finish_reason, error)
