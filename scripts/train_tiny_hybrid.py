"""Train the tiny qwen3_next hybrid (gated delta net + full attention) that measures what the KV
codecs cost a trained model (`scripts/kv_codec_quality.py`, docs/results.md).

Usage:
    PYTHONPATH=src .venv/bin/python scripts/train_tiny_hybrid.py
        [--out data/tiny-trained/qwen3-next-stdlib] [--steps 400] [--seed 0]

The model is the `qwen3_next` tiny preset's shape (hidden 128, 8 layers: 3 gated delta net
layers then 1 full attention layer, twice; byte vocabulary) with dense MLPs instead of the
preset's 4 experts and the usual initializer range of 0.02. It learns next-byte prediction on the
standard library's source (`prfaas.engine.stdlib_corpus`: held-out files never trained on) from
random windows of `--seq` bytes, AdamW with linear warmup and cosine decay, on one CPU thread.
Everything random comes from `--seed`. At the end it prints the held-out byte perplexity and
saves the model in float16 safetensors with its config and byte tokenizer (`save_pretrained`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from prfaas.engine.checkpoint import byte_tokenizer
from prfaas.engine.presets import tiny_config_kwargs
from prfaas.engine.stdlib_corpus import byte_tokens, split_files, stdlib_files

DEFAULT_OUT = Path("data/tiny-trained/qwen3-next-stdlib")
INIT_RANGE = 0.02
_AUTO_MODEL: Any = AutoModelForCausalLM  # untyped in transformers
NUM_EVAL_WINDOWS = 64


def model_config_kwargs() -> dict[str, Any]:
    """The qwen3_next tiny preset with dense MLPs and a training initializer range."""
    kwargs = tiny_config_kwargs("qwen3_next")
    kwargs["mlp_only_layers"] = list(range(kwargs["num_hidden_layers"]))
    kwargs["initializer_range"] = INIT_RANGE
    return kwargs


def _windows(stream: torch.Tensor, starts: torch.Tensor, seq: int) -> torch.Tensor:
    """[num_windows, seq + 1] token windows of `stream` starting at `starts`."""
    offsets = torch.arange(seq + 1)
    return stream[starts.unsqueeze(1) + offsets]


def _learning_rate(step: int, num_steps: int, peak: float) -> float:
    warmup = max(1, num_steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, num_steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _loss(model: Any, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch[:, :-1]).logits  # [batch, seq, vocab]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def held_out_perplexity(model: Any, stream: torch.Tensor, seq: int) -> float:
    """exp(mean next-byte loss) over the first NUM_EVAL_WINDOWS disjoint windows."""
    num_windows = min(NUM_EVAL_WINDOWS, (stream.numel() - 1) // seq)
    starts = torch.arange(num_windows) * seq
    losses = [
        _loss(model, _windows(stream, starts[i : i + 8], seq)) for i in range(0, num_windows, 8)
    ]
    return math.exp(float(torch.stack(losses).mean()))


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    kwargs = model_config_kwargs()
    training_files, held_out_files = split_files(stdlib_files())
    train_stream = torch.tensor(byte_tokens(training_files, kwargs["eos_token_id"]))
    held_stream = torch.tensor(byte_tokens(held_out_files, kwargs["eos_token_id"]))
    model = _AUTO_MODEL.from_config(AutoConfig.for_model("qwen3_next", **kwargs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    curve: list[tuple[int, float]] = []
    started_s = time.monotonic()
    model.train()
    for step in range(args.steps):
        starts = torch.randint(
            0, train_stream.numel() - args.seq - 1, (args.batch,), generator=generator
        )
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, args.steps, args.lr)
        loss = _loss(model, _windows(train_stream, starts, args.seq))
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            curve.append((step, loss.item()))
            elapsed_s = time.monotonic() - started_s
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed_s:7.1f} s", flush=True)
    model.eval()
    perplexity = held_out_perplexity(model, held_stream, args.seq)
    summary = {
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "seq": args.seq,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_training_bytes": train_stream.numel(),
        "num_held_out_bytes": held_stream.numel(),
        "loss_curve": curve,
        "held_out_byte_perplexity": perplexity,
        "train_minutes": (time.monotonic() - started_s) / 60,
    }
    print(f"held-out byte perplexity {perplexity:.3f}", flush=True)
    _save(model, kwargs, args.out, summary)
    return summary


def _save(model: Any, kwargs: dict[str, Any], out: Path, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out)
    byte_tokenizer(kwargs).save_pretrained(out)
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
