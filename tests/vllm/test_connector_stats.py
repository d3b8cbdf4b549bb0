"""The connector's counts as vLLM's stat loggers receive them: one worker's counts since the last
report, summed over workers (`aggregate`), reported as a flat mapping (`reduce`)."""

from __future__ import annotations

from prfaas.vllm.connector import PrfaasConnector, PrfaasConnectorStats


def test_counts_from_several_workers_add_up() -> None:
    first = PrfaasConnector.build_kv_connector_stats({"num_loaded": 2, "loaded_bytes": 100})
    second = PrfaasConnectorStats(data={"num_loaded": 1, "num_load_failures": 1})
    assert isinstance(first, PrfaasConnectorStats)
    total = first.aggregate(second)
    assert total.reduce() == {"num_loaded": 3, "loaded_bytes": 100, "num_load_failures": 1}
    assert not total.is_empty()
    total.reset()
    assert total.is_empty() and total.reduce() == {}
