"""One vLLM engine process of the connector tests: a reference run, a producer or a consumer.

    python engine_run.py reference MODEL_DIR SPEC.json   all prompts, greedy, no connector
    python engine_run.py producer  MODEL_DIR SPEC.json   max_tokens=1, KV sent to SPEC's address
    python engine_run.py consumer  MODEL_DIR SPEC.json   waits for one JSON line of requests on
                                                         stdin after printing {"ready": true}

SPEC: {"prompts": [[ids]], "num_output_tokens": n, "dtype": "bfloat16", "kv_address": ..., "token":
..., "transfer_log": path, "connector_module": "prfaas.vllm.connector", "transfer_ids": [...],
"continue_index": i}.
Prints one JSON line with the results last. Runs in the vLLM environment only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

PRODUCER_SETTLE_TIMEOUT_S = 120.0


def _engine(model_dir: str, spec: dict[str, Any], role: str | None) -> Any:
    from vllm import LLM
    from vllm.config import KVTransferConfig

    kwargs: dict[str, Any] = {
        "model": model_dir,
        "skip_tokenizer_init": True,
        "enforce_eager": True,
        "dtype": spec["dtype"],
        "max_model_len": 2048,
        "enable_prefix_caching": False,
        "gpu_memory_utilization": 0.25,  # on CPU: the share of RAM reserved for the KV cache
        "seed": 0,
    }
    if role is not None:
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector=spec.get("connector_class", "PrfaasConnector"),
            kv_connector_module_path=spec.get("connector_module", "prfaas.vllm.connector"),
            kv_role=role,
            kv_load_failure_policy="recompute",
            kv_connector_extra_config={
                "token": spec["token"],
                "kv_address": spec["kv_address"],
                "transfer_log": spec["transfer_log"],
                "load_timeout_s": spec.get("load_timeout_s", 60.0),
            },
        )
    return LLM(**kwargs)


def _sampling(max_tokens: int, params: dict[str, Any] | None = None) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        detokenize=False,
        ignore_eos=True,
        extra_args={"kv_transfer_params": params} if params else None,
    )


def _generate(llm: Any, prompts: list[list[int]], sampling: list[Any]) -> list[dict[str, Any]]:
    inputs = [{"prompt_token_ids": p} for p in prompts]
    outputs = llm.generate(inputs, sampling, use_tqdm=False)
    return [
        {
            "tokens": list(o.outputs[0].token_ids),
            "kv_transfer_params": o.kv_transfer_params,
            "num_cached_tokens": o.num_cached_tokens,
        }
        for o in outputs
    ]


def _settled_transfers(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["transfer_id"] for line in path.read_text().splitlines()}


def _run_producer(llm: Any, spec: dict[str, Any]) -> list[dict[str, Any]]:
    sampling = [
        _sampling(
            1,
            {
                "do_remote_decode": True,
                "remote_kv_address": spec["kv_address"],
                "transfer_id": transfer_id,
            },
        )
        for transfer_id in spec["transfer_ids"]
    ]
    results = _generate(llm, spec["prompts"], sampling)
    wanted = set(spec["transfer_ids"])
    give_up_at = time.monotonic() + PRODUCER_SETTLE_TIMEOUT_S
    log_path = Path(spec["transfer_log"])
    while not wanted <= _settled_transfers(log_path) and time.monotonic() < give_up_at:
        time.sleep(0.05)  # the engine core settles the transfers in its own process
    return results


def _run_reference(llm: Any, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each prompt alone; then, for `continue_index`, that prompt followed by its first token
    (what a decode instance that recomputes the request is given), one token shorter."""
    num_tokens = spec["num_output_tokens"]
    results = _generate(llm, spec["prompts"], [_sampling(num_tokens)] * len(spec["prompts"]))
    index = spec.get("continue_index")
    if index is not None:
        prompt = [*spec["prompts"][index], results[index]["tokens"][0]]
        results += _generate(llm, [prompt], [_sampling(num_tokens - 1)])
    return results


def _run_consumer(llm: Any, spec: dict[str, Any]) -> list[dict[str, Any]]:
    print(json.dumps({"ready": True}), flush=True)
    requests = json.loads(sys.stdin.readline())
    prompts = [r["prompt"] for r in requests]
    sampling = [_sampling(r["max_tokens"], r["kv_transfer_params"]) for r in requests]
    return _generate(llm, prompts, sampling)


def main() -> int:
    mode, model_dir, spec_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    role = {"reference": None, "producer": "kv_producer", "consumer": "kv_consumer"}[mode]
    llm = _engine(model_dir, spec, role)
    if mode == "reference":
        results = _run_reference(llm, spec)
    elif mode == "producer":
        results = _run_producer(llm, spec)
    else:
        results = _run_consumer(llm, spec)
    print(json.dumps({"results": results}), flush=True)
    return 0


if __name__ == "__main__":  # vLLM spawns its workers: they import this module, not run it
    sys.exit(main())
