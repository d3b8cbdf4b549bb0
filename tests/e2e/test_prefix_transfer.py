"""Cross-cluster prefix transfer, live: a cached prefix moves between the clusters, both ways.

Router + PrfaaS prefill + PD prefill + PD decode as real processes on 127.0.0.1 (tiny torch
qwen3_next, prefix cache on every instance, threshold 64). Turn 1 (long) prefills on PrfaaS,
which caches it; turn 2 is turn 1 plus a short follow-up, so under the global-best-prefix rule
its increment over the PrfaaS prefix is short and it prefills on PD-P with that prefix moved
there first. Checked: the move happened (router counters, the PrfaaS transport's bytes, the
import at PD-P), its bytes are S_kv of the moved tokens (the state a one-process export of that
many tokens has), PD-P reused the moved tokens, and both turns' outputs equal the one-process
engine's. Negative control: the same with a PD-P without `kv` (no receiver) counts
skipped_no_receiver, PD-P recomputes the prefix, and the output is the same.

The reverse move: a PrfaaS prefill instance with `kv`; turn 1 is short, so it prefills at PD-P
(a plain prefill instance, the holder), which caches its first block; turn 2 adds a long
follow-up, so its increment over that block exceeds the threshold and it prefills on PrfaaS
with the PD-P block moved there first. Checked the same way, from PD-P's transport.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from services_harness import (
    API_KEY,
    LONG_PROMPT,
    Reference,
    System,
    get_json,
    get_text,
    launch,
    metric_value,
    wait_for,
)

from prfaas.policy.controller import ControllerConfig
from prfaas.topology import PrefixCacheConfig
from topologies import Node, TopologySpec, decode, pd, prfaas

pytestmark = pytest.mark.slow
BLOCK_TOKENS = 32
THRESHOLD = 64
MAX_TOKENS = 8
FOLLOW_UP = " Why?"
TOKEN = "prefix-transfer-test-token"


def _topology(
    directory: Path, pd_prefill_kv: bool, prfaas_kv: bool = False, controller: bool = False
) -> Path:
    """`controller`: a driven `[controller]` (never ticked here), so every PD instance is a
    convertible one (`pd_instance`); it needs `pd_prefill_kv`."""
    spec = TopologySpec(
        clusters=(
            prfaas(Node("prfaas-prefill-0", kv=prfaas_kv)),
            pd(Node("pd-prefill-0", kv=pd_prefill_kv), decode("pd-decode-0")),
        ),
        api_keys=(API_KEY,),
        link_gbps=10,
        threshold=THRESHOLD,
        transfer_deadline_s=60,
        token=TOKEN,
        prefix_cache=PrefixCacheConfig(BLOCK_TOKENS, 256 << 20),
        controller=ControllerConfig() if controller else None,
        driven=True,
    )
    return spec.write(directory)


@contextmanager
def _system(
    directory: Path, pd_prefill_kv: bool, prfaas_kv: bool = False, controller: bool = False
) -> Iterator[System]:
    path = _topology(directory, pd_prefill_kv, prfaas_kv, controller)
    system = launch(path, directory / "logs")
    try:
        yield system
    finally:
        system.launcher.stop()


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("qwen3_next")


def _complete(system: System, prompt: str) -> tuple[str, dict[str, Any]]:
    return system.complete(prompt, MAX_TOKENS)


def _metric(system: System, where: str | None, name: str, **labels: str) -> float:
    """A metric of the router (`where` None) or of instance `where`."""
    url = system.url if where is None else system.instance_url(where)
    return metric_value(get_text(f"{url}/metrics"), name, **labels)


def _first_turn(system: System, ref: Reference) -> str:
    """Turn 1 on PrfaaS; returns its text once the router's index knows PrfaaS caches it."""
    turn1 = LONG_PROMPT * 2
    text1, info1 = _complete(system, turn1)
    assert info1["route"] == "prfaas", info1
    assert text1 == ref.text(turn1, MAX_TOKENS)
    wait_for(
        lambda: (
            _metric(system, None, "prfaas:prefix_index_blocks", instance="prfaas-prefill-0") > 0
        ),
        60.0,
        "the router's index to learn what the PrfaaS instance caches",
    )
    return turn1 + text1 + FOLLOW_UP


def _state_bytes(ref: Reference, prompt: str, num_tokens: int) -> int:
    """S_kv of the first `num_tokens` tokens: what a one-process export at that length holds."""
    from prfaas.engine.runner import Engine
    from prfaas.messages import GenerateRequest, SamplingParams

    ids = tuple(ref.loaded.tokenizer.encode(prompt)[:num_tokens])
    engine = Engine(ref.loaded)
    engine.prefill([GenerateRequest("s", ids, SamplingParams(max_tokens=1))])
    return int(engine.export("s").manifest.total_bytes)


