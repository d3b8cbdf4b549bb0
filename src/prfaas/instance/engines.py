"""Building an instance's engine from the topology, and what the services measure about it.

`build_engine` gives a real `prfaas.engine.Engine` (tiny preset or local checkpoint) or an
`EmulatedEngine` timed by the cost model for the topology's `model.emulate` on the instance's
hardware, its prefills by the topology's `model.prefill_latency` curve of that hardware when it
has one; either is a `prfaas.engine.protocol.ServingEngine`, the type the services hold.
`PrefillRate` turns queued prompt tokens into expected seconds: what the engine predicts
(`predicted_prefill_s`: the cost model for an emulated engine), else the measured tokens per
second of this instance's own prefills. `prefix_cache_bytes` is the engine's prefix cache size.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prfaas.engine import require_torch
from prfaas.engine.protocol import ServingEngine
from prfaas.topology import InstanceConfig, Topology

log = logging.getLogger(__name__)

TORCH_THREADS_ENV = "PRFAAS_TORCH_THREADS"  # intra-op threads per instance (default 1)
_RATE_EWMA_WEIGHT = 0.3
_INITIAL_TOKENS_PER_S = 2000.0  # until the first prefill has been measured


def build_engine(topology: Topology, instance: InstanceConfig) -> ServingEngine:
    """The engine `instance` runs: emulated (cost model + real-size payloads) or torch."""
    model = topology.model
    prefix_cache = topology.prefix_cache
    if instance.engine == "emulated":
        from prfaas.engine.emulated import make_emulated_engine
        from prfaas.topology.derived import prefill_latency_curve

        curve = prefill_latency_curve(model, instance.hardware)
        return make_emulated_engine(
            model.emulate,
            instance.hardware,
            instance.num_gpus,
            seed=model.seed,
            prefix_cache=prefix_cache,
            payload_scale=model.payload_scale,
            time_scale=model.time_scale,
            output_token_ids=printable_token_ids(topology),
            prefill_latency=None if curve is None else curve[0],
        )
    require_torch(f'instance {instance.name} (engine = "torch")')
    import torch

    from prfaas.engine.loading import load_model
    from prfaas.engine.runner import Engine

    torch.set_num_threads(int(os.environ.get(TORCH_THREADS_ENV, "1")))
    _quiet_transformers()
    loaded = load_model(model.name, model.dtype, model.seed)
    if prefix_cache is not None and not loaded.is_chunk_exact:
        log.warning(
            "%s: prefix cache off for %s (transformers' chunked prefill is not exact for it)",
            instance.name,
            loaded.arch,
        )
        prefix_cache = None
    return Engine(loaded, prefix_cache=prefix_cache)


_MAX_SCANNED_IDS = 4096  # printable_token_ids looks at this many ids at most


def printable_token_ids(topology: Topology) -> tuple[int, ...]:
    """The ids below 4096 that the served tokenizer decodes, alone, to printable non-blank text
    (no undecodable byte) and that are not special (bos, eos, pad): what an emulated engine
    generates, so that an OpenAI client of an emulated deployment reads text. Empty when the
    tokenizer cannot be loaded (the engine then draws from the whole vocabulary)."""
    from prfaas.errors import UserError
    from prfaas.service.text import load_codec

    try:
        codec = load_codec(topology.model)
    except UserError:
        return ()
    tok = codec.tokenizer
    special = {
        getattr(tok, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    out = []
    for token_id in range(min(codec.vocab_size, _MAX_SCANNED_IDS)):
        text = codec.decode([token_id])
        readable = text.strip() and text.isprintable() and "\ufffd" not in text
        if token_id not in special and readable:
            out.append(token_id)
    return tuple(out)


def _quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging

    hf_logging: Any = logging  # untyped in transformers
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")


class PrefillRate:
    """Expected prefill seconds for queued tokens on one instance."""

    def __init__(self, engine: ServingEngine) -> None:
        # an EmulatedEngine knows what it will sleep (its cost model x its time scale)
        self._engine = engine
        self.tokens_per_s = _INITIAL_TOKENS_PER_S

    def expected_s(self, num_tokens: int) -> float:
        if num_tokens <= 0:
            return 0.0
        predicted_s = self._engine.predicted_prefill_s(num_tokens)
        if predicted_s is not None:
            return predicted_s
        return num_tokens / self.tokens_per_s

    def observe(self, num_tokens: int, elapsed_s: float) -> None:
        """Fold one measured prefill into the rate (engines that do not predict it only)."""
        if elapsed_s <= 0 or num_tokens <= 0:
            return
        if self._engine.predicted_prefill_s(num_tokens) is not None:
            return
        rate = num_tokens / elapsed_s
        self.tokens_per_s += _RATE_EWMA_WEIGHT * (rate - self.tokens_per_s)


def prefix_cache_bytes(engine: ServingEngine) -> int:
    """Bytes in the engine's prefix cache (read without the engine thread: one int)."""
    pool = engine.prefix_pool
    return 0 if pool is None else pool.used_bytes
