"""The WAN's delay line: a process that holds every packet crossing the testbed's WAN for its
one-way delay (plus jitter) and drops some (loss), in both directions.

This kernel has no netem, so the delay is made in user space. The WAN namespace routes each
packet arriving on either WAN veth into a TUN device (`prfaas.testbed.network`); this process
reads it from the TUN (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`: bare IP packets), keeps it in a
`PacketQueue` (`prfaas.testbed.delay_schedule`: the pure rules) until its release time, and
writes it back into the TUN, from where the kernel forwards it on to the other veth. The WAN's
MTU is large at high rates (`layout.wan_mtu_bytes`), so 1 Gbit/s is a few thousand packets a second.

Run as `python -m prfaas.testbed.delayline --tun DEV --control SOCKET [--settings JSON]
[--seed N]` inside the WAN namespace (`start` does that, detached). Its control is a UNIX stream
socket taking one JSON line per connection: `{"op": "get"}` or `{"op": "set", "settings":
{...}}`, answered with one JSON line: `{"ok": true, "settings": {...}, "counters": {...}}` or
`{"ok": false, "error": "..."}`. New settings apply to packets arriving from then on.
`request` is the client side.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prfaas.testbed.delay_schedule import DelaySettings, DelaySettingsError, PacketQueue

MAX_HELD_BYTES = 512 << 20  # beyond this the line drops (4 Gbit/s x 1 s in flight)
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_READ_BYTES = 1 << 16
_MAX_READS_PER_WAKE = 256  # then release what is due, so one direction cannot starve timing
_IDLE_WAIT_S = 1.0
_CONTROL_LINE_BYTES = 4096
_START_TIMEOUT_S = 30.0
_START_POLL_S = 0.05


class DelayLineError(RuntimeError):
    """The delay line cannot be started or did not answer its control socket."""


# ---- the process ----------------------------------------------------------------------------


def open_tun(name: str) -> int:
    """Attach to TUN device `name` (made by `ip tuntap`, or created here) as a non-blocking fd
    of bare IP packets."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class _Server:
    """The delay line's loop: the TUN, the control socket and its connections on one selector."""

    def __init__(self, tun_fd: int, control: socket.socket, queue: PacketQueue) -> None:
        self._tun_fd = tun_fd
        self._control = control
        self._queue = queue
        self._selector = selectors.DefaultSelector()
        self._selector.register(tun_fd, selectors.EVENT_READ, self._read_tun)
        self._selector.register(control, selectors.EVENT_READ, self._accept)
        self._pending: dict[socket.socket, bytes] = {}
        self.num_write_errors = 0

    def run_forever(self) -> None:
        while True:
            self.run_once()

    def run_once(self) -> None:
        """Wait for a packet, a control request or the next release; handle them."""
        release_s = self._queue.next_release_s()
        wait_s = _IDLE_WAIT_S if release_s is None else max(0.0, release_s - time.monotonic())
        for key, _ in self._selector.select(min(wait_s, _IDLE_WAIT_S)):
            key.data(key.fileobj)
        self._release()

    def _read_tun(self, _: object) -> None:
        for _ in range(_MAX_READS_PER_WAKE):
            try:
                packet = os.read(self._tun_fd, _READ_BYTES)
            except BlockingIOError:
                return
            self._queue.accept(packet, time.monotonic())
            self._release()  # a zero hold leaves at once

    def _release(self) -> None:
        for packet in self._queue.pop_due(time.monotonic()):
            try:
                os.write(self._tun_fd, packet)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EINVAL, errno.EIO):
                    raise
                self.num_write_errors += 1

    def _accept(self, _: object) -> None:
        with contextlib.suppress(BlockingIOError):
            conn, _ = self._control.accept()
            conn.setblocking(False)
            self._pending[conn] = b""
            self._selector.register(conn, selectors.EVENT_READ, self._read_control)

    def _read_control(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(_CONTROL_LINE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data = self._pending[conn] + chunk
        if chunk and b"\n" not in data and len(data) < _CONTROL_LINE_BYTES:
            self._pending[conn] = data
            return
        self._selector.unregister(conn)
        del self._pending[conn]
        with conn:
            answer = self.answer(data.split(b"\n", 1)[0]) if chunk or data else None
            if answer is not None:
                with contextlib.suppress(OSError):
                    conn.setblocking(True)
                    conn.sendall(json.dumps(answer).encode() + b"\n")

    def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one control line (see the module docstring)."""
        try:
            message = json.loads(line)
            op = message.get("op") if isinstance(message, dict) else None
            if op == "set":
                self._queue.settings = DelaySettings.from_dict(message.get("settings"))
            elif op != "get":
                return {"ok": False, "error": f"unknown request {line[:100]!r}"}
        except (ValueError, DelaySettingsError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, **self.report()}

    def report(self) -> dict[str, Any]:
        counters = {
            socket.inet_ntoa(direction) if len(direction) == 4 else "not IPv4": vars(c)
            for direction, c in self._queue.counters.items()
        }
        return {
            "settings": self._queue.settings.to_dict(),
            "counters": counters,
            "num_held": self._queue.num_held(),
            "held_bytes": self._queue.held_bytes,
            "num_write_errors": self.num_write_errors,
        }


def serve(tun: str, control_path: Path, settings: DelaySettings, seed: int) -> None:
    """Run the delay line on TUN `tun` until killed, controlled through `control_path`."""
    tun_fd = open_tun(tun)
    with contextlib.suppress(FileNotFoundError):
        control_path.unlink()
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(str(control_path))
    control_path.chmod(0o600)
    control.listen(8)
    control.setblocking(False)
    _Server(tun_fd, control, PacketQueue(settings, seed, MAX_HELD_BYTES)).run_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prfaas.testbed.delayline")
    parser.add_argument("--tun", required=True, help="TUN device to attach to")
    parser.add_argument("--control", required=True, type=Path, help="UNIX socket path")
    parser.add_argument("--settings", default="{}", help="DelaySettings as JSON")
    parser.add_argument("--seed", type=int, default=0, help="the loss and jitter draws' seed")
    args = parser.parse_args(argv)
    try:
        settings = DelaySettings.from_dict(json.loads(args.settings))
    except (ValueError, DelaySettingsError) as exc:
        parser.error(str(exc))
    try:
        serve(args.tun, args.control, settings, args.seed)
    except OSError as exc:
        print(f"delay line: {exc}", file=sys.stderr)
        return 1
    return 0


# ---- the parent's side ----------------------------------------------------------------------


def request(control_path: Path, message: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one control request and return the delay line's answer (DelayLineError when it
    cannot be reached or answers nonsense)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(control_path))
            conn.sendall(json.dumps(message).encode() + b"\n")
            reply = conn.makefile("rb").readline()
        answer = json.loads(reply)
    except (OSError, ValueError) as exc:
        raise DelayLineError(f"the delay line at {control_path} did not answer: {exc}") from None
    if not isinstance(answer, dict):
        raise DelayLineError(f"the delay line answered {reply[:200]!r}")
    return answer


def start(
    exec_prefix: list[str],
    tun: str,
    control_path: Path,
    settings: DelaySettings,
    seed: int,
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """Start the delay line detached (its own session) under `exec_prefix` (the WAN
    namespace's `ip netns exec`), and return once it answers its control socket."""
    argv = [*exec_prefix, sys.executable, "-m", "prfaas.testbed.delayline", "--tun", tun,
            "--control", str(control_path), "--settings", json.dumps(settings.to_dict()),
            "--seed", str(seed)]  # fmt: skip
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        with contextlib.suppress(DelayLineError):
            if request(control_path, {"op": "get"}).get("ok"):
                return proc
        if proc.poll() is not None:
            raise DelayLineError(f"the delay line exited ({proc.returncode}); see {log_path}")
        if time.monotonic() > deadline:
            proc.kill()
            raise DelayLineError(f"the delay line did not answer in {_START_TIMEOUT_S:g} s")
        time.sleep(_START_POLL_S)


if __name__ == "__main__":
    sys.exit(main())
