"""A model's identity for the connector's manifests: a hash of its config and of its weights' files.

The producer writes it into every manifest and the consumer refuses a transfer whose hash differs
from its own, so KV of another model (or of the same architecture with other weights) is never
decoded. Hashing whole weight files would read the model twice at start; the hash covers each
file's name, size and its first and last `_SAMPLE_BYTES` instead, which tell apart any two
checkpoints that differ in shape, dtype or trained values. Also what the connector refuses to
start with (`unsupported_parallelism`). Standard library only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_SAMPLE_BYTES = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """sha256 hex of a local model directory's config and weights; of the name and revision
    for a hub model id (whose files vLLM resolves itself)."""
    digest = hashlib.sha256()
    directory = Path(model)
    if not directory.is_dir():
        digest.update(f"hub:{model}@{revision or ''}".encode())
        return digest.hexdigest()
    config = directory / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(p for p in directory.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
        _update_with_file(digest, path)
    return digest.hexdigest()


def _update_with_file(digest: hashlib._Hash, path: Path) -> None:
    size_bytes = path.stat().st_size
    digest.update(f"{path.name}:{size_bytes}".encode())
    with path.open("rb") as f:
        digest.update(f.read(_SAMPLE_BYTES))
        if size_bytes > 2 * _SAMPLE_BYTES:
            f.seek(size_bytes - _SAMPLE_BYTES)
            digest.update(f.read(_SAMPLE_BYTES))
        elif size_bytes > _SAMPLE_BYTES:
            digest.update(f.read())


def unsupported_parallelism(tensor_parallel_size: int, pipeline_parallel_size: int) -> str | None:
    """Why the connector cannot serve this parallel layout (None: it can).

    Each worker would send its own shard of the heads (tensor parallel) or of the layers
    (pipeline parallel) under the request's one transfer id, and the receiver takes one payload
    per transfer: the halves would refuse or overwrite each other. So only one worker is served.
    """
    if tensor_parallel_size == 1 and pipeline_parallel_size == 1:
        return None
    return (
        f"PrfaasConnector serves one worker: tensor_parallel_size {tensor_parallel_size} and "
        f"pipeline_parallel_size {pipeline_parallel_size} are not supported (both must be 1)"
    )
