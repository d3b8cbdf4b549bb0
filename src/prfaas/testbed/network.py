"""A testbed's network: its three namespaces, the veth links between them, the WAN's tbf, and
telling the router a new WAN rate.

A new rate is POSTed to the router's `/internal/control/link` from the client namespace with the
deployment token, so that the router's link view keeps matching the wire. Root only
(`prfaas.testbed.netns` does the `ip`/`tc` calls).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.service.auth import bearer
from prfaas.testbed import netns
from prfaas.testbed.layout import TestbedLayout, tbf_burst_bytes
from prfaas.testbed.state import TOKEN_FILE

_ROUTER_TIMEOUT_S = 5.0  # telling the router a new link capacity


def require_netns() -> None:
    reason = netns.netns_unavailable_reason()
    if reason is not None:
        raise UserError(f"the testbed needs network namespaces: {reason}")


def create_network(layout: TestbedLayout, wire_gbps: float, delay_ms: float) -> None:
    """The three namespaces, both veth pairs and the WAN's tbf; everything made is removed again
    when a step fails (NetnsError becomes a UserError)."""
    try:
        for ns in layout.namespaces:
            netns.add_namespace(ns)
        netns.add_veth(layout.wan_prfaas, layout.wan_pd)
        netns.add_veth(layout.client_pd, layout.client)
        _shape_wan(layout, wire_gbps, delay_ms)
    except netns.NetnsError as exc:
        delete_network(layout)
        raise UserError(f"could not build the testbed's network: {exc}") from None


def delete_network(layout: TestbedLayout) -> list[str]:
    """Delete whichever of the namespaces exist (their veths go with them); names deleted."""
    return [ns for ns in layout.namespaces if netns.delete_namespace(ns)]


def existing_namespaces(layout: TestbedLayout) -> list[str]:
    present = set(netns.list_namespaces())
    return [ns for ns in layout.namespaces if ns in present]


def set_wan_rate(layout: TestbedLayout, wire_gbps: float, delay_ms: float) -> None:
    """The running WAN's tbf at `wire_gbps` (NetnsError becomes a UserError)."""
    try:
        _shape_wan(layout, wire_gbps, delay_ms)
    except netns.NetnsError as exc:
        raise UserError(str(exc)) from None


def _shape_wan(layout: TestbedLayout, wire_gbps: float, delay_ms: float) -> None:
    """The WAN's tbf at `wire_gbps` (+ `delay_ms` where netem exists); raises NetnsError."""
    wan = layout.wan_prfaas
    netns.set_tbf(wan.ns, wan.dev, wire_gbps, tbf_burst_bytes(wire_gbps), delay_ms=delay_ms)


def link_report(layout: TestbedLayout) -> dict[str, Any]:
    """The WAN device: where it is, whether it is up, and its qdisc's counters (or the error)."""
    wan = layout.wan_prfaas
    try:
        stats = asdict(netns.qdisc_stats(wan.ns, wan.dev))
    except netns.NetnsError as exc:
        stats = {"error": str(exc)}
    return {"ns": wan.ns, "dev": wan.dev, "up": netns.link_is_up(wan.ns, wan.dev), **stats}


def inform_router(
    run_dir: Path, state: dict[str, Any], layout: TestbedLayout, wire_gbps: float
) -> dict[str, Any]:
    """POST the new wire rate to the router's `/internal/control/link` from the client
    namespace, with the deployment token (never raises): `router_informed`, `router_reason`
    (None when informed) and `router_link_bytes_per_s`, the capacity the router now uses."""
    try:
        token = (run_dir / TOKEN_FILE).read_text().strip()
    except OSError as exc:
        return _told(f"no deployment token: {exc}")
    url = f"{state['router_url']}/internal/control/link"
    try:
        return netns.call_in_netns(layout.client_ns, lambda: post_link(url, token, wire_gbps))
    except (netns.NetnsError, OSError) as exc:  # the client namespace is gone
        return _told(f"cannot reach the client namespace: {exc}")


def _told(reason: str | None, link_bytes_per_s: float | None = None) -> dict[str, Any]:
    return {
        "router_informed": reason is None,
        "router_reason": reason,
        "router_link_bytes_per_s": link_bytes_per_s,
    }


def post_link(url: str, token: str, gbps: float) -> dict[str, Any]:
    """POST {"gbps": gbps} to `url` as Bearer `token`; whether the router took it (see
    `inform_router`)."""
    body = json.dumps({"gbps": gbps}).encode()
    headers = {"Content-Type": "application/json", **bearer(token)}
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=_ROUTER_TIMEOUT_S) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        detail = " ".join(exc.read().decode(errors="replace").split())[:200]
        return _told(f"the router answered {exc.code}: {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return _told(f"the router did not answer: {exc}")
    capacity = answer.get("link_bytes_per_s") if isinstance(answer, dict) else None
    if not isinstance(capacity, int | float):
        return _told(f"the router answered without link_bytes_per_s: {str(answer)[:200]}")
    return _told(None, float(capacity))
