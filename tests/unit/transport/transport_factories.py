"""Test factories: small KV-shaped manifests with known bytes."""

from __future__ import annotations

import random

from prfaas.messages import KVManifest, LayerEntry, TensorEntry


def make_manifest(
    layer_sizes: list[list[int]], transfer_id: str = "t1", seed: int = 0
) -> tuple[KVManifest, list[memoryview]]:
    """One layer per entry of `layer_sizes` (its tensors' byte sizes); random bytes per tensor."""
    rng = random.Random(seed)
    layers, views, offset = [], [], 0
    for i, sizes in enumerate(layer_sizes):
        tensors = []
        for j, n in enumerate(sizes):
            tensors.append(TensorEntry(f"L{i}/t{j}", i, "uint8", (n,), offset, n))
            views.append(memoryview(rng.randbytes(n)))
            offset += n
        layers.append(LayerEntry(i, "full_attention", "DynamicLayer", {"i": i}, tuple(tensors)))
    manifest = KVManifest(
        transfer_id, "req-" + transfer_id, "test", len(layers), tuple(layers), 7, 3
    )
    return manifest, views


def views_by_layer(manifest: KVManifest, views: list[memoryview]) -> list[list[memoryview]]:
    out, pos = [], 0
    for layer in manifest.layers:
        out.append(views[pos : pos + len(layer.tensors)])
        pos += len(layer.tensors)
    return out
