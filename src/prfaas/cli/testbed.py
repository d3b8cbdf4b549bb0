"""`prfaas testbed up | down | status | link`: the two-datacenter testbed on one machine.

`up` builds network namespaces for the PrfaaS cluster, the PD cluster (with the router) and a
client, joins them with veth links (the PrfaaS -> PD "WAN" shaped by `tc tbf`), and starts a
topology of emulated engines (paper-1t on H200 / H20 timing, scaled; `--prefill-latency` or
`--paper-curves` replace the cost model's prefill times by given curves) or tiny torch ones
inside them; it returns once the router is ready and leaves everything running. `--deployment` picks
the paper's prfaas, homogeneous or naive deployment, `--controller` turns on the router's
adaptive controller. `status` reports it, `link` changes the WAN's rate (and tells the router) or
cuts it, `down` removes it. Needs root (docs/testbed.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prfaas.cli._args import MAX_LENGTH_TOKENS, bounded_int, float_in, positive_float
from prfaas.cli._output import add_json_flag, print_json
from prfaas.errors import UserError
from prfaas.models.kv_codec import COMPRESSION_CHOICES, KV_CODEC_NONE

if TYPE_CHECKING:
    from prfaas.testbed.layout import TestbedSpec

_READY_TIMEOUT_S = 180.0
_DELAY_FIELDS = ("delay_ms", "jitter_ms", "jitter_distribution", "loss_pct", "reorder")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "testbed",
        help="a two-datacenter testbed in network namespaces (root)",
        description="Network namespaces for a PrfaaS cluster, a PD cluster and a client, a "
        "tbf-shaped inter-datacenter link, and a deployment running inside them.",
    )
    sub = p.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)
    _register_up(sub)
    for action, what, handler in (
        ("down", "stop the services and delete the namespaces", _run_down),
        ("status", "namespaces, processes, router readiness and WAN counters", _run_status),
    ):
        q = sub.add_parser(action, help=what, description=what[0].upper() + what[1:] + ".")
        _common(q)
        q.set_defaults(handler=handler)
    q = sub.add_parser(
        "link",
        help="change the WAN: rate (nominal Gbps, scaled as at up) or cut/restore it",
        description="Change the PrfaaS -> PD link of a running testbed. --gbps is nominal and "
        "scaled like at `up` (wire = nominal x payload scale / time scale); the router is told "
        "the new wire rate.",
    )
    _common(q)
    q.add_argument("--gbps", type=float_in(1e-6, 1e6, low_open=True), help="nominal Gbps")
    state = q.add_mutually_exclusive_group()
    state.add_argument("--down", dest="is_up", action="store_false", default=None)
    state.add_argument("--up", dest="is_up", action="store_true")
    _delay_flags(q, live=True)
    q.set_defaults(handler=_run_link)


def _delay_flags(p: argparse.ArgumentParser, *, live: bool) -> None:
    """The delay line's flags; with `live` (`link`) an absent flag keeps the running value."""
    from prfaas.testbed.delay_schedule import JITTER_DISTRIBUTIONS, MAX_DELAY_MS

    keep = " (default: unchanged)" if live else ""
    p.add_argument("--delay-ms", type=float_in(0, MAX_DELAY_MS), default=None if live else 0.0,
                   help=f"one-way WAN delay, both directions (RTT = 2 x this){keep}")  # fmt: skip
    p.add_argument("--jitter-ms", type=float_in(0, MAX_DELAY_MS), default=None if live else 0.0,
                   help=f"jitter added to each packet's delay{keep}")  # fmt: skip
    p.add_argument("--jitter-distribution", choices=JITTER_DISTRIBUTIONS,
                   default=None if live else "uniform",
                   help="uniform: delay +- jitter; normal: standard deviation jitter "
                   f"(default{': unchanged' if live else ' uniform'})")  # fmt: skip
    p.add_argument("--loss-pct", type=float_in(0, 100, high_open=True),
                   default=None if live else 0.0,
                   help=f"per-packet loss in each direction, in [0, 100){keep}")  # fmt: skip
    reorder = p.add_mutually_exclusive_group()
    reorder.add_argument("--reorder", dest="reorder", action="store_true",
                         default=None if live else False,
                         help="let jitter reorder packets (default: a packet never "
                         "leaves before the one ahead of it)")  # fmt: skip
    if live:
        reorder.add_argument("--no-reorder", dest="reorder", action="store_false")


def _delay_values(args: argparse.Namespace) -> dict[str, Any]:
    """The delay line's flags given on the command line (None: not given)."""
    return {key: getattr(args, key) for key in _DELAY_FIELDS}


