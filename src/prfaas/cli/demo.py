"""`prfaas demo` (what `make demo` runs): the embedded deployment, two requests, their paths.

Starts `prfaas up`'s embedded topology (router, PrfaaS prefill, PD prefill, PD decode on
127.0.0.1, tiny Qwen3-Next), sends one short prompt (whole response) and one paragraph-long
prompt (streamed) with the `openai` client, prints for each the route and the policy's reason,
TTFT, decode tokens/s, the KV bytes that crossed to the decode instance and the text, then stops
every process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prfaas.cli._args import bounded_int
from prfaas.cli._output import add_json_flag, format_table, prepare_output_dir, print_json

MAX_TOKENS = 4096  # generated per demo request; the tiny model's context is far larger
SHORT_PROMPT = "Hello! Where does my prefill run?"
LONG_PROMPT = (
    "Hybrid-attention models keep only a few full-attention layers; the rest are linear "
    "attention or state-space layers whose state has a fixed size. Their KV cache is small "
    "enough that a long prompt can be prefilled in another datacenter and its state streamed "
    "over ordinary Ethernet to the cluster that decodes it. Where does this prompt run?"
)


@dataclass
class DemoResult:
    prompt: str
    streamed: bool
    route: str
    reason: str
    ttft_s: float
    decode_tokens_per_s: float
    num_prompt_tokens: int
    num_completion_tokens: int
    kv_bytes: int
    text: str


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="start the embedded deployment, send a short and a long request, show their paths",
        description="Start the embedded deployment of `prfaas up`, send one short request and "
        "one long, streamed request with the openai client, print the route, reason, TTFT, "
        "tokens/s, KV bytes moved and text of each, and stop everything.",
    )
    p.add_argument("--model", default="qwen3_next", help="tiny preset or checkpoint directory")
    p.add_argument(
        "--max-tokens",
        type=bounded_int(1, MAX_TOKENS),
        default=24,
        help=f"tokens to generate per request (24; at most {MAX_TOKENS})",
    )
    p.add_argument("--log-dir", default=None, help="keep the processes' logs in DIR")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prfaas.engine import require_torch
    from prfaas.errors import UserError
    from prfaas.launch.local import EmbeddedOptions, Launcher, embedded_topology, free_port
    from prfaas.policy.route import threshold_text
    from prfaas.topology import load_topology

    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    require_torch("prfaas demo")
    if args.log_dir:
        prepare_output_dir(args.log_dir, "--log-dir")  # before any process starts
    with tempfile.TemporaryDirectory(prefix="prfaas-demo-") as tmp:
        options = EmbeddedOptions(model=args.model, router_port=free_port())
        path = embedded_topology(Path(tmp), options)
        topology = load_topology(path)
        log_dir = Path(args.log_dir) if args.log_dir else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        if not args.json:
            print(
                f"Starting the embedded deployment ({topology.model.name}, t = "
                f"{threshold_text(topology.policy.threshold_tokens)} tokens) ...",
                flush=True,
            )
        with Launcher(path, topology, log_dir) as launcher:
            launcher.wait_ready(600)
            client = _client(launcher.router_url)
            model = topology.model.served_name
            results = [
                _whole(client, model, SHORT_PROMPT, args.max_tokens),
                _streamed(client, model, LONG_PROMPT, args.max_tokens),
            ]
    _report(results, args.json)
    return 0


def _client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600.0)


def _whole(client: Any, model: str, prompt: str, max_tokens: int) -> DemoResult:
    started = time.monotonic()
    reply = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0
    )
    elapsed_s = time.monotonic() - started
    info = (reply.model_extra or {}).get("prfaas", {})
    ttft_s = float(info.get("ttft_s") or elapsed_s)
    n = reply.usage.completion_tokens
    return DemoResult(
        prompt,
        False,
        info.get("route", "?"),
        info.get("reason", "?"),
        ttft_s,
        _rate(n, elapsed_s - ttft_s),
        reply.usage.prompt_tokens,
        n,
        int(info.get("kv_bytes", 0)),
        reply.choices[0].text,
    )


def _streamed(client: Any, model: str, prompt: str, max_tokens: int) -> DemoResult:
    started = time.monotonic()
    first_at, parts, usage = None, [], None
    info: dict[str, Any] = {}
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            if first_at is None:
                first_at = time.monotonic()
            parts.append(chunk.choices[0].text)
            info = (chunk.model_extra or {}).get("prfaas", info)
        if chunk.usage is not None:
            usage = chunk.usage
    ended = time.monotonic()
    first_at = first_at or ended
    n = usage.completion_tokens if usage else 0
    return DemoResult(
        prompt,
        True,
        info.get("route", "?"),
        info.get("reason", "?"),
        first_at - started,
        _rate(n, ended - first_at),
        usage.prompt_tokens if usage else 0,
        n,
        int(info.get("kv_bytes", 0)),
        "".join(parts),
    )


def _rate(num_tokens: int, seconds: float) -> float:
    return (num_tokens - 1) / seconds if num_tokens > 1 and seconds > 0 else 0.0


def _report(results: list[DemoResult], as_json: bool) -> None:
    if as_json:
        print_json([asdict(r) for r in results])
        return
    headers = ["request", "prompt tok", "route", "TTFT s", "decode tok/s", "KV bytes moved"]
    rows = [
        [
            ("streamed " if r.streamed else "whole ")
            + ("long" if r.num_prompt_tokens > 100 else "short"),
            r.num_prompt_tokens,
            r.route,
            f"{r.ttft_s:.3f}",
            f"{r.decode_tokens_per_s:.1f}",
            f"{r.kv_bytes:,}",
        ]
        for r in results
    ]
    print(format_table(headers, rows))
    for r in results:
        print(f"\n{r.route}: {r.reason}\n  prompt: {r.prompt[:70]!r}...\n  text:   {r.text!r}")
    print(
        "\nThe model is a tiny random-weight Qwen3-Next, so its text is noise; what matters is "
        "the path: the long prompt was prefilled on the PrfaaS instance and its KV cache and "
        "recurrent state crossed to the decode instance over the KV transport."
    )
