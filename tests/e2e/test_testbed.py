"""`prfaas testbed`: a real two-datacenter testbed in network namespaces (needs root).

`up --controller --delay-ms 5` through the CLI (emulated paper-1t, scaled), requests sent from
inside the client namespace, a short one prefilled locally and a long one on PrfaaS whose KV
crosses the tbf-shaped WAN veth (its qdisc's byte counter grows by at least the transfer),
`status --json`, `link --gbps` reaching the router's link view, `prfaas bench system --testbed`
with a link drop, the link cut as a negative control, a second `up` refused, and `down`
removing namespaces and processes, the WAN's delay line included. The delay line: ICMP round
trips across the WAN at 2 x the one-way delay (medians, a generous upper band for a loaded
machine), `link --delay-ms` changing it live, `link --loss-pct 50` losing about 75% of 200 pings
(each crossing of the echo is lost with 50%), and the router's link view showing the delayed
round trip from its KV connections' TCP_INFO. Then the equal-hardware homogeneous baseline
(`--deployment homogeneous --prfaas 0`, no controller): a long request prefilled on PD.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polling import wait_until
from prfaas.launch.status import fetch_json
from prfaas.service.auth import bearer
from prfaas.testbed import probe
from prfaas.testbed.layout import TestbedLayout
from prfaas.testbed.netns import (
    call_in_netns,
    list_namespaces,
    netns_unavailable_reason,
    qdisc_stats,
    read_sysctls,
)

_REASON = netns_unavailable_reason()
if _REASON is not None:
    pytest.skip(f"testbed needs network namespaces: {_REASON}", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.netns]

NAME = f"tbt-{uuid.uuid4().hex[:6]}"  # next to any testbed a user runs
SHORT_WORDS, LONG_WORDS = 20, 3500  # ~120 and ~21 000 prompt tokens for the tiny tokenizer
# s = 0.25, p = 0.0025: the wire runs at 100 x 0.0025 / 0.25 = 1 Gbps, compute 4x faster
SCALE_FLAGS = ["--time-scale", "0.25", "--payload-scale", "0.0025"]
DEADLINE_S = 10.0  # transfer deadline: a request whose KV cannot cross gives up after it
DELAY_MS = 5.0  # the WAN's one-way delay at `up`
RTT_SLACK_MS = 50.0  # a loaded machine's scheduling on top of 2 x delay (medians)
REQUEST = """
import json, sys, time, urllib.error, urllib.request
url, words, word = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = json.dumps({"model": "qwen3_next", "prompt": f"{word} " * words, "max_tokens": 4}).encode()
started = time.monotonic()
headers = {"Content-Type": "application/json"}
request = urllib.request.Request(url + "/v1/completions", body, headers)
try:
    with urllib.request.urlopen(request, timeout=90) as reply:
        out = {"status": reply.status, "route": reply.headers.get("x-prfaas-route"),
               "prfaas": json.loads(reply.read())["prfaas"]}
except urllib.error.HTTPError as exc:
    out = {"status": exc.code, "error": exc.read().decode()[:300]}
