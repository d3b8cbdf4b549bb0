"""Every object that crosses a process boundary, one type per arrow of the request flow.

```
client --HTTP--> router            GenerateRequest  (req_id, prompt_token_ids, SamplingParams)
router (policy)                    RouteDecision    (in prfaas.policy: a decision, not a message)
router --> decode                  DecodeJob        (request, transfer_id to wait for, policy)
router --> prefill                 PrefillJob       (request, decode KV address, transfer_id)
router --> prefix holder           PrefixExportJob  (prefix token ids, target KV address)
holder --TCP--> prefill instance   KVManifest       (+ PrefixTransferInfo: a cached prefix)
holder --> router                  PrefixExportResult (tokens and bytes moved | error)
prefill --TCP--> decode            KVManifest       (what the KV frames carry, layer by layer)
                                   + KV frames      (prfaas.transport.frames: header + payload)
decode --> prefill                 TransferAck      (transfer_id, ok | error)
prefill --> router                 PrefillResult    (first token, KV bytes, timings | error)
decode --> router --SSE--> client  TokenDelta       (req_id, token_ids, finish_reason | None)
instance --> router (polled)       InstanceStats    (queues, transfers in flight, link stats)
```

Control messages are JSON (`to_dict`/`from_dict`); KV payload bytes never pass through them.
`from_dict` of what a peer sends (jobs, sampling, manifests and their layers) checks types and
ranges strictly: integers are JSON integers (no strings, booleans or floats), numbers finite,
deadlines positive; anything else is a ValueError (or UserError) naming the field.
One module per part of the flow: `requests`, `manifest`, `jobs`, `prefix`; `fields` holds
the strict readers every `from_dict` uses. Layer 1: standard library only.
"""

from prfaas.messages.fields import JSONDict
from prfaas.messages.jobs import DecodeJob, InstanceStats, PrefillJob, PrefillResult
from prfaas.messages.manifest import KVManifest, LayerEntry, TensorEntry, TransferAck
from prfaas.messages.prefix import (
    MAX_PREFIX_BLOCKS,
    PREFIX_META_KEY,
    PrefixExportJob,
    PrefixExportResult,
    PrefixTransferInfo,
)
from prfaas.messages.requests import GenerateRequest, SamplingParams, TokenDelta

__all__ = [
    "MAX_PREFIX_BLOCKS",
    "PREFIX_META_KEY",
    "DecodeJob",
    "GenerateRequest",
    "InstanceStats",
    "JSONDict",
    "KVManifest",
    "LayerEntry",
    "PrefillJob",
    "PrefillResult",
    "PrefixExportJob",
    "PrefixExportResult",
    "PrefixTransferInfo",
    "SamplingParams",
    "TensorEntry",
    "TokenDelta",
    "TransferAck",
]
