"""What a client asks and what it gets back: `SamplingParams`, `GenerateRequest` (router ->
instances) and `TokenDelta` (decode instance -> router -> client).

Layer 1: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.errors import UserError
from prfaas.messages.fields import (
    JSONDict,
    parse_bool,
    parse_int,
    parse_list,
    parse_mapping,
    parse_number,
    parse_str,
    parse_token_ids,
)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens; defaults are greedy decoding of 16 tokens.

    The ranges are checked here and nowhere else: when the router's intake builds it from a
    client's request (the UserError is that request's 400) and when an instance decodes it
    from a job (`from_dict`)."""

    max_tokens: int = 16  # tokens to generate after the prompt (first token included)
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None  # per-request RNG seed; None draws from the engine's RNG
    stop: tuple[str, ...] = ()  # stop strings, matched on detokenized text
    stop_token_ids: tuple[int, ...] = ()  # token ids that end the request (not emitted)
    ignore_eos: bool = False  # keep generating past the tokenizer's EOS

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0:  # NaN fails too
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")

    def to_dict(self) -> JSONDict:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": list(self.stop),
            "stop_token_ids": list(self.stop_token_ids),
            "ignore_eos": self.ignore_eos,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> SamplingParams:
        unknown = set(parse_mapping(d, "sampling")) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"sampling: unknown fields {sorted(unknown)}")
        seed = d.get("seed")
        return cls(
            max_tokens=parse_int(d.get("max_tokens", 16), "max_tokens"),
            temperature=parse_number(d.get("temperature", 0.0), "temperature"),
            top_p=parse_number(d.get("top_p", 1.0), "top_p"),
            top_k=parse_int(d.get("top_k", 0), "top_k"),
            seed=None if seed is None else parse_int(seed, "seed"),
            stop=tuple(parse_str(s, "stop") for s in parse_list(d.get("stop", []), "stop")),
            stop_token_ids=parse_token_ids(d.get("stop_token_ids", []), "stop_token_ids"),
            ignore_eos=parse_bool(d.get("ignore_eos", False), "ignore_eos"),
        )


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One user generation, as the router hands it on."""

    req_id: str  # unique per request, carried in every log line
    prompt_token_ids: tuple[int, ...]  # tokenized prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    arrived_at: float = 0.0  # monotonic seconds at the router

    def to_dict(self) -> JSONDict:  # the prompt's tuple as is: JSON writes it as an array
        return {
            "req_id": self.req_id,
            "prompt_token_ids": self.prompt_token_ids,
            "sampling": self.sampling.to_dict(),
            "arrived_at": self.arrived_at,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> GenerateRequest:
        d = parse_mapping(d, "request")
        return cls(
            req_id=parse_str(d["req_id"], "req_id", min_chars=1),
            prompt_token_ids=parse_token_ids(d["prompt_token_ids"], "prompt_token_ids"),
            sampling=SamplingParams.from_dict(d.get("sampling", {})),
            arrived_at=parse_number(d.get("arrived_at", 0.0), "arrived_at"),
        )


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New tokens of one request, streamed back to the client."""

    req_id: str
    token_ids: tuple[int, ...]  # tokens produced since the previous delta
    finish_reason: str | None = None  # "stop" | "length" | "error" when the request ends
    error: str | None = None  # why, when finish_reason is "error"

    def to_dict(self) -> JSONDict:  # on every streamed delta: explicit, not dataclasses.asdict
        return {
            "req_id": self.req_id,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: JSONDict) -> TokenDelta:
        return cls(
            str(d["req_id"]),
            tuple(int(t) for t in d["token_ids"]),
            d.get("finish_reason"),
            d.get("error"),
        )