out["elapsed_s"] = time.monotonic() - started
print(json.dumps(out))
"""


def _prfaas(
    state_dir: Path, *args: str, name: str = NAME, timeout_s: float = 240
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "prfaas", "testbed", *args, "--name", name]
    cmd += ["--state-dir", str(state_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


@contextlib.contextmanager
def _running(state_dir: Path, *flags: str, name: str = NAME) -> Iterator[dict[str, Any]]:
    """`up FLAGS --json` (scaled, short transfer deadline) until the block ends, then `down`."""
    started = time.monotonic()
    deadline = ["--transfer-deadline", str(DEADLINE_S)]
    done = _prfaas(state_dir, "up", *SCALE_FLAGS, *deadline, *flags, "--json", name=name)
    try:
        assert done.returncode == 0, done.stderr
        state = json.loads(done.stdout)
        state["state_dir"] = state_dir
        state["up_wall_s"] = time.monotonic() - started
        yield state
    finally:
        _prfaas(state_dir, "down", name=name)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    delay = ["--delay-ms", f"{DELAY_MS:g}"]
    with _running(tmp_path_factory.mktemp("testbed"), "--controller", *delay) as state:
        yield state


def _send(state: dict[str, Any], num_words: int, word: str = "hello") -> dict[str, Any]:
    """One completion of `num_words` x `word` sent from inside the client namespace (it crosses
    the client veth); another word makes a prompt no cached prefix covers."""
    cmd = [
        *state["client_exec"],
        sys.executable,
        "-c",
        REQUEST,
        state["router_url"],
        str(num_words),
        word,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _wan_bytes(state: dict[str, Any]) -> int:
    return qdisc_stats(state["wan"]["ns"], state["wan"]["dev"]).bytes_sent


def _router_control(state: dict[str, Any]) -> dict[str, Any]:
    """The router's `GET /internal/control`, sent from the client namespace with the token."""
    token = (state["state_dir"] / state["name"] / "transport.token").read_text().strip()
    url = f"{state['router_url']}/internal/control"
    client_ns = state["namespaces"]["client"]
    answer = call_in_netns(client_ns, lambda: fetch_json(url, bearer(token), timeout_s=10))
    assert answer is not None and answer[0] == 200, answer
    return dict(answer[1])


def _set_link(state: dict[str, Any], nominal_gbps: float) -> dict[str, Any]:
    """`link --gbps NOMINAL --json`: its report (the router told, or why not)."""
    return _link(state, "--gbps", f"{nominal_gbps:g}")


def _link(state: dict[str, Any], *flags: str) -> dict[str, Any]:
    """`link FLAGS --json`: its report."""
    done = _prfaas(state["state_dir"], "link", *flags, "--json", name=state["name"])
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _wan_pings(state: dict[str, Any], num_pings: int, interval_s: float) -> list[float | None]:
    """ICMP round trips PD -> PrfaaS across the WAN (None: lost)."""
    layout = TestbedLayout(state["name"])
    far = layout.wan_prfaas.ip
    return call_in_netns(layout.pd_ns, lambda: probe.ping(far, num_pings, interval_s, 2.0))


def _median_rtt_ms(state: dict[str, Any]) -> float:
    median = probe.median_rtt_s(_wan_pings(state, 20, 0.02))
    assert median is not None, "no echo came back across the WAN"
    return median * 1000


def test_up_builds_four_namespaces_and_a_shaped_wan(testbed: dict[str, Any]) -> None:
    assert set(testbed["namespaces"].values()) <= set(list_namespaces())
    stats = qdisc_stats(testbed["wan"]["ns"], testbed["wan"]["dev"])
    assert stats.kind == "tbf" and stats.rate_bytes_per_s == pytest.approx(1e9 / 8, rel=1e-3)
    assert testbed["wire_gbps"] == pytest.approx(1.0)
    for cluster in ("prfaas", "pd"):  # idle KV connections keep their windows
        key = "net.ipv4.tcp_slow_start_after_idle"
        assert read_sysctls(testbed["namespaces"][cluster], (key,)) == {key: "0"}
    print(f"testbed up in {testbed['up_wall_s']:.1f} s (CLI wall)")


def test_the_wan_round_trip_is_twice_the_one_way_delay(testbed: dict[str, Any]) -> None:
    rtt_ms = _median_rtt_ms(testbed)
    assert 2 * DELAY_MS <= rtt_ms < 2 * DELAY_MS + RTT_SLACK_MS, rtt_ms
    print(f"WAN RTT at {DELAY_MS:g} ms one way: median {rtt_ms:.2f} ms")


