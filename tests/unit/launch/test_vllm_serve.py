"""The `vllm serve` command lines `prfaas up` starts for `engine = "vllm"` instances: the
topology's model under its own name at the instance's address, the PrfaaS connector as producer
(prefill) or consumer (decode, its receiver at the instance's KV address, the topology's failure
policy), and where vLLM is looked for (a clear one-line error when it is not found: this
environment has no vLLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prfaas.errors import UserError
from prfaas.launch.vllm_serve import (
    API_SERVER_MODULE,
    VLLM_ARGS_ENV,
    VLLM_PYTHON_ENV,
    VLLM_TRANSFER_LOG_DIR_ENV,
    serve_args,
    vllm_command,
)
from topologies import TopologySpec


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_prefill_and_decode_instances_get_their_connector_roles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VLLM_ARGS_ENV, "--dtype bfloat16 --enforce-eager")
    topology = TopologySpec(engine="vllm", failure="fail", transfer_deadline_s=12.0).topology()
    prefill, decode = topology.instance("r0"), topology.instance("d0")
    args = serve_args(topology, prefill)
    assert args[:2] == ["--model", topology.model.name]
    assert f"{_flag(args, '--host')}:{_flag(args, '--port')}" == prefill.http
    assert _flag(args, "--served-model-name") == topology.model.name
    assert args[-3:] == ["--dtype", "bfloat16", "--enforce-eager"]
    producer = json.loads(_flag(args, "--kv-transfer-config"))
    assert producer["kv_role"] == "kv_producer"
    assert producer["kv_connector_module_path"] == "prfaas.vllm.connector"
    consumer = json.loads(_flag(serve_args(topology, decode), "--kv-transfer-config"))
    assert consumer["kv_role"] == "kv_consumer"
    assert consumer["kv_load_failure_policy"] == "fail"
    assert consumer["kv_connector_extra_config"] == {
        "load_timeout_s": 12.0,
        "kv_address": decode.kv,
    }


def test_a_transfer_log_folder_gives_each_instance_its_own_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    topology = TopologySpec(engine="vllm").topology()
    monkeypatch.setenv(VLLM_TRANSFER_LOG_DIR_ENV, str(tmp_path))
    logs = {}
    for name in ("r0", "d0"):
        args = serve_args(topology, topology.instance(name))
        extra = json.loads(_flag(args, "--kv-transfer-config"))["kv_connector_extra_config"]
        logs[name] = extra["transfer_log"]
    assert logs == {"r0": str(tmp_path / "r0.jsonl"), "d0": str(tmp_path / "d0.jsonl")}
    monkeypatch.delenv(VLLM_TRANSFER_LOG_DIR_ENV)
    extra = json.loads(_flag(serve_args(topology, topology.instance("r0")), "--kv-transfer-config"))
    assert "transfer_log" not in extra["kv_connector_extra_config"]


def test_the_server_runs_under_the_vllm_environments_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    python = tmp_path / "python"
    python.touch()
    monkeypatch.setenv(VLLM_PYTHON_ENV, str(python))
    assert vllm_command() == [str(python), "-m", API_SERVER_MODULE]
    monkeypatch.setenv(VLLM_PYTHON_ENV, str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no such file"):
        vllm_command()


def test_no_vllm_is_a_one_line_error_naming_the_make_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(VLLM_PYTHON_ENV, raising=False)  # and this environment has no vLLM
    with pytest.raises(UserError, match="make vllm-env"):
        vllm_command()


def test_up_of_a_vllm_topology_without_vllm_fails_before_starting(tmp_path: Path) -> None:
    path = TopologySpec(engine="vllm").write(tmp_path)
    env = {"PATH": os.environ["PATH"], "PRFAAS_RUN_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "prfaas", "up", "--config", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "make vllm-env" in done.stderr, done.stderr
