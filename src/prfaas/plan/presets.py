"""Planner settings as flat values (what the CLI and presets set) and their resolution to inputs.

`PlanSettings` is plain data; `resolve` reads profiles, model specs and traces and builds the
`PlanInputs` the search runs on. `prfaas plan` and `prfaas sim` both build their settings here (the
flags are `prfaas.cli._plan_inputs`), so the same inputs give the same plan. The paper's case study
is the preset `paper-case-study`; `paper-case-study-costmodel` replaces the inferred H20 curve by
`prfaas.perf`'s cost model calibrated on the H200 profile only.
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from prfaas.casestudy import PAPER_CASE_STUDY
from prfaas.errors import UserError
from prfaas.files import read_text_file
from prfaas.models.kv_codec import KV_CODEC_NONE, get_kv_codec
from prfaas.plan.curves import parse_quadratic
from prfaas.plan.inputs import ClusterSpec, PlanInputs
from prfaas.policy.throughput import LatencyCurve, SizeCurve
from prfaas.policy.transfer import LinkPath, link_path_of
from prfaas.types import GBPS
from prfaas.workload import (
    EmpiricalLengths,
    LengthDistribution,
    TraceRequest,
    TruncatedLogNormal,
    load_trace,
    uncached_lengths,
)

if TYPE_CHECKING:
    from prfaas.perf import CostModel

_CASE = PAPER_CASE_STUDY
PAPER_H20_QUADRATIC = _CASE.pd_latency.as_spec()  # inferred from Table 6 (docs/paper.md)
COST_MODEL = "cost-model"


@dataclass(frozen=True)
class PlanSettings:
    """Every planner input as a flat value; latency specs are 'profile:NAME|PATH',
    'quadratic:a,b,c' or 'cost-model' (calibrated on the PrfaaS cluster's profile).
    The defaults are the paper's case study (`prfaas.casestudy.PAPER_CASE_STUDY`)."""

    model: str = _CASE.model  # model preset or config.json for S_kv(l)
    prfaas_hardware: str = _CASE.prfaas_hardware
    pd_hardware: str = _CASE.pd_hardware
    prfaas_latency: str = f"profile:{_CASE.prfaas_profile}"
    pd_latency: str = f"quadratic:{PAPER_H20_QUADRATIC}"
    pd_latency_note: str = _CASE.pd_latency_note
    prfaas_gpus: int = _CASE.prfaas_gpus
    pd_gpus: int = _CASE.pd_gpus
    homogeneous_gpus: int | None = None  # None: prfaas_gpus + pd_gpus of the PD hardware
    gpus_per_instance: int = _CASE.gpus_per_instance
    link_gbps: float = _CASE.link_gbps
    mu: float = _CASE.length_mu  # log-normal parameters of the uncached length
    sigma: float = _CASE.length_sigma
    min_tokens: float = _CASE.min_tokens
    max_tokens: float = _CASE.max_tokens
    trace: str | None = None  # a trace file replaces the log-normal by its uncached lengths
    trace_prefix_cache: bool = True  # subtract infinite-cache prefix hits from trace lengths
    output_tokens: float | None = None  # None: a trace's mean output, else the case study's 1024
    bs_max: int = _CASE.max_batch_size
    t_decode_s: float = _CASE.t_decode_step_s
    prices_per_gpu: Mapping[str, float] = field(default_factory=dict)
    threshold_step_tokens: float = 100.0
    kv_codec: str = KV_CODEC_NONE  # attention K/V codec on the link (`prfaas.models.kv_codec`)
    rtt_ms: float = 0.0  # the link's round-trip time (`prfaas.policy.transfer`)
    jitter_ms: float = 0.0  # scale of the extra RTT per transfer (the simulator draws it)
    jitter_distribution: str = "normal"  # "normal" | "pareto" | "uniform"
    loss_pct: float = 0.0  # packet loss, percent in [0, 100)
    payload_efficiency: float = 1.0  # KV payload bytes per wire byte, (0, 1]
    # the cost view (`prfaas.plan.cost`): USD per GPU-hour and per link GB; None: not given
    price_prfaas_gpu_hour: float | None = None
    price_pd_gpu_hour: float | None = None
    price_link_gb: float | None = None
    ttft_slo_s: float | None = None  # the cost view's P90 TTFT bound, seconds


PRESETS: dict[str, PlanSettings] = {
    "paper-case-study": PlanSettings(),
    "paper-case-study-costmodel": PlanSettings(pd_latency=COST_MODEL, pd_latency_note=""),
}


def get_preset(name: str) -> PlanSettings:
    if name not in PRESETS:
        raise UserError(f"unknown plan preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def with_overrides(settings: PlanSettings, **overrides: object) -> PlanSettings:
    """A copy with every non-None override applied; a new pd_latency drops the preset's note."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "pd_latency" in changes and "pd_latency_note" not in changes:
        changes["pd_latency_note"] = ""
    return replace(settings, **changes)  # type: ignore[arg-type]


_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "prfaas_hardware": (str,),
    "pd_hardware": (str,),
    "prfaas_latency": (str,),
    "pd_latency": (str,),
    "prfaas_gpus": (int,),
    "pd_gpus": (int,),
    "homogeneous_gpus": (int,),
    "gpus_per_instance": (int,),
    "link_gbps": (int, float),
    "mu": (int, float),
    "sigma": (int, float),
    "min_tokens": (int, float),
    "max_tokens": (int, float),
    "trace": (str,),
    "trace_prefix_cache": (bool,),
    "output_tokens": (int, float),
    "bs_max": (int,),
    "t_decode_s": (int, float),
    "prices_per_gpu": (dict,),
    "threshold_step_tokens": (int, float),
    "kv_codec": (str,),
    "rtt_ms": (int, float),
    "jitter_ms": (int, float),
    "jitter_distribution": (str,),
    "loss_pct": (int, float),
    "payload_efficiency": (int, float),
    "price_prfaas_gpu_hour": (int, float),
    "price_pd_gpu_hour": (int, float),
    "price_link_gb": (int, float),
    "ttft_slo_s": (int, float),
}


def _check_toml_value(path: Path, key: str, value: object) -> None:
    if key not in _TOML_TYPES:
        raise UserError(f"{path}: unknown key {key!r}; known: {', '.join(_TOML_TYPES)}")
    wanted = _TOML_TYPES[key]
    is_bool = isinstance(value, bool)
    if not isinstance(value, wanted) or (is_bool and bool not in wanted):
        names = " or ".join(t.__name__ for t in wanted)
        raise UserError(f"{path}: {key} must be {names}, got {value!r}")
    if key == "prices_per_gpu":
        assert isinstance(value, dict)
        for hw, price in value.items():
            if isinstance(price, bool) or not isinstance(price, int | float):
                raise UserError(f"{path}: price of {hw} must be a number, got {price!r}")


def settings_from_toml(path: str | Path, base: PlanSettings) -> PlanSettings:
    """`base` with the keys of a TOML file applied (keys are PlanSettings field names)."""
    file = Path(path)
    try:
        data = tomllib.loads(read_text_file(file))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{file}: invalid TOML: {exc}") from None
    for key, value in data.items():
        _check_toml_value(file, key, value)
    return with_overrides(base, **data)


def _profile_curve(name_or_path: str) -> tuple[LatencyCurve, str]:
    from prfaas.perf.profile import load_profile

    profile = load_profile(name_or_path)
    if any(b < a for a, b in zip(profile.latencies_s, profile.latencies_s[1:], strict=False)):
        raise UserError(
            f"profile {name_or_path}: prefill latency must not decrease with length, got "
            f"{profile.latencies_s}"
        )
    # t_prefill_s interpolates at any real length; its int annotation is narrower than the code.
    curve = cast(LatencyCurve, profile.t_prefill_s)
    return curve, f"profile {profile.name or name_or_path} (linear interpolation)"


def calibrated_cost_model(settings: PlanSettings, hardware: str) -> CostModel:
    """`prfaas.perf`'s cost model of one instance of `hardware`, calibrated on the PrfaaS
    cluster's profile only (the `cost-model` latency; the simulator's cost-model decode step)."""
    from prfaas.models import load_model_spec
    from prfaas.perf import calibrate, get_hardware
    from prfaas.perf.profile import load_profile

    kind, _, reference = settings.prfaas_latency.partition(":")
    if kind != "profile" or not reference:
        raise UserError("the perf cost model needs the PrfaaS cluster's latency from a profile")
    model = load_model_spec(settings.model)
    profile = load_profile(reference)
    fitted = calibrate(
        model, get_hardware(settings.prfaas_hardware), settings.gpus_per_instance, profile
    )
    return fitted.on(get_hardware(hardware), settings.gpus_per_instance)


def _cost_model_curve(settings: PlanSettings, hardware: str) -> tuple[LatencyCurve, str]:
    target = calibrated_cost_model(settings, hardware)
    at_tokens = functools.lru_cache(maxsize=1 << 16)(target.t_prefill_s)

    def t_prefill_s(num_tokens: float) -> float:
        return at_tokens(max(1, round(num_tokens)))

    reference = settings.prfaas_latency.partition(":")[2]
    eff = target.efficiency
    return t_prefill_s, (
        f"perf cost model on {hardware.upper()}, calibrated on profile {reference} only "
        f"(matmul eff {eff.matmul:.2f}, attention eff {eff.attention:.2f}, "
        f"overhead {eff.prefill_overhead_s:.3f} s)"
    )


def resolve_latency(settings: PlanSettings, spec: str, hardware: str) -> tuple[LatencyCurve, str]:
    """A latency spec -> (curve, description)."""
    kind, _, arg = spec.partition(":")
    if kind == "profile" and arg:
        return _profile_curve(arg)
    if kind == "quadratic" and arg:
        curve = parse_quadratic(arg)
        return curve, f"quadratic {curve.describe()}"
    if spec == COST_MODEL:
        return _cost_model_curve(settings, hardware)
    raise UserError(
        f"bad latency spec {spec!r}: use profile:NAME|PATH, quadratic:a,b,c or cost-model"
    )


def _kv_curve(model_name: str, kv_codec: str) -> tuple[SizeCurve, str]:
    from prfaas.models import load_model_spec

    footprint = load_model_spec(model_name).footprint(kv_codec=kv_codec)

    def kv_bytes(num_tokens: float) -> float:
        return float(footprint.bytes_for(round(num_tokens)))

    fixed_mib = footprint.fixed_bytes_per_request / 2**20
    return kv_bytes, (
        f"model {model_name}, KV codec {kv_codec}: {footprint.bytes_per_token} B/token + "
        f"{fixed_mib:.1f} MiB fixed"
    )


def resolve_lengths(
    settings: PlanSettings, trace: Sequence[TraceRequest] | None = None
) -> tuple[LengthDistribution, str]:
    """The uncached-length distribution and its description: the log-normal, or the trace's
    lengths after infinite-cache prefix hits (full input lengths without `trace_prefix_cache`).
    `trace`: the requests of `settings.trace`, when the caller has already read them."""
    if settings.trace is None:
        dist = TruncatedLogNormal(
            settings.mu, settings.sigma, settings.min_tokens, settings.max_tokens
        )
        return dist, (
            f"truncated log-normal mu={settings.mu:g} sigma={settings.sigma:g} in "
            f"[{settings.min_tokens:g}, {settings.max_tokens:g}] tokens"
        )
    requests = load_trace(settings.trace) if trace is None else trace
    if settings.trace_prefix_cache:
        values = uncached_lengths(requests)
        how = "uncached after infinite-cache prefix hits"
    else:
        values = [r.num_input_tokens for r in requests]
        how = "full input lengths"
    return EmpiricalLengths(values), f"trace {settings.trace} ({len(values)} requests, {how})"


def output_tokens_of(settings: PlanSettings, trace: Sequence[TraceRequest] | None) -> float:
    """L_out: `settings.output_tokens` when set, else the trace's mean output length, else the
    case study's."""
    if settings.output_tokens is not None:
        return settings.output_tokens
    if settings.trace is not None and trace:
        return sum(r.num_output_tokens for r in trace) / len(trace)
    return float(_CASE.output_tokens)


def _cluster(
    settings: PlanSettings, hardware: str, num_gpus: int, spec: str, note: str
) -> ClusterSpec:
    curve, source = resolve_latency(settings, spec, hardware)
    if note:
        source = f"{source} ({note})"
    return ClusterSpec(hardware, num_gpus, settings.gpus_per_instance, curve, source)


def resolve(settings: PlanSettings, trace: Sequence[TraceRequest] | None = None) -> PlanInputs:
    """Read every file and preset the settings name and build the planner's inputs.

    `trace`: the requests of `settings.trace` when the caller has already read them (the
    simulator replays them), so the file is read once."""
    if not (math.isfinite(settings.link_gbps) and settings.link_gbps > 0):
        raise UserError(f"link bandwidth must be > 0 Gbps, got {settings.link_gbps}")
    prfaas = _cluster(
        settings, settings.prfaas_hardware, settings.prfaas_gpus, settings.prfaas_latency, ""
    )
    pd = _cluster(
        settings,
        settings.pd_hardware,
        settings.pd_gpus,
        settings.pd_latency,
        settings.pd_latency_note,
    )
    homogeneous_gpus = settings.homogeneous_gpus
    if homogeneous_gpus is None:  # not given; 0 is given, and refused by ClusterSpec
        homogeneous_gpus = settings.prfaas_gpus + settings.pd_gpus
    homogeneous = replace(pd, num_gpus=homogeneous_gpus)
    kv_bytes, kv_source = _kv_curve(settings.model, get_kv_codec(settings.kv_codec).name)
    if settings.trace is not None and trace is None:
        trace = load_trace(settings.trace)
    lengths, lengths_source = resolve_lengths(settings, trace)
    return PlanInputs(
        prfaas=prfaas,
        pd=pd,
        homogeneous=homogeneous,
        kv_bytes=kv_bytes,
        kv_source=kv_source,
        lengths=lengths,
        lengths_source=lengths_source,
        link_bytes_per_s=settings.link_gbps * GBPS / 8,
        num_output_tokens=output_tokens_of(settings, trace),
        max_batch_size=settings.bs_max,
        t_decode_step_s=settings.t_decode_s,
        prices_per_gpu={k.lower(): v for k, v in settings.prices_per_gpu.items()},
        threshold_step_tokens=settings.threshold_step_tokens,
        link_path=settings_link_path(settings),
    )


def settings_link_path(settings: PlanSettings) -> LinkPath:
    """The settings' RTT, jitter, loss and payload efficiency as a `LinkPath`; a value it
    refuses (negative, NaN, loss >= 100%, efficiency outside (0, 1]) is a UserError."""
    try:
        return link_path_of(settings)
    except ValueError as exc:
        raise UserError(f"link path: {exc}") from None
