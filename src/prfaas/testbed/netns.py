"""Kernel-shaped links between network namespaces, for tests, benchmarks and the testbed.

Primitives (each one `ip`/`tc` call, failures raised as `NetnsError` with the tool's message):
`add_namespace` / `delete_namespace` / `list_namespaces`, `add_veth` (a veth pair straight into
two namespaces, addressed and up), `add_tun` (a TUN device), `set_mtu`, `set_sysctls` /
`read_sysctls`, `ip` (any other `ip -n NS ...` call), `set_tbf` (a `tc tbf` rate limit on a
device), `qdisc_stats` (the `tc -s` counters), `set_link_up`, `namespace_pids`, and
`call_in_netns` (run a function on a thread that has entered a namespace, so its sockets live
there). `build_delay_hop` makes a namespace between two others route every packet through a TUN
device, where a delay line (`prfaas.testbed.delayline`) holds it. `NetnsLink` is the link the
transport tests and `prfaas bench transport` use: two namespaces, the sending side's veth with
`tbf rate R`, and with `delay` a third namespace between them running a delay line (one-way
delay, jitter, loss), as the testbed's WAN does.

Needs root and `ip`/`tc`; `netns_unavailable_reason()` says why not, so tests can skip cleanly.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from prfaas.testbed import delayline
from prfaas.testbed.delay_schedule import DelaySettings

_SUBNET_PREFIX = "10.200"
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/var/run/netns"
_TBF_LATENCY = "50ms"  # how long a packet may wait in the tbf queue before it is dropped
DELAY_TABLE = "100"  # a delay hop's routing table that sends packets into the TUN
DELAY_LINE_MTU_BYTES = 64_000  # large, so that a delay line handles few packets per second
T = TypeVar("T")


class NetnsError(RuntimeError):
    """An `ip` or `tc` command failed; the message holds the command and its stderr."""


def netns_unavailable_reason() -> str | None:
    """None when namespaces can be made here, otherwise a one-line reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"prfaasprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def exec_prefix(ns: str) -> list[str]:
    """The argv prefix that runs a command inside namespace `ns`."""
    return ["ip", "netns", "exec", ns]


def add_namespace(ns: str) -> None:
    """Create namespace `ns` with its loopback up."""
    _run("ip", "netns", "add", ns)
    ip(ns, "link", "set", "lo", "up")


def delete_namespace(ns: str) -> bool:
    """Delete namespace `ns`; False when there was none."""
    done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
    return done.returncode == 0


def list_namespaces() -> list[str]:
    """Names of the namespaces `ip netns` knows."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    """Processes running inside namespace `ns` (none when it does not exist)."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


@dataclass(frozen=True)
class VethEnd:
    """One end of a veth pair: its namespace, device name and IPv4 address."""

    ns: str
    dev: str
    ip: str


def add_veth(a: VethEnd, b: VethEnd, prefix_len: int = 24) -> None:
    """A veth pair created straight inside both namespaces, each end addressed (unless its `ip`
    is empty) and up (the connected subnet is the route between them)."""
    _run("ip", "link", "add", a.dev, "netns", a.ns, "type", "veth", "peer", "name", b.dev,
         "netns", b.ns)  # fmt: skip
    for end in (a, b):
        if end.ip:
            ip(end.ns, "addr", "add", f"{end.ip}/{prefix_len}", "dev", end.dev)
        ip(end.ns, "link", "set", end.dev, "up")


def add_tun(ns: str, dev: str) -> None:
    """A persistent TUN device `dev` in `ns` (bare IP packets), for a process to attach to."""
    ip(ns, "tuntap", "add", "dev", dev, "mode", "tun")


def build_delay_hop(
    hops: tuple[VethEnd, VethEnd],
    fars: tuple[VethEnd, VethEnd],
    router_ip: str,
    tun: str,
    mtu_bytes: int,
    through_tun: bool = True,
) -> None:
    """A namespace (the hops') between `fars[0]` and `fars[1]`, which keep one subnet as if
    directly joined: a veth to each (`hops`, unaddressed, answering ARP for the far end: proxy
    ARP), its own address `router_ip` on loopback, TUN device `tun`, and the routing table
    `DELAY_TABLE` into the TUN; with `through_tun`, policy rules send every packet arriving on
    either veth there (without, packets go veth to veth until such rules are added). What a
    delay line writes back into the TUN is routed by the main table to the other veth. Every
    device gets `mtu_bytes`."""
    ns = hops[0].ns
    for hop, far in zip(hops, fars, strict=True):
        add_veth(far, hop)
    ip(ns, "addr", "add", f"{router_ip}/32", "dev", "lo")
    add_tun(ns, tun)
    for end in (*fars, *hops):
        set_mtu(end.ns, end.dev, mtu_bytes)
    set_mtu(ns, tun, mtu_bytes)
    set_link_up(ns, tun, True)
    devices = ("all", "default", tun, *(hop.dev for hop in hops))
    sysctls = {"net.ipv4.ip_forward": "1"}
    sysctls |= {f"net.ipv4.conf.{dev}.rp_filter": "0" for dev in devices}
    for hop in hops:
        sysctls |= {f"net.ipv4.conf.{hop.dev}.proxy_arp": "1"}
        sysctls |= {f"net.ipv4.neigh.{hop.dev}.proxy_delay": "0"}
    set_sysctls(ns, sysctls)
    for hop, far in zip(hops, fars, strict=True):
        ip(ns, "route", "add", f"{far.ip}/32", "dev", hop.dev)
        if through_tun:
            ip(ns, "rule", "add", "iif", hop.dev, "lookup", DELAY_TABLE)
    ip(ns, "route", "add", "default", "dev", tun, "table", DELAY_TABLE)


