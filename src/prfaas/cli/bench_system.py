"""`prfaas bench system`: replay a workload against a router (running, on a testbed, or started
here from its topology) and report it next to the simulator and the planner
(`prfaas.bench.system`)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prfaas.cli._args import bounded_int, float_in
from prfaas.cli._bench_workload import (
    add_workload_flags,
    burst_record,
    describe_workload,
    workload_of,
)
from prfaas.cli._output import (
    add_json_flag,
    check_writable_dir,
    format_table,
    prepare_output_dir,
    print_json,
)
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.bench.system import RunSpec, Served
    from prfaas.bench.testbed_link import BenchTestbed

MAX_RATE_RPS = 10_000.0
MAX_SWEEP_STEPS = 20
MAX_TIMEOUT_S = 3600.0


def register_system(kinds: Any) -> None:
    """Add `system` to `prfaas bench`'s kinds."""
    from prfaas.bench.schedule import MAX_DURATION_S, MAX_REQUESTS

    s = kinds.add_parser(
        "system",
        help="replay a workload against the router; live vs simulated vs planned",
        description="Send a workload (the paper's length distribution, or a Mooncake/Azure "
        "trace) to a router at a fixed rate or at increasing rates (--sweep), and report "
        "throughput, TTFT/TPOT percentiles, offload ratio and PrfaaS egress over time, next to "
        "`prfaas sim` and the planner's Λ_max for the same topology and requests. With --url, "
        "benchmark that running router (--config is its topology); without, start the "
        "topology on this machine, run, and stop it.",
    )
    s.add_argument("--config", metavar="TOPOLOGY.toml", help="the topology")
    s.add_argument("--url", help="a running router's base URL, e.g. http://10.0.0.1:8000")
    tb = s.add_argument_group("testbed (`prfaas testbed up`; needs root)")
    tb.add_argument(
        "--testbed",
        metavar="NAME",
        help="benchmark this running testbed from its client namespace (its topology and "
        "router; egress = bytes through its WAN qdisc)",
    )
    tb.add_argument("--state-dir", default=None, help="the testbed's state directory")
    tb.add_argument(
        "--link-drop",
        metavar="AT_S:DURATION_S:GBPS",
        help="during each run, the WAN at GBPS nominal from AT_S for DURATION_S, then back "
        "(the router is told; the simulator replays the same steps)",
    )
    s.add_argument("--api-key", help="Bearer key for the router (default: the topology's first)")
    s.add_argument(
        "--deployment",
        choices=["topology", "prfaas", "homogeneous", "naive", "all"],
        default="topology",
        help="what the router runs: the file's [policy] deployment, another one on the same "
        "instances, or all three in turn (not with --url)",
    )
    rate = s.add_argument_group("rate")
    rate.add_argument(
        "--rate", type=float_in(0, MAX_RATE_RPS, low_open=True), help="requests/s (open loop)"
    )
    rate.add_argument("--rates", metavar="R1,R2,...", help="these rates in order (a sweep)")
    rate.add_argument("--sweep", action="store_true", help="geometric rates from --rate")
    rate.add_argument(
        "--sweep-factor", type=float_in(1.05, 10), default=2.0, help="rate ratio per step (2)"
    )
    rate.add_argument(
        "--sweep-steps",
        type=bounded_int(1, MAX_SWEEP_STEPS),
        default=6,
        help=f"most rates of a sweep (6, at most {MAX_SWEEP_STEPS})",
    )
    rate.add_argument(
        "--ttft-slo-s",
        type=float_in(0, MAX_TIMEOUT_S, low_open=True),
        default=10.0,
        help="a sweep stops at the first rate whose TTFT p90 exceeds this or that has errors",
    )
    run = s.add_argument_group("run")
    run.add_argument(
        "--num-requests",
        type=bounded_int(1, MAX_REQUESTS),
        default=100,
        help="requests per rate (100)",
    )
    for flag, convert, default, what in (
        ("--max-duration-s", float_in(0, MAX_DURATION_S, low_open=True), 600.0,
         "no arrival later than this per rate (600)"),
        ("--request-timeout-s", float_in(0, MAX_TIMEOUT_S, low_open=True), 600.0,
         "one request's limit (600)"),
        ("--sample-s", float_in(0.05, 60), 1.0, "egress scrape period (1)"),
    ):  # fmt: skip
        run.add_argument(flag, type=convert, default=default, help=what)
    run.add_argument("--seed", type=bounded_int(0, 2**63 - 1), default=0)
    run.add_argument(
        "--ready-timeout-s",
        type=float_in(0, MAX_TIMEOUT_S, low_open=True),
        default=300.0,
        help="wait this long for a started topology (300)",
    )
    run.add_argument(
        "--warmup-rounds",
        type=bounded_int(0, 100),
        default=2,
        help="unmeasured rounds of one short and one offloaded request before the runs (2)",
    )
    run.add_argument("--log-dir", help="keep the started services' logs here")
    add_workload_flags(s)
    s.add_argument("--output", metavar="FILE", help="write the JSON results here")
    s.add_argument("--plot", metavar="DIR", help="write PNG plots here (needs matplotlib)")
    add_json_flag(s)
    s.set_defaults(handler=_run_system)


