"""Checks on what enters an engine: token ids, lengths, manifests' first tokens, KV codec and
model identity.

Both engines (`runner.Engine` and `emulated.EmulatedEngine`) run these before a request is
registered, so a request that cannot be served is refused at the door with one line naming the
request and the problem, instead of failing later inside a batched forward that other requests
share. They are cheap guards: the router's intake is the check a user sees. `check_exportable`
guards export, and `one_line` turns the exception of a request that failed anyway into the
one-line reason its last `TokenDelta` carries. Owns the engines' refusals: `InvalidRequest`,
`ManifestMismatch`, `PrefixMiss`. No torch here: the emulated engine uses it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prfaas.errors import UserError
from prfaas.messages import GenerateRequest, KVManifest
from prfaas.models.kv_codec import KV_CODEC_NAMES, KV_CODEC_NONE, KV_CODECS, KVCodecSpec

_SHORT_FINGERPRINT_CHARS = 12  # hex digest characters shown in messages
_MAX_SHOWN_FINGERPRINT_CHARS = 32  # fingerprints up to this long are shown whole
_MAX_SHOWN_CODEC_CHARS = 40  # a codec name the manifest gives is cut to this in messages


class InvalidRequest(UserError):
    """A request or manifest this engine refuses to serve as given."""


class ManifestMismatch(UserError):
    """A manifest that the receiving model cannot import (other model, shapes or dtypes)."""


def check_token_ids(req_id: str, what: str, token_ids: Sequence[int], vocab_size: int) -> None:
    """Every id must index the model's embedding table: 0 <= id < vocab_size."""
    if not token_ids or (min(token_ids) >= 0 and max(token_ids) < vocab_size):
        return
    index, token = next((i, t) for i, t in enumerate(token_ids) if not 0 <= t < vocab_size)
    raise InvalidRequest(
        f"request {req_id!r}: {what} token id {token} at index {index} is outside the "
        f"vocabulary [0, {vocab_size})"
    )


def check_num_positions(req_id: str, what: str, num_tokens: int, max_positions: int | None) -> None:
    """A sequence may not need more positions than the model has (None: no known limit)."""
    if max_positions is not None and num_tokens > max_positions:
        raise InvalidRequest(
            f"request {req_id!r}: {what} has {num_tokens} tokens, the model takes at most "
            f"{max_positions} positions"
        )


def check_prompt(
    req_id: str, token_ids: Sequence[int], vocab_size: int | None, max_positions: int | None
) -> None:
    """A prompt must be non-empty, in the vocabulary and within the position limit."""
    if not token_ids:
        raise InvalidRequest(f"request {req_id!r} has an empty prompt")
    if vocab_size is not None:
        check_token_ids(req_id, "prompt", token_ids, vocab_size)
    check_num_positions(req_id, "prompt", len(token_ids), max_positions)


def check_distinct_ids(req_ids: Sequence[str]) -> None:
    """One call may not name a request twice."""
    seen: set[str] = set()
    for req_id in req_ids:
        if req_id in seen:
            raise InvalidRequest(f"request {req_id!r} appears twice in one call")
        seen.add(req_id)


def check_manifest_request(
    manifest: KVManifest, vocab_size: int | None, max_positions: int | None
) -> None:
    """An imported request needs a first token in the vocabulary and a state within the limit."""
    req_id = manifest.req_id
    if manifest.first_token_id is None:
        raise InvalidRequest(f"manifest of {req_id!r} carries no first token")
    if vocab_size is not None:
        check_token_ids(req_id, "first", (manifest.first_token_id,), vocab_size)
    if manifest.num_computed_tokens < 1:
        raise InvalidRequest(
            f"manifest of {req_id!r} has {manifest.num_computed_tokens} computed tokens"
        )
    check_num_positions(req_id, "imported state", manifest.num_computed_tokens, max_positions)
    manifest_codec(manifest)


