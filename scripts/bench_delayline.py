"""Measure a running testbed's WAN delay line: what it adds at delay 0, and up to which rate it
stays faithful (docs/testbed.md, "Delay, jitter and loss").

Usage (root, on a running testbed; it changes the WAN's rate and delay and puts them back):

    .venv/bin/python scripts/bench_delayline.py --name NAME [--state-dir DIR] \
        [--rates-gbps 0.5,1,2,4] [--delay-ms 25] [--duration-s 8] [--json]

1. Delay 0: ICMP round trips PD -> PrfaaS through the delay line, then with the WAN namespace's
   two policy rules removed (packets forwarded between the veths without the TUN), then back.
2. For each rate: the WAN's tbf at that wire rate, the delay line at `--delay-ms` one way, one
   TCP connection PrfaaS -> PD streaming for `--duration-s` (cubic, as the testbed's transport;
   sender and receiver are processes of their own), pings PD -> PrfaaS alongside (their echoes
   queue behind the stream), and the delay line's CPU time (utime + stime from /proc) over the
   run. Goodput is the receiver's rate after the first second (slow start excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prfaas.testbed import netns, probe
from prfaas.testbed.delay_schedule import DelaySettings
from prfaas.testbed.layout import DEFAULT_STATE_ROOT, TestbedLayout
from prfaas.testbed.netns import DELAY_TABLE
from prfaas.testbed.network import set_delay, set_wan_rate
from prfaas.testbed.state import read_state, run_dir_of

_PORT = 5299
_NUM_IDLE_PINGS = 200
_PING_INTERVAL_S = 0.01
_LOADED_PING_INTERVAL_S = 0.05
_SKIP_S = 1.0  # slow start at 50 ms RTT


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ping_ms(layout: TestbedLayout, num: int, interval_s: float) -> dict[str, Any]:
    far = layout.wan_prfaas.ip
    rtts = netns.call_in_netns(layout.pd_ns, lambda: probe.ping(far, num, interval_s, 2.0))
    got = sorted(r * 1000 for r in rtts if r is not None)
    if not got:
        return {"median_ms": None, "p90_ms": None, "loss": 1.0}
    return {
        "median_ms": round(got[len(got) // 2], 3),
        "p90_ms": round(got[int(len(got) * 0.9)], 3),
        "loss": probe.loss_fraction(rtts),
    }


def _bypass(layout: TestbedLayout, is_bypassed: bool) -> None:
    """Remove (or put back) the WAN namespace's rules that send packets into the TUN."""
    for hop in layout.wan_hops:
        action = "del" if is_bypassed else "add"
        netns.ip(layout.wan_ns, "rule", action, "iif", hop.dev, "lookup", DELAY_TABLE)


def idle_overhead(layout: TestbedLayout, run_dir: Path) -> dict[str, Any]:
    set_delay(run_dir, DelaySettings())
    through = _ping_ms(layout, _NUM_IDLE_PINGS, _PING_INTERVAL_S)
    _bypass(layout, True)
    try:
        bypassed = _ping_ms(layout, _NUM_IDLE_PINGS, _PING_INTERVAL_S)
    finally:
        _bypass(layout, False)
    return {"through_delay_line": through, "bypassed": bypassed}


