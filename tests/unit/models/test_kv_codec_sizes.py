"""The KV codecs' size model: hand-computed bytes per token of known models, recurrent state left
exact, and the codec reaching `prfaas kv`, `prfaas plan` and `prfaas sim` (one-line refusals)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prfaas.cli import main
from prfaas.errors import UserError
from prfaas.models import load_model_spec
from prfaas.models.kv_codec import get_kv_codec
from prfaas.types import LayerKind

Capsys = pytest.CaptureFixture[str]

# qwen3-next-80b: 12 full-attention layers of 2 KV heads, head_dim 256 (K and V).
QWEN3_NEXT_FA_LAYERS, QWEN3_NEXT_KV_HEADS, QWEN3_NEXT_HEAD_DIM = 12, 2, 256


def _qwen3_next_vectors_per_token() -> int:
    return QWEN3_NEXT_FA_LAYERS * QWEN3_NEXT_KV_HEADS * 2  # K and V


def test_codec_numbers() -> None:
    fp8, int4 = get_kv_codec("fp8"), get_kv_codec("int4-rotated")
    assert (fp8.bytes_per_element(), fp8.scale_overhead) == (1.0, 4 / 64)
    assert (int4.bytes_per_element(), int4.scale_overhead) == (0.5, 4 / 64)
    assert get_kv_codec("none").bytes_per_element("bfloat16") == 2.0
    # a vector that is not whole groups: 80 elements = 2 groups
    assert fp8.vector_bytes(80) == 80 + 2 * 4
    assert int4.vector_bytes(80) == 40 + 2 * 4


def test_qwen3_next_fp8_bytes_by_hand(capsys: Capsys) -> None:
    """fp8: each 256-element vector is 256 code bytes + 4 scales of 4 bytes."""
    per_token = _qwen3_next_vectors_per_token() * (QWEN3_NEXT_HEAD_DIM + 4 * 4)
    assert per_token == 13056
    rows = _kv_json(capsys, "--model", "qwen3-next-80b", "--lengths", "1000", "--kv-codec", "fp8")
    plain = _kv_json(capsys, "--model", "qwen3-next-80b", "--lengths", "1000")
    assert rows[0]["kv_bytes_per_token"] == per_token
    assert rows[0]["state_bytes"] == plain[0]["state_bytes"] > 0  # recurrent state stays exact
    model = load_model_spec("qwen3-next-80b")
    assert model.kv_bytes(1000, kv_codec="fp8") == per_token * 1000 + plain[0]["state_bytes"]


def test_qwen3_next_int4_rotated_bytes_by_hand(capsys: Capsys) -> None:
    """int4-rotated: 128 bytes of packed codes + 4 groups x (fp16 scale + fp16 minimum)."""
    per_token = _qwen3_next_vectors_per_token() * (QWEN3_NEXT_HEAD_DIM // 2 + 4 * 4)
    rows = _kv_json(
        capsys, "--model", "qwen3-next-80b", "--lengths", "1000", "--kv-codec", "int4-rotated"
    )
    assert rows[0]["kv_bytes_per_token"] == per_token == 6912
    assert rows[0]["kv_codec"] == "int4-rotated"


def test_mla_and_sliding_window_are_coded() -> None:
    """MLA codes the latent and the rope key as two vectors; a window's K/V is coded too."""
    paper = load_model_spec("paper-1t")
    mla = next(layer for layer in paper.layers if layer.kind is LayerKind.MLA)
    expected = (mla.kv_lora_rank + 8 * 4) + (mla.qk_rope_head_dim + 4)  # 512 + 64 elements
    assert mla.kv_bytes_per_token(kv_codec="fp8") == expected
    gemma = load_model_spec("gemma-3-27b")
    window = next(layer for layer in gemma.layers if layer.kind is LayerKind.SLIDING_WINDOW)
    none_bytes = window.window_bytes_per_token()
    fp8_bytes = window.window_bytes_per_token(kv_codec="fp8")
    assert fp8_bytes == window.num_kv_heads * 2 * (window.head_dim_k + 4 * 2)
    assert fp8_bytes < none_bytes
    footprint = gemma.footprint(kv_codec="fp8")
    assert footprint.bytes_for(100_000) == gemma.kv_bytes(100_000, kv_codec="fp8")


def test_unknown_codec_names_the_choices() -> None:
    with pytest.raises(UserError, match="choose one of: none, fp8, int4-rotated"):
        get_kv_codec("int3")


