"""A testbed's network: its four namespaces, the veth links between them, the WAN's routing
through the delay line's TUN, the WAN's tbf, and telling the router a new WAN rate.

The WAN is a namespace of its own between the clusters: a veth to the PrfaaS namespace and one
to the PD namespace, whose cluster ends keep one /24 as if they were directly joined (the WAN
namespace answers ARP for the far end: proxy ARP). While the delay settings hold packets (a
delay, jitter or loss), policy routing sends every packet arriving on either veth into the TUN
device `DELAY_TUN`; what the delay line writes back into it is routed by the main table to the
other veth. With none, the kernel forwards veth to veth (`route_through_delay_line`): a
user-space hop on two loaded cores stalls now and then, and TCP's tail loss probes take a stall
of 10 ms for a loss, which the router reads as a congested link. Every WAN device has the MTU
`wan_mtu_bytes` of the rate the testbed starts at (a later `link --gbps` keeps it).

A new rate is POSTed to the router's `/internal/control/link` from the client namespace with the
deployment token, so that the router's link view keeps matching the wire. Root only
(`prfaas.testbed.netns` does the `ip`/`tc` calls).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.service.auth import bearer
from prfaas.testbed import delayline, netns
from prfaas.testbed.delay_schedule import DelaySettings
from prfaas.testbed.layout import DELAY_TUN, TestbedLayout, tbf_burst_bytes, wan_mtu_bytes
from prfaas.testbed.netns import DELAY_TABLE
from prfaas.testbed.state import DELAY_CONTROL_FILE, TOKEN_FILE, process_record

_ROUTER_TIMEOUT_S = 5.0  # telling the router a new link capacity
# TCP settings of the clusters' namespaces: buffers up to 64 MiB, a window of 4 Gbit/s x 100 ms
# RTT, so that a delayed WAN is limited by its rate, not by the kernel's default 4 MiB send
# buffer; and an idle KV connection keeps its window (no slow start after idle)
_TCP_SETTINGS = {
    "net.ipv4.tcp_rmem": "4096 131072 67108864",
    "net.ipv4.tcp_wmem": "4096 16384 67108864",
    "net.ipv4.tcp_slow_start_after_idle": "0",
}


def require_netns() -> None:
    reason = netns.netns_unavailable_reason()
    if reason is not None:
        raise UserError(f"the testbed needs network namespaces: {reason}")


def create_network(layout: TestbedLayout, wire_gbps: float) -> None:
    """The four namespaces, the veth pairs, the WAN's routing through the delay line's TUN and
    its tbf; everything made is removed again when a step fails (NetnsError becomes a
    UserError). The WAN forwards veth to veth until `route_through_delay_line` sends it through
    the TUN."""
    try:
        for ns in layout.namespaces:
            netns.add_namespace(ns)
        _build_wan(layout, wan_mtu_bytes(wire_gbps))
        for ns in (layout.prfaas_ns, layout.pd_ns):
            netns.set_sysctls(ns, _TCP_SETTINGS)
        netns.add_veth(layout.client_pd, layout.client)
        _shape_wan(layout, wire_gbps)
    except netns.NetnsError as exc:
        delete_network(layout)
        raise UserError(f"could not build the testbed's network: {exc}") from None


def _build_wan(layout: TestbedLayout, mtu_bytes: int) -> None:
    """The WAN namespace: its veths to both clusters, the TUN, forwarding and the routing table
    that sends packets into the TUN (see the module docstring); packets go veth to veth until
    `route_through_delay_line` sends them through it."""
    netns.build_delay_hop(
        layout.wan_hops,
        (layout.wan_prfaas, layout.wan_pd),
        layout.wan_router_id,
        DELAY_TUN,
        mtu_bytes,
        through_tun=False,
    )


def route_through_delay_line(layout: TestbedLayout, through: bool) -> None:
    """Send the WAN's packets through the delay line's TUN (`through`) or straight from veth to
    veth; idempotent. Raises NetnsError."""
    for hop in layout.wan_hops:
        rule = ("iif", hop.dev, "lookup", DELAY_TABLE)
        present = _has_rule(layout.wan_ns, hop.dev)
        if through and not present:
            netns.ip(layout.wan_ns, "rule", "add", *rule)
        elif not through and present:
            netns.ip(layout.wan_ns, "rule", "del", *rule)


def _has_rule(ns: str, dev: str) -> bool:
    """Whether the WAN namespace's rules send packets arriving on `dev` to `DELAY_TABLE`."""
    shown = subprocess.run(
        ["ip", "-n", ns, "rule", "show", "iif", dev], capture_output=True, text=True, check=False
    )
    return f"lookup {DELAY_TABLE}" in shown.stdout


def delete_network(layout: TestbedLayout) -> list[str]:
    """Delete whichever of the namespaces exist (their veths go with them); names deleted."""
    return [ns for ns in layout.namespaces if netns.delete_namespace(ns)]


def existing_namespaces(layout: TestbedLayout) -> list[str]:
    present = set(netns.list_namespaces())
    return [ns for ns in layout.namespaces if ns in present]


def set_wan_rate(layout: TestbedLayout, wire_gbps: float) -> None:
    """The running WAN's tbf at `wire_gbps` (NetnsError becomes a UserError)."""
    try:
        _shape_wan(layout, wire_gbps)
    except netns.NetnsError as exc:
        raise UserError(str(exc)) from None


def _shape_wan(layout: TestbedLayout, wire_gbps: float) -> None:
    """The WAN's tbf at `wire_gbps`; raises NetnsError."""
    wan = layout.wan_prfaas
    netns.set_tbf(wan.ns, wan.dev, wire_gbps, tbf_burst_bytes(wire_gbps))


def start_delay_line(
    layout: TestbedLayout, run_dir: Path, settings: DelaySettings, seed: int
) -> dict[str, Any]:
    """The WAN's delay line, attached to the TUN inside the WAN namespace and answering its
    control socket; its process record (DelayLineError becomes a UserError)."""
    try:
        proc = delayline.start(
            netns.exec_prefix(layout.wan_ns),
            DELAY_TUN,
            run_dir / DELAY_CONTROL_FILE,
            settings,
            seed,
            run_dir / "logs" / "delayline.log",
        )
    except delayline.DelayLineError as exc:
        raise UserError(f"could not start the WAN's delay line: {exc}") from None
    return process_record(proc.pid)


def set_delay_path(layout: TestbedLayout, through: bool) -> None:
    """`route_through_delay_line`, with NetnsError as a UserError."""
    try:
        route_through_delay_line(layout, through)
    except netns.NetnsError as exc:
        raise UserError(f"could not route the WAN through the delay line: {exc}") from None


def set_delay(run_dir: Path, settings: DelaySettings) -> dict[str, Any]:
    """Give the running delay line new settings; what it now applies (UserError when it does
    not answer or refuses them)."""
    try:
        answer = delayline.request(
            run_dir / DELAY_CONTROL_FILE, {"op": "set", "settings": settings.to_dict()}
        )
    except delayline.DelayLineError as exc:
        raise UserError(str(exc)) from None
    if not answer.get("ok"):
        raise UserError(f"the delay line refused the settings: {answer.get('error')}")
    return dict(answer["settings"])


def delay_report(run_dir: Path) -> dict[str, Any]:
    """What the delay line applies and has done ({"error": ...} when it does not answer)."""
    try:
        answer = delayline.request(run_dir / DELAY_CONTROL_FILE, {"op": "get"})
    except delayline.DelayLineError as exc:
        return {"error": str(exc)}
    answer.pop("ok", None)
    return answer


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
