"""A kernel-shaped link for tests and benchmarks: two network namespaces joined by a veth pair.

The sending side's veth gets `tc ... tbf rate R` (netem is absent on the project machines). Needs
root and `ip`/`tc`; `netns_unavailable_reason()` says why not, so tests can skip cleanly. The
namespaces are deleted on exit, whatever happens inside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from types import TracebackType

_SUBNET_PREFIX = "10.200"


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


class NetnsLink:
    """`with NetnsLink(rate_gbps=1.0) as link:` then run `link.sender_cmd(argv)` and
    `link.receiver_cmd(argv)`.

    The receiver listens on `link.receiver_ip` inside its namespace; traffic sender -> receiver is
    limited to `rate_gbps` (None: unshaped veth).
    """

    def __init__(self, rate_gbps: float | None, burst_bytes: int = 4 << 20) -> None:
        tag = uuid.uuid4().hex[:6]
        self.sender_ns, self.receiver_ns = f"prfaas{tag}a", f"prfaas{tag}b"
        self._veth_a, self._veth_b = f"pf{tag}a", f"pf{tag}b"
        subnet = int(tag[:2], 16)
        self.sender_ip = f"{_SUBNET_PREFIX}.{subnet}.1"
        self.receiver_ip = f"{_SUBNET_PREFIX}.{subnet}.2"
        self.rate_gbps = rate_gbps
        self._burst_bytes = burst_bytes

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

    def sender_cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.sender_ns, *argv]

    def receiver_cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.receiver_ns, *argv]

    def delete(self) -> None:
        for ns in (self.sender_ns, self.receiver_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def _create(self) -> None:
        a, b = self.sender_ns, self.receiver_ns
        _run("ip", "netns", "add", a)
        _run("ip", "netns", "add", b)
        _run("ip", "link", "add", self._veth_a, "netns", a, "type", "veth", "peer", "name",
             self._veth_b, "netns", b)  # fmt: skip
        for ns, dev, ip in ((a, self._veth_a, self.sender_ip), (b, self._veth_b, self.receiver_ip)):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        if self.rate_gbps is not None:
            rate = f"{int(self.rate_gbps * 1000)}mbit"
            tbf = ["tbf", "rate", rate, "burst", str(self._burst_bytes), "latency", "50ms"]
            _run(
                "ip",
                "netns",
                "exec",
                a,
                "tc",
                "qdisc",
                "replace",
                "dev",
                self._veth_a,
                "root",
                *tbf,
            )


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
