"""`prfaas bench system`'s runs: which deployment is served (a running router at a URL, a running
testbed's router (`prfaas.bench.testbed_link`), or the topology started here on loopback by the
`Launcher` and stopped after), the rates to run (one,
or a sweep that stops at the first rate past the TTFT SLO or with errors), and one run's record
(the live numbers, the simulation and the plan: `prfaas.bench.report`).

Running the paper's other deployments on the same instances rewrites one key: a copy of the
topology file with `[policy] deployment = KIND`, written next to the original (so its relative
paths still resolve) and removed after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prfaas.bench.loadgen import Target, probe_router, run_schedule
from prfaas.bench.outcome import RequestResult
from prfaas.bench.report import (
    compare,
    live_provider_split,
    measured_payload_efficiency,
    meets_slo,
    sim_meets_slo,
    summarize_live,
    with_payload_efficiency,
)
from prfaas.bench.schedule import Workload, build_schedule, warmup_schedule
from prfaas.bench.testbed_link import BenchTestbed, LinkDrop
from prfaas.errors import UserError
from prfaas.topology import Topology, load_topology
from prfaas.topology.derived import model_link_gbps

DEPLOYMENT_KINDS = ("prfaas", "homogeneous", "naive")
_POLICY_HEADER = re.compile(r"^\s*\[\s*policy\s*\]\s*(#.*)?$")
_TABLE_HEADER = re.compile(r"^\s*\[")
_DEPLOYMENT_KEY = re.compile(r"^\s*deployment\s*=")


@dataclass(frozen=True)
class RunSpec:
    """How each run sends its requests."""

    workload: Workload
    num_requests: int
    max_duration_s: float
    seed: int
    request_timeout_s: float = 600.0
    sample_period_s: float = 1.0
    num_warmup_rounds: int = 2  # unmeasured short + long requests before the first rate
    link_drop: LinkDrop | None = None  # carried out on a testbed's WAN during each run


@dataclass(frozen=True)
class Served:
    """A deployment that answers: its topology, the router's URL, model id and API key."""

    topology: Topology
    url: str
    model: str
    max_model_len: int
    api_key: str | None
    self_started: bool
    testbed: BenchTestbed | None = None


def deployment_variant_text(text: str, kind: str) -> str:
    """The topology file's text with `[policy] deployment = "kind"` (any earlier value replaced)."""
    if kind not in DEPLOYMENT_KINDS:
        raise UserError(f"deployment must be one of {', '.join(DEPLOYMENT_KINDS)}, got {kind!r}")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _POLICY_HEADER.match(line)), None)
    if start is None:
        raise UserError("the topology has no [policy] table to set its deployment in")
    end = next(
        (i for i in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines)
    )
    body = [line for line in lines[start + 1 : end] if not _DEPLOYMENT_KEY.match(line)]
    out = [*lines[: start + 1], f'deployment = "{kind}"', *body, *lines[end:]]
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def deployment_config(path: Path, kind: str | None) -> Iterator[Path]:
    """`path` itself (kind None), or a variant of it serving `kind`, removed afterwards."""
    if kind is None:
        yield path
        return
    variant = path.with_name(f".{path.stem}.bench-{kind}.toml")
    try:
        variant.write_text(deployment_variant_text(path.read_text(encoding="utf-8"), kind))
        variant.chmod(0o600)
    except OSError as exc:
        raise UserError(
            f"cannot write the {kind} variant of {path} next to it: {exc.strerror or exc}"
        ) from None
    try:
        yield variant
    finally:
        variant.unlink(missing_ok=True)


@contextlib.contextmanager
def served(
    config_path: Path,
    url: str | None,
    kind: str | None,
    api_key: str | None,
    ready_timeout_s: float,
    log_dir: Path | None = None,
    testbed: BenchTestbed | None = None,
) -> Iterator[Served]:
    """The deployment to benchmark: a testbed's router, the router at `url`, or the topology
    started here."""
    if testbed is not None:
        key = api_key or next(iter(testbed.topology.router.api_keys), None)
        svc = _probe(testbed.topology, testbed.router_url, key, self_started=False)
        yield replace(svc, testbed=testbed)
        return
    if url is not None:
        topology = load_topology(config_path)
        yield _probe(topology, url.rstrip("/"), api_key, self_started=False)
        return
    from prfaas.launch.local import Launcher, router_is_ready

    with deployment_config(config_path, kind) as path:
        topology = load_topology(path)
        router_url = f"http://{topology.router.http}"
        if router_is_ready(router_url):
            raise UserError(
                f"a router already answers at {router_url}: benchmark it with --url, or stop it"
            )
        logs = log_dir or Path(tempfile.mkdtemp(prefix="prfaas-bench-"))
        launcher = Launcher(path, topology, logs)
        try:
            launcher.start()
            try:
                launcher.wait_ready(ready_timeout_s)
            except UserError as exc:
                raise UserError(f"{exc} (logs in {logs})") from None
            key = api_key or (topology.router.api_keys[0] if topology.router.api_keys else None)
            yield _probe(topology, launcher.router_url, key, self_started=True)
        finally:
            launcher.stop()
        if log_dir is None:
            shutil.rmtree(logs, ignore_errors=True)


