"""One request's progress inside an engine: `RequestProgress`.

Both engines keep one per request (the torch engine's `model_runner.RequestState` adds the
request's cache and recorded logits). It satisfies `protocol.RequestView`. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.messages import SamplingParams


@dataclass
class RequestProgress:
    """A request's prompt, sampling, computed and generated tokens, and how it ended."""

    req_id: str
    prompt_token_ids: tuple[int, ...]  # empty for an import whose prompt was not given
    sampling: SamplingParams
    seed: int  # resolved per-request sampling seed
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # leading prompt tokens taken from this engine's prefix cache
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None  # why, when finish_reason is "error"
    # chained hashes of the leading complete blocks hashed so far (prompt, then output), so a
    # request's tokens are hashed once in this process however often its prefix is looked up
    block_hashes: list[int] = field(default_factory=list)
    # its K/V were decoded from a lossy KV codec: its blocks are not kept in the prefix cache,
    # where a later request would reuse approximate K/V as if computed here
    has_coded_kv: bool = False

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1]
