"""`prfaas verify`: prefill on one instance + decode on another must give one instance's answer.

For each architecture: instance A (this process) prefills a prompt and exports the state; the
manifest and the raw tensor bytes cross a real loopback TCP connection to instance B, a separate
process that rebuilds the same weights (checked by checksum), imports the state and decodes.
B's greedy tokens must equal an uninterrupted run on A, and the largest logit difference is
reported. Two negative controls must change B's output: decoding with an empty cache, and with
every conv / recurrent (linear) state zeroed.

The state moves through the project's transport (`prfaas.transport`: KVSender -> KVReceiver on
127.0.0.1, authenticated by a shared token generated per run and handed to B in its environment):
A streams each layer from the prefill's layer callback, as a prefill instance does, and B imports
what the receiver delivered complete and CRC-verified. Requests (which model, which control) and
B's answers (tokens, logits) use a small length-prefixed socket exchange (`send_message` /
`recv_message`) beside it.

This module is the command; the framing and loop thread are in `_verify_io`, A's handle on B
(`DecodePeer`) in `_verify_peer`, and B's `--serve` process in `_verify_serve`.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

from prfaas.cli._args import bounded_int, torch_seed
from prfaas.cli._output import add_json_flag, format_table, print_json
from prfaas.cli._verify_io import quiet_transformers, single_thread
from prfaas.cli._verify_peer import DecodePeer
from prfaas.cli._verify_serve import serve
from prfaas.engine import require_torch
from prfaas.errors import UserError

_LINEAR_STATE_ATTRS = ("conv_states", "recurrent_states", "linear_cache")
_CONTROLS = ("empty_cache", "zeroed_linear_state")
MAX_PROMPT_TOKENS = 16_384  # a verify prompt; the tiny presets hold 64K positions
MAX_DECODE_TOKENS = 4096  # tokens each decode generates


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check that disaggregated prefill/decode gives the single-instance answer",
        description="Prefill on one instance, stream the state through the KV transport over "
        "loopback TCP to a second process, decode there, and compare with one uninterrupted "
        "instance (tokens, logits, negative controls). Exit 1 if any architecture fails.",
    )
    parser.add_argument("--arch", default=None, help="comma-separated tiny presets or model dirs")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--prompt-tokens",
        type=bounded_int(2, MAX_PROMPT_TOKENS),
        default=200,
        help=f"prompt length (200; at most {MAX_PROMPT_TOKENS:,})",
    )
    parser.add_argument(
        "--decode-tokens",
        type=bounded_int(2, MAX_DECODE_TOKENS),
        default=16,
        help=f"tokens to generate (16; at most {MAX_DECODE_TOKENS:,})",
    )
    parser.add_argument("--seed", type=torch_seed, default=0, help="weight and prompt seed (0)")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


@dataclass
class ArchResult:
    arch: str
    identical: bool
    max_logit_diff: float
    controls_fired: bool
    controls: dict[str, bool | None]  # control -> output changed (None: not applicable)
    weights_match: bool
    transfer_bytes: int

    @property
    def ok(self) -> bool:
        return self.identical and self.controls_fired and self.weights_match


def run(args: argparse.Namespace) -> int:
    require_torch("prfaas verify")
    archs = _parse_archs(args.arch)
    if args.prompt_tokens < 2:
        raise UserError(f"--prompt-tokens must be >= 2, got {args.prompt_tokens}")
    if args.decode_tokens < 2:
        raise UserError(f"--decode-tokens must be >= 2, got {args.decode_tokens}")
    quiet_transformers()
    single_thread()  # both instances reduce in the same order, as on identical hardware
    with DecodePeer() as peer:
        results = [_verify_arch(peer, arch, args) for arch in archs]
    _report(results, args.json)
    return 0 if all(r.ok for r in results) else 1


def _parse_archs(spec: str | None) -> list[str]:
    from pathlib import Path

    from prfaas.engine.presets import PRESETS
    from prfaas.models.presets import read_config_file

    if spec is None:
        return list(PRESETS)
    archs = [a.strip() for a in spec.split(",") if a.strip()]
    if not archs:
        raise UserError("--arch is empty")
    for arch in archs:
        if arch in PRESETS:
            continue
        config = Path(arch) / "config.json"
        if not config.is_file():
            raise UserError(f"unknown arch {arch!r}; tiny presets: {', '.join(PRESETS)}")
        read_config_file(config)  # a bad config.json is refused before torch loads
    return archs


def _report(results: list[ArchResult], as_json: bool) -> None:
    if as_json:
        print_json([asdict(r) for r in results])
        return
    headers = ["arch", "identical", "max_logit_diff", "empty_cache", "zeroed_linear", "bytes", "ok"]
    rows = [
        [
            r.arch,
            r.identical,
            f"{r.max_logit_diff:.3g}",
            r.controls["empty_cache"],
            r.controls["zeroed_linear_state"],
            r.transfer_bytes,
            "PASS" if r.ok else "FAIL",
        ]
        for r in results
    ]
    print(format_table(headers, rows))


def _prompt(seed: int, num_tokens: int) -> tuple[int, ...]:
    import random

    rng = random.Random(seed)
    return tuple(rng.randrange(256) for _ in range(num_tokens))


def _verify_arch(peer: DecodePeer, arch: str, args: argparse.Namespace) -> ArchResult:
    import torch

    from prfaas.engine.loading import load_model, weights_checksum
    from prfaas.engine.runner import Engine
    from prfaas.messages import GenerateRequest, SamplingParams

    loaded = load_model(arch, args.dtype, args.seed)
    sampling = SamplingParams(max_tokens=args.decode_tokens, ignore_eos=True)
    request = GenerateRequest("verify", _prompt(args.seed, args.prompt_tokens), sampling)
    reference = Engine(loaded, record_logits=True)
    reference.generate([request])
    ref = reference.requests["verify"]
    ref_logits = torch.stack(ref.logits[1:])  # [decode_tokens - 1, vocab]

    transfer_id = f"verify-{arch}-{secrets.token_hex(4)}"
    exported = peer.stream_prefill(Engine(loaded), request, transfer_id)
    header = {
        "op": "decode",
        "arch": arch,
        "dtype": args.dtype,
        "seed": args.seed,
        "weights_checksum": weights_checksum(loaded.model),
        "sampling": sampling.to_dict(),
        "transfer_id": transfer_id,
    }
    reply, logits = peer.decode(header)
    tokens = [exported.manifest.first_token_id, *reply["tokens"]]
    identical = tokens == ref.output_token_ids and reply["weights_match"]
    diff = float((logits - ref_logits).abs().max()) if logits.shape == ref_logits.shape else 1e30
    controls = _run_controls(peer, header, exported, tokens)
    applicable = [fired for fired in controls.values() if fired is not None]
    return ArchResult(
        arch=arch,
        identical=identical,
        max_logit_diff=diff,
        controls_fired=bool(applicable) and all(applicable),
        controls=controls,
        weights_match=bool(reply["weights_match"]),
        transfer_bytes=exported.manifest.total_bytes,
    )


def _run_controls(
    peer: DecodePeer, header: dict[str, Any], exported: Any, tokens: list[int]
) -> dict[str, bool | None]:
    controls: dict[str, bool | None] = {}
    for control in _CONTROLS:
        payload = _control_payload(control, exported)
        if payload is None:
            controls[control] = None
            continue
        transfer_id = f"{header['transfer_id']}-{control}"
        manifest = replace(exported.manifest, transfer_id=transfer_id)
        peer.send_state(manifest, _tensor_views(manifest, payload))
        reply, _ = peer.decode({**header, "control": control, "transfer_id": transfer_id})
        controls[control] = [tokens[0], *reply["tokens"]] != tokens
    return controls


def _tensor_views(manifest: Any, payload: bytearray) -> list[memoryview]:
    whole = memoryview(payload)
    tensors = [t for layer in manifest.layers for t in layer.tensors]
    return [whole[t.offset_bytes : t.offset_bytes + t.num_bytes] for t in tensors]


def _control_payload(control: str, exported: Any) -> bytearray | None:
    payload = bytearray(b"".join(exported.buffers))
    if control == "empty_cache":
        return payload
    linear = [
        t
        for layer in exported.manifest.layers
        for t in layer.tensors
        if t.name.split("/")[1] in _LINEAR_STATE_ATTRS
    ]
    if not linear:
        return None
    for t in linear:
        payload[t.offset_bytes : t.offset_bytes + t.num_bytes] = bytes(t.num_bytes)
    return payload


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