def _probe(topology: Topology, url: str, api_key: str | None, self_started: bool) -> Served:
    model = asyncio.run(probe_router(url, api_key))
    max_len = model.get("max_model_len")
    return Served(
        topology,
        url,
        str(model.get("id", topology.model.name)),
        int(max_len) if isinstance(max_len, int) else 1 << 30,
        api_key,
        self_started,
    )


def warm_up(svc: Served, spec: RunSpec) -> dict[str, Any]:
    """Send the warm-up requests one at a time (the first requests after start pay one-time
    costs); their outcome is reported but not measured."""
    target = Target(svc.url, svc.model, svc.api_key, spec.request_timeout_s)
    planned = warmup_schedule(
        svc.topology.policy.threshold_tokens, svc.max_model_len, spec.num_warmup_rounds
    )
    results = [asyncio.run(run_schedule(target, [p])).results[0] for p in planned]
    return {
        "num_requests": len(results),
        "num_errors": sum(1 for r in results if not r.ok),
        "ttft_s": [None if not r.ok else round(r.ttft_s, 6) for r in results],
    }


def egress_urls(topology: Topology) -> list[str]:
    """The /metrics base URLs of the PrfaaS prefill instances (whose transport is the egress)."""
    return [
        f"http://{inst.http}"
        for cluster in topology.clusters_of_kind("prfaas")
        for inst in cluster.by_role("prefill")
    ]


def run_once(
    svc: Served,
    spec: RunSpec,
    rate_rps: float | None,
    on_done: Callable[[RequestResult], None] | None = None,
    on_schedule: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One run at one rate: send, measure, simulate, plan. The record of `runs` in the JSON."""
    workload = replace(spec.workload, max_model_len=svc.max_model_len)
    schedule = build_schedule(workload, rate_rps, spec.num_requests, spec.max_duration_s, spec.seed)
    if on_schedule is not None:
        on_schedule(len(schedule))
    target = Target(svc.url, svc.model, svc.api_key, spec.request_timeout_s)
    testbed, drop = svc.testbed, spec.link_drop
    outcome = asyncio.run(
        run_schedule(
            target,
            schedule,
            egress_urls(svc.topology),
            spec.sample_period_s,
            on_done,
            read_egress_bytes=None if testbed is None else testbed.wan_bytes,
            actions=[] if testbed is None or drop is None else testbed.drop_actions(drop),
        )
    )
    prompts = [p.prompt_token_ids for p in schedule]
    # on a testbed the WAN's qdisc counts wire bytes: the simulator and the planner take the
    # link's payload rate from the efficiency this run measured
    measured = None if testbed is None else measured_payload_efficiency(outcome)
    efficiency = None if measured is None else round(measured, 4)
    replay = with_payload_efficiency(svc.topology, efficiency)
    sim, plan = compare(replay, outcome, _sim_bandwidth(replay, drop), prompts)
    live = summarize_live(outcome, efficiency)
    target_s = svc.topology.policy.ttft_target_s
    if len(svc.topology.providers) > 1 and target_s is not None:
        live["providers"] = live_provider_split(outcome.results, target_s)
    return {
        "deployment": svc.topology.policy.deployment,
        "rate_rps": rate_rps,
        "live": live,
        "sim": sim,
        "plan": plan,
        "actions": outcome.actions,
        "requests": [r.record() for r in outcome.results],
    }


def _sim_bandwidth(topology: Topology, drop: LinkDrop | None) -> list[Any] | None:
    """The drop as the simulator's bandwidth steps (None: the topology's constant link)."""
    scale = topology.model.time_scale
    if drop is None or scale <= 0:
        return None
    return drop.sim_steps(model_link_gbps(topology), scale)


def sweep_rates(start_rps: float, factor: float, num_steps: int) -> list[float]:
    """`num_steps` geometric rates from `start_rps` (rounded to 1e-6)."""
    if not (start_rps > 0 and factor > 1 and num_steps >= 1):
        raise ValueError(f"bad sweep: start {start_rps}, factor {factor}, {num_steps} steps")
    return [round(start_rps * factor**k, 6) for k in range(num_steps)]


def run_rates(
    run_at: Callable[[float | None], dict[str, Any]],
    rates: Sequence[float | None],
    ttft_slo_s: float | None,
) -> tuple[list[dict[str, Any]], float | None]:
    """Each rate in order; with an SLO (a sweep) stop after the first run that misses it.
    Returns the runs and the highest rate that met the SLO (None without one or when none did)."""
    runs, best = [], None
    for rate in rates:
        run = run_at(rate)
        runs.append(run)
        if ttft_slo_s is None:
            continue
        run["meets_slo"] = meets_slo(run["live"], ttft_slo_s)
        run["sim_meets_slo"] = sim_meets_slo(run["sim"], ttft_slo_s)
        if not run["meets_slo"]:
            break
        best = rate
    return runs, best
