"""The vLLM connector's transfer goodput over the testbed's shaped WAN, against the raw-socket
bound on a link of the same rate, in one run (docs/benchmarks.md, "vLLM backend"). Needs root
(network namespaces) and the vLLM environment:

    PYTHONPATH=src:scripts .venv-vllm/bin/python scripts/bench_vllm_wan.py --json FILE

For each WAN rate (`--gbps`, default 1 and 0.1 Gbit/s): `prfaas testbed up --engine vllm` on a
tiny random llama (head dim 64, bf16, byte tokenizer: 4 KiB of KV per token), so a PrfaaS
prefill, a PD prefill and a PD decode `vllm serve` run in their datacenters' namespaces and the
KV crosses the tbf-shaped WAN veth; `--num-long` prompts of 2,000 tokens are sent one after
another from the client namespace. The producer's transfer log gives each transfer's bytes,
its seconds from the first layer queued (during the forward) to the receiver's acknowledgement,
and the seconds after the forward ended (the part of the transfer the forward did not hide);
the WAN qdisc's byte counter gives what crossed the wire. Then, with the testbed down,
`prfaas.bench.transport` (what `prfaas bench transport` runs) measures the raw socket and the
PrfaaS transport alone on a netns + tbf link of the same rate, at the transfer's size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_vllm import (
    LONG_PROMPT_TOKENS,
    VLLM_ARGS,
    log,
    run_and_report,
    run_header,
    save_model,
)

from prfaas.bench.schedule import synthetic_prompt
from prfaas.bench.transport import BenchSpec, run_bench
from prfaas.launch.vllm_serve import VLLM_ARGS_ENV, VLLM_TRANSFER_LOG_DIR_ENV
from prfaas.testbed.netns import qdisc_stats
from prfaas.topology import load_topology

THRESHOLD_TOKENS = 512
NUM_OUTPUT_TOKENS = 4
START_TIMEOUT_S = 900.0
REQUEST = """
import json, sys, urllib.request
url, prompt = sys.argv[1], json.loads(sys.argv[2])
with urllib.request.urlopen(url + "/v1/models", timeout=60) as reply:
    model = json.loads(reply.read())["data"][0]["id"]
body = {"model": model, "prompt": prompt, "max_tokens": int(sys.argv[3]), "temperature": 0}
request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=900) as reply:
    print(json.dumps({"route": reply.headers.get("x-prfaas-route")}))