def at_rate(
    layout: TestbedLayout, run_dir: Path, pid: int, wire_gbps: float, delay_ms: float, dur_s: float
) -> dict[str, Any]:
    set_wan_rate(layout, wire_gbps)
    set_delay(run_dir, DelaySettings(delay_ms=delay_ms))
    pd_ip = layout.wan_pd.ip
    sink = subprocess.Popen(
        [*netns.exec_prefix(layout.pd_ns), sys.executable, __file__, "--sink", pd_ip],
        stdout=subprocess.PIPE,
        text=True,
    )
    _wait_listening(layout, pd_ip)
    send = [sys.executable, __file__, "--send", pd_ip, "--duration-s", str(dur_s)]
    sender = subprocess.Popen([*netns.exec_prefix(layout.prfaas_ns), *send])
    cpu_before, started = _cpu_s(pid), time.monotonic()
    pings = _ping_ms(layout, int(dur_s / _LOADED_PING_INTERVAL_S) - 10, _LOADED_PING_INTERVAL_S)
    sender.wait()
    result = json.loads(sink.communicate(timeout=60)[0])
    wall_s = time.monotonic() - started
    goodput = probe.rate_after(result.get("marks", []), _SKIP_S)
    return {
        "wire_gbps": wire_gbps,
        "goodput_gbps": round(goodput * 8 / 1e9, 3) if goodput else None,
        "loaded_rtt": pings,
        "delay_line_cpu_pct": round(100 * (_cpu_s(pid) - cpu_before) / wall_s, 1),
        "tbf_drops": netns.qdisc_stats(layout.wan_prfaas.ns, layout.wan_prfaas.dev).drops,
    }


def _wait_listening(layout: TestbedLayout, ip: str) -> None:
    """Until the sink accepts connections (a probe connection it ignores is not made: the
    listening socket shows in `ss` inside the namespace)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ss = subprocess.run([*netns.exec_prefix(layout.pd_ns), "ss", "-Hltn", f"sport = :{_PORT}"],
                            capture_output=True, text=True)  # fmt: skip
        if ss.stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError("the sink did not listen within 30 s")


def _sink(ip: str) -> int:
    """`--sink IP`: receive one connection, print its marks as JSON."""
    listener, result = probe.serve_sink(ip, _PORT)
    while "marks" not in result:
        time.sleep(0.05)
    listener.close()
    print(json.dumps(result))
    return 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--sink":
        return _sink(sys.argv[2])
    if len(sys.argv) > 2 and sys.argv[1] == "--send":
        probe.send_for(sys.argv[2], _PORT, float(sys.argv[4]), "cubic")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_ROOT)
    parser.add_argument("--rates-gbps", default="0.5,1,2,4")
    parser.add_argument("--delay-ms", type=float, default=25.0)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    layout = TestbedLayout(args.name)
    run_dir = run_dir_of(args.state_dir, args.name)
    state = read_state(run_dir)
    if state is None:
        print(f"no testbed {args.name!r} in {args.state_dir}", file=sys.stderr)
        return 2
    pid = int(state["delay_line"]["pid"])
    saved_delay = DelaySettings.from_dict(state["delay"])
    out: dict[str, Any] = {"cpu": _cpu_model(), "delay_ms": args.delay_ms}
    try:
        out["idle"] = idle_overhead(layout, run_dir)
        rates = [float(r) for r in args.rates_gbps.split(",")]
        out["rates"] = [
            at_rate(layout, run_dir, pid, rate, args.delay_ms, args.duration_s) for rate in rates
        ]
    finally:
        set_wan_rate(layout, float(state["wire_gbps"]))
        set_delay(run_dir, saved_delay)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_table(out)
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _print_table(out: dict[str, Any]) -> None:
    idle = out["idle"]
    print(f"CPU: {out['cpu']} ({os.cpu_count()} cores)")
    for key in ("through_delay_line", "bypassed"):
        r = idle[key]
        print(f"delay 0, {key}: RTT median {r['median_ms']} ms, p90 {r['p90_ms']} ms")
    print(f"delay {out['delay_ms']:g} ms one way:")
    print("| wire Gbit/s | goodput Gbit/s | RTT median / p90 under load, ms | delay line CPU |")
    for r in out["rates"]:
        rtt = r["loaded_rtt"]
        print(
            f"| {r['wire_gbps']:g} | {r['goodput_gbps']} | {rtt['median_ms']} / {rtt['p90_ms']} "
            f"| {r['delay_line_cpu_pct']}% |"
        )


if __name__ == "__main__":
    sys.exit(main())
