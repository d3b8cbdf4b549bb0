"""vLLM's paged cache as PrfaaS manifests: which blocks of a request carry its state, gathering
them from the registered cache tensors into layer payloads, and scattering a received payload
into the blocks the consumer's scheduler allocated.

A layer's cache tensor has the block index first (`[num_blocks, ...]`: the CPU backend's
`[num_blocks, num_kv_heads, block_size, 2 x head_dim]` attention pages and the raw `int8` state
pages of linear-attention and Mamba layers). One KV-cache group shares a block table, so the
blocks to send are chosen per group:

- full attention: every block holding one of the N prompt tokens, `ceil(N / block_size)`;
- sliding window: only the blocks holding the last `window - 1` tokens, which the next token
  attends to (vLLM frees the earlier ones and puts the null block, id 0, in their place);
- linear attention / Mamba: the one block holding the state after the N tokens.

A layer travels as one tensor `[num_sent_blocks, *block_shape]`; its `LayerEntry.flags` name the
vLLM layer, the group and the blocks' positions in the request's block table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from prfaas.messages import LayerEntry, TensorEntry
from prfaas.types import LayerKind

NULL_BLOCK_ID = 0  # vLLM's placeholder block: a freed sliding-window block, never real data
LAYOUT_VERSION = "vllm-v1-paged-blocks-first/1"
_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


class LayoutMismatch(ValueError):
    """A transfer's layout or model is not this instance's: the message says what differs."""


@dataclass(frozen=True, slots=True)
class CacheLayer:
    """One registered cache layer: vLLM's name, its group, its kind and its per-block shape."""

    name: str
    index: int  # decoder layer number (from the name), the manifest's layer_index
    group: int  # KV-cache group whose block table this layer uses
    kind: LayerKind
    block_size: int  # tokens per block of the group
    window: int  # sliding window in tokens (0: not a sliding-window layer)
    block_shape: tuple[int, ...]
    dtype: str  # torch dtype without "torch."

    @property
    def block_bytes(self) -> int:
        numel = 1
        for d in self.block_shape:
            numel *= d
        return numel * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()

    def describe(self) -> dict[str, Any]:
        """What the consumer compares with its own layer of the same name."""
        return {
            "kind": self.kind.value,
            "block_size": self.block_size,
            "window": self.window,
            "block_shape": list(self.block_shape),
            "dtype": self.dtype,
        }


def layer_number(name: str, fallback: int) -> int:
    """The decoder layer number in a vLLM layer name ("model.layers.3.self_attn.attn" -> 3)."""
    match = _LAYER_NUMBER.search(name)
    return int(match.group(1)) if match else fallback


def is_state_kind(kind: LayerKind) -> bool:
    return kind in (LayerKind.LINEAR_ATTENTION, LayerKind.MAMBA, LayerKind.SHORT_CONV)


def sent_block_positions(layer: CacheLayer, num_tokens: int, block_ids: list[int]) -> list[int]:
    """Positions in the group's block table of the blocks that carry `num_tokens` tokens' state."""
    if is_state_kind(layer.kind):
        real = [i for i, b in enumerate(block_ids) if b != NULL_BLOCK_ID]
        return real[-1:]
    num_blocks = min(-(-num_tokens // layer.block_size), len(block_ids))
    first_token = 0
    if layer.window > 0:
        first_token = max(0, num_tokens - layer.window + 1)
    first = first_token // layer.block_size
    return [i for i in range(first, num_blocks) if block_ids[i] != NULL_BLOCK_ID]


def gather_layer(
    layer: CacheLayer, cache: torch.Tensor, num_tokens: int, block_ids: list[int]
) -> tuple[list[int], torch.Tensor]:
    """(positions, copy of the blocks at those positions) of one layer, contiguous."""
    positions = sent_block_positions(layer, num_tokens, block_ids)
    index = torch.tensor([block_ids[p] for p in positions], dtype=torch.long)
    return positions, cache.index_select(0, index).contiguous()


def byte_view(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, without a copy (it must be contiguous and stay alive)."""
    view: memoryview = tensor.view(torch.uint8).reshape(-1).numpy().data
    return view


def layer_entry(
    layer: CacheLayer, positions: list[int], offset_bytes: int, num_prompt_tokens: int
) -> LayerEntry:
    shape = (len(positions), *layer.block_shape)
    tensor = TensorEntry(
        name=f"{layer.name}/blocks",
        layer_index=layer.index,
        dtype=layer.dtype,
        shape=shape,
        offset_bytes=offset_bytes,
        num_bytes=len(positions) * layer.block_bytes,
    )
    flags = {
        "layer_name": layer.name,
        "group": layer.group,
        "block_positions": positions,
        "num_prompt_tokens": num_prompt_tokens,
        **layer.describe(),
    }
    return LayerEntry(layer.index, layer.kind.value, "vllm_paged", flags, (tensor,))


def target_blocks(
    layer: CacheLayer, entry: LayerEntry, block_ids: list[int], num_hit_tokens: int
) -> tuple[list[int], list[int]]:
    """(rows of the received tensor, consumer block ids) to write: state into the request's
    state block, other blocks at their table positions, skipping blocks the consumer already
    holds from its own prefix cache (`num_hit_tokens`) and positions it keeps null."""
    positions: list[int] = list(entry.flags["block_positions"])
    if is_state_kind(layer.kind):
        real = [b for b in block_ids if b != NULL_BLOCK_ID]
        if not positions or not real:
            raise LayoutMismatch(f"layer {layer.name}: no state block to fill")
        return [len(positions) - 1], [real[-1]]
    num_hit_blocks = num_hit_tokens // layer.block_size
    rows, targets = [], []
    for row, position in enumerate(positions):
        if position < num_hit_blocks or position >= len(block_ids):
            continue
        if block_ids[position] != NULL_BLOCK_ID:
            rows.append(row)
            targets.append(block_ids[position])
    return rows, targets


def scatter_layer(
    layer: CacheLayer,
    cache: torch.Tensor,
    entry: LayerEntry,
    data: memoryview,
    block_ids: list[int],
    num_hit_tokens: int,
) -> int:
    """Write a received layer into the consumer's blocks; return the number of blocks written."""
    check_entry(layer, entry)
    received = torch.frombuffer(data, dtype=torch.uint8).view(cache.dtype)
    received = received.reshape(entry.tensors[0].shape)
    rows, targets = target_blocks(layer, entry, block_ids, num_hit_tokens)
    if targets:
        cache.index_copy_(0, torch.tensor(targets, dtype=torch.long), received[torch.tensor(rows)])
    return len(targets)


def check_entry(layer: CacheLayer, entry: LayerEntry) -> None:
    """Refuse a layer whose kind, block size, window, block shape or dtype differ from ours."""
    theirs = {key: entry.flags.get(key) for key in layer.describe()}
    ours = layer.describe()
    if theirs != ours:
        differ = [
            f"{k}: sent {theirs[k]!r}, here {ours[k]!r}" for k in ours if theirs[k] != ours[k]
        ]
        raise LayoutMismatch(f"layer {layer.name} layout differs ({'; '.join(differ)})")
    if len(entry.tensors) != 1 or entry.tensors[0].dtype != layer.dtype:
        raise LayoutMismatch(f"layer {layer.name}: expected one {layer.dtype} tensor")
