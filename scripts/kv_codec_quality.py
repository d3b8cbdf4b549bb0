"""What the KV codecs cost a trained model: K/V and attention-output error, next-token agreement
and perplexity with the prefix's attention K/V coded as a transfer codes it.

Usage:
    PYTHONPATH=src .venv/bin/python scripts/kv_codec_quality.py
        [--model data/tiny-trained/qwen3-next-stdlib] [--windows 64] [--prefix-len 192]
        [--positions 64] [--proxy-presets qwen3_next,llama,gemma3_text] [--json FILE]

The text is the held-out standard library files (`prfaas.engine.stdlib_corpus`), never trained
on. `--windows` windows spread evenly over it each prefill `--prefix-len` bytes, then score the
next `--positions` bytes teacher-forced from the exact and from the coded cache
(`prfaas.engine.codec_quality`); recurrent and conv state stay exact. A prefix and its positions
fit in the 256 bytes the model was trained on (192 + 64 by default). The same agreement on the
random-weight tiny presets follows, labelled as the weaker proxy: their weights model no text.
Runs on one CPU thread, in float32.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from prfaas.engine.codec_quality import QualityTotals, ZeroedKV, score_window, window_starts
from prfaas.engine.kv_codec import KVCodec, kv_codec
from prfaas.engine.loading import load_model
from prfaas.engine.stdlib_corpus import byte_tokens, split_files, stdlib_files
from prfaas.errors import UserError

DEFAULT_MODEL = Path("data/tiny-trained/qwen3-next-stdlib")
CODECS = ("none", "fp8", "int4-rotated")
CONTROL = "zeroed-kv"  # not a codec: the prefix's attention K/V all 0
DEFAULT_PROXIES = "qwen3_next,llama,gemma3_text"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (as `lscpu` shows it), else the platform's."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def held_out_tokens(eos_token_id: int) -> list[int]:
    _, held_out = split_files(stdlib_files())
    return byte_tokens(held_out, eos_token_id)


def measure(
    name: str, model: Any, args: argparse.Namespace, tokens: list[int], *, control: bool = False
) -> list[QualityTotals]:
    """Every codec's totals for `model` (called `name` in the progress bar), then the control's
    if asked."""
    codecs: dict[str, KVCodec] = {codec: kv_codec(codec) for codec in CODECS}
    if control:
        codecs[CONTROL] = ZeroedKV()
    span = args.prefix_len + args.positions + 1
    totals: dict[str, QualityTotals] = {}
    for start in tqdm(window_starts(len(tokens), span, args.windows), desc=name, unit="window"):
        window = tokens[start : start + span]
        score_window(model, window, args.prefix_len, args.positions, codecs, totals)
    return list(totals.values())


def _layers(errors: dict[str, float]) -> str:
    return " ".join(f"{key}:{value:.4f}" for key, value in errors.items())


def print_trained(name: str, results: list[QualityTotals]) -> None:
    print(f"\n{name} (trained): {results[0].num_positions} positions; {CONTROL} is a control")
    print(f"{'codec':<13} {'agree':>7} {'ppl exact':>10} {'ppl coded':>10} {'change':>8}")
    for total in results:
        change = total.coded_perplexity / total.exact_perplexity - 1
        print(
            f"{total.codec:<13} {total.agreement:7.4f} {total.exact_perplexity:10.4f} "
            f"{total.coded_perplexity:10.4f} {change:+8.4%}"
        )
    for total in results:
        row = total.as_dict()
        print(f"{total.codec:<13} K/V relative error  {_layers(row['kv_relative_error'])}")
        attention = row["attention_output_relative_error"]
        print(f"{total.codec:<13} attention output    {_layers(attention)}")


def print_proxies(proxies: dict[str, list[QualityTotals]]) -> None:
    print("\nrandom-weight tiny presets (weaker proxy): next-token agreement")
    print(f"{'preset':<13} " + " ".join(f"{codec:>13}" for codec in CODECS))
    for preset, results in proxies.items():
        print(f"{preset:<13} " + " ".join(f"{t.agreement:13.4f}" for t in results))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    if not (args.model / "config.json").is_file():
        raise UserError(f"no trained model at {args.model}: run scripts/train_tiny_hybrid.py")
    trained = load_model(str(args.model), "fp32")
    tokens = held_out_tokens(int(trained.config.eos_token_id))
    results = measure(str(args.model), trained.model, args, tokens, control=True)
    print_trained(str(args.model), results)
    proxy_names = [p for p in args.proxy_presets.split(",") if p]
    proxies = {p: measure(p, load_model(p, "fp32").model, args, tokens) for p in proxy_names}
    print_proxies(proxies)
    return {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "num_held_out_tokens": len(tokens),
        "trained": {"model": str(args.model), "codecs": [t.as_dict() for t in results]},
        "proxies": {p: [t.as_dict() for t in r] for p, r in proxies.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--prefix-len", type=int, default=192)
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--proxy-presets", default=DEFAULT_PROXIES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    try:
        report = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