def _rates(args: argparse.Namespace) -> tuple[list[float | None], bool]:
    """The rates to run and whether they are a sweep (which stops at the SLO)."""
    from prfaas.bench.system import sweep_rates

    if args.rates is not None:
        if args.rate is not None or args.sweep:
            raise UserError("--rates lists every rate: do not combine it with --rate or --sweep")
        convert = float_in(0, MAX_RATE_RPS, low_open=True)
        try:
            rates = [convert(x) for x in args.rates.split(",")]
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"--rates: {exc}") from None
        if len(rates) > MAX_SWEEP_STEPS:
            raise UserError(f"--rates: at most {MAX_SWEEP_STEPS} rates, got {len(rates)}")
        return list(rates), True
    if args.sweep:
        if args.rate is None:
            raise UserError("--sweep starts at --rate: give it")
        return list(sweep_rates(args.rate, args.sweep_factor, args.sweep_steps)), True
    if args.rate is None and args.trace is None:
        raise UserError("give --rate (or --rates, or --trace to replay the trace's own timing)")
    return [args.rate], False


def _testbed(args: argparse.Namespace) -> BenchTestbed | None:
    """The testbed to drive (None without --testbed); re-runs this command inside its client
    namespace when not there yet (the process is replaced)."""
    import sys

    from prfaas.bench.testbed_link import in_namespace, open_testbed
    from prfaas.testbed.layout import DEFAULT_STATE_ROOT

    if args.testbed is None:
        if args.link_drop is not None or args.state_dir is not None:
            raise UserError("--link-drop and --state-dir drive a testbed: give --testbed NAME")
        return None
    if args.url is not None or args.config is not None or args.deployment != "topology":
        raise UserError("--testbed names the router and topology: no --url, --config, --deployment")
    testbed = open_testbed(args.testbed, Path(args.state_dir or DEFAULT_STATE_ROOT))
    if not in_namespace(testbed.client_ns):
        argv = ["ip", "netns", "exec", testbed.client_ns, sys.executable, "-m", "prfaas"]
        sys.stdout.flush()
        os.execvp("ip", [*argv, *sys.argv[1:]])
    return testbed


def _run_system(args: argparse.Namespace) -> int:
    from prfaas.bench.system import RunSpec
    from prfaas.bench.testbed_link import LinkDrop, topology_path

    testbed = _testbed(args)
    if testbed is None and args.config is None:
        raise UserError("give --config TOPOLOGY.toml (or --testbed NAME)")
    config = topology_path(testbed) if testbed is not None else Path(args.config)
    if not config.is_file():
        raise UserError(f"--config {args.config}: no such file")
    if args.url is not None and args.deployment != "topology":
        raise UserError(
            "--deployment needs the topology started here (no --url): a running router "
            "serves the deployment its file names"
        )
    if args.url is not None and not re.fullmatch(r"https?://[^\s/]+/?", args.url):
        raise UserError(f"--url must be http(s)://HOST:PORT, got {args.url!r}")
    rates, is_sweep = _rates(args)
    if args.output is not None:
        check_writable_dir(os.path.dirname(os.path.abspath(args.output)), "--output")
    if args.plot is not None:
        _check_plot(args.plot)
    if args.log_dir is not None:
        prepare_output_dir(args.log_dir, "--log-dir")
    spec = RunSpec(
        workload_of(args),
        args.num_requests,
        args.max_duration_s,
        args.seed,
        args.request_timeout_s,
        args.sample_s,
        args.warmup_rounds,
        None if args.link_drop is None else LinkDrop.parse(args.link_drop),
    )
    result = _system_result(args, config, spec, rates, is_sweep, testbed)
    _emit_system(args, result)
    return 0


