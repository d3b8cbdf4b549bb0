"""`prfaas kv`: KV size S_kv(l) and KV throughput Phi_kv(l) = S_kv(l) / T_prefill(l) (paper Eq. 1).

Units are the paper's: MiB = 2^20 bytes, Gbps = 1e9 bit/s. The latency source is a measured
profile (`--profile`) or the roofline cost model (`--hardware`, `--gpus`); without one, only sizes
are printed. With `--link-gbps`, each length also gets the time its KV takes over that link alone
(`prfaas.policy.transfer.transfer_time_s`) on a warm and on a new connection, at `--rtt-ms`,
`--loss-pct` and `--link-efficiency`.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

from prfaas.cli._args import (
    MAX_LENGTH_TOKENS,
    add_kv_codec_flag,
    add_link_path_flags,
    gpus_per_instance,
    link_gbps,
)
from prfaas.cli._output import add_json_flag, format_table, print_json
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.models import ModelSpec
    from prfaas.perf import CostModel, PrefillProfile
    from prfaas.policy.transfer import LinkPath

DEFAULT_LENGTHS = "1024,8192,32768,131072"
_LENGTH = re.compile(r"(\d+(?:\.\d+)?)([kKmM]?)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "kv",
        help="KV size and KV throughput (paper Eq. 1) of a model",
        description="Print S_kv(l) in MiB and, with a latency source, T_prefill(l) and "
        "Phi_kv(l) = S_kv(l) / T_prefill(l) in Gbps (MiB = 2^20 bytes, Gbps = 1e9 bit/s).",
    )
    parser.add_argument(
        "--model",
        help="model preset name or path to a config.json "
        "(default: the profile's model, e.g. paper-1t for --profile paper-1t-h200)",
    )
    parser.add_argument(
        "--lengths",
        default=DEFAULT_LENGTHS,
        help=f"comma-separated prompt lengths in tokens; 1K = 1024 (default {DEFAULT_LENGTHS})",
    )
    parser.add_argument("--kv-dtype", default="bfloat16", help="KV cache dtype (default bfloat16)")
    add_kv_codec_flag(parser)
    parser.add_argument(
        "--state-dtype",
        default=None,
        help="recurrent-state dtype (default: the model's, float32 unless its config says)",
    )
    parser.add_argument(
        "--profile",
        help="measured latency profile: preset name or CSV/JSON file "
        "(with --hardware: calibrates the cost model instead)",
    )
    parser.add_argument(
        "--hardware",
        help="latency from the roofline cost model on this GPU type; with --profile its "
        "efficiencies are first fitted to the profile's hardware",
    )
    parser.add_argument(
        "--gpus", type=gpus_per_instance, default=8, help="GPUs per instance (default 8)"
    )
    parser.add_argument(
        "--link-gbps",
        type=link_gbps,
        help="also print each KV's transfer time over a link of this rate, Gbps, warm and new",
    )
    add_link_path_flags(parser, with_jitter=False)
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _link_path(args: argparse.Namespace) -> LinkPath:
    from prfaas.policy.transfer import LinkPath

    return LinkPath(
        rtt_s=(args.rtt_ms or 0.0) / 1e3,
        loss_rate=(args.loss_pct or 0.0) / 100,
        payload_efficiency=1.0 if args.link_efficiency is None else args.link_efficiency,
    )


def _transfer_times(s_kv_bytes: float, args: argparse.Namespace) -> dict[str, float]:
    """The KV's transfer time alone on the `--link-gbps` link, warm and new (empty without)."""
    if args.link_gbps is None:
        return {}
    from prfaas.policy.transfer import WireState, transfer_time_s
    from prfaas.types import GBPS

    wire_bytes_per_s, path = args.link_gbps * GBPS / 8, _link_path(args)
    return {
        f"transfer_{state}_s": round(transfer_time_s(s_kv_bytes, wire_bytes_per_s, path, state), 4)
        for state in (WireState.WARM, WireState.NEW)
    }


def parse_lengths(text: str) -> list[int]:
    """ "1K,8192,128k" -> [1024, 8192, 131072]; every length must be a positive integer of at
    most `MAX_LENGTH_TOKENS`."""
    lengths = []
    for item in text.split(","):
        token = item.strip()
        match = _LENGTH.fullmatch(token)
        if not match:
            raise UserError(f"bad length {token!r}: use positive integers like 8192 or 8K")
        scale = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
        value = float(match.group(1)) * scale
        if not value <= MAX_LENGTH_TOKENS:  # also inf, from a number of hundreds of digits
            raise UserError(f"bad length {token!r}: at most {MAX_LENGTH_TOKENS:,} tokens")
        if value != int(value) or value < 1:
            raise UserError(f"bad length {token!r}: lengths must be positive whole tokens")
        lengths.append(int(value))
    return lengths