"""


def testbed(name: str, state_dir: Path, env: dict[str, str], *args: str) -> str:
    cmd = [sys.executable, "-m", "prfaas", "testbed", *args, "--name", name]
    cmd += ["--state-dir", str(state_dir)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=START_TIMEOUT_S + 300, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"prfaas testbed {args[0]} failed: {done.stderr[-3000:]}")
    return done.stdout


def send_long(state: dict[str, Any], prompt: Sequence[int]) -> str:
    """One completion sent from the client namespace; its route."""
    cmd = [*state["client_exec"], sys.executable, "-c", REQUEST, state["router_url"]]
    cmd += [json.dumps(list(prompt)), str(NUM_OUTPUT_TOKENS)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"a long request failed: {done.stderr[-3000:]}")
    return str(json.loads(done.stdout)["route"])


def median_of(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


def over_testbed(model: Path, gbps: float, num_long: int, work: Path) -> dict[str, Any]:
    """Long prompts through a vLLM testbed whose WAN runs at `gbps`."""
    name = f"bvw{os.getpid() % 10000}"
    transfers = work / "transfers"
    transfers.mkdir(parents=True)
    env = {**os.environ, VLLM_ARGS_ENV: VLLM_ARGS, VLLM_TRANSFER_LOG_DIR_ENV: str(transfers)}
    up = ["up", "--engine", "vllm", "--model", str(model), "--gbps", f"{gbps:g}"]
    up += ["--threshold", str(THRESHOLD_TOKENS), "--ready-timeout", str(START_TIMEOUT_S), "--json"]
    log(f"testbed up, WAN {gbps:g} Gbit/s")
    state = json.loads(testbed(name, work / "state", env, *up))
    topology = load_topology(work / "state" / name / "topology.toml")
    producer = topology.clusters_of_kind("prfaas")[0].instances[0].name
    try:
        wan = state["wan"]
        before = qdisc_stats(wan["ns"], wan["dev"]).bytes_sent
        routes = []
        for i in range(num_long):
            prompt = synthetic_prompt(LONG_PROMPT_TOKENS, random.Random(i))
            routes.append(send_long(state, prompt))
            log(f"{gbps:g} Gbit/s: long request {i + 1}/{num_long} ({routes[-1]})")
            time.sleep(1.0)  # let the producer log the acknowledgement
        wan_bytes = qdisc_stats(wan["ns"], wan["dev"]).bytes_sent - before
    finally:
        testbed(name, work / "state", env, "down")
    records = [
        json.loads(line) for line in (transfers / f"{producer}.jsonl").read_text().splitlines()
    ]
    sent = [r for r in records if r["event"] == "sent"]
    gbps_each = [r["num_bytes"] * 8 / r["seconds"] / 1e9 for r in sent if r["seconds"] > 0]
    return {
        "routes": routes,
        "num_sent": len(sent),
        "num_failed": sum(1 for r in records if r["event"] != "sent"),
        "bytes_median": median_of(sent, "num_bytes"),
        "seconds_median": median_of(sent, "seconds"),
        "seconds_after_forward_median": median_of(sent, "seconds_after_forward"),
        "goodput_gbps_median": statistics.median(gbps_each) if gbps_each else None,
        "goodput_gbps_best": max(gbps_each) if gbps_each else None,
        "wan_qdisc_bytes": wan_bytes,
        "transfers": sent,
    }


def bound(size_bytes: int, gbps: float) -> dict[str, Any]:
    """The raw socket and the PrfaaS transport alone on a netns + tbf link of `gbps`."""
    log(f"raw socket and transport alone, {gbps:g} Gbit/s, {size_bytes} bytes")
    spec = BenchSpec(size_bytes=size_bytes, connections=1, repeats=5, rounds=1, link_gbps=gbps)
    return dict(run_bench(spec))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        **run_header(),
        "long_prompt_tokens": LONG_PROMPT_TOKENS,
        "rates": {},
    }
    log(f"CPU: {result['cpu_model']} ({result['num_cpus']} CPUs)")
    model = save_model(work / "llama")
    for gbps in args.gbps:
        live = over_testbed(model, gbps, args.num_long, work / f"testbed-{gbps:g}")
        size = int(live["bytes_median"] or 8 << 20)
        result["rates"][f"{gbps:g}"] = {"connector": live, "bound": bound(size, gbps)}
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [f"CPU: {result['cpu_model']} ({result['num_cpus']} CPUs), {result['date']}"]
    for rate, r in result["rates"].items():
        c, b = r["connector"], r["bound"]
        raw, alone, goodput = (
            b.get("raw_socket_gbps"),
            b.get("goodput_gbps"),
            c["goodput_gbps_median"],
        )
        ratio = None if not raw or goodput is None else round(goodput / raw, 3)
        lines.append(
            f"{rate} Gbit/s: connector {c['num_sent']} sent ({c['num_failed']} failed), "
            f"{c['bytes_median']} B, median {c['seconds_median']} s "
            f"({c['seconds_after_forward_median']} s after the forward), goodput median "
            f"{goodput} Gbit/s, best {c['goodput_gbps_best']}; WAN qdisc "
            f"{c['wan_qdisc_bytes']} B; raw socket {raw} Gbit/s, transport alone {alone} "
            f"Gbit/s; connector / raw {ratio}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the full results here")
    parser.add_argument("--gbps", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--num-long", type=int, default=6)
    run_and_report(parser.parse_args(argv), run, summary)


if __name__ == "__main__":
    main()
