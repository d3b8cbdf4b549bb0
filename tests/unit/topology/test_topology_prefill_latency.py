"""`[model] prefill_latency`: parsed and checked per hardware, slept by emulated engines, and the
same curve in the planner's inputs (threshold "auto", the simulator's config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prfaas.engine.emulated import make_emulated_engine
from prfaas.messages import GenerateRequest, SamplingParams
from prfaas.perf.profile import load_profile
from prfaas.topology import Topology, TopologyError, parse_topology
from prfaas.topology.derived import planner_inputs, resolve_prefill_latency
from prfaas.topology.sim_config import sim_config_of

H20 = "quadratic:0.469,1.300e-4,2.945e-10"
SOURCE = "topology.toml"

Data = dict[str, Any]


def _h20_s(num_tokens: float) -> float:
    return 0.469 + 1.300e-4 * num_tokens + 2.945e-10 * num_tokens**2


def _instance(name: str, role: str, port: int, hardware: str) -> Data:
    inst: Data = {"name": name, "role": role, "http": f"127.0.0.1:{port}"}
    inst |= {"engine": "emulated", "hardware": hardware}
    if role == "decode":
        inst["kv"] = f"127.0.0.1:{port + 1}"
    return inst


def _data(prefill_latency: object = None, threshold: object = 1000) -> Data:
    """PrfaaS 1 x h200, PD 1 prefill + 1 decode x h20, emulated, with the given latency key."""
    model: Data = {"name": "qwen3_next", "time_scale": 0.5}
    if prefill_latency is not None:
        model["prefill_latency"] = prefill_latency
    prfaas = [_instance("r0", "prefill", 18100, "h200")]
    pd = [_instance("p0", "prefill", 18200, "h20"), _instance("d0", "decode", 18300, "h20")]
    return {
        "model": model,
        "policy": {"threshold": threshold},
        "transport": {"token": "secret"},
        "clusters": [
            {"name": "prfaas", "kind": "prfaas", "instances": prfaas},
            {"name": "pd", "kind": "pd", "instances": pd},
        ],
    }


def _parse(data: Data, base_dir: Path = Path(".")) -> Topology:
    return parse_topology(data, base_dir, source=SOURCE)


def _only_problem(data: Data) -> str:
    with pytest.raises(TopologyError) as info:
        _parse(data)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def test_specs_are_stored_per_hardware_in_lower_case() -> None:
    topology = _parse(_data({"H20": H20, "h200": "profile:paper-1t-h200"}))
    model = topology.model
    assert model.prefill_latency == (("h20", H20), ("h200", "profile:paper-1t-h200"))
    assert model.prefill_latency_spec("h20") == H20
    assert model.prefill_latency_spec("H200") == "profile:paper-1t-h200"
    assert model.prefill_latency_spec("a100") is None
    assert _parse(_data()).model.prefill_latency == ()


def test_a_relative_profile_path_resolves_against_the_topology_directory(tmp_path: Path) -> None:
    rows = [{"tokens": 1000, "t_prefill_s": 1.0}, {"tokens": 2000, "t_prefill_s": 1.5}]
    (tmp_path / "h20.json").write_text(json.dumps(rows))
    topology = _parse(_data({"h20": "profile:h20.json"}), tmp_path)
    assert topology.model.prefill_latency == (("h20", f"profile:{tmp_path / 'h20.json'}"),)
    inputs, _ = planner_inputs(topology)
    assert inputs.pd.t_prefill_s(1500) == pytest.approx(1.25)


@pytest.mark.parametrize(
    ("value", "key", "fragment"),
    [
        ({"h20": "cost-model"}, "model.prefill_latency.h20", "default"),
        ({"h20": "linear:1,2"}, "model.prefill_latency.h20", "bad latency spec"),
        ({"h20": "quadratic:1,2"}, "model.prefill_latency.h20", "a,b,c"),
        ({"h20": "quadratic:-1,0,0"}, "model.prefill_latency.h20", ">= 0"),
        ({"h20": "profile:no-such-profile"}, "model.prefill_latency.h20", "unknown profile"),
        ({"h20": 0.5}, "model.prefill_latency.h20", "must be a string"),
        ({"tpu9": H20}, "model.prefill_latency.tpu9", "unknown hardware preset"),
        ({"h20": H20, "H20": H20}, "model.prefill_latency.", "already"),
        ("quadratic:1,0,0", "model.prefill_latency", "must be a table"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(value: object, key: str, fragment: str) -> None:
    problem = _only_problem(_data(value))
    assert problem.startswith(f"{SOURCE}: {key}"), problem
    assert fragment in problem and "\n" not in problem


def test_a_profile_extrapolating_to_zero_is_refused(tmp_path: Path) -> None:
    rows = [{"tokens": 1000, "t_prefill_s": 0.1}, {"tokens": 2000, "t_prefill_s": 10.0}]
    (tmp_path / "steep.json").write_text(json.dumps(rows))
    with pytest.raises(TopologyError, match=r"model\.prefill_latency\.h20: .* 1 token"):
        _parse(_data({"h20": "profile:steep.json"}), tmp_path)


def test_the_resolved_curve_is_the_spec_at_any_length_of_at_least_one_token() -> None:
    curve, source = resolve_prefill_latency(H20)
    assert curve(32768) == pytest.approx(_h20_s(32768)) and "quadratic" in source
    assert curve(0) == pytest.approx(_h20_s(1))
    profile = load_profile("paper-1t-h200")
    h200, _ = resolve_prefill_latency("profile:paper-1t-h200")
    assert h200(8192) == pytest.approx(profile.t_prefill_s(8192))


def test_emulated_engine_sleeps_the_given_curve() -> None:
    slept: list[float] = []
    engine = make_emulated_engine(
        "paper-1t", "H20", 8, sleep=slept.append, time_scale=0.5, prefill_latency=_h20_s
    )
    engine.prefill([GenerateRequest("r", (1,) * 8192, SamplingParams(max_tokens=3, seed=1))])
    assert sum(slept) == pytest.approx(0.5 * _h20_s(8192))
    assert engine.predicted_prefill_s(8192) == pytest.approx(0.5 * _h20_s(8192))
    decode_before = len(slept)
    engine.step()  # decode: the cost model's step time, not the prefill curve
    expected = engine.cost.t_decode_step_s(1, 8193) * 0.5
    assert slept[decode_before:] == [pytest.approx(expected)]


def test_without_a_curve_the_engine_keeps_the_cost_model() -> None:
    engine = make_emulated_engine("paper-1t", "H20", 8, sleep=lambda _: None)
    assert engine.predicted_prefill_s(8192) == pytest.approx(engine.cost.t_prefill_s(8192))
    assert engine.predicted_prefill_s(8192) != pytest.approx(_h20_s(8192), rel=0.01)


def test_build_engine_passes_the_curve_of_the_instance_hardware() -> None:
    from prfaas.instance.engines import build_engine

    topology = _parse(_data({"h20": H20}))
    pd_prefill = topology.instance("p0")
    engine = build_engine(topology, pd_prefill)
    assert engine.predicted_prefill_s(20000) == pytest.approx(0.5 * _h20_s(20000))
    prfaas = build_engine(topology, topology.instance("r0"))  # h200: no curve, the cost model
    assert prfaas.predicted_prefill_s(20000) == pytest.approx(0.5 * prfaas.cost.t_prefill_s(20000))


def test_planner_inputs_and_sim_config_use_the_curve() -> None:
    topology = _parse(_data({"h20": H20}))
    inputs, _ = planner_inputs(topology)
    assert inputs.pd.t_prefill_s(20000) == pytest.approx(_h20_s(20000))
    assert "quadratic" in inputs.pd.latency_source and "prefill_latency.h20" in (
        inputs.pd.latency_source
    )
    assert "cost model" in inputs.prfaas.latency_source
    sim = sim_config_of(topology)
    assert sim.deployment.pd_prefill.latency.t_prefill_s(20000) == pytest.approx(_h20_s(20000))
    plain, _ = planner_inputs(_parse(_data()))
    assert plain.pd.t_prefill_s(20000) != pytest.approx(_h20_s(20000), rel=0.01)


def test_auto_threshold_follows_the_curve() -> None:
    """A slower PD prefill makes offloading worth more: t goes down with it."""
    fast = _parse(_data({"h20": "quadratic:0.1,1e-6,0"}, threshold="auto"))
    slow = _parse(_data({"h20": "quadratic:0.5,2e-4,1e-9"}, threshold="auto"))
    assert slow.policy.threshold_tokens < fast.policy.threshold_tokens