def _latency_source(
    args: argparse.Namespace, model: ModelSpec, profile: PrefillProfile | None
) -> CostModel | None:
    if args.hardware is None:
        return None
    from prfaas.perf import CostModel, calibrate, get_hardware

    if args.gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {args.gpus}")
    hardware = get_hardware(args.hardware)
    if profile is None:
        return CostModel(model, hardware, args.gpus, kv_dtype=args.kv_dtype)
    measured_on = get_hardware(profile.hardware or args.hardware)
    fitted = calibrate(model, measured_on, profile.num_gpus or args.gpus, profile)
    return fitted.on(hardware, args.gpus)


def _profile_sizes_apply(
    profile: PrefillProfile, model: ModelSpec, args: argparse.Namespace
) -> bool:
    """A profile's measured sizes stand for S_kv only for its own model in default dtypes."""
    default_dtypes = args.kv_dtype in ("bfloat16", "bf16") and args.state_dtype is None
    uncoded = args.kv_codec == "none"
    return default_dtypes and uncoded and profile.model in (None, model.name)


def _row(
    model: ModelSpec,
    tokens: int,
    args: argparse.Namespace,
    profile: PrefillProfile | None,
    cost: CostModel | None,
) -> dict[str, Any]:
    from prfaas.types import GBPS, MIB

    measured = None
    if profile is not None and _profile_sizes_apply(profile, model, args):
        measured = profile.kv_bytes_at(tokens)
    computed = model.kv_bytes(tokens, args.kv_dtype, args.state_dtype, args.kv_codec)
    s_kv = computed if measured is None else measured
    t_prefill: float | None = None
    if cost is not None:
        t_prefill = cost.t_prefill_s(tokens)
    elif profile is not None:
        t_prefill = profile.t_prefill_s(tokens)
    return {
        "tokens": tokens,
        "s_kv_mib": round(s_kv / MIB, 3),
        "kv_codec": args.kv_codec,
        "kv_bytes_per_token": model.kv_bytes_per_token(args.kv_dtype, args.kv_codec),
        "state_bytes": model.state_bytes(tokens, args.kv_dtype, args.state_dtype, args.kv_codec),
        "t_prefill_s": None if t_prefill is None else round(t_prefill, 4),
        "phi_gbps": None if t_prefill is None else round(s_kv * 8 / t_prefill / GBPS, 3),
        "s_kv_source": "profile" if measured is not None else "model",
        **_transfer_times(s_kv, args),
    }


def run(args: argparse.Namespace) -> int:
    from prfaas.models import load_model_spec
    from prfaas.perf import load_profile

    lengths = parse_lengths(args.lengths)
    profile = load_profile(args.profile) if args.profile else None
    model_source = args.model or (profile.model if profile is not None else None)
    if model_source is None:
        raise UserError("give --model (a preset or a config.json), or a --profile that names one")
    model = load_model_spec(model_source)
    try:
        cost = _latency_source(args, model, profile)
        rows = [_row(model, n, args, profile, cost) for n in lengths]
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print_json(rows)
        return 0
    _print_table(model, rows, args, profile, cost)
    return 0


def _print_table(
    model: ModelSpec,
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    profile: PrefillProfile | None,
    cost: CostModel | None,
) -> None:
    state = args.state_dtype or model.recurrent_state_dtype
    print(f"model {model.name} ({model.model_type}): {model.layer_pattern()}")
    print(
        f"KV dtype {args.kv_dtype}, KV codec {args.kv_codec}, recurrent state {state}, "
        f"conv state {model.activation_dtype}"
    )
    if cost is not None:
        eff = cost.efficiency
        print(
            f"latency: cost model on {cost.num_gpus}x{cost.hardware.name}"
            + (f", fitted to profile {profile.name}" if profile is not None else ", defaults")
            + " "
            f"(matmul {eff.matmul:.2f}, attention {eff.attention:.2f} of peak, "
            f"overhead {eff.prefill_overhead_s:.3f} s)"
        )
    elif profile is not None:
        where = f"{profile.num_gpus or '?'}x{profile.hardware or '?'}"
        print(f"latency: profile {profile.name} ({where}, interpolated)")
    headers = ["tokens", "S_kv MiB", "KV B/token", "state B", "T_prefill s", "Phi_kv Gbps"]
    transfer_keys = ["transfer_warm_s", "transfer_new_s"] if args.link_gbps is not None else []
    headers += ["transfer s (warm)", "transfer s (new)"][: len(transfer_keys)]
    table = [
        [
            r["tokens"],
            f"{r['s_kv_mib']:.2f}" + ("*" if r["s_kv_source"] == "profile" else ""),
            r["kv_bytes_per_token"],
            r["state_bytes"],
            "-" if r["t_prefill_s"] is None else f"{r['t_prefill_s']:.3f}",
            "-" if r["phi_gbps"] is None else f"{r['phi_gbps']:.2f}",
            *(f"{r[key]:.3f}" for key in transfer_keys),
        ]
        for r in rows
    ]
    if transfer_keys:
        print(f"link {args.link_gbps:g} Gbps, {_link_path(args).describe()}")
    print(format_table(headers, table))
    if any(r["s_kv_source"] == "profile" for r in rows):
        print("* S_kv measured in the profile (interpolated); other sizes from the model config")
