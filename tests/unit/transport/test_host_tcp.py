"""`prfaas doctor`'s checks: a host's TCP settings against a link's bandwidth-delay product,
read from a /proc/sys tree made here, and the command's exit codes and one-line refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from prfaas.cli import main
from prfaas.transport.host_tcp import (
    Finding,
    HostTcp,
    LinkNeed,
    buffer_bytes_for,
    ceiling_gbps,
    check_host_tcp,
    read_host_tcp,
)

MIB = 1 << 20
# this VM's defaults: 32 MiB receive, 4 MiB send autotuning maxima, slow start after idle on
STOCK = HostTcp(
    rmem_max_bytes=4 * MIB,
    wmem_max_bytes=4 * MIB,
    tcp_rmem_bytes=(4096, 131072, 32 * MIB),
    tcp_wmem_bytes=(4096, 16384, 4 * MIB),
    congestion_control="cubic",
    available_congestion_controls=("reno", "cubic", "bbr"),
    slow_start_after_idle=True,
    window_scaling=True,
)
TUNED = dataclasses.replace(
    STOCK,
    tcp_rmem_bytes=(4096, 131072, 64 * MIB),
    tcp_wmem_bytes=(4096, 16384, 64 * MIB),
    congestion_control="bbr",
    slow_start_after_idle=False,
)


def _by_check(host: HostTcp, need: LinkNeed) -> dict[str, Finding]:
    return {f.check.split(" ")[0]: f for f in check_host_tcp(host, need)}


def test_the_window_bound_by_hand() -> None:
    """10 Gbit/s at 50 ms: 62.5 MB in flight, 15.6 MB a connection of 4. The stock 4 MiB send
    maximum gives a 2 MiB window: 4 x 2 MiB x 8 / 0.05 s = 1.34 Gbit/s."""
    need = LinkNeed(gbps=10, rtt_s=0.050, num_connections=4)
    assert need.bdp_bytes == pytest.approx(62.5e6)
    assert ceiling_gbps(STOCK, need) == pytest.approx(4 * 2 * MIB * 8 / 0.05 / 1e9)
    assert buffer_bytes_for(need.per_connection_window_bytes) == 32 * MIB  # 2 x 15.6 MB, pow2
    findings = _by_check(STOCK, need)
    assert not findings["net.ipv4.tcp_wmem"].ok
    assert findings["net.ipv4.tcp_rmem"].ok
    fix = findings["net.ipv4.tcp_wmem"].fix
    assert fix == f"sysctl -w net.ipv4.tcp_wmem='4096 16384 {32 * MIB}'"  # keeps min, default
    assert not findings["rate"].ok


def test_a_tuned_host_fills_the_link_and_needs_nothing() -> None:
    need = LinkNeed(gbps=10, rtt_s=0.050, num_connections=4)
    assert ceiling_gbps(TUNED, need) == pytest.approx(4 * 32 * MIB * 8 / 0.05 / 1e9)
    assert all(f.ok for f in check_host_tcp(TUNED, need))


def test_at_rtt_zero_only_slow_start_after_idle_is_flagged() -> None:
    findings = check_host_tcp(STOCK, LinkNeed(gbps=100, rtt_s=0.0, num_connections=2))
    assert [f.check for f in findings if not f.ok] == ["net.ipv4.tcp_slow_start_after_idle"]


def test_congestion_control_wants_bbr_on_a_lossy_or_long_link() -> None:
    near = _by_check(STOCK, LinkNeed(gbps=1, rtt_s=0.001, num_connections=1))
    assert near["TCP"].ok
    lossy = _by_check(STOCK, LinkNeed(gbps=1, rtt_s=0.001, num_connections=1, loss=1e-4))
    assert not lossy["TCP"].ok
    missing = _by_check(
        TUNED, LinkNeed(gbps=1, rtt_s=0.001, num_connections=1, congestion_control="htcp")
    )
    assert missing["TCP"].fix == "modprobe tcp_htcp"


def test_fixed_socket_buffers_are_checked_against_core_maxima() -> None:
    need = LinkNeed(gbps=10, rtt_s=0.050, num_connections=4, socket_buffer_bytes=16 * MIB)
    findings = _by_check(TUNED, need)
    assert not findings["net.core.rmem_max"].ok
    assert ceiling_gbps(TUNED, need) == pytest.approx(4 * 4 * MIB * 8 / 0.05 / 1e9)


def test_settings_are_read_from_a_proc_sys_tree(tmp_path: Path) -> None:
    files = {
        "net/core/rmem_max": "212992",
        "net/core/wmem_max": "212992",
        "net/ipv4/tcp_rmem": "4096\t131072\t6291456",
        "net/ipv4/tcp_wmem": "4096 16384 4194304",
        "net/ipv4/tcp_congestion_control": "cubic",
        "net/ipv4/tcp_available_congestion_control": "reno cubic",
        "net/ipv4/tcp_slow_start_after_idle": "0",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    host = read_host_tcp(tmp_path)
    assert host.tcp_rmem_bytes == (4096, 131072, 6291456)
    assert host.tcp_wmem_bytes == (4096, 16384, 4194304)
    assert host.rmem_max_bytes == 212992 and host.congestion_control == "cubic"
    assert host.available_congestion_controls == ("reno", "cubic")
    assert host.slow_start_after_idle is False
    assert host.window_scaling is None  # missing file: unreadable, not a guess


def test_doctor_on_this_host_prints_json_and_exits_by_its_findings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["doctor", "--gbps", "10", "--rtt-ms", "50", "--connections", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["link"]["bdp_bytes"] == pytest.approx(62.5e6)
    assert status == (0 if report["ok"] else 1)
    assert report["ok"] == all(f["ok"] for f in report["findings"])


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--rtt-ms", "-1"), ("--rtt-ms", "nan"), ("--gbps", "inf"), ("--gbps", "0"),
     ("--loss-pct", "100"), ("--connections", "0")],
)  # fmt: skip
def test_doctor_refuses_bad_values_in_one_line(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    assert main(["doctor", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prfaas doctor: error: argument " + flag), err


def test_doctor_takes_the_link_from_a_topology_and_flags_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prfaas.topology import LinkConfig, write_topology
    from topologies import TopologySpec

    topology = TopologySpec(engine="emulated").in_code()
    link = LinkConfig(gbps=10.0, rtt_ms=50.0, loss_pct=0.01)
    path = write_topology(tmp_path / "t.toml", dataclasses.replace(topology, link=link))
    main(["doctor", "--config", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)["link"]
    assert (report["gbps"], report["rtt_ms"], report["loss_pct"]) == (10.0, 50.0, 0.01)
    assert report["num_connections"] == topology.transport.num_connections
    main(["doctor", "--config", str(path), "--rtt-ms", "20", "--json"])
    assert json.loads(capsys.readouterr().out)["link"]["rtt_ms"] == 20.0
