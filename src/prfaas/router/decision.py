"""One request's dispatch as two objects: the routing decision, fixed once made (`Dispatch`),
and what happened to the request after it (`DispatchTrace`).

`Dispatch` is what the route log line, the `x-prfaas-route*` headers and the decision metrics
show: where the request prefills (with several providers, which one), which decode instance
takes it, the policy's reason, the
prefix each instance is expected to reuse, the cached prefix to move first and the KV codec its
payload is coded with (and why). `DispatchTrace`
holds one request's outcome as the dispatcher and the relay learn it: the prefill instance's
answer, the prefix move's outcome and bytes, the first token's timing; the response's `prfaas`
field and the log lines written after routing read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.messages import PrefillResult
from prfaas.router.monitor import InstanceState


@dataclass(frozen=True)
class PrefixMove:
    """A cached prefix to move to the prefilling instance before its job is sent."""

    holder: InstanceState  # the other cluster's instance caching the longest prefix
    num_tokens: int  # prompt tokens it sends: its whole usable prefix (block-aligned)


@dataclass(frozen=True)
class Dispatch:
    """Where one request goes and why: the routing decision made concrete."""

    req_id: str
    transfer_id: str
    route: str  # RouteTarget value: "prfaas" | "pd_prefill"
    reason: str  # the policy's reason ("<rule>: <details>")
    num_prompt_tokens: int
    decode: InstanceState
    prefill: InstanceState | None  # None: the decode instance prefills itself (colocated)
    num_cached_tokens: int = 0  # prefix the router expects the prefilling instance to reuse
    num_receiver_prefix_tokens: int = 0  # prefix KV the decode instance holds: not sent
    num_best_prefix_tokens: int = 0  # longest usable prefix in either cluster
    num_incremental_tokens: int = 0  # the policy's l: prompt tokens it expects to be computed
    cluster: str = ""  # name of the cluster that prefills
    prefix_move: PrefixMove | None = None  # a cached prefix to move to `prefill` first
    num_prefix_transfer_tokens: int = 0  # the policy's cross-cluster moved tokens
    kv_codec: str = "none"  # codec of the payload's attention K/V (`policy.compression`)
    kv_codec_reason: str = ""  # why ("<rule>: <details>")

    @property
    def rule(self) -> str:
        return self.reason.split(":", 1)[0]

    @property
    def provider(self) -> str | None:
        """The prefill provider (prfaas cluster) that prefills; None: the PD cluster does."""
        return self.cluster if self.route == "prfaas" and self.prefill is not None else None

    @property
    def prefill_transfer_id(self) -> str | None:
        """The KV shipment's id; None for a colocated request (nothing is shipped)."""
        return self.transfer_id if self.prefill is not None else None

    def log_fields(self) -> dict[str, object]:
        return {
            "req_id": self.req_id,
            "transfer_id": self.transfer_id,
            "route": self.route,
            "reason": self.reason,
            "provider": self.provider,
            "prefill_instance": self.prefill.config.name if self.prefill else None,
            "decode_instance": self.decode.config.name,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "num_receiver_prefix_tokens": self.num_receiver_prefix_tokens,
            "num_prefix_transfer_tokens": self.num_prefix_transfer_tokens,
            "prefix_holder": self.prefix_move.holder.config.name if self.prefix_move else None,
            "kv_codec": self.kv_codec,
            "kv_codec_reason": self.kv_codec_reason,
        }


@dataclass
class DispatchTrace:
    """What happened to one dispatched request, filled in as it runs."""

    decision: Dispatch
    # prefix the prefilling instance is expected to reuse: the decision's, raised by a done move
    num_expected_cached_tokens: int
    result: PrefillResult | None = None  # the prefill instance's answer, once it came
    decode_sent_at: float | None = None  # monotonic s when the decode job went out
    first_token_s: float | None = None  # non-streamed: the decode side's first-token offset
    first_token_at: float | None = None  # monotonic s the first token was ready
    prefix_transfer: str | None = None  # outcome of the move (prefix_transfers_total label)
    num_prefix_transfer_bytes: int = 0  # KV bytes moved (a done move)

    @classmethod
    def of(cls, decision: Dispatch) -> DispatchTrace:
        return cls(decision, decision.num_cached_tokens)

    @property
    def moved_tokens(self) -> int:
        """Prompt tokens actually moved to the prefilling instance (0 unless the move was done)."""
        move = self.decision.prefix_move
        if self.prefix_transfer != "done" or move is None:
            return 0
        return move.num_tokens

    def log_fields(self) -> dict[str, object]:
        """The decision's log fields, with the prefix reuse expected now."""
        return {
            **self.decision.log_fields(),
            "num_cached_tokens": self.num_expected_cached_tokens,
        }

    def ttft_s(self, arrived_at: float) -> float | None:
        """Time to first token of a request that arrived at `arrived_at` (None: no token yet)."""
        return None if self.first_token_at is None else self.first_token_at - arrived_at

    def summary(self, arrived_at: float) -> dict[str, object]:
        """The `prfaas` extension field of a response: route, reason, KV moved, timings."""
        d, r = self.decision, self.result
        ttft_s = self.ttft_s(arrived_at)
        return {
            "route": d.route,
            "reason": d.reason,
            "provider": d.provider,
            "transfer_id": d.prefill_transfer_id,
            "prefill_instance": d.prefill.config.name if d.prefill else None,
            "decode_instance": d.decode.config.name,
            "ttft_s": None if ttft_s is None else round(ttft_s, 6),
            "kv_bytes": r.num_kv_bytes if r and r.ok else 0,
            "kv_codec": d.kv_codec,
            "kv_codec_reason": d.kv_codec_reason,
            "num_cached_tokens": (
                r.num_cached_tokens if r and r.ok else self.num_expected_cached_tokens
            ),
            "num_receiver_prefix_tokens": d.num_receiver_prefix_tokens,
            "num_incremental_tokens": d.num_incremental_tokens,
            "prefill_queue_s": round(r.queue_s, 6) if r else None,
            "prefill_s": round(r.prefill_s, 6) if r else None,
            "kv_transfer_tail_s": round(r.transfer_tail_s, 6) if r else None,
            "prefix_transfer": self.prefix_transfer,
            "num_prefix_transfer_tokens": self.moved_tokens,
            "num_prefix_transfer_bytes": self.num_prefix_transfer_bytes,
        }