def _common(p: argparse.ArgumentParser) -> None:
    from prfaas.testbed.layout import DEFAULT_NAME, DEFAULT_STATE_ROOT

    p.add_argument("--name", default=DEFAULT_NAME, help="testbed name, prefix of its namespaces")
    p.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE_ROOT),
        help="where each testbed's run directory (state, topology, logs) lives",
    )
    add_json_flag(p)


def _register_up(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="build the namespaces and links, start the deployment, return when ready",
        description="Build the testbed and start its services detached (or in the foreground "
        "with --foreground, until Ctrl-C). Emulated engines: compute sleeps time-scale x the "
        "cost model, payloads are payload-scale x the real KV bytes, the WAN runs at "
        "gbps x payload-scale / time-scale.",
    )
    _common(p)
    p.add_argument("--engine", choices=["emulated", "torch", "vllm"], default="emulated")
    p.add_argument(
        "--model",
        default="qwen3_next",
        help="served model (torch: a tiny preset; vllm: a checkpoint directory)",
    )
    p.add_argument("--emulate", default="paper-1t", help="model preset emulated engines time")
    p.add_argument(
        "--gbps",
        type=float_in(1e-6, 1e6, low_open=True),
        default=None,
        help="nominal inter-DC link (default: 100, the paper's; 1 with --engine torch)",
    )
    scale = float_in(0, 1e3, low_open=True)
    p.add_argument("--time-scale", type=scale, help="s: compute slept (emulated; default 1)")
    fraction = float_in(0, 1, low_open=True)
    p.add_argument("--payload-scale", type=fraction, help="p: KV bytes sent (default 0.01)")
    p.add_argument(
        "--deployment",
        choices=["prfaas", "homogeneous", "naive"],
        default="prfaas",
        help="prfaas: threshold routing (default); homogeneous: every prefill on PD; "
        "naive: every prefill on PrfaaS",
    )
    p.add_argument(
        "--controller",
        action="store_true",
        help="the router's adaptive long-timescale controller (prfaas only; default: static t)",
    )
    p.add_argument(
        "--controller-period-s",
        type=float_in(0, 3600, low_open=True),
        default=None,
        help="the controller's tick period in seconds (default: its own, 30)",
    )
    counts = bounded_int(0, 16)
    p.add_argument("--prfaas", type=counts, default=1, help="PrfaaS prefill instances")
    p.add_argument("--pd-prefill", type=counts, default=1, help="PD prefill instances")
    p.add_argument("--pd-decode", type=counts, default=1, help="PD decode instances")
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help='t in tokens, or "auto" (Eq. 7 on the nominal deployment; default for emulated; '
        "128 for torch); --deployment prfaas only",
    )
    p.add_argument("--failure", choices=["recompute", "fail"], default="recompute")
    p.add_argument(
        "--compression",
        choices=COMPRESSION_CHOICES,
        default=KV_CODEC_NONE,
        help="KV codec of offloaded requests ([transport] compression; default none)",
    )
    p.add_argument("--transfer-deadline", type=positive_float, default=60.0, help="seconds")
    p.add_argument("--drain", type=float_in(0, 600), default=5.0, help="seconds, on SIGTERM")
    _delay_flags(p, live=False)
    p.add_argument("--delay-seed", type=bounded_int(0), default=0,
                   help="seed of the delay line's loss and jitter draws")  # fmt: skip
    p.add_argument(
        "--prefill-latency",
        type=_hardware_latency,
        action="append",
        default=[],
        metavar="HW=SPEC",
        help="one prefill instance of HW (h200: PrfaaS, h20: PD) takes SPEC seconds, "
        "quadratic:a,b,c or profile:NAME|PATH, instead of the cost model's (emulated; "
        "repeatable)",
    )
    p.add_argument(
        "--paper-curves",
        action="store_true",
        help="h20=quadratic:0.469,1.3e-4,2.945e-10 (implied by the paper's Table 6) and "
        "h200=profile:paper-1t-h200 (its Table 5); --prefill-latency overrides one",
    )
    p.add_argument("--ready-timeout", type=positive_float, default=_READY_TIMEOUT_S)
    p.add_argument("--foreground", action="store_true", help="run until Ctrl-C, then down")
    p.set_defaults(handler=_run_up)


def _threshold(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected tokens or "auto", got {text!r}') from None
    if not 0 <= value <= MAX_LENGTH_TOKENS:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_LENGTH_TOKENS:,}], got {text!r}")
    return value


