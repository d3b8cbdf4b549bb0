"""The transfer deadline: when a decode instance stops waiting for a request's KV, and what it
does then (`SimConfig.transfer_deadline_s`, `SimConfig.failure_policy`).

Live (`prfaas.instance.decode`), the router sends the decode job as it dispatches the request
(after a cross-cluster prefix move, when there is one), and the decode instance waits for the
KV at most the deadline from then. The simulator arms a `TransferDeadline` at the same moment:
routing, or the moved prefix's landing (`deadline_follow_up`). At the deadline, unless the KV
has landed (KV landing at that very instant is too late: the deadline's event comes first, as
live's timeout fires before a transfer that completes with it), the request is given up on:

- the transfer is abandoned as the prefill instance's sender abandons it: once its prefill has
  ended, the sender stops at its own deadline and skips the frames still queued
  (`prfaas.transport.transfer`, `destination`), so the flow's unsent bytes leave the link then
  (`SharedLink.remove`); a prefill still running keeps sending the layers it produces until it
  ends, and the flow leaves at that end. Either way the prefill instance frees the request.
- failure policy `recompute`: the decode instance chosen for it prefills the whole prompt itself,
  timed by its own prefill curve (`DeploymentSpec.decode_prefill_latency`, what its emulated
  engine sleeps), at its next step boundary and blocking its decode steps and imports meanwhile
  (`SimDecode.recompute`, `local_prefill`); the first token streams at that prefill's end, then
  the request decodes as usual.
- failure policy `fail`: the request ends with an error there; it is counted, not completed.

`RequestLog.failure` records which ("" for a request whose KV came in time); the summary counts
them as `num_recomputed` and `num_errors` (live `prfaas bench system`'s key for requests that
ended with an error) when the run has a deadline.
"""

from __future__ import annotations

from prfaas.sim.config import SimConfig, SimRequest
from prfaas.sim.events import TransferDeadline
from prfaas.sim.instances import LocalPrefill
from prfaas.sim.link import LinkSite


def deadline_follow_up(
    config: SimConfig, now: float, i: int
) -> list[tuple[float, TransferDeadline]]:
    """Request `i`'s decode job is dispatched at `now`: its deadline, if the run has one."""
    if config.transfer_deadline_s is None:
        return []
    return [(now + config.transfer_deadline_s, TransferDeadline(i))]


def local_prefill(config: SimConfig, req: SimRequest, i: int) -> LocalPrefill:
    """Request `i` prefilled whole on its decode instance, then decoded there."""
    latency = config.deployment.decode_prefill_latency
    prefill_s = latency.t_prefill_s(req.num_prompt_tokens)
    return LocalPrefill(i, req.num_output_tokens - 1, req.num_prompt_tokens, prefill_s)


def drop_flow(site: LinkSite, i: int, dest: str, now: float) -> None:
    """The sender gives up request `i`'s KV to `dest` at `now`: its unsent bytes never cross,
    and the transfer no longer keeps the destination's connections busy."""
    site.link.remove(now, i)
    site.latency.finish(now, dest)
