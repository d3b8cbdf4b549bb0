"""The hybrid prefix cache in the live system: a multi-turn chat's second turn reuses the first.

Router + PrfaaS prefill + PD prefill + PD decode as real processes on 127.0.0.1 with a prefix
cache on every instance (tiny qwen3_next: Gated DeltaNet + full attention). The second turn of a
conversation is offloaded again; the PrfaaS instance computes only what its cache lacks, and the
decode instance, which still holds the first turn's full-attention KV, receives only the missing
blocks plus the final fixed-size states. Fewer KV bytes cross the link (the prefill instance's
transport counter says so) and the output equals the single-process engine's without any cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from services_harness import (
    LONG_PROMPT,
    Reference,
    System,
    get_text,
    metric_value,
    start_system,
    wait_for,
)

pytestmark = pytest.mark.slow
BLOCK_TOKENS = 32
MAX_TOKENS = 8
FOLLOW_UP = " Now say what happens when the link between the two datacenters slows down."


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = start_system(
        tmp_path_factory.mktemp("prefix"),
        "qwen3_next",
        threshold=16,
        prefix_block_tokens=BLOCK_TOKENS,
    )
    try:
        yield system
    finally:
        system.launcher.stop()


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("qwen3_next")


def _complete(system: System, prompt: str) -> tuple[str, dict[str, Any]]:
    return system.complete(prompt, MAX_TOKENS)


def _sent_bytes(system: System) -> float:
    """KV bytes the PrfaaS prefill instance's transport delivered (all destinations)."""
    text = get_text(f"{system.instance_url('prfaas-prefill-0')}/metrics")
    return metric_value(text, "prfaas:kv_transfer_bytes_total")


def _router_metric(system: System, name: str, **labels: str) -> float:
    return metric_value(get_text(f"{system.url}/metrics"), name, **labels)


def test_second_turn_moves_fewer_kv_bytes_and_equals_one_process(
    cached: System, ref: Reference
) -> None:
    turn1 = LONG_PROMPT * 2
    sent_before = _sent_bytes(cached)
    text1, info1 = _complete(cached, turn1)
    sent_turn1 = _sent_bytes(cached) - sent_before
    assert info1["route"] == "prfaas"
    assert info1["num_receiver_prefix_tokens"] == 0
    assert text1 == ref.text(turn1, MAX_TOKENS)
    wait_for(
        lambda: _router_metric(cached, "prfaas:prefix_index_blocks", instance="pd-decode-0") > 0,
        60.0,
        "the router's index to learn what the decode instance caches",
    )
    turn2 = turn1 + text1 + FOLLOW_UP
    sent_before = _sent_bytes(cached)
    text2, info2 = _complete(cached, turn2)
    sent_turn2 = _sent_bytes(cached) - sent_before
    assert info2["route"] == "prfaas", info2
    assert info2["num_receiver_prefix_tokens"] >= BLOCK_TOKENS
    assert info2["num_cached_tokens"] >= BLOCK_TOKENS  # the PrfaaS instance reused its state
    assert 0 < sent_turn2 < sent_turn1, (sent_turn1, sent_turn2)
    assert info2["kv_bytes"] == sent_turn2
    assert text2 == ref.text(turn2, MAX_TOKENS)
    hit = _router_metric(cached, "prfaas:prefix_cache_hit_tokens_total", cluster="prfaas")
    assert hit >= info2["num_cached_tokens"]


def test_a_prompt_without_a_shared_prefix_moves_its_whole_state(
    cached: System, ref: Reference
) -> None:
    """Negative control: nothing is left out when the decode instance holds no prefix of it."""
    prompt = "Zebra " + LONG_PROMPT * 2
    text, info = _complete(cached, prompt)
    assert info["route"] == "prfaas"
    assert info["num_receiver_prefix_tokens"] == 0
    assert text == ref.text(prompt, MAX_TOKENS)