@pytest.mark.parametrize("command", ["kv", "plan", "sim"])
def test_unknown_codec_is_one_line_exit_2(capsys: Capsys, command: str) -> None:
    argv = [command, "--kv-codec", "int3"] + (["--model", "paper-1t"] if command == "kv" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"prfaas {command}: error: ")
    assert "unknown KV codec 'int3'; choose one of: none, fp8, int4-rotated" in err


def test_plan_toml_key_and_bad_value(capsys: Capsys, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('kv_codec = "fp8"\nlink_gbps = 10\n')
    bad.write_text('kv_codec = "zstd"\n')
    from_file = _plan_json(capsys, "--config", str(good))
    from_flags = _plan_json(capsys, "--link-gbps", "10", "--kv-codec", "fp8")
    assert from_file["prfaas"] == from_flags["prfaas"]
    assert main(["plan", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown KV codec 'zstd'" in err


def test_plan_at_10_gbps_gains_with_compression(capsys: Capsys) -> None:
    """At 10 Gbps the case study is link-bound: a smaller KV moves the threshold down (more
    requests offloaded) and raises Λ_max; at 100 Gbps the link is not the limit."""
    plain = _plan_json(capsys, "--link-gbps", "10")["prfaas"]
    for codec in ("fp8", "int4-rotated"):
        coded = _plan_json(capsys, "--link-gbps", "10", "--kv-codec", codec)["prfaas"]
        assert coded["lambda_max"] > plain["lambda_max"]
        assert coded["threshold_tokens"] < plain["threshold_tokens"]
        assert coded["egress_gbps"] < plain["egress_gbps"]


def test_sim_plans_and_moves_coded_kv(capsys: Capsys) -> None:
    """`prfaas sim` takes the codec: its planned split and Λ_max are the planner's with it."""
    flags = ["--link-gbps", "10", "--kv-codec", "fp8"]
    plan = _plan_json(capsys, *flags)["prfaas"]
    argv = ["sim", *flags, "--deployment", "prfaas", "--num-requests", "30", "--drain-s", "60"]
    assert main([*argv, "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)["prfaas"]
    assert sim["split"] == [plan["n_prfaas"], plan["n_p"], plan["n_d"]]
    assert sim["model_lambda_max_rps"] == pytest.approx(plan["lambda_max"], rel=1e-5)


def test_sim_link_carries_the_coded_bytes(capsys: Capsys) -> None:
    """The naive deployment offloads every request of the same seeded arrivals: with fp8 the link
    carries fewer bytes, more than the per-token ratio (the fixed KDA state stays exact)."""
    argv = ["sim", "--link-gbps", "10", "--deployment", "naive", "--rate", "1"]
    argv += ["--num-requests", "30", "--drain-s", "60", "--json"]
    egress_gbps = {}
    for codec in ("none", "fp8"):
        assert main([*argv, "--kv-codec", codec]) == 0
        egress_gbps[codec] = json.loads(capsys.readouterr().out)["naive"]["egress"]["mean_gbps"]
    per_token_ratio = 9180 / 17280  # paper-1t: 15 MLA layers of 612 coded bytes vs 1152
    assert per_token_ratio < egress_gbps["fp8"] / egress_gbps["none"] < 1


def _kv_json(capsys: Capsys, *argv: str) -> list[dict[str, Any]]:
    assert main(["kv", *argv, "--json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def _plan_json(capsys: Capsys, *argv: str) -> dict[str, Any]:
    assert main(["plan", *argv, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_sim_controller_searches_with_the_codec(capsys: Capsys) -> None:
    """The adaptive controller's threshold search in `prfaas sim` uses the coded S_kv: on the
    egress-bound 10 Gbps link it finds a lower t and a higher Λ_max with fp8."""
    argv = ["sim", "--deployment", "prfaas", "--controller", "adaptive", "--link-gbps", "10"]
    argv += ["--num-requests", "200", "--json"]
    searched = {}
    for codec in ("none", "fp8"):
        assert main([*argv, "--kv-codec", codec]) == 0
        result = json.loads(capsys.readouterr().out)["prfaas"]
        searched[codec] = result["controller"]["decisions"][0]["inputs"]
    assert searched["fp8"]["threshold_tokens"] < searched["none"]["threshold_tokens"]
    assert searched["fp8"]["best_lambda_max_per_s"] > searched["none"]["best_lambda_max_per_s"]