def set_mtu(ns: str, dev: str, mtu_bytes: int) -> None:
    ip(ns, "link", "set", dev, "mtu", str(mtu_bytes))


def set_sysctls(ns: str, values: dict[str, str]) -> None:
    """Kernel settings of namespace `ns` (`sysctl -w` inside it), e.g. net.ipv4.ip_forward."""
    _run(*exec_prefix(ns), "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items()))


def read_sysctls(ns: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The values of `keys` in namespace `ns` (`sysctl -n`, whitespace collapsed to spaces)."""
    values = {}
    for key in keys:
        done = subprocess.run([*exec_prefix(ns), "sysctl", "-n", key], capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode != 0:
            raise NetnsError(f"sysctl -n {key} in {ns} failed: {done.stderr.strip()}")
        values[key] = " ".join(done.stdout.split())
    return values


def ip(ns: str, *args: str) -> None:
    """`ip -n NS ARGS...`; NetnsError with ip's message when it fails."""
    _run("ip", "-n", ns, *args)


def set_link_up(ns: str, dev: str, is_up: bool) -> None:
    """Bring device `dev` in `ns` up or down (down: the peer loses carrier, nothing crosses)."""
    ip(ns, "link", "set", dev, "up" if is_up else "down")


def link_is_up(ns: str, dev: str) -> bool:
    """Whether `dev` in `ns` is administratively up with a carrier (False when it is gone)."""
    done = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        return False
    links = json.loads(done.stdout or "[]")
    flags = links[0].get("flags", []) if links else []
    return "UP" in flags and "LOWER_UP" in flags


def tbf_rate_arg(rate_gbps: float) -> str:
    """`tc`'s rate argument for `rate_gbps`, in whole kbit/s (at least 8 kbit/s)."""
    if not rate_gbps > 0:
        raise ValueError(f"a tbf rate must be > 0 Gbps, got {rate_gbps}")
    return f"{max(8, round(rate_gbps * 1e6))}kbit"


def set_tbf(
    ns: str,
    dev: str,
    rate_gbps: float,
    burst_bytes: int,
) -> None:
    """Shape egress of `dev` to `rate_gbps` with a token bucket of `burst_bytes` (replacing any
    root qdisc)."""
    tbf = ["tbf", "rate", tbf_rate_arg(rate_gbps), "burst", str(burst_bytes)]
    _run("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:", *tbf,
         "latency", _TBF_LATENCY)  # fmt: skip


@dataclass(frozen=True)
class QdiscStats:
    """The root qdisc's `tc -s` counters on one device."""

    kind: str
    rate_bytes_per_s: float  # configured rate (tbf), 0 when the qdisc has none
    burst_bytes: int
    bytes_sent: int
    packets_sent: int
    drops: int
    overlimits: int
    backlog_bytes: int


def qdisc_stats(ns: str, dev: str) -> QdiscStats:
    """The root qdisc of `dev` in `ns` and its counters (`tc -s -j qdisc show`)."""
    done = subprocess.run(
        ["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise NetnsError(f"tc qdisc show dev {dev} in {ns} failed: {done.stderr.strip()}")
    qdiscs = json.loads(done.stdout or "[]")
    root = next((q for q in qdiscs if q.get("root")), None)
    if root is None:
        raise NetnsError(f"device {dev} in {ns} has no root qdisc")
    options = root.get("options", {})
    return QdiscStats(
        kind=str(root.get("kind", "")),
        rate_bytes_per_s=float(options.get("rate", 0)),
        burst_bytes=int(options.get("burst", 0)),
        bytes_sent=int(root.get("bytes", 0)),
        packets_sent=int(root.get("packets", 0)),
        drops=int(root.get("drops", 0)),
        overlimits=int(root.get("overlimits", 0)),
        backlog_bytes=int(root.get("backlog", 0)),
    )


def call_in_netns(ns: str, fn: Callable[[], T]) -> T:
    """`fn()` on a thread that entered namespace `ns` first: sockets it opens live there."""
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            _enter_netns(ns)
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _enter_netns(ns: str) -> None:
    """Move the calling thread into namespace `ns` (setns: network namespaces are per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(_NETNS_DIR, ns), os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(f"setns into {ns} failed: {os.strerror(errno)}")
    finally:
        os.close(fd)


class NetnsLink:
    """`with NetnsLink(rate_gbps=1.0) as link:` then run `link.sender_cmd(argv)` and
    `link.receiver_cmd(argv)`.

    The receiver listens on `link.receiver_ip` inside its namespace; traffic sender -> receiver is
    limited to `rate_gbps` (None: unshaped veth). With `delay` (a `DelaySettings`), a third
    namespace between them runs a delay line on a TUN device (`build_delay_hop`), holding every
    packet of both directions for the one-way delay, with jitter and loss drawn from `seed`; its
    devices and the ends' veths then have the delay line's large MTU. The namespaces (and the
    delay line) are deleted on exit, whatever happens inside.
    """

    def __init__(
        self,
        rate_gbps: float | None,
        burst_bytes: int = 4 << 20,
        delay: DelaySettings | None = None,
        seed: int = 0,
    ) -> None:
        tag = uuid.uuid4().hex[:6]
        self.sender_ns, self.receiver_ns = f"prfaas{tag}a", f"prfaas{tag}b"
        self.delay_ns = f"prfaas{tag}m"
        self._veth_a, self._veth_b = f"pf{tag}a", f"pf{tag}b"
        subnet = int(tag[:2], 16)
        self.sender_ip = f"{_SUBNET_PREFIX}.{subnet}.1"
        self.receiver_ip = f"{_SUBNET_PREFIX}.{subnet}.2"
        self._router_ip = f"{_SUBNET_PREFIX}.{subnet}.254"
        self.rate_gbps = rate_gbps
        self.delay = delay
        self._seed = seed
        self._burst_bytes = burst_bytes
        self._delay_line: subprocess.Popen[bytes] | None = None
        self._run_dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> NetnsLink:
        try:
            self._create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()

    @property
    def end_namespaces(self) -> tuple[str, str]:
        return self.sender_ns, self.receiver_ns

    def sender_cmd(self, argv: list[str]) -> list[str]:
        return [*exec_prefix(self.sender_ns), *argv]

    def receiver_cmd(self, argv: list[str]) -> list[str]:
        return [*exec_prefix(self.receiver_ns), *argv]

    def delay_report(self) -> dict[str, object]:
        """The delay line's settings and counters (empty without a delay line)."""
        if self._run_dir is None:
            return {}
        answer = delayline.request(Path(self._run_dir.name) / "delayline.sock", {"op": "get"})
        answer.pop("ok", None)
        return answer

    def delete(self) -> None:
        if self._delay_line is not None:
            self._delay_line.kill()
            self._delay_line.wait()
            self._delay_line = None
        for ns in (self.sender_ns, self.delay_ns, self.receiver_ns):
            delete_namespace(ns)
        if self._run_dir is not None:
            self._run_dir.cleanup()
            self._run_dir = None

    def _create(self) -> None:
        add_namespace(self.sender_ns)
        add_namespace(self.receiver_ns)
        sender = VethEnd(self.sender_ns, self._veth_a, self.sender_ip)
        receiver = VethEnd(self.receiver_ns, self._veth_b, self.receiver_ip)
        if self.delay is None:
            add_veth(sender, receiver)
        else:
            self._create_delay_hop(sender, receiver)
        if self.rate_gbps is not None:
            set_tbf(self.sender_ns, self._veth_a, self.rate_gbps, self._burst_bytes)

    def _create_delay_hop(self, sender: VethEnd, receiver: VethEnd) -> None:
        assert self.delay is not None
        add_namespace(self.delay_ns)
        hops = (VethEnd(self.delay_ns, "tosender", ""), VethEnd(self.delay_ns, "toreceiver", ""))
        build_delay_hop(hops, (sender, receiver), self._router_ip, "delay", DELAY_LINE_MTU_BYTES)
        self._run_dir = tempfile.TemporaryDirectory(prefix="prfaas-link-")
        run_dir = Path(self._run_dir.name)
        self._delay_line = delayline.start(
            exec_prefix(self.delay_ns),
            "delay",
            run_dir / "delayline.sock",
            self.delay,
            self._seed,
            run_dir / "delayline.log",
        )


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
