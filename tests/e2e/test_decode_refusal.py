"""A decode instance that refuses an imported state applies the failure policy, counted.

The real decode app (`build_decode_app`: HTTP routes, KV receiver on 127.0.0.1, engine thread,
tiny llama with a prefix cache) runs in this process; the test plays the router (`POST
/internal/decode`) and the prefill instance (a `KVSender` with the deployment's token). Each
transfer arrives intact but cannot be imported: a manifest of another model, of another layout
(bf16), of other weights, one that leaves out a prefix the instance no longer caches (held
once, as a positive control shows, then evicted by other prompts), or one coded with a KV codec
the instance does not know. With failure policy `recompute` the instance prefills the prompt
itself and serves the tokens of an engine that computed it all
(`prfaas:fallback_prefills_total` by reason); with `fail` the request ends with an error that
names the refusal (`prfaas:failed_requests_total{reason="kv_lost"}`). Either way nothing is
imported, the instance holds no request and no receive-pool byte afterwards, and it serves the
next request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from services_harness import metric_value

from polling import wait_until
from prfaas.engine import Engine, ExportedState, LoadedModel, load_model
from prfaas.instance.decode import build_decode_app
from prfaas.launch.local import EmbeddedOptions, embedded_topology
from prfaas.messages import DecodeJob, GenerateRequest, SamplingParams
from prfaas.service.auth import bearer
from prfaas.service.http import transport_config
from prfaas.topology import Topology, load_topology
from prfaas.transport.sender import KVSender

pytestmark = pytest.mark.slow
MODEL = "llama"
DECODE = "pd-decode-0"
BLOCK_TOKENS = 16
BUDGET_BLOCKS = 6  # the prefix cache's budget; a prompt of more blocks evicts all else
DEADLINE_S = 30.0
MAX_TOKENS = 8
NUM_PROMPT_TOKENS = 70
HELD = 48  # prefix the partial transfers leave out: 3 blocks


@dataclass
class Instance:
    """The running decode app, as the router and the prefill instances see it."""

    client: TestClient
    topology: Topology

    @property
    def headers(self) -> dict[str, str]:
        token = self.topology.transport.token
        assert token is not None
        return bearer(token)

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.client.get("/metrics").text, name, **labels)

    def stats(self) -> dict[str, Any]:
        reply = self.client.get("/internal/stats", headers=self.headers)
        body: dict[str, Any] = reply.json()
        return body

    def send(self, exported: ExportedState) -> None:
        """Deliver a state to the instance's KV receiver, as a prefill instance would."""

        async def send() -> None:
            async with KVSender(transport_config(self.topology)) as sender:
                kv_address = self.topology.instance(DECODE).kv
                assert kv_address is not None
                ack = await sender.send(kv_address, exported.manifest, exported.buffers)
                assert ack.ok, ack.error

        asyncio.run(send())

    def decode(self, job: DecodeJob) -> list[dict[str, Any]]:
        """The job's deltas, whole (one response)."""
        reply = self.client.post("/internal/decode", json=job.to_dict(), headers=self.headers)
        assert reply.status_code == 200, reply.text
        return [json.loads(line) for line in reply.text.splitlines() if line.strip()]

    def is_idle(self) -> bool:
        stats = self.stats()
        busy = stats["num_requests_running"] + stats["num_requests_waiting"]
        return bool(busy == 0 and stats["kv_pool_in_use_bytes"] == 0)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    options = EmbeddedOptions(
        model=MODEL,
        pd_prefill=False,
        transfer_deadline_s=DEADLINE_S,
        prefix_block_tokens=BLOCK_TOKENS,
        prefix_budget_bytes=BUDGET_BLOCKS * _block_bytes(),
    )
    topology = load_topology(embedded_topology(tmp_path_factory.mktemp("refusal"), options))
    app = build_decode_app(topology, topology.instance(DECODE))
    with TestClient(app) as client:  # runs the lifespan: engine loaded, receiver listening
        yield Instance(client, topology)


def _sampling() -> SamplingParams:
    return SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)


@functools.cache
def _loaded(model: str = MODEL, dtype: str = "fp32", seed: int = 0) -> LoadedModel:
    return load_model(model, dtype, seed)