def test_prfaas_prefix_moves_to_pd_prefill_and_only_the_suffix_is_computed(
    tmp_path: Path, ref: Reference
) -> None:
    with _system(tmp_path, pd_prefill_kv=True) as system:
        turn2 = _first_turn(system, ref)
        sent_before = _metric(system, "prfaas-prefill-0", "prfaas:kv_transfer_bytes_total")
        text2, info2 = _complete(system, turn2)
        sent = _metric(system, "prfaas-prefill-0", "prfaas:kv_transfer_bytes_total") - sent_before

        assert info2["route"] == "pd_prefill", info2
        assert info2["reason"].startswith("global-prefix"), info2
        assert info2["prefix_transfer"] == "done", info2
        moved = info2["num_prefix_transfer_tokens"]
        assert moved >= BLOCK_TOKENS and moved % BLOCK_TOKENS == 0
        assert info2["num_cached_tokens"] == moved  # PD-P computed only the suffix
        assert text2 == ref.text(turn2, MAX_TOKENS)

        moved_bytes = info2["num_prefix_transfer_bytes"]
        assert moved_bytes == _state_bytes(ref, turn2, moved)
        assert sent == moved_bytes  # the PrfaaS transport delivered exactly the prefix
        assert _metric(system, None, "prfaas:prefix_transfers_total", outcome="done") == 1
        assert _metric(system, None, "prfaas:prefix_transfer_bytes_total") == moved_bytes
        assert _metric(system, None, "prfaas:prefix_cache_hit_tokens_total", cluster="pd") >= moved
        imported = _metric(system, "pd-prefill-0", "prfaas:prefix_imports_total", outcome="stored")
        assert imported == 1


def test_without_a_receiver_the_move_is_skipped_and_pd_prefill_recomputes(
    tmp_path: Path, ref: Reference
) -> None:
    with _system(tmp_path, pd_prefill_kv=False) as system:
        turn2 = _first_turn(system, ref)
        text2, info2 = _complete(system, turn2)
        assert info2["route"] == "pd_prefill", info2
        assert info2["prefix_transfer"] == "skipped_no_receiver", info2
        assert info2["num_prefix_transfer_tokens"] == 0
        assert info2["num_cached_tokens"] == 0  # the whole prompt computed at PD-P
        assert text2 == ref.text(turn2, MAX_TOKENS)
        skipped = _metric(
            system, None, "prfaas:prefix_transfers_total", outcome="skipped_no_receiver"
        )
        assert skipped == 1
        assert _metric(system, None, "prfaas:prefix_transfers_total", outcome="done") == 0


# the tiny models' tokenizer has one token per character: turn 1 is 48 tokens (one cached block
# at PD-P, an increment <= THRESHOLD), turn 2 adds a follow-up of more than THRESHOLD tokens
REVERSE_TURN1 = LONG_PROMPT[:48]
REVERSE_FOLLOW_UP = " " + LONG_PROMPT[48:150]


@pytest.mark.parametrize("holder", ["plain", "convertible"])
def test_a_pd_prefix_moves_to_a_prfaas_instance_with_kv(
    tmp_path: Path, ref: Reference, holder: str
) -> None:
    """`holder`: PD-P as a plain prefill instance (no `kv`), or as a convertible PD instance
    (under a driven `[controller]`, with `kv`), serving `/internal/prefix_export` either way."""
    convertible = holder == "convertible"
    with _system(
        tmp_path, pd_prefill_kv=convertible, prfaas_kv=True, controller=convertible
    ) as system:
        if convertible:  # only a convertible PD instance answers /internal/role
            url = f"{system.instance_url('pd-prefill-0')}/internal/role"
            assert get_json(url, headers=system.internal_headers())["role"] == "prefill"
        num_turn1 = len(ref.loaded.tokenizer.encode(REVERSE_TURN1))
        assert BLOCK_TOKENS < num_turn1 <= THRESHOLD
        text1, info1 = _complete(system, REVERSE_TURN1)
        assert info1["route"] == "pd_prefill", info1
        assert text1 == ref.text(REVERSE_TURN1, MAX_TOKENS)
        wait_for(
            lambda: (
                _metric(system, None, "prfaas:prefix_index_blocks", instance="pd-prefill-0") > 0
            ),
            60.0,
            "the router's index to learn what the PD prefill instance caches",
        )
        turn2 = REVERSE_TURN1 + text1 + REVERSE_FOLLOW_UP
        sent_before = _metric(system, "pd-prefill-0", "prfaas:kv_transfer_bytes_total")
        text2, info2 = _complete(system, turn2)
        sent = _metric(system, "pd-prefill-0", "prfaas:kv_transfer_bytes_total") - sent_before

        assert info2["route"] == "prfaas", info2
        assert info2["reason"].startswith("global-prefix"), info2
        assert info2["prefix_transfer"] == "done", info2
        moved = info2["num_prefix_transfer_tokens"]
        assert moved >= BLOCK_TOKENS and moved % BLOCK_TOKENS == 0
        assert info2["num_cached_tokens"] == moved  # PrfaaS reused exactly the moved tokens
        assert text2 == ref.text(turn2, MAX_TOKENS)

        moved_bytes = info2["num_prefix_transfer_bytes"]
        assert moved_bytes == _state_bytes(ref, turn2, moved)
        assert sent == moved_bytes  # the PD-P transport delivered exactly the prefix
        assert _metric(system, None, "prfaas:prefix_transfers_total", outcome="done") == 1
        assert _metric(system, None, "prfaas:prefix_transfer_bytes_total") == moved_bytes
        hits = _metric(system, None, "prfaas:prefix_cache_hit_tokens_total", cluster="prfaas")
        assert hits >= moved
        imported = _metric(
            system, "prfaas-prefill-0", "prfaas:prefix_imports_total", outcome="stored"
        )
        assert imported == 1
