"""A sender that lies in a partial manifest gets `ManifestMismatch` (or `PrefixMiss`), never an
import of the wrong size.

A partial manifest leaves out the first `num_prefix_tokens` p tokens of every full-attention K/V
(the receiver holds them) and carries everything else whole. The receiver bounds each K/V's token
axis by the tokens actually carried (computed minus p), puts its own prefix in front only of the
layers that keep per-token K/V, and finds the prefix in its own cache. Each case re-lays an honest
export's tensors with one lie (too many tokens, too few, the prefix counted on the wrong layers, a
prefix longer than the receiver holds) and imports it into a receiver that holds 48 tokens; the
import must be refused with nothing registered and no pin left, after which the honest state still
imports and decodes like an engine that computed the whole prompt. Positive control: the honest
state, re-laid the same way, is accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import pytest
import torch
from engine_kit import drain, emitted, greedy, prompt, tiny

from prfaas.engine import Engine, ManifestMismatch
from prfaas.engine.validation import PrefixMiss
from prfaas.messages import GenerateRequest, JSONDict, KVManifest, LayerEntry
from prfaas.prefix_cache.config import PrefixCacheConfig

B = 16  # tokens per block
BUDGET_BYTES = 64 * 2**20
FAMILIES = ["llama", "qwen3_next", "gemma3_text"]  # dense, linear-attention hybrid, window 64
PROMPT = prompt(70)
HELD = 48  # the receiver holds 3 blocks of PROMPT; 22 tokens are carried
REQ_ID = "r"
SAMPLING = greedy(6)
_KV_NAMES = ("keys", "values")


@dataclass(frozen=True)
class Honest:
    """An honest sender's partial export (p = HELD) and its whole export, as named tensors."""

    manifest: KVManifest  # the partial one
    partial: dict[str, torch.Tensor]
    whole: dict[str, torch.Tensor]


Lie = Callable[[Honest], tuple[KVManifest, list[bytearray]]]


def _named(manifest: KVManifest, buffers: list[memoryview]) -> dict[str, torch.Tensor]:
    """Copies of an export's tensors by manifest name."""
    entries = [t for layer in manifest.layers for t in layer.tensors]
    return {
        e.name: torch.frombuffer(bytearray(b), dtype=getattr(torch, e.dtype)).view(e.shape)
        for e, b in zip(entries, buffers, strict=True)
    }


@functools.cache
def _honest(name: str) -> Honest:
    sender = Engine(tiny(name))
    sender.prefill([GenerateRequest(REQ_ID, PROMPT, SAMPLING)])
    whole = sender.export(REQ_ID)
    partial = sender.export(REQ_ID, num_prefix_tokens=HELD)
    return Honest(
        partial.manifest,
        _named(partial.manifest, partial.buffers),
        _named(whole.manifest, whole.buffers),
    )


@functools.cache
def _fresh_output(name: str) -> list[int]:
    return Engine(tiny(name)).generate([GenerateRequest(REQ_ID, PROMPT, SAMPLING)])[REQ_ID]


def _relaid(
    manifest: KVManifest,
    tensors: Mapping[str, torch.Tensor],
    flags: Mapping[int, JSONDict] | None = None,
    num_prefix_tokens: int | None = None,
) -> tuple[KVManifest, list[bytearray]]:
    """A manifest and payload with these tensors (shapes, sizes and offsets that match them),
    `flags` replacing some layers' flags, and optionally another `num_prefix_tokens`."""
    layers, buffers, offset_bytes = [], [], 0
    for layer in manifest.layers:
        entries = []
        for entry in layer.tensors:
            data = bytearray(tensors[entry.name].contiguous().numpy().tobytes())
            shape = tuple(tensors[entry.name].shape)
            entries.append(
                replace(entry, shape=shape, offset_bytes=offset_bytes, num_bytes=len(data))
            )
            buffers.append(data)
            offset_bytes += len(data)
        layer_flags = (flags or {}).get(layer.layer_index, layer.flags)
        layers.append(replace(layer, flags=layer_flags, tensors=tuple(entries)))
    prefix = manifest.num_prefix_tokens if num_prefix_tokens is None else num_prefix_tokens
    return replace(manifest, layers=tuple(layers), num_prefix_tokens=prefix), buffers


def _is_window(flags: JSONDict) -> bool:
    return "sliding_window" in flags.get("attrs", {})


def _kv_names(layer: LayerEntry) -> list[str]:
    """The layer's K/V tensor names (none for linear-attention or recurrent layers)."""
    return [t.name for t in layer.tensors if t.name.rsplit("/", 1)[-1] in _KV_NAMES]


def _kv_of(h: Honest, windows: bool) -> list[str]:
    """Names of the full-attention (or, with `windows`, the sliding-window) K/V tensors."""
    layers = h.manifest.layers
    return [n for layer in layers if _is_window(layer.flags) == windows for n in _kv_names(layer)]


def _full_kv_from(
    h: Honest, first_token: int, names: list[str] | None = None, num_prefix_tokens: int = HELD
) -> tuple[KVManifest, list[bytearray]]:
    """The state with full-attention K/V (or just `names`) carried from `first_token` on, under
    a manifest that says `num_prefix_tokens` (everything else travels whole either way)."""
    chosen = _kv_of(h, windows=False) if names is None else names
    cut = {n: h.whole[n][:, :, first_token:] for n in chosen}  # [1, heads, tokens, dim]
    return _relaid(h.manifest, {**h.partial, **cut}, num_prefix_tokens=num_prefix_tokens)


def _last_full_kv(h: Honest) -> list[str]:
    """The last full-attention layer's keys and values."""
    return _kv_of(h, windows=False)[-2:]