def _prompt(offset: int, num_tokens: int = NUM_PROMPT_TOKENS) -> tuple[int, ...]:
    """A prompt that shares no block with another offset's."""
    return tuple((7 * i + 13 * offset + 3) % 251 for i in range(num_tokens))


def _block_bytes() -> int:
    """Bytes of one block in the instance's prefix cache (all of tiny llama's state is K/V)."""
    return _exported("block", _prompt(0, BLOCK_TOKENS), _loaded()).manifest.total_bytes


@functools.cache
def _reference(prompt: tuple[int, ...]) -> list[int]:
    """Tokens of an engine with the instance's weights that computes the whole prompt."""
    request = GenerateRequest("ref", prompt, _sampling())
    return Engine(_loaded()).generate([request])["ref"]


def _exported(
    req_id: str,
    prompt: tuple[int, ...],
    loaded: LoadedModel,
    num_prefix_tokens: int = 0,
    kv_codec: str = "none",
) -> ExportedState:
    """A prefill instance's state of the request, leaving out `num_prefix_tokens`, its K/V
    coded by `kv_codec`."""
    sender = Engine(loaded)
    skip = {req_id: num_prefix_tokens}
    sender.prefill([GenerateRequest(req_id, prompt, _sampling())], skip_tokens=skip)
    tid = uuid.uuid4().hex
    return sender.export(req_id, tid, num_prefix_tokens=num_prefix_tokens, kv_codec=kv_codec)


def _job(
    req_id: str,
    prompt: tuple[int, ...],
    exported: ExportedState | None,
    policy: str = "recompute",
) -> DecodeJob:
    """The router's job: decode from `exported`, or (None) prefill here; one whole answer."""
    manifest = None if exported is None else exported.manifest
    return DecodeJob(
        GenerateRequest(req_id, prompt, _sampling()),
        None if manifest is None else manifest.transfer_id,
        DEADLINE_S,
        policy,
        stream=False,
        num_prefix_tokens=0 if manifest is None else manifest.num_prefix_tokens,
    )


def _tokens(deltas: list[dict[str, Any]]) -> list[int]:
    return [t for delta in deltas for t in delta["token_ids"]]


@dataclass(frozen=True)
class Counts:
    """The decode instance's counters that a refusal may move."""

    imports: float
    fallbacks: float  # of the refusal's reason label
    kv_lost: float
    prefix_misses: float

    @classmethod
    def read(cls, instance: Instance, reason: str) -> Counts:
        return cls(
            instance.metric("prfaas:kv_imports_total"),
            instance.metric("prfaas:fallback_prefills_total", reason=reason),
            instance.metric("prfaas:failed_requests_total", reason="kv_lost"),
            instance.metric("prfaas:prefix_cache_receiver_misses_total"),
        )


def _expect_policy(
    instance: Instance,
    job: DecodeJob,
    exported: ExportedState,
    reason: str,
    refusal: str,
) -> Counts:
    """Send the state, run the job and check the policy's outcome (`refusal`: what the error
    says under `fail`); returns how the counters moved (fallbacks: those of `reason`)."""
    before = Counts.read(instance, reason)
    instance.send(exported)
    deltas = instance.decode(job)
    after = Counts.read(instance, reason)
    last = deltas[-1]
    if job.failure_policy == "recompute":
        assert _tokens(deltas) == _reference(job.request.prompt_token_ids)
        assert last["finish_reason"] == "length", last
    else:
        assert _tokens(deltas) == []
        assert last["finish_reason"] == "error", last
        assert "KV state lost (KV state refused: " in last["error"], last
        assert refusal in last["error"], last
        assert "failure policy 'fail'" in last["error"], last
    wait_until(instance.is_idle, 30.0, "the decode instance to hold nothing")
    return Counts(
        after.imports - before.imports,
        after.fallbacks - before.fallbacks,
        after.kv_lost - before.kv_lost,
        after.prefix_misses - before.prefix_misses,
    )


def _policy_counts(policy: str, prefix_misses: float = 0) -> Counts:
    """What one refusal adds: a recompute or a failure, never an import."""
    if policy == "recompute":
        return Counts(imports=0, fallbacks=1, kv_lost=0, prefix_misses=prefix_misses)
    return Counts(imports=0, fallbacks=0, kv_lost=1, prefix_misses=prefix_misses)