def _hardware_latency(text: str) -> tuple[str, str]:
    """'HW=SPEC' -> (hw in lower case, SPEC with a relative profile path made absolute)."""
    hardware, equals, spec = text.partition("=")
    hardware, spec = hardware.strip().lower(), spec.strip()
    if not equals or not hardware or not spec:
        raise argparse.ArgumentTypeError(f"expected HW=SPEC (h20=quadratic:a,b,c), got {text!r}")
    kind, _, reference = spec.partition(":")
    if kind == "profile" and reference and Path(reference).expanduser().is_file():
        spec = f"profile:{Path(reference).expanduser().resolve()}"
    return hardware, spec


def _prefill_latency(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """`--paper-curves` then each `--prefill-latency` (which replaces a paper curve, but not
    another `--prefill-latency` of the same hardware: that is refused by the spec)."""
    from prfaas.testbed.layout import PAPER_CURVES

    given = list(args.prefill_latency)
    named = {hardware for hardware, _ in given}
    paper = [pair for pair in PAPER_CURVES if pair[0] not in named] if args.paper_curves else []
    return tuple(sorted(paper + given))


def spec_from_args(args: argparse.Namespace) -> TestbedSpec:
    """The `TestbedSpec` of `up`'s flags (engine-dependent defaults filled in)."""
    from prfaas.testbed.delay_schedule import DelaySettings, DelaySettingsError
    from prfaas.testbed.layout import PAPER_LINK_GBPS, TORCH_LINK_GBPS, TestbedScale, TestbedSpec

    real = args.engine != "emulated"  # torch or vLLM: a model really runs, nothing is scaled
    if real and (args.time_scale is not None or args.payload_scale is not None):
        raise UserError("--time-scale and --payload-scale apply to --engine emulated only")
    default_gbps = TORCH_LINK_GBPS if real else PAPER_LINK_GBPS
    scale = TestbedScale(
        args.gbps if args.gbps is not None else default_gbps,
        args.time_scale if args.time_scale is not None else 1.0,
        args.payload_scale if args.payload_scale is not None else (1.0 if real else 0.01),
    ).check_delay_line_rate()
    if args.deployment != "prfaas" and args.threshold is not None:
        raise UserError(f"--threshold applies to --deployment prfaas, not {args.deployment}")
    threshold = args.threshold if args.threshold is not None else (128.0 if real else "auto")
    try:
        delay = DelaySettings(**_delay_values(args))
    except DelaySettingsError as exc:
        raise UserError(str(exc)) from None
    return TestbedSpec(
        name=args.name,
        engine=args.engine,
        model=_served_model(args.engine, args.model),
        emulate=args.emulate,
        scale=scale,
        num_prfaas_prefill=args.prfaas,
        num_pd_prefill=args.pd_prefill,
        num_pd_decode=args.pd_decode,
        deployment=args.deployment,
        threshold=threshold,
        controller=args.controller,
        controller_period_s=args.controller_period_s,
        failure=args.failure,
        compression=args.compression,
        transfer_deadline_s=args.transfer_deadline,
        drain_s=args.drain,
        delay=delay,
        delay_seed=args.delay_seed,
        prefill_latency=_prefill_latency(args),
    )


def _run_up(args: argparse.Namespace) -> int:
    from prfaas.testbed import run as testbed_run

    spec = spec_from_args(args)
    root = Path(args.state_dir)
    if args.foreground:

        def announce(state: dict[str, Any]) -> None:
            _print_up(args, state)
            print("Ctrl-C stops the testbed and deletes its namespaces.", flush=True)

        return testbed_run.run_foreground(spec, root, args.ready_timeout, announce)
    _print_up(args, testbed_run.up(spec, root, args.ready_timeout))
    return 0


def _print_up(args: argparse.Namespace, state: dict[str, Any]) -> None:
    if args.json:
        print_json(state)
        sys.stdout.flush()
        return
    scale = state["scale"]
    took = f" in {state['up_s']:g} s" if "up_s" in state else ""
    print(f"testbed {state['name']} is up{took}: router {state['router_url']}/v1")
    print(
        f"  WAN {state['wan']['ns']}/{state['wan']['dev']}: tbf {state['wire_gbps']:g} Gbps = "
        f"{scale['nominal_gbps']:g} Gbps nominal x payload {scale['payload_scale']:g} / "
        f"time {scale['time_scale']:g}"
    )
    print(f"  WAN delay line: {_delay_text(state.get('delay'))}")
    print(f"  deployment {state['deployment']}: {_routing(state)}")
    print(f"  clients: {shlex.join(state['client_exec'])} COMMAND")
    print(f"  stop: prfaas testbed down --name {state['name']}", flush=True)


def _routing(state: dict[str, Any]) -> str:
    """How the deployment routes: its threshold and whether the controller adapts it."""
    if state["threshold_tokens"] is None:
        return str(state["threshold"])
    from prfaas.policy.route import threshold_text

    adapts = "adapted by the controller" if state["controller"] else "static"
    t = threshold_text(state["threshold_tokens"])
    return f"threshold t = {t} tokens, {adapts} ({state['threshold']})"


def _run_down(args: argparse.Namespace) -> int:
    from prfaas.testbed import run as testbed_run

    report = testbed_run.down(args.name, Path(args.state_dir))
    if args.json:
        print_json(report)
    elif report["existed"]:
        deleted = ", ".join(report["deleted_namespaces"]) or "none left"
        print(f"{report['message']} in {report['down_s']:g} s (namespaces deleted: {deleted})")
    else:
        print(report["message"])
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from prfaas.testbed import run as testbed_run

    report = testbed_run.status(args.name, Path(args.state_dir))
    if args.json:
        print_json(report)
    else:
        _print_status(report)
    return 0 if report["all_up"] else 1


def _print_status(report: dict[str, Any]) -> None:
    if not report["exists"]:
        print(f"no testbed {report['name']!r}")
        return
    print(f"testbed {report['name']}: {'up' if report['all_up'] else 'NOT all up'}"
          f" (phase {report['phase']})")  # fmt: skip
    if "deployment" in report:
        controller = "on" if report["controller"] else "off"
        print(f"  deployment {report['deployment']}, controller {controller}")
    for ns, present in report["namespaces"].items():
        print(f"  namespace {ns}: {'present' if present else 'MISSING'}")
    for name, svc in report.get("services", {}).items():
        print(f"  {name:<20} pid {svc['pid']:<8} {'alive' if svc['alive'] else 'DEAD'}")
    if "router_url" in report:
        print(f"  router {report['router_url']}: {'ready' if report['router_ready'] else 'no'}")
    link = report.get("link")
    if link and "bytes_sent" in link:
        print(
            f"  WAN {link['dev']}: {'up' if link['up'] else 'DOWN'}, tbf "
            f"{link['rate_bytes_per_s'] * 8 / 1e9:g} Gbps, sent {link['bytes_sent']:,} B in "
            f"{link['packets_sent']:,} packets, dropped {link['drops']}, overlimits "
            f"{link['overlimits']}"
        )
    delay = report.get("delay")
    if delay:
        line = "running" if delay["alive"] else "NOT RUNNING"
        print(f"  WAN delay line ({line}): {_delay_text(delay['line'].get('settings'))}")
        for direction, counts in delay["line"].get("counters", {}).items():
            print(
                f"    to {direction}: {counts['packets_in']:,} packets in, "
                f"{counts['packets_lost']:,} lost, {counts['packets_overflow']:,} overflowed"
            )


def _run_link(args: argparse.Namespace) -> int:
    from prfaas.testbed import run as testbed_run

    delay = {key: value for key, value in _delay_values(args).items() if value is not None}
    if args.gbps is None and args.is_up is None and not delay:
        raise UserError("give --gbps, --down, --up or a delay line flag (--delay-ms, ...)")
    report = testbed_run.change_link(
        args.name,
        Path(args.state_dir),
        nominal_gbps=args.gbps,
        is_up=args.is_up,
        delay_changes=delay,
    )
    if args.json:
        print_json(report)
    else:
        print(
            f"testbed {report['name']} WAN: {'up' if report['up'] else 'DOWN'}, "
            f"{report['nominal_gbps']:g} Gbps nominal = {report['wire_gbps']:g} Gbps on the wire, "
            f"{_delay_text(report['delay'])}{_router_told(report)}"
        )
    return 0


def _delay_text(settings: dict[str, Any] | None) -> str:
    """The delay line's settings in a few words."""
    if not settings:
        return "no delay line"
    jitter = settings["jitter_ms"]
    spread = f" +- {jitter:g} ms {settings['jitter_distribution']}" if jitter else ""
    order = ", may reorder" if settings["reorder"] else ""
    return (
        f"delay {settings['delay_ms']:g} ms one way{spread}, loss {settings['loss_pct']:g}%{order}"
    )


def _router_told(report: dict[str, Any]) -> str:
    """Whether the router took the new rate, as the end of `link`'s line."""
    if report["router_informed"] is None:
        return ""
    if report["router_informed"]:
        return "; the router was told"
    return f"; the router was NOT told: {report['router_reason']}"


def _served_model(engine: str, model: str) -> str:
    """vLLM serves a checkpoint directory: made absolute against the working directory (the
    servers start elsewhere); the other engines take the name as given."""
    if engine != "vllm":
        return model
    directory = Path(model).expanduser().resolve()
    if not (directory / "config.json").is_file():
        raise UserError(
            f"--model {model}: a vLLM testbed serves a checkpoint directory with a config.json"
        )
    return str(directory)
