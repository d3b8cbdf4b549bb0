"""`prfaas profile`: measure a running engine's prefill latency at several prompt lengths and its
decode step time against batch size, through its OpenAI API (a `vllm serve`, a PrfaaS router),
and write the profile file `prfaas kv --profile`, `prfaas plan --prfaas-latency profile:PATH`,
`prfaas sim` and a topology's `[model] prefill_latency = "profile:PATH"` read
(`prfaas.bench.profile` measures; this module parses flags and prints).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prfaas.cli._args import bounded_int, gpu_count, positive_float
from prfaas.cli._output import add_json_flag, format_table, print_json
from prfaas.errors import UserError

if TYPE_CHECKING:
    from prfaas.bench.profile import ProfileSpec

DEFAULT_LENGTHS = "128,512,1K,2K"
DEFAULT_BATCH_SIZES = "1,2,4,8"
MAX_BATCH_SIZE = 1024


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure T_prefill(l) and the decode step time of a running engine",
        description="Measure a running engine through its OpenAI API (vllm serve, or a PrfaaS "
        "router) and write a prefill profile that kv --profile, plan, sim and a topology's "
        "prefill_latency = 'profile:PATH' read.",
    )
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://HOST:8000")
    p.add_argument("--api-key", default=None, help="Bearer key, when the server wants one")
    p.add_argument("--output", "-o", default=None, help="write the profile (JSON) to this file")
    p.add_argument(
        "--lengths", default=DEFAULT_LENGTHS, help=f"prompt lengths (default {DEFAULT_LENGTHS})"
    )
    p.add_argument("--repeats", type=bounded_int(1, 100), default=3, help="runs per length")
    p.add_argument(
        "--batch-sizes",
        default=DEFAULT_BATCH_SIZES,
        help=f"decode batch sizes; 0 skips decode (default {DEFAULT_BATCH_SIZES})",
    )
    p.add_argument(
        "--decode-tokens", type=bounded_int(2, 4096), default=32, help="tokens per decode request"
    )
    p.add_argument("--seed", type=bounded_int(0), default=0, help="seed of the random prompts")
    p.add_argument("--timeout-s", type=positive_float, default=600.0, help="per request")
    meta = p.add_argument_group("what the profile says it measured (metadata)")
    meta.add_argument("--name", default=None, help="profile name (default: the file's stem)")
    meta.add_argument("--hardware", default=None, help="hardware preset, e.g. h200")
    meta.add_argument("--num-gpus", type=gpu_count, default=None, help="GPUs of the instance")
    meta.add_argument(
        "--model", default=None, help="the model preset or config.json it serves (for kv)"
    )
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from prfaas.bench.loadgen import Target, probe_router
    from prfaas.bench.profile import ProfileSpec, profile_document, run_profile
    from prfaas.cli.kv import parse_lengths

    spec = ProfileSpec(
        lengths=_increasing(parse_lengths(args.lengths), "--lengths"),
        repeats=args.repeats,
        batch_sizes=_batch_sizes(args.batch_sizes),
        decode_tokens=args.decode_tokens,
        seed=args.seed,
    )
    output = _output_path(args.output)
    url = args.url.rstrip("/")
    served = asyncio.run(probe_router(url, args.api_key))
    _check_lengths(spec, served)
    target = Target(url, str(served["id"]), args.api_key, request_timeout_s=args.timeout_s)
    with _progress(args, spec) as bar:
        prefill, decode = run_profile(target, spec, lambda: bar.update(1))
    document = profile_document(prefill, decode, _meta(args, served, output))
    if output is not None:
        output.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print_json(document)
    else:
        _print(document, output)
    return 0


def _increasing(lengths: list[int], flag: str) -> tuple[int, ...]:
    if len(lengths) < 2 or any(b <= a for a, b in itertools.pairwise(lengths)):
        raise UserError(f"{flag}: at least two strictly increasing lengths, got {lengths}")
    return tuple(lengths)


def _batch_sizes(text: str) -> tuple[int, ...]:
    sizes = []
    for item in text.split(","):
        try:
            size = int(item)
        except ValueError:
            raise UserError(f"--batch-sizes: {item!r} is not an integer") from None
        if not 0 <= size <= MAX_BATCH_SIZE:
            raise UserError(f"--batch-sizes: {size} is not in 0..{MAX_BATCH_SIZE}")
        sizes.append(size)
    return tuple(s for s in sizes if s > 0)


def _output_path(text: str | None) -> Path | None:
    if text is None:
        return None
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir():
        raise UserError(f"--output {text}: not a file in an existing directory")
    return path


def _check_lengths(spec: ProfileSpec, served: dict[str, Any]) -> None:
    """Every prompt plus its output fits the served context."""
    limit = served.get("max_model_len")
    if isinstance(limit, int) and spec.lengths[-1] + 1 > limit:
        raise UserError(
            f"--lengths: {spec.lengths[-1]} tokens plus one output token exceed the served "
            f"model's context of {limit} tokens"
        )


def _meta(args: argparse.Namespace, served: dict[str, Any], output: Path | None) -> dict[str, Any]:
    name = args.name or (output.stem if output is not None else str(served["id"]))
    meta: dict[str, Any] = {
        "name": name,
        "source": f"prfaas profile --url {args.url} (model {served['id']!r})",
    }
    if args.model is not None:  # a model preset or config.json, as prfaas kv --model takes
        meta["model"] = args.model
    if args.hardware is not None:
        meta["hardware"] = args.hardware
    if args.num_gpus is not None:
        meta["num_gpus"] = args.num_gpus
    return meta


def _progress(args: argparse.Namespace, spec: ProfileSpec) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=spec.num_requests(), desc="profile", unit="req", file=sys.stderr, disable=args.json
    )


def _print(document: dict[str, Any], output: Path | None) -> None:
    prefill = [(r["tokens"], f"{r['t_prefill_s']:.4f}") for r in document["rows"]]
    print(format_table(["tokens", "T_prefill s"], prefill))
    if document["decode"]:
        decode = [(d["batch_size"], f"{d['t_step_s'] * 1e3:.2f}") for d in document["decode"]]
        print(format_table(["batch", "decode step ms"], decode))
    print(f"prefill latency from: {document['prefill_latency_from']}")
    if document["raised_to_non_decreasing"]:
        raised = ", ".join(map(str, document["raised_to_non_decreasing"]))
        print(f"raised to the shorter length's latency (noise): {raised} tokens")
    if output is not None:
        print(f"wrote {output}: use it as --profile {output}, --prfaas-latency profile:{output}")
