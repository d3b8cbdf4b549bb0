"""Try vLLM's own P/D connectors on this machine: one prefill and one decode `vllm serve` with
`NixlConnector` (UCX over TCP on loopback) or `MooncakeConnector` (its TCP protocol), and one
request handed from the first to the second the way vLLM's disaggregated-serving proxies do.

The libraries are not part of the project: run it from a throwaway environment that has them
(docs/benchmarks.md, "vLLM backend", shows how it was made), with the model that
scripts/bench_vllm.py builds:

    PYTHONPATH=src ENV/bin/python scripts/vllm_own_connectors.py nixl MODEL_DIR

Prints one JSON line: whether both servers started, the prefill's and the decode's answers (or
the first error line of the server that failed), the seconds of the decode step and the greedy
text of both a plain decode-side request and the handed-over one. Stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from bench_vllm import VLLM_ARGS, http_ok, loopback, started

from prfaas.launch.local import free_port
from prfaas.launch.vllm_serve import server_args, vllm_command

PROMPT = [10 + (i * 7) % 240 for i in range(600)]
NUM_OUTPUT_TOKENS = 8


def nixl_config(role: str) -> dict[str, Any]:
    return {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cpu"}


def mooncake_config(role: str, bootstrap: str) -> dict[str, Any]:
    extra = {"mooncake_protocol": "tcp", "bootstrap_server_address": bootstrap}
    return {
        "kv_connector": "MooncakeConnector",
        "engine_id": f"{role}-0",
        "kv_role": "kv_producer" if role == "prefill" else "kv_consumer",
        "kv_connector_extra_config": extra,
    }


@contextlib.contextmanager
def server(work: Path, model: str, role: str, config: dict[str, Any]) -> Iterator[str]:
    address = loopback()
    env = {
        **os.environ,
        "UCX_TLS": "tcp",
        "UCX_NET_DEVICES": "lo",
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(free_port()),
    }
    argv = [*vllm_command(), *server_args(model, address), *VLLM_ARGS.split()]
    argv += ["--kv-transfer-config", json.dumps(config)]
    url = f"http://{address}"
    with started(argv, env, work / f"{role}.log", f"{url}/health", f"{role} vLLM"):
        yield url


def complete(url: str, model: str, params: dict[str, Any] | None, max_tokens: int) -> Any:
    body: dict[str, Any] = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    if params is not None:
        body["kv_transfer_params"] = params
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    reply.raise_for_status()
    return reply.json()


def hand_over(connector: str, prefill: str, decode: str, model: str) -> dict[str, Any]:
    """Prefill on one server, decode on the other with the KV the connector moves."""
    transfer_id = uuid.uuid4().hex
    if connector == "nixl":
        first = complete(prefill, model, {"do_remote_decode": True}, 1)
        params = first.get("kv_transfer_params")
    else:
        first = complete(prefill, model, {"do_remote_decode": True, "transfer_id": transfer_id}, 1)
        params = {
            "do_remote_prefill": True,
            "remote_engine_id": "prefill-0",
            "remote_bootstrap_addr": BOOTSTRAP[0],
            "transfer_id": transfer_id,
        }
    t0 = time.monotonic()
    second = complete(decode, model, params, NUM_OUTPUT_TOKENS)
    decode_s = time.monotonic() - t0
    plain = complete(decode, model, None, NUM_OUTPUT_TOKENS)
    return {
        "prefill_kv_transfer_params": first.get("kv_transfer_params"),
        "decode_s": round(decode_s, 3),
        "handed_over_text": second["choices"][0]["text"],
        "plain_text": plain["choices"][0]["text"],
        "decode_usage": second.get("usage"),
    }


BOOTSTRAP = [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("connector", choices=("nixl", "mooncake"))
    parser.add_argument("model")
    parser.add_argument("--work", default="/tmp/vllm-own-connectors")
    args = parser.parse_args()
    work = Path(args.work) / args.connector
    work.mkdir(parents=True, exist_ok=True)
    BOOTSTRAP[0] = loopback()
    configs = {
        role: nixl_config(role) if args.connector == "nixl" else mooncake_config(role, BOOTSTRAP[0])
        for role in ("prefill", "decode")
    }
    result: dict[str, Any] = {"connector": args.connector, "configs": configs}
    try:
        with (
            server(work, args.model, "prefill", configs["prefill"]) as prefill,
            server(work, args.model, "decode", configs["decode"]) as decode,
        ):
            result["started"] = http_ok(f"{prefill}/health") and http_ok(f"{decode}/health")
            result.update(hand_over(args.connector, prefill, decode, args.model))
    except (SystemExit, httpx.HTTPError, KeyError, TypeError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
