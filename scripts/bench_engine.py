"""Engine benchmarks: overhead against a bare `model(...)` loop, batched decode, export/import.

Usage:
    PYTHONPATH=src .venv/bin/python scripts/bench_engine.py [--archs a,b] [--threads 1]
        [--section overhead,batch,transfer] [--json out.json]

* overhead: prefill tokens/s (one 512-token prompt) and single-request decode tokens/s (64 tokens)
  of `Engine` vs. a bare loop of `model(input_ids, position_ids, cache=..., logits_to_keep=1)`
  with argmax, on the same tiny model; median of --repeats interleaved runs.
* batch: aggregate decode tokens/s of 8 concurrent requests (prompts of 200..270 tokens, 32
  tokens each) in one engine vs. the same 8 requests decoded one after another.
* transfer: export and import time and bytes of one request at 2K and 32K tokens. The 2K state
  comes from a real prefill; the 32K state is the 2K manifest with every full-attention / MLA
  token axis stretched to 32768 (sliding windows stay at window - 1 tokens, linear states are
  fixed-size), filled with random bytes and imported, then exported again: export/import cost
  depends on the layout and sizes, not on the values, and a real 32K prefill of 15 models does
  not fit this benchmark's CPU budget.
* emulated: `EmulatedEngine` export and byte-checking import of one request of Qwen3.5-397B at
  32K tokens and Llama-3.1-70B at 4K tokens (real payload sizes from `prfaas.models`; Llama's
  32K payload is 10.7 GB, too much for a shared 24 GiB box), sleeps disabled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from transformers.utils import logging

from prfaas.engine.cache_layout import new_cache
from prfaas.engine.loading import LoadedModel, load_model
from prfaas.engine.presets import PRESETS
from prfaas.engine.runner import Engine
from prfaas.messages import GenerateRequest, KVManifest, SamplingParams

OVERHEAD_ARCHS = ["llama", "qwen3_next", "mimo_v2_flash", "kimi_linear"]


def _prompt(num_tokens: int, offset: int = 0) -> tuple[int, ...]:
    return tuple((7 * i + 13 * offset + 3) % 251 for i in range(num_tokens))


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- overhead -------------------------------------------------------------------------------
@torch.inference_mode()
def _bare_prefill(loaded: LoadedModel, prompt: tuple[int, ...]) -> tuple[Any, int]:
    cache = new_cache(loaded.model)
    out = loaded.model(
        input_ids=torch.tensor([prompt]),
        position_ids=torch.arange(len(prompt)).unsqueeze(0),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return cache, int(out.logits[0, -1].argmax())


@torch.inference_mode()
def _bare_decode(loaded: LoadedModel, cache: Any, token: int, pos: int, num_tokens: int) -> None:
    for _ in range(num_tokens):
        out = loaded.model(
            input_ids=torch.tensor([[token]]),
            position_ids=torch.tensor([[pos]]),
            cache=cache,
            use_cache=True,
        )
        token = int(out.logits[0, -1].argmax())
        pos += 1


def _engine_decode(loaded: LoadedModel, prompt: tuple[int, ...], num_tokens: int) -> float:
    engine = Engine(loaded)
    engine.prefill([GenerateRequest("r", prompt, _greedy(num_tokens + 1))])
    return _timed(lambda: _drain(engine))


def _drain(engine: Engine) -> None:
    while engine.has_unfinished():
        engine.step()


def bench_overhead(arch: str, repeats: int) -> dict[str, Any]:
    loaded = load_model(arch)
    prompt, num_decode = _prompt(512), 64
    bare_p, eng_p, bare_d, eng_d = [], [], [], []
    for i in range(repeats + 1):  # first round warms up
        bp = _timed(lambda: _bare_prefill(loaded, prompt))
        ep = _timed(lambda: Engine(loaded).prefill([GenerateRequest("r", prompt, _greedy(1))]))
        cache, tok = _bare_prefill(loaded, prompt)
        bd = _timed(lambda c=cache, t=tok: _bare_decode(loaded, c, t, len(prompt), num_decode))
        ed = _engine_decode(loaded, prompt, num_decode)
        if i > 0:
            bare_p.append(bp), eng_p.append(ep), bare_d.append(bd), eng_d.append(ed)
    n = len(prompt)
    return {
        "arch": arch,
        "prefill_tok_s_bare": n / statistics.median(bare_p),
        "prefill_tok_s_engine": n / statistics.median(eng_p),
        "prefill_engine_over_bare": _median_ratio(bare_p, eng_p),
        "decode_tok_s_bare": num_decode / statistics.median(bare_d),
        "decode_tok_s_engine": num_decode / statistics.median(eng_d),
        "decode_engine_over_bare": _median_ratio(bare_d, eng_d),
    }


def _median_ratio(bare_s: list[float], engine_s: list[float]) -> float:
    """Median over back-to-back pairs of engine throughput / bare throughput (robust to load)."""
    return statistics.median(b / e for b, e in zip(bare_s, engine_s, strict=True))


# ---- batched decode ---------------------------------------------------------------------------
def _decode_time(loaded: LoadedModel, requests: list[GenerateRequest]) -> float:
    engine = Engine(loaded)
    engine.prefill(requests)
    return _timed(lambda: _drain(engine))


def bench_batch(arch: str, repeats: int, num_requests: int = 8, num_tokens: int = 32) -> dict:
    loaded = load_model(arch)
    requests = [
        GenerateRequest(f"r{i}", _prompt(200 + 10 * i, i), _greedy(num_tokens + 1))
        for i in range(num_requests)
    ]
    together, one_by_one = [], []
    for i in range(repeats + 1):
        t_batch = _decode_time(loaded, requests)
        t_seq = sum(_decode_time(loaded, [r]) for r in requests)
        if i > 0:
            together.append(t_batch), one_by_one.append(t_seq)
    total = num_requests * num_tokens
    batched, sequential = total / statistics.median(together), total / statistics.median(one_by_one)
    return {
        "arch": arch,
        "batched_tok_s": batched,
        "sequential_tok_s": sequential,
        "speedup": statistics.median(s / t for s, t in zip(one_by_one, together, strict=True)),
    }


# ---- export / import --------------------------------------------------------------------------
def _stretch(manifest: KVManifest, from_tokens: int, to_tokens: int) -> KVManifest:
    """The same layout at to_tokens: full-attention token axes stretched, offsets recomputed."""
    layers, offset = [], 0
    for layer in manifest.layers:
        tensors = []
        for t in layer.tensors:
            shape = list(t.shape)
            if t.name.rsplit("/", 1)[-1] in ("keys", "values") and shape[-2] == from_tokens:
                shape[-2] = to_tokens
            num_bytes = t.num_bytes // max(1, _numel(t.shape)) * _numel(shape)
            tensors.append(replace(t, shape=tuple(shape), offset_bytes=offset, num_bytes=num_bytes))
            offset += num_bytes
        flags = json.loads(json.dumps(layer.flags))
        if flags.get("attrs", {}).get("cumulative_length") == from_tokens:
            flags["attrs"]["cumulative_length"] = to_tokens
        layers.append(replace(layer, tensors=tuple(tensors), flags=flags))
    return replace(manifest, layers=tuple(layers), num_computed_tokens=to_tokens)


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _exported_at(loaded: LoadedModel, num_tokens: int) -> tuple[Engine, str]:
    if num_tokens <= 2048:
        engine = Engine(loaded, chunk_size=None)
        engine.prefill([GenerateRequest("r", _prompt(num_tokens), _greedy(4))])
        return engine, "r"
    base, _ = _exported_at(loaded, 2048)
    manifest = _stretch(base.export("r").manifest, 2048, num_tokens)
    payload = bytearray(torch.randint(0, 256, (manifest.total_bytes,), dtype=torch.uint8).numpy())
    engine = Engine(loaded)
    engine.import_(manifest, [payload], _greedy(4))
    return engine, "r"


def bench_transfer(arch: str, num_tokens: int, repeats: int) -> dict[str, Any]:
    loaded = load_model(arch)
    engine, req_id = _exported_at(loaded, num_tokens)
    receiver = Engine(loaded)
    receiver.template()
    exports, imports, copies, num_bytes = [], [], [], 0
    for i in range(repeats):
        start = time.perf_counter()
        exported = engine.export(req_id)
        exports.append(time.perf_counter() - start)
        payload = bytearray(sum(b.nbytes for b in exported.buffers))  # as a receiver holds it
        view, at = memoryview(payload), 0
        for b in exported.buffers:
            view[at : at + b.nbytes] = b
            at += b.nbytes
        num_bytes = exported.manifest.total_bytes
        manifest = replace(exported.manifest, req_id=f"in{i}")
        imports.append(_timed(lambda m=manifest, p=payload: receiver.import_(m, [p], _greedy(4))))
        copied = replace(exported.manifest, req_id=f"copy{i}")
        copies.append(
            _timed(lambda m=copied, p=payload: receiver.import_(m, [p], _greedy(4), copy=True))
        )
        receiver.free(manifest.req_id)
        receiver.free(copied.req_id)
    return {
        "arch": arch,
        "num_tokens": num_tokens,
        "bytes": num_bytes,
        "export_ms": 1e3 * statistics.median(exports),
        "import_ms": 1e3 * statistics.median(imports),
        "import_copy_ms": 1e3 * statistics.median(copies),
    }


# ---- emulated engine ----------------------------------------------------------------------------
def bench_emulated(model: str, num_tokens: int, repeats: int) -> dict[str, Any]:
    """Export and byte-checking import of one real-size emulated payload (no sleeping)."""
    from prfaas.engine.emulated import make_emulated_engine

    exports, imports, num_bytes = [], [], 0
    for i in range(repeats):
        sender = make_emulated_engine(model, "H200", 8, sleep=lambda _: None)
        receiver = make_emulated_engine(model, "H20", 8, sleep=lambda _: None)
        sender.prefill([GenerateRequest(f"r{i}", (1,) * num_tokens, _greedy(2))])
        start = time.perf_counter()
        exported = sender.export(f"r{i}")
        exports.append(time.perf_counter() - start)
        num_bytes = exported.manifest.total_bytes
        imports.append(_timed(lambda e=exported, r=receiver: r.import_(e.manifest, e.buffers)))
        del exported
    return {
        "model": model,
        "num_tokens": num_tokens,
        "bytes": num_bytes,
        "export_s": statistics.median(exports),
        "import_check_s": statistics.median(imports),
        "export_bytes_per_s": num_bytes / statistics.median(exports),
        "import_check_bytes_per_s": num_bytes / statistics.median(imports),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--archs", default=None, help="comma-separated presets (default: all)")
    parser.add_argument("--section", default="overhead,batch,transfer,emulated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write results to this file")
    args = parser.parse_args(argv)
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    archs = args.archs.split(",") if args.archs else list(PRESETS)
    sections = set(args.section.split(","))
    results: dict[str, list[dict[str, Any]]] = {
        "overhead": [],
        "batch": [],
        "transfer": [],
        "emulated": [],
    }
    for arch in archs:
        if "overhead" in sections and (args.archs or arch in OVERHEAD_ARCHS):
            results["overhead"].append(_show(bench_overhead(arch, args.repeats)))
        if "batch" in sections:
            results["batch"].append(_show(bench_batch(arch, args.repeats)))
        if "transfer" in sections:
            for n in (2048, 32768):
                results["transfer"].append(_show(bench_transfer(arch, n, args.repeats)))
    if "emulated" in sections:
        for model, num_tokens in (("qwen3.5-397b", 32768), ("llama-3.1-70b", 4096)):
            results["emulated"].append(_show(bench_emulated(model, num_tokens, args.repeats)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _show(row: dict[str, Any]) -> dict[str, Any]:
    cells = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    print("  ".join(cells), flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