def test_link_changes_the_delay_live_and_status_shows_it(testbed: dict[str, Any]) -> None:
    try:
        report = _link(testbed, "--delay-ms", "25", "--jitter-ms", "1")
        assert report["delay"]["delay_ms"] == 25.0 and report["delay"]["jitter_ms"] == 1.0
        assert report["router_informed"] is None  # the rate did not change
        rtt_ms = _median_rtt_ms(testbed)
        assert 2 * 25.0 <= rtt_ms < 2 * 25.0 + RTT_SLACK_MS, rtt_ms
        done = _prfaas(testbed["state_dir"], "status", "--json")
        delay = json.loads(done.stdout)["delay"]
        assert done.returncode == 0 and delay["alive"], delay
        assert delay["settings"] == delay["line"]["settings"] == report["delay"]
    finally:
        _link(testbed, "--delay-ms", f"{DELAY_MS:g}", "--jitter-ms", "0")
    assert 2 * DELAY_MS <= _median_rtt_ms(testbed) < 2 * DELAY_MS + RTT_SLACK_MS


def test_without_delay_or_loss_the_wan_bypasses_the_delay_line(testbed: dict[str, Any]) -> None:
    """Settings that hold nothing route the WAN veth to veth (no user-space hop): the packets
    the delay line has seen stop growing while pings still cross; a delay routes them back."""
    wan_ns = testbed["namespaces"]["wan"]

    def routed() -> bool:
        rules = subprocess.run(["ip", "-n", wan_ns, "rule"], capture_output=True, text=True)
        return "lookup 100" in rules.stdout

    assert routed()
    try:
        _link(testbed, "--delay-ms", "0")
        assert not routed()
        assert probe.loss_fraction(_wan_pings(testbed, 20, 0.005)) == 0.0
        assert _median_rtt_ms(testbed) < 2 * DELAY_MS  # no delay on the way
    finally:
        _link(testbed, "--delay-ms", f"{DELAY_MS:g}")
    assert routed()
    assert 2 * DELAY_MS <= _median_rtt_ms(testbed) < 2 * DELAY_MS + RTT_SLACK_MS


def test_loss_drops_about_the_drawn_share_of_pings(testbed: dict[str, Any]) -> None:
    """50% per crossing: an echo comes back with probability 0.5 x 0.5, so 75% are lost."""
    try:
        assert _link(testbed, "--loss-pct", "50")["delay"]["loss_pct"] == 50.0
        lost = probe.loss_fraction(_wan_pings(testbed, 200, 0.005))
    finally:
        _link(testbed, "--loss-pct", "0")
    assert 0.6 <= lost <= 0.9, lost
    assert probe.loss_fraction(_wan_pings(testbed, 20, 0.005)) == 0.0
    print(f"loss 50% per crossing: {lost:.0%} of 200 pings lost")


def test_the_router_sees_the_delayed_round_trip(testbed: dict[str, Any]) -> None:
    """The PrfaaS instance's KV connections report TCP_INFO's RTT; the router's link view (its
    `/dashboard/state`) carries it."""
    long = _send(testbed, LONG_WORDS, "delay")
    assert long["status"] == 200 and long["route"] == "prfaas", long
    url = f"{testbed['router_url']}/dashboard/state"
    client_ns = testbed["namespaces"]["client"]
    seen: dict[str, Any] = {}

    def measured() -> bool:
        answer = call_in_netns(client_ns, lambda: fetch_json(url, {}, timeout_s=10))
        seen.update(answer[1]["link"] if answer and answer[0] == 200 else {})
        return bool(seen.get("measured"))

    wait_until(measured, 30.0, "the router's link view measured from the KV connections")
    rtt_ms = seen["rtt_s"] * 1000
    assert 2 * DELAY_MS <= rtt_ms < 2 * DELAY_MS + RTT_SLACK_MS, seen
    print(f"router's link view: rtt {rtt_ms:.2f} ms at {DELAY_MS:g} ms one way")


