"""Instance picking: fewest queued tokens, ties to the lowest position."""

from __future__ import annotations

import pytest

from prfaas.policy import InstanceLoad, pick_instance


def _loads(*queued: int) -> list[InstanceLoad]:
    return [InstanceLoad(f"i{k}", q) for k, q in enumerate(queued)]


def test_least_queued_tokens_wins() -> None:
    assert pick_instance(_loads(500, 20, 300)) == 1


def test_ties_go_to_lowest_index() -> None:
    assert pick_instance(_loads(7, 3, 3, 3)) == 1
    assert pick_instance(_loads(0, 0)) == 0


def test_empty_rejected() -> None:
    with pytest.raises(ValueError):
        pick_instance([])