FOREIGN = {  # what the sender's weights are -> what the refusal says
    "another_model": (("qwen3_next", "fp32", 0), "manifest is for 'qwen3_next'"),
    "another_layout": ((MODEL, "bf16", 0), "dtype bfloat16, expected float32"),
    "other_weights": ((MODEL, "fp32", 1), "was made by model"),
}


@pytest.mark.parametrize("policy", ["recompute", "fail"])
@pytest.mark.parametrize("foreign", sorted(FOREIGN))
def test_a_foreign_state_is_refused_and_the_failure_policy_applies(
    instance: Instance, foreign: str, policy: str
) -> None:
    (model, dtype, seed), refusal = FOREIGN[foreign]
    req_id, prompt = f"{foreign}-{policy}", _prompt(0)
    exported = _exported(req_id, prompt, _loaded(model, dtype, seed))
    job = _job(req_id, prompt, exported, policy)
    assert _expect_policy(instance, job, exported, "refused", refusal) == _policy_counts(policy)
    # positive control: the same request's state from the instance's own weights is imported
    own = _exported(f"{req_id}-own", prompt, _loaded())
    deltas = _serve(instance, _job(f"{req_id}-own", prompt, own, policy), own)
    assert _tokens(deltas) == _reference(prompt)


@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_a_state_coded_with_an_unknown_codec_is_refused(instance: Instance, policy: str) -> None:
    req_id, prompt = f"codec-{policy}", _prompt(5)
    coded = _exported(req_id, prompt, _loaded(), kv_codec="fp8")
    unknown = ExportedState(replace(coded.manifest, kv_codec="zstd"), coded.buffers)
    job = _job(req_id, prompt, unknown, policy)
    refusal = "coded with KV codec 'zstd', which this instance cannot decode"
    assert _expect_policy(instance, job, unknown, "refused", refusal) == _policy_counts(policy)
    # positive control: the same state under the codec it was coded with is imported
    own = _exported(f"{req_id}-fp8", prompt, _loaded(), kv_codec="fp8")
    deltas = _serve(instance, _job(f"{req_id}-fp8", prompt, own, policy), own)
    assert len(_tokens(deltas)) == MAX_TOKENS and deltas[-1]["finish_reason"] == "length"


def _serve(instance: Instance, job: DecodeJob, exported: ExportedState) -> list[dict[str, Any]]:
    """Send an importable state and run its job; it is imported, not recomputed."""
    imports = instance.metric("prfaas:kv_imports_total")
    instance.send(exported)
    deltas = instance.decode(job)
    assert instance.metric("prfaas:kv_imports_total") == imports + 1
    return deltas


def _evict_everything(instance: Instance, offset: int) -> None:
    """Prefill prompts here that fill the prefix cache's whole budget with their own blocks."""
    for i in range(2):
        prompt = _prompt(offset + i, num_tokens=BUDGET_BLOCKS * BLOCK_TOKENS + 4)
        deltas = instance.decode(_job(f"filler-{offset + i}", prompt, None))
        assert deltas[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_a_prefix_no_longer_cached_is_refused_and_the_failure_policy_applies(
    instance: Instance, policy: str
) -> None:
    offset = 10 if policy == "recompute" else 20
    prompt = _prompt(offset)
    warm = instance.decode(_job(f"warm-{policy}", prompt[: HELD + 2], None))  # caches 3 blocks
    assert warm[-1]["finish_reason"] == "length"
    # positive control: while the instance holds the prefix, a transfer without it is imported
    held = _exported(f"held-{policy}", prompt, _loaded(), num_prefix_tokens=HELD)
    deltas = _serve(instance, _job(f"held-{policy}", prompt, held, policy), held)
    assert _tokens(deltas) == _reference(prompt)
    _evict_everything(instance, offset + 1)
    req_id = f"evicted-{policy}"
    exported = _exported(req_id, prompt, _loaded(), num_prefix_tokens=HELD)
    job = _job(req_id, prompt, exported, policy)
    refusal = f"leaves out {HELD} prefix tokens"
    counts = _expect_policy(instance, job, exported, "prefix_miss", refusal)
    assert counts == _policy_counts(policy, prefix_misses=1)