def test_a_second_up_with_the_same_name_is_refused(testbed: dict[str, Any]) -> None:
    done = _prfaas(testbed["state_dir"], "up")
    assert done.returncode == 2
    assert "already exists" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_short_stays_local_and_long_crosses_the_wan(testbed: dict[str, Any]) -> None:
    short = _send(testbed, SHORT_WORDS)
    assert short["status"] == 200 and short["route"] == "pd_prefill", short
    before = _wan_bytes(testbed)
    long = _send(testbed, LONG_WORDS)
    grew = _wan_bytes(testbed) - before
    assert long["status"] == 200 and long["route"] == "prfaas", long
    kv_bytes = long["prfaas"]["kv_bytes"]
    assert kv_bytes > 1_000_000  # p x the 1T model's KV of ~21K tokens
    assert grew >= kv_bytes  # the KV went through the shaped qdisc
    print(f"long request: {kv_bytes:,} KV bytes, WAN qdisc +{grew:,} B, {long['elapsed_s']:.2f} s")


def test_status_json_reports_everything_up(testbed: dict[str, Any]) -> None:
    done = _prfaas(testbed["state_dir"], "status", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["all_up"], report
    assert report["router_ready"] and all(report["namespaces"].values())
    assert set(report["services"]) == {"router", "prfaas-prefill-0", "pd-prefill-0", "pd-decode-0"}
    assert report["link"]["up"] and report["link"]["kind"] == "tbf"
    assert report["deployment"] == "prfaas" and report["controller"] is True


def test_link_gbps_tells_the_router_the_new_wire_capacity(testbed: dict[str, Any]) -> None:
    assert _router_control(testbed)["link_bytes_per_s"] == pytest.approx(1e9 / 8)
    try:
        report = _set_link(testbed, 25.0)  # 25 Gbps nominal = 0.25 Gbps on the wire
        assert report["router_informed"] is True and report["router_reason"] is None, report
        assert report["wire_gbps"] == pytest.approx(0.25)
        assert report["router_link_bytes_per_s"] == pytest.approx(0.25e9 / 8)
        assert _router_control(testbed)["link_bytes_per_s"] == pytest.approx(0.25e9 / 8)
    finally:
        restored = _set_link(testbed, 100.0)
    assert restored["router_informed"] is True, restored
    assert _router_control(testbed)["link_bytes_per_s"] == pytest.approx(1e9 / 8)


def test_bench_system_drives_the_testbed_and_drops_its_link(testbed: dict[str, Any]) -> None:
    out = testbed["state_dir"] / "bench.json"
    cmd = [sys.executable, "-m", "prfaas", "bench", "system", "--testbed", testbed["name"],
           "--state-dir", str(testbed["state_dir"]), "--rate", "2", "--num-requests", "6",
           "--output-tokens", "4", "--mu", "9.9", "--sigma", "0.3", "--warmup-rounds", "0",
           "--link-drop", "0.5:1:25", "--output", str(out), "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # from the host ns
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert result["testbed"] == testbed["name"] and run["live"]["num_ok"] == 6, run["live"]
    drop, back = run["actions"]
    assert (drop["name"], back["name"]) == ("link 25 Gbps", "link 100 Gbps"), run["actions"]
    assert drop["outcome"]["router_informed"] and back["outcome"]["router_informed"]
    offloaded = sum(q["kv_bytes"] for q in run["requests"] if q["route"] == "prfaas")
    assert offloaded > 0 and run["live"]["egress"]["total_bytes"] >= offloaded  # the WAN qdisc
    assert run["sim"]["num_completed"] == 6 and run["plan"]["lambda_max_rps"] > 0
    efficiency = run["live"]["payload_efficiency"]  # KV over the WAN's wire bytes
    assert 0.5 < efficiency <= 1 and run["sim"]["payload_efficiency"] == efficiency
    assert _router_control(testbed)["link_bytes_per_s"] == pytest.approx(1e9 / 8)  # restored


def test_with_the_wan_cut_a_long_request_does_not_cross(testbed: dict[str, Any]) -> None:
    state_dir = testbed["state_dir"]
    cut = _prfaas(state_dir, "link", "--down", "--json")
    assert cut.returncode == 0 and json.loads(cut.stdout)["router_informed"] is None
    try:
        before = _wan_bytes(testbed)
        reply = _send(testbed, LONG_WORDS)
        grew = _wan_bytes(testbed) - before
        print(f"WAN cut: {json.dumps(reply)[:400]}")
        assert reply["elapsed_s"] < DEADLINE_S + 15  # the deadline, then a local recompute
        # recomputed locally (failure = recompute) or routed around PrfaaS: no KV crossed
        assert (
            reply["status"] != 200
            or reply["prfaas"]["route"] != "prfaas"
            or (reply["prfaas"]["kv_bytes"] == 0)
        ), reply
        assert grew < 100_000
    finally:
        assert _prfaas(state_dir, "link", "--up").returncode == 0


def test_down_removes_the_namespaces_and_stops_every_process(testbed: dict[str, Any]) -> None:
    state_dir = testbed["state_dir"]
    status = json.loads(_prfaas(state_dir, "status", "--json").stdout)
    pids = [svc["pid"] for svc in status["services"].values()]
    assert status["delay"]["alive"]
    pids.append(json.loads((state_dir / NAME / "state.json").read_text())["delay_line"]["pid"])
    wan_ns = testbed["namespaces"]["wan"]
    wan_net = f"net:[{Path('/var/run/netns', wan_ns).stat().st_ino}]"
    started = time.monotonic()
    done = _prfaas(state_dir, "down")
    took_s = time.monotonic() - started
    assert done.returncode == 0 and "is down" in done.stdout, done.stderr
    assert not set(testbed["namespaces"].values()) & set(list_namespaces())
    # the delay line's parent (`up`) is gone: whoever adopted it reaps it after `down`'s kill
    wait_until(
        lambda: not [pid for pid in pids if Path(f"/proc/{pid}").exists()],
        30.0,
        "the services and the delay line to be gone",
        period_s=0.1,
    )
    # no process is left in the WAN namespace, so it is freed and its TUN device with it
    assert not _processes_in(wan_net)
    assert not (state_dir / NAME / "delayline.sock").exists()
    again = _prfaas(state_dir, "down")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    print(f"testbed down in {took_s:.1f} s (CLI wall)")


def _processes_in(net: str) -> list[int]:
    """Pids whose network namespace is `net` ("net:[inode]")."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(entry / "ns" / "net") == net:
                found.append(int(entry.name))
    return found


def test_equal_hardware_homogeneous_baseline_prefills_on_pd(tmp_path: Path) -> None:
    """No PrfaaS instance, no controller: a long request stays local, `status` is all up with
    the PD services only, and the controller-less router still takes `link --gbps`."""
    flags = ["--deployment", "homogeneous", "--prfaas", "0"]
    with _running(tmp_path, *flags, name=f"{NAME}h") as state:
        assert state["deployment"] == "homogeneous" and state["threshold_tokens"] is None
        before = _wan_bytes(state)
        reply = _send(state, LONG_WORDS)
        assert reply["status"] == 200 and reply["route"] == "pd_prefill", reply
        assert _wan_bytes(state) - before < 100_000  # no KV crossed the WAN
        done = _prfaas(tmp_path, "status", "--json", name=state["name"])
        report = json.loads(done.stdout)
        assert done.returncode == 0 and report["all_up"], report
        assert set(report["services"]) == {"router", "pd-prefill-0", "pd-decode-0"}
        told = _set_link(state, 10.0)
        assert told["router_informed"] is True, told
        assert told["router_link_bytes_per_s"] == pytest.approx(0.1e9 / 8)
        print(f"homogeneous: long request prefilled on PD in {reply['elapsed_s']:.2f} s")