def _with_window_flag(flags: JSONDict, sliding_window: int | None) -> JSONDict:
    """Layer flags with `sliding_window` set in attrs (None: taken out)."""
    attrs = {k: v for k, v in flags["attrs"].items() if k != "sliding_window"}
    if sliding_window is not None:
        attrs["sliding_window"] = sliding_window
    return {**flags, "attrs": attrs}


# ---- the lies -------------------------------------------------------------------------------
def _honest_relaid(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _relaid(h.manifest, h.partial)


def _one_token_too_many(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _full_kv_from(h, HELD - 1)


def _whole_kv_under_a_prefix(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _full_kv_from(h, 0)


def _one_layer_whole(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _full_kv_from(h, 0, _last_full_kv(h))


def _one_token_too_few(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _full_kv_from(h, HELD + 1)


def _one_layer_one_token_short(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _full_kv_from(h, HELD + 1, _last_full_kv(h))


def _whole_transfer_one_token_short(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _full_kv_from(h, 1, num_prefix_tokens=0)


def _windows_cut_by_the_prefix(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    cut = {n: h.partial[n][:, :, HELD:] for n in _kv_of(h, windows=True)}
    return _relaid(h.manifest, {**h.partial, **cut})


def _full_attention_flagged_as_window(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    """The receiver would not put its prefix in front of these layers' K/V."""
    window = next(layer.flags for layer in h.manifest.layers if _is_window(layer.flags))
    flags = {
        layer.layer_index: _with_window_flag(layer.flags, window["attrs"]["sliding_window"])
        for layer in h.manifest.layers
        if not _is_window(layer.flags) and _kv_names(layer)
    }
    return _relaid(h.manifest, h.partial, flags)


def _windows_flagged_as_full_attention(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    """The receiver would put its prefix in front of these windows."""
    flags = {
        layer.layer_index: _with_window_flag(layer.flags, None)
        for layer in h.manifest.layers
        if _is_window(layer.flags)
    }
    return _relaid(h.manifest, h.partial, flags)


def _prefix_longer_than_held(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    """Consistent sizes, but 64 tokens left out: one block more than the receiver holds."""
    return _full_kv_from(h, HELD + B, num_prefix_tokens=HELD + B)


def _prefix_not_whole_blocks(h: Honest) -> tuple[KVManifest, list[bytearray]]:
    return _full_kv_from(h, HELD - 8, num_prefix_tokens=HELD - 8)


@dataclass(frozen=True)
class Case:
    """One lie and the refusal it must get."""

    lie: Lie
    error: type[Exception] = ManifestMismatch
    match: str | None = "left to the receiver's prefix"
    needs_windows: bool = False  # only models with sliding-window layers can tell this lie


WITH_WINDOWS = {"gemma3_text"}
CASES = [
    Case(_one_token_too_many),
    Case(_whole_kv_under_a_prefix),
    Case(_one_layer_whole),
    Case(_one_token_too_few, match=None),
    Case(_one_layer_one_token_short, match=None),
    Case(_whole_transfer_one_token_short, match=None),
    Case(_windows_cut_by_the_prefix, match=None, needs_windows=True),
    Case(_full_attention_flagged_as_window, match=None, needs_windows=True),
    Case(_windows_flagged_as_full_attention, needs_windows=True),
    Case(_prefix_longer_than_held, PrefixMiss, "block 3 of the 4-block prefix"),
    Case(_prefix_not_whole_blocks, PrefixMiss, "not a whole number of 16-token blocks"),
]


def _params() -> list[object]:
    """(model, case) pairs."""
    params = []
    for case in CASES:
        for name in FAMILIES:
            if not case.needs_windows or name in WITH_WINDOWS:
                case_id = f"{name}-{case.lie.__name__.lstrip('_')}"
                params.append(pytest.param(name, case, id=case_id))
    return params


def _receiver(name: str) -> Engine:
    """An engine that holds HELD tokens of PROMPT in its prefix cache, pinned for REQ_ID."""
    engine = Engine(tiny(name), prefix_cache=PrefixCacheConfig(B, BUDGET_BYTES))
    engine.generate([GenerateRequest("warm", PROMPT[: HELD + 2], greedy(1))])
    assert engine.cached_prefix_tokens(PROMPT) == HELD
    assert engine.pin_prefix(REQ_ID, PROMPT, HELD)
    return engine


def _decoded(engine: Engine, manifest: KVManifest, buffers: list[bytearray]) -> list[int]:
    engine.import_(manifest, buffers, SAMPLING, prompt_token_ids=PROMPT)
    first = engine.first_delta(REQ_ID)
    return [*first.token_ids, *emitted(drain(engine)[REQ_ID])]


@pytest.mark.parametrize("name", FAMILIES)
def test_the_honest_partial_state_relaid_is_accepted(name: str) -> None:
    manifest, buffers = _honest_relaid(_honest(name))
    assert _decoded(_receiver(name), manifest, buffers) == _fresh_output(name)


@pytest.mark.parametrize(("name", "case"), _params())
def test_a_lying_partial_manifest_is_refused(name: str, case: Case) -> None:
    honest = _honest(name)
    manifest, buffers = case.lie(honest)
    receiver = _receiver(name)
    with pytest.raises(case.error, match=case.match):
        receiver.import_(manifest, buffers, SAMPLING, prompt_token_ids=PROMPT)
    assert REQ_ID not in receiver.requests
    pool = receiver.prefix_pool
    assert pool is not None and pool.num_pinned_bytes == 0
    # nothing was damaged: the honest state still imports and decodes right
    assert receiver.pin_prefix(REQ_ID, PROMPT, HELD)
    assert _decoded(receiver, *_honest_relaid(honest)) == _fresh_output(name)