def _check_plot(directory: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib (pip install 'prfaas[plot]')") from None
    prepare_output_dir(directory, "--plot")


def _system_result(
    args: argparse.Namespace,
    config: Path,
    spec: RunSpec,
    rates: list[float | None],
    is_sweep: bool,
    testbed: BenchTestbed | None,
) -> dict[str, Any]:
    from prfaas.bench.system import (
        DEPLOYMENT_KINDS,
        run_once,
        run_rates,
        served,
        warm_up,
    )

    kinds: list[str | None] = (
        [None]
        if args.deployment == "topology"
        else list(DEPLOYMENT_KINDS)
        if args.deployment == "all"
        else [args.deployment]
    )
    log_dir = Path(args.log_dir) if args.log_dir else None
    runs: list[dict[str, Any]] = []
    best: dict[str, float | None] = {}
    warmups: dict[str, Any] = {}
    first: Served | None = None
    for kind in kinds:
        with served(
            config, args.url, kind, args.api_key, args.ready_timeout_s, log_dir, testbed
        ) as svc:
            first = first or svc
            warmups[svc.topology.policy.deployment] = warm_up(svc, spec)

            def run_at(rate: float | None, svc: Served = svc) -> dict[str, Any]:
                with _progress(args, svc.topology.policy.deployment, rate) as bar:
                    return run_once(
                        svc, spec, rate, lambda _r: bar.update(1), lambda n: bar.reset(n)
                    )

            done, top = run_rates(run_at, rates, args.ttft_slo_s if is_sweep else None)
            runs += done
            best[svc.topology.policy.deployment] = top
    assert first is not None  # kinds is never empty
    return _header(args, config, first, spec, is_sweep) | {
        "warmup": warmups,
        "runs": runs,
        **({"max_sustainable_rate_rps": best} if is_sweep else {}),
    }


def _progress(args: argparse.Namespace, kind: str, rate: float | None) -> Any:
    import sys

    from tqdm import tqdm

    label = f"{kind} @ {'trace' if rate is None else f'{rate:g}/s'}"
    return tqdm(total=0, desc=label, unit="req", file=sys.stderr, disable=args.json, leave=False)


def _header(
    args: argparse.Namespace, config: Path, svc: Served, spec: RunSpec, is_sweep: bool
) -> dict[str, Any]:
    import platform

    topology = svc.topology
    workload = spec.workload
    return {
        "config": str(config.resolve()),
        "testbed": None if svc.testbed is None else svc.testbed.name,
        "payload_scale": topology.model.payload_scale,
        "deployment": topology.policy.deployment,
        "controller": topology.controller.enabled,
        "link_drop": None if spec.link_drop is None else vars(spec.link_drop),
        "burst": burst_record(workload.burst),
        "url": svc.url,
        "self_started": svc.self_started,
        "model": svc.model,
        "emulate": topology.model.emulate,
        "time_scale": topology.model.time_scale,
        "engines": sorted({i.engine for i in topology.instances}),
        "threshold_tokens": topology.policy.threshold_tokens,
        "link_gbps": topology.link.gbps,
        "workload": describe_workload(args, workload),
        "num_requests": spec.num_requests,
        "max_duration_s": spec.max_duration_s,
        "seed": spec.seed,
        **({"ttft_slo_s": args.ttft_slo_s} if is_sweep else {}),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }


def _emit_system(args: argparse.Namespace, result: dict[str, Any]) -> None:
    import json
    import sys

    from prfaas.bench.report import (
        PROVIDER_HEADERS,
        TABLE_HEADERS,
        provider_rows,
        table_rows,
        write_plots,
    )

    if args.output is not None:
        try:
            Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    if args.plot is not None:
        for path in write_plots(result, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print_json(result)
        return
    print(format_table(TABLE_HEADERS, table_rows(result["runs"])))
    by_provider = provider_rows(result["runs"])
    if by_provider:
        print(format_table(PROVIDER_HEADERS, by_provider))
    for kind, rate in result.get("max_sustainable_rate_rps", {}).items():
        shown = "none of the rates" if rate is None else f"{rate:g} req/s"
        print(
            f"{kind}: max sustainable rate (TTFT p90 <= {args.ttft_slo_s:g} s, no errors): {shown}"
        )
    for run in result["runs"]:
        for column in ("sim", "plan"):
            if "unavailable" in run[column]:
                print(f"{run['deployment']}: {column}: {run[column]['unavailable']}")
