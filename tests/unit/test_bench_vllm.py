"""scripts/bench_vllm.py's own parts that need no vLLM: the connector's goodput read from a
`transfer_log` as the connector writes it, the side-by-side ratios, the CPU model it prints, and
the stop of a whole process tree (a parent that leaves a child behind, as a killed API server
leaves its EngineCore). The benchmark itself runs vLLM engines: docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from polling import wait_until
from prfaas.launch.local import descendant_pids
from prfaas.vllm.worker import TransferLog

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_vllm.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_vllm", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sent(log: TransferLog, num_bytes: int, seconds: float) -> None:
    log.write(event="sent", transfer_id="t", req_id="r", num_prompt_tokens=2000,
              num_bytes=num_bytes, layer_bytes={}, block_sizes={}, num_streamed_layers=8,
              seconds=seconds, error=None)  # fmt: skip


def test_goodput_is_each_sent_transfers_bytes_over_its_seconds(
    bench: ModuleType, tmp_path: Path
) -> None:
    log = TransferLog(str(tmp_path / "r0.jsonl"))
    _sent(log, 8_000_000, 0.5)  # 0.128 Gbit/s
    _sent(log, 4_000_000, 0.1)  # 0.32 Gbit/s
    _sent(log, 2_000_000, 0.01)  # 1.6 Gbit/s
    log.write(event="send_failed", transfer_id="u", req_id="s", num_bytes=0, seconds=1.0)
    records = bench.transfer_records(tmp_path, "r0")
    goodput = bench.connector_goodput(records)
    assert goodput["num_transfers"] == 3 and goodput["num_failed"] == 1
    assert goodput["bytes_median"] == 4_000_000
    assert goodput["seconds_median"] == 0.1
    assert goodput["goodput_gbps_median"] == pytest.approx(0.32)
    assert goodput["goodput_gbps_best"] == pytest.approx(1.6)
    assert bench.transfer_records(tmp_path, "d0") == []


def test_ratios_divide_the_disaggregated_run_by_the_single_instance(bench: ModuleType) -> None:
    def run(p50: float, p90: float, rps: float, tokens: float) -> dict[str, object]:
        return {"ttft_s": {"p50": p50, "p90": p90}, "throughput_rps": rps,
                "output_tokens_per_s": tokens}  # fmt: skip

    ratios = bench.comparison(run(0.3, 0.9, 1.0, 16.0), run(0.2, 0.3, 2.0, 32.0))
    assert ratios["ttft_p50_ratio"] == pytest.approx(1.5)
    assert ratios["ttft_p90_ratio"] == pytest.approx(3.0)
    assert ratios["throughput_rps_ratio"] == pytest.approx(0.5)
    assert ratios["output_tokens_per_s_ratio"] == pytest.approx(0.5)
    assert (
        bench.comparison(run(0.3, 0.9, 1.0, 16.0), run(0.2, 0.3, 0.0, 0.0))["throughput_rps_ratio"]
        is None
    )


def test_the_cpu_model_is_the_machines(bench: ModuleType) -> None:
    names = {
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    }
    assert bench.cpu_model() in names


CHILD = "import time; time.sleep(600)"
PARENT = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}])
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stopping_a_tree_kills_the_children_a_parent_leaves(bench: ModuleType) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        wait_until(lambda: child in descendant_pids(parent.pid), timeout_s=30, what="the child")
        bench.stop_tree(parent, grace_s=1.0)  # the parent ignores SIGINT: killed after the grace
        assert parent.returncode is not None
        wait_until(lambda: not _alive(child), timeout_s=30, what="the child gone")
    finally:  # nothing left behind when the test fails
        for pid in (child, parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()
