"""Helpers for the live-service tests: start a topology as real processes, reference outputs.

A `System` is `prfaas up`'s embedded topology (router, PrfaaS prefill, PD prefill, PD decode on
127.0.0.1) started by the same `Launcher`, with the children's logs in a temporary directory.
References come from one in-process `Engine` built from the same preset and seed, greedy fp32.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prfaas.launch.local import EmbeddedOptions, Launcher, embedded_topology, free_port
from prfaas.topology import Topology, load_topology

API_KEY = "sk-test-key"
READY_TIMEOUT_S = 420.0  # four processes importing torch on two shared cores


@dataclass
class System:
    launcher: Launcher
    topology: Topology
    log_dir: Path

    @property
    def url(self) -> str:
        return self.launcher.router_url

    @property
    def model(self) -> str:
        return self.topology.model.served_name

    def instance_url(self, name: str) -> str:
        return f"http://{self.topology.instance(name).http}"

    def internal_headers(self) -> dict[str, str]:
        """What the router sends to `/internal/*`: the deployment's token."""
        return {"Authorization": f"Bearer {self.topology.transport.token}"}

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def openai(self) -> Any:
        import openai

        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=300.0
        )

    def complete(self, prompt: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
        """A greedy completion: its text and the response's `prfaas` field."""
        body = self.openai().completions.create(
            model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=0
        )
        return body.choices[0].text, body.model_extra["prfaas"]


def start_system(
    tmp: Path,
    preset: str,
    *,
    failure: str = "recompute",
    threshold: int = 64,
    deadline_s: float = 60.0,
    prefix_block_tokens: int | None = None,
    decode_kv: str | None = None,
    decode_kv_listen: str | None = None,
    receive_pool_bytes: int | None = None,
) -> System:
    """The embedded deployment as processes; `decode_kv`/`decode_kv_listen` put something (a
    fault proxy) between the KV senders and the decode instance's receiver."""
    options = EmbeddedOptions(
        model=preset,
        router_port=free_port(),
        threshold_tokens=threshold,
        failure=failure,
        transfer_deadline_s=deadline_s,
        api_keys=(API_KEY,),
        prefix_block_tokens=prefix_block_tokens,
        decode_kv=decode_kv,
        decode_kv_listen=decode_kv_listen,
        receive_pool_bytes=receive_pool_bytes,
    )
    return launch(embedded_topology(tmp, options), tmp / "logs")


def launch(path: Path, log_dir: Path, ready_timeout_s: float = READY_TIMEOUT_S) -> System:
    """Start the topology file at `path` as processes and wait until the router is ready."""
    topology = load_topology(path)
    log_dir.mkdir()
    launcher = Launcher(path, topology, log_dir)
    launcher.start()
    try:
        launcher.wait_ready(ready_timeout_s)
    except BaseException:
        launcher.stop()
        raise
    return System(launcher, topology, log_dir)


def get_json(url: str, timeout_s: float = 10.0, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        return json.loads(reply.read())


def get_text(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return str(reply.read().decode())


def wait_for(predicate: Any, timeout_s: float, what: str, period_s: float = 0.05) -> None:
    """Poll `predicate` until true; fail the test with `what` if it never is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(period_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


class Reference:
    """Greedy single-process outputs of a tiny preset (fp32, seed 0), as text and token ids."""

    def __init__(self, preset: str) -> None:
        from prfaas.engine.loading import load_model

        self.loaded = load_model(preset)
        self._cache: dict[tuple[tuple[int, ...], int], list[int]] = {}

    def tokens(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        from prfaas.engine.runner import Engine
        from prfaas.messages import GenerateRequest, SamplingParams

        key = (tuple(prompt_ids), max_tokens)
        if key not in self._cache:
            engine = Engine(self.loaded)
            req = GenerateRequest("ref", tuple(prompt_ids), SamplingParams(max_tokens=max_tokens))
            self._cache[key] = engine.generate([req])["ref"]
        return self._cache[key]

    def text(self, prompt: str, max_tokens: int) -> str:
        ids = self.loaded.tokenizer.encode(prompt)
        return str(self.loaded.tokenizer.decode(self.tokens(ids, max_tokens)))


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


LONG_PROMPT = (
    "Prefill-as-a-Service moves long prompts to a remote cluster of compute-dense accelerators. "
    "Their key-value cache and recurrent state stream over ordinary Ethernet, layer by layer, to "
    "a local cluster that decodes and streams the answer back to the user, while short prompts "
    "stay local. "
)
SHORT_PROMPT = "Hi there"
