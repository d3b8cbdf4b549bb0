"""Argparse `type=` converters shared by the subcommands, and the bounds they enforce: numbers are
refused, with the reason, when they are not finite (`nan`, `inf`, `1e999`) or outside the range
a flag allows. A bound is stated in the message, so a refused value says what would be accepted."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

# Upper bounds of counts that size a search, a request list or an allocation. Each is far above
# any real deployment; they exist so that a typo cannot make a command run forever.
MAX_GPUS = 1_000_000  # GPUs in one cluster
MAX_GPUS_PER_INSTANCE = 1024  # GPUs of one prefill or decode instance
MAX_LENGTH_TOKENS = 2**30  # one prompt, output or length bound, tokens
MAX_BATCH_SIZE = 65_536  # decode batch of one instance, requests
MAX_SEED = 2**63 - 1  # seeds reach torch.manual_seed, which takes a signed 64-bit integer
MAX_LINK_GBPS = 1e6  # one link, Gbps (1 Pbit/s): its rate in bytes/s stays far from overflow
MAX_LINK_MS = 60_000.0  # an RTT or jitter scale, ms (`prfaas.policy.transfer.MAX_RTT_S`)
# A decode step between 1 us and 1000 s: a shorter one stops simulated time from advancing
# (t + step == t in floating point), a longer one is no decoder.
MIN_DECODE_STEP_MS, MAX_DECODE_STEP_MS = 1e-3, 1e6
MIN_DECODE_TPS, MAX_DECODE_TPS = 1e-3, 1e6  # the same bounds as a decode SLO, tokens/s


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def float_in(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A converter to a finite float in [low, high] (an end excluded with `low_open` /
    `high_open`)."""

    def convert(text: str) -> float:
        value = finite_float(text)
        if value < low or (low_open and value == low):
            sign = ">" if low_open else ">="
            raise argparse.ArgumentTypeError(f"must be {sign} {_show(low)}, got {text!r}")
        if value > high or (high_open and value == high):
            sign = "<" if high_open else "<="
            raise argparse.ArgumentTypeError(f"must be {sign} {_show(high)}, got {text!r}")
        return value

    convert.__name__ = "number"
    return convert


def _show(bound: float) -> str:
    """A bound as a message states it: 1,073,741,824 or 0.01."""
    return f"{int(bound):,}" if float(bound).is_integer() else f"{bound:g}"


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """A converter to an integer in [low, high] (no upper bound when `high` is None)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,}, got {text!r}")
        return value

    convert.__name__ = "integer"
    return convert


positive_int = bounded_int(1)
nonnegative_int = bounded_int(0)
gpu_count = bounded_int(1, MAX_GPUS)
gpus_per_instance = bounded_int(1, MAX_GPUS_PER_INSTANCE)
torch_seed = bounded_int(0, MAX_SEED)  # a seed torch.manual_seed accepts
token_count = float_in(0, MAX_LENGTH_TOKENS, low_open=True)  # a length in tokens, > 0
link_gbps = float_in(0, MAX_LINK_GBPS, low_open=True)  # a link's rate, Gbps, > 0
milliseconds = float_in(0, MAX_LINK_MS)  # an RTT or a jitter scale, ms
decode_step_ms = float_in(MIN_DECODE_STEP_MS, MAX_DECODE_STEP_MS)  # T_decode, ms
decode_tokens_per_s = float_in(MIN_DECODE_TPS, MAX_DECODE_TPS)  # a decode SLO, tokens/s


def loss_percent(text: str) -> float:
    """A packet loss in percent, in [0, 100) (100% would deliver nothing)."""
    value = float_in(0, 100)(text)
    if value == 100:
        raise argparse.ArgumentTypeError(f"must be < 100, got {text!r}")
    return value


payload_efficiency = float_in(0, 1, low_open=True)  # payload bytes per wire byte, (0, 1]


def kv_codec_name(text: str) -> str:
    """A KV codec name of `prfaas.models.kv_codec`."""
    from prfaas.errors import UserError
    from prfaas.models.kv_codec import get_kv_codec

    try:
        return get_kv_codec(text).name
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_kv_codec_flag(parser: argparse._ActionsContainer, default: str | None = "none") -> None:
    """`--kv-codec`: how attention K/V is coded for the link (recurrent state stays exact)."""
    from prfaas.models.kv_codec import KV_CODEC_NAMES

    parser.add_argument(
        "--kv-codec",
        type=kv_codec_name,
        default=default,
        metavar="|".join(KV_CODEC_NAMES),
        help="attention K/V codec on the link: bytes per element plus per-block scales "
        "(recurrent and conv state stay exact; default: none, or the preset's/--config's)",
    )


def add_link_path_flags(parser: argparse._ActionsContainer, *, with_jitter: bool = True) -> None:
    """`--rtt-ms`, `--loss-pct`, `--link-efficiency` and (`with_jitter`: where transfers are
    simulated) `--jitter-ms`, `--jitter-distribution`: the link's path
    (`prfaas.policy.transfer`). Each defaults to None, the ideal path's value."""
    from prfaas.policy.transfer import JITTER_DISTRIBUTIONS

    parser.add_argument("--rtt-ms", type=milliseconds, help="link round-trip time, ms (default 0)")
    if with_jitter:
        parser.add_argument(
            "--jitter-ms",
            type=milliseconds,
            help="scale of the extra RTT the simulator draws per transfer, ms (default 0)",
        )
        parser.add_argument(
            "--jitter-distribution",
            choices=JITTER_DISTRIBUTIONS,
            help="normal: |N(0, jitter)|; pareto: Lomax of shape 3 with mean jitter; "
            "uniform: U(0, jitter) (default normal)",
        )
    parser.add_argument(
        "--loss-pct",
        type=loss_percent,
        help="packet loss in [0, 100): each transfer capped at its connections' Mathis bound "
        "(default 0)",
    )
    parser.add_argument(
        "--link-efficiency",
        type=payload_efficiency,
        help="KV payload bytes per wire byte, (0, 1] (default 1; about 0.9 on the testbed)",
    )
