"""The simulator side of a testbed trace run, without the testbed: the topology `prfaas testbed up`
would write for the deployment, the schedule `prfaas bench system --trace` would send, and that
schedule replayed through the simulator exactly as the bench's report replays a live run
(`prfaas.bench.report.simulate_results`, at the planned send times). Nothing is started: no
network, no service, no request.

    PYTHONPATH=src python scripts/testbed_sim_replay.py --trace TRACE [--prefix-cache]

Defaults are `scripts/testbed_results.sh`'s mooncake scenario: prfaas 4 PrfaaS + 4 PD prefill + 4
PD decode, time scale 1, payload scale 0.002, the first 300 requests at the trace's own timing,
seed 1. `--prefix-cache` gives the topology a `[prefix_cache]` table with the default block and
budget (the testbed's topology has none: its instances cache nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from prfaas.bench.outcome import RequestResult
from prfaas.bench.report import simulate_results
from prfaas.bench.schedule import Workload, build_schedule
from prfaas.service.text import served_codec
from prfaas.testbed.layout import (
    TestbedLayout,
    TestbedScale,
    TestbedSpec,
    resolve_threshold,
    testbed_topology,
)
from prfaas.topology.config import (
    DEFAULT_PREFIX_BLOCK_TOKENS,
    DEFAULT_PREFIX_BUDGET_BYTES,
    PrefixCacheConfig,
)
from prfaas.workload import load_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", required=True)
    parser.add_argument("--num-requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prfaas", type=int, default=4)
    parser.add_argument("--pd-prefill", type=int, default=4)
    parser.add_argument("--pd-decode", type=int, default=4)
    parser.add_argument("--payload-scale", type=float, default=0.002)
    parser.add_argument("--prefix-cache", action="store_true")
    args = parser.parse_args()

    spec = TestbedSpec(
        scale=TestbedScale(time_scale=1.0, payload_scale=args.payload_scale),
        num_prfaas_prefill=args.prfaas,
        num_pd_prefill=args.pd_prefill,
        num_pd_decode=args.pd_decode,
    )
    threshold, _ = resolve_threshold(spec)
    topology = testbed_topology(spec, TestbedLayout(spec.name), threshold, spec.scale.wire_gbps)
    if args.prefix_cache:
        cache = PrefixCacheConfig(DEFAULT_PREFIX_BLOCK_TOKENS, DEFAULT_PREFIX_BUDGET_BYTES)
        topology = dataclasses.replace(topology, prefix_cache=cache)
    workload = Workload(
        trace=tuple(load_trace(args.trace)), max_model_len=served_codec(topology).max_model_len
    )
    schedule = build_schedule(workload, None, args.num_requests, 600.0, args.seed)
    results = [
        RequestResult(k, p.at_s, len(p.prompt_token_ids), p.max_tokens, sent_at_s=p.at_s)
        for k, p in enumerate(schedule)
    ]
    prompts = [p.prompt_token_ids for p in schedule]
    sim = simulate_results(topology, results, topology.model.time_scale, prompts=prompts)
    ttft = sim["ttft_s"]
    print(
        json.dumps(
            {
                "threshold_tokens": threshold,
                "prefix_cache": args.prefix_cache,
                "throughput_rps": sim["throughput_rps"],
                "ttft_p50_s": ttft["p50"],
                "ttft_p90_s": ttft["p90"],
                "ttft_p99_s": ttft["p99"],
                "offload_ratio": sim["offload_ratio"],
                "egress_mb": round(sim["egress_bytes"] / 1e6, 2),
                "completed": f"{sim['num_completed']}/{sim['num_requests']}",
                "tpot_p50_ms": round(sim["tpot_s"]["p50"] * 1e3, 3)
                if sim["tpot_s"]["p50"] is not None and math.isfinite(sim["tpot_s"]["p50"])
                else None,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
