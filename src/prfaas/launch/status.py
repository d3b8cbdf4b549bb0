"""What `prfaas status` reports about a running deployment: every instance with its node, role,
health, queue depth and the links it measured, and the router's readiness.

Health combines two views: the router's (`/ready` lists which instances its poller counts as
ready) and the instance's own answer to `/internal/stats` (with the deployment token), which
also gives the role it serves now, its queue and its transport's per-destination `LinkStats`;
those become the routing policy's `LinkView`s, combined over the PrfaaS prefill instances into
the view of the PrfaaS -> PD link the router uses.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from prfaas.launch.ray_placement import Member
from prfaas.messages import InstanceStats
from prfaas.policy import LinkView
from prfaas.router.monitor import combine_link_views
from prfaas.transport.linkstats import LinkStats, LinkWindow

HEALTHY = "ready"


def fetch_json(url: str, headers: Mapping[str, str], timeout_s: float) -> tuple[int, Any] | None:
    """(HTTP status, JSON body) of a GET, the body None if not JSON; None if nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return int(reply.status), _json_or_none(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), _json_or_none(exc.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def router_ready(router_url: str, timeout_s: float) -> tuple[str, dict[str, bool]]:
    """The router's state ("ready", "not ready", "unreachable") and its per-instance view."""
    answer = fetch_json(f"{router_url}/ready", {}, timeout_s)
    if answer is None or not isinstance(answer[1], dict):
        return "unreachable", {}
    status, body = answer
    instances = {str(k): bool(v) for k, v in dict(body.get("instances", {})).items()}
    return ("ready" if status == 200 else "not ready"), instances


def instance_stats(
    member: Member, token: str | None, timeout_s: float
) -> tuple[InstanceStats | None, str]:
    """An instance's own stats, or None and why not."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    answer = fetch_json(f"http://{member.http}/internal/stats", headers, timeout_s)
    if answer is None:
        return None, "unreachable"
    status, body = answer
    if status == 401:
        return None, "refused the token"
    if status != 200 or not isinstance(body, dict):
        return None, f"HTTP {status}"
    try:
        return InstanceStats.from_dict(body), ""
    except (KeyError, ValueError, TypeError) as exc:
        return None, f"bad stats: {exc}"


def health(
    router_view: Mapping[str, bool], name: str, stats: InstanceStats | None, why: str
) -> str:
    """ "ready" only when the instance answers and the router counts it ready."""
    if stats is None:
        return why
    if stats.draining_to is not None:
        return f"draining to {stats.draining_to}"
    if name not in router_view:
        return "answers (router unknown)"
    return HEALTHY if router_view[name] else "answers, router: down"


def link_rows(stats: InstanceStats | None, capacity_bytes_per_s: float) -> list[dict[str, Any]]:
    """One row per destination the instance sends KV to: the measured stats and the policy view."""
    rows = []
    for link in () if stats is None else stats.links:
        measured = LinkStats(**link)
        view = measured.to_link_view(capacity_bytes_per_s)
        rows.append(
            {
                "dest": measured.dest,
                "num_connections": measured.num_connections,
                "goodput_bytes_per_s": measured.goodput_bytes_per_s,
                "num_transfers": measured.num_transfers,
                "num_failures": measured.num_failures,
                **asdict(view),
            }
        )
    return rows


def collect_status(
    router_url: str,
    members: Sequence[Member],
    token: str | None,
    capacity_bytes_per_s: float,
    offload_clusters: Iterable[str] = (),
    timeout_s: float = 3.0,
) -> dict[str, Any]:
    """The whole report: router state, one entry per instance, and the combined link view of the
    prefill instances in `offload_clusters` (the PrfaaS clusters) towards the other clusters."""
    router_state, view = router_ready(router_url, timeout_s)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(members)))) as pool:
        answers = list(pool.map(lambda m: instance_stats(m, token, timeout_s), members))
    instances = []
    for member, (stats, why) in zip(members, answers, strict=True):
        entry = member.to_dict()
        entry["role"] = member.role if stats is None else stats.role
        entry["health"] = health(view, member.name, stats, why)
        entry["queue"] = None if stats is None else _queue(stats)
        entry["links"] = link_rows(stats, capacity_bytes_per_s)
        instances.append(entry)
    offload = set(offload_clusters)
    link = _offload_link(members, answers, offload, capacity_bytes_per_s)
    return {
        "router": {"url": router_url, "state": router_state},
        "instances": instances,
        "offload_link": None if link is None else asdict(link),
        "all_ready": router_state == "ready" and all(i["health"] == HEALTHY for i in instances),
    }


def _queue(stats: InstanceStats) -> dict[str, Any]:
    return {
        "num_requests_waiting": stats.num_requests_waiting,
        "num_requests_running": stats.num_requests_running,
        "num_queued_tokens": stats.num_queued_tokens,
        "queued_prefill_s": stats.queued_prefill_s,
        "num_transfers_in_flight": stats.num_transfers_in_flight,
    }


def _offload_link(
    members: Sequence[Member],
    answers: Sequence[tuple[InstanceStats | None, str]],
    offload: set[str],
    capacity_bytes_per_s: float,
) -> LinkView | None:
    """The PrfaaS -> PD link as the router sees it: its prefill instances' views, combined."""
    dests = {m.kv for m in members if m.cluster not in offload and m.kv is not None}
    links = [
        LinkStats(**link)
        for member, (stats, _) in zip(members, answers, strict=True)
        if member.cluster in offload and stats is not None
        for link in stats.links
        if link.get("dest") in dests
    ]
    views = [link.to_link_view(capacity_bytes_per_s) for link in links]
    lifetime = LinkWindow.pooled(
        LinkWindow(0.0, link.bytes_sent, link.bytes_lost, link.mss_bytes) for link in links
    )
    return combine_link_views(views, capacity_bytes_per_s, lifetime.retransmit_rate)