def manifest_codec(manifest: KVManifest) -> KVCodecSpec:
    """The codec of the manifest's attention K/V; ManifestMismatch naming the codecs this
    instance decodes when it is none of them (a newer sender, a corrupt manifest)."""
    spec = KV_CODECS.get(manifest.kv_codec)
    if spec is None:
        name = manifest.kv_codec[:_MAX_SHOWN_CODEC_CHARS]
        raise ManifestMismatch(
            f"manifest of {manifest.req_id!r} is coded with KV codec {name!r}, which this "
            f"instance cannot decode (it decodes {', '.join(KV_CODEC_NAMES)})"
        )
    return spec


def check_uncoded(manifest: KVManifest, what: str) -> None:
    """A moved prefix travels exact: ManifestMismatch for a manifest with a KV codec."""
    if manifest.kv_codec != KV_CODEC_NONE:
        name = manifest.kv_codec[:_MAX_SHOWN_CODEC_CHARS]
        raise ManifestMismatch(f"{what} travels uncoded, but its manifest says KV codec {name!r}")


def short_fingerprint(fingerprint: str) -> str:
    """A fingerprint as messages show it: long digests cut to their first 12 characters."""
    if len(fingerprint) <= _MAX_SHOWN_FINGERPRINT_CHARS:
        return fingerprint
    return fingerprint[:_SHORT_FINGERPRINT_CHARS]


def fingerprint_mismatch(manifest: KVManifest, local_fingerprint: str) -> str | None:
    """Why the manifest's weights are not this engine's, or None when they match or are unstated.

    An empty manifest fingerprint (a sender that does not state one) is accepted.
    """
    theirs = manifest.model_fingerprint
    if not theirs or theirs == local_fingerprint:
        return None
    return (
        f"manifest of {manifest.req_id!r} was made by model {short_fingerprint(theirs)}, "
        f"this engine serves {short_fingerprint(local_fingerprint)}"
    )


def check_exportable(
    req_id: str, num_output_tokens: int, finish_reason: str | None, error: str | None
) -> None:
    """Export is for a request that has just been prefilled: one output token, state intact.

    The manifest resumes decoding from the first token, so a request that has decoded further
    would continue from the wrong token on import.
    """
    if finish_reason == "error":
        raise InvalidRequest(f"request {req_id!r} failed ({error}); it has no state to export")
    if num_output_tokens == 0:
        raise InvalidRequest(f"request {req_id!r} has not been prefilled")
    num_decoded = num_output_tokens - 1
    if num_decoded > 0:
        raise InvalidRequest(
            f"request {req_id!r} has decoded {num_decoded} tokens past its first; only a request "
            "that has just been prefilled can be exported (import resumes from the first token)"
        )


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class PrefixMiss(UserError):
    """A prefix this engine was asked to supply is not (wholly) in its cache: the state must come
    whole, or the request be prefilled here."""


def check_skip_tokens(req_id: str, num_skip: int, num_tokens: int) -> None:
    """A left-out prefix is whole tokens before the last computed one."""
    if not 0 <= num_skip < max(num_tokens, 1):
        raise UserError(
            f"request {req_id!r}: can leave out 0 to {max(num_tokens - 1, 0)} prefix tokens of "
            f"its {num_tokens}, not {num_skip}"
        )


def check_prefill_skips(requests: Sequence[GenerateRequest], skips: Mapping[str, int]) -> None:
    """`skip_tokens` of a prefill call: requests of the call, whole tokens before the last."""
    lengths = {request.req_id: len(request.prompt_token_ids) for request in requests}
    for req_id, num_prefix_tokens in skips.items():
        if req_id not in lengths:
            raise UserError(f"skip_tokens names request {req_id!r}, which is not being prefilled")
        check_skip_tokens(req_id, num_prefix_tokens, lengths[req_id])


def check_import_prompt(
    manifest: KVManifest,
    prompt_token_ids: Sequence[int] | None,
    vocab_size: int | None,
    max_positions: int | None,
) -> tuple[int, ...]:
    """The imported request's prompt ids (empty when not given), checked against its state."""
    if prompt_token_ids is None:
        return ()
    prompt = tuple(prompt_token_ids)
    check_prompt(manifest.req_id, prompt, vocab_size, max_positions)
    if len(prompt) != manifest.num_computed_tokens:
        raise UserError(
            f"request {manifest.req_id!r}: {len(prompt)} prompt token ids for a state of "
            f"{manifest.num_computed_tokens} computed tokens"
        )
    return prompt
