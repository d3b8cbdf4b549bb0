"""The `vllm serve` command line of an `engine = "vllm"` instance, as `prfaas up` starts it: the
topology's checkpoint served under the topology's model name at the instance's address, with the
PrfaaS KV connector as producer (prefill instances) or consumer (decode instances, whose
receiver binds the instance's KV address). docs/vllm.md prints the same command lines for users
who start vLLM their own way.

Where vLLM is: `$PRFAAS_VLLM` (a command, e.g. `.venv-vllm/bin/vllm`), else the `vllm` beside
this Python, else on PATH. `$PRFAAS_VLLM_ARGS` adds flags to every instance (e.g.
`--dtype bfloat16 --max-model-len 8192`). The transport token goes in the environment.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.topology import InstanceConfig, Topology

VLLM_COMMAND_ENV = "PRFAAS_VLLM"
VLLM_ARGS_ENV = "PRFAAS_VLLM_ARGS"
VLLM_TOKEN_ENV = "PRFAAS_KV_TOKEN"  # what the connector reads (prfaas.vllm.connector)
CONNECTOR_MODULE = "prfaas.vllm.connector"
CONNECTOR_CLASS = "PrfaasConnector"


def vllm_command() -> list[str]:
    """The argv prefix that runs vLLM's CLI; UserError naming how to get one."""
    configured = os.environ.get(VLLM_COMMAND_ENV)
    if configured:
        return shlex.split(configured)
    beside = Path(sys.executable).with_name("vllm")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("vllm")
    if found is None:
        raise UserError(
            f'engine = "vllm" instances need vLLM: run `make vllm-env` (then '
            f"{VLLM_COMMAND_ENV}=.venv-vllm/bin/vllm) or set {VLLM_COMMAND_ENV} to a vllm command"
        )
    return [found]


def kv_transfer_config(topology: Topology, instance: InstanceConfig) -> dict[str, Any]:
    """`--kv-transfer-config`: the connector, its role, and the consumer's receiver address."""
    policy = topology.policy
    config: dict[str, Any] = {
        "kv_connector": CONNECTOR_CLASS,
        "kv_connector_module_path": CONNECTOR_MODULE,
        "kv_role": "kv_consumer" if instance.role == "decode" else "kv_producer",
        "kv_connector_extra_config": {"load_timeout_s": policy.transfer_deadline_s},
    }
    if instance.role == "decode":
        config["kv_load_failure_policy"] = policy.failure  # "recompute" | "fail"
        config["kv_connector_extra_config"]["kv_address"] = instance.kv_bind_address
    return config


def serve_args(topology: Topology, instance: InstanceConfig) -> list[str]:
    """`vllm serve ...` for one instance, without the command itself."""
    host, _, port = instance.http.rpartition(":")
    model = topology.model.name
    return [
        "serve",
        model,
        "--host",
        host,
        "--port",
        port,
        "--served-model-name",
        model,
        "--kv-transfer-config",
        json.dumps(kv_transfer_config(topology, instance)),
        *shlex.split(os.environ.get(VLLM_ARGS_ENV, "")),
    ]
