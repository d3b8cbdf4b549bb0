"""Presets, shipped config copies, the independent size table, parameter counts and bad input."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas.errors import UserError
from prfaas.models import PRESET_FILES, list_presets, load_model_spec
from prfaas.types import MIB

CONFIGS = resources.files("prfaas.models").joinpath("configs")
REQUIRED_PRESETS = {
    "kimi-linear-48b", "qwen3-next-80b", "qwen3.5-397b", "mimo-v2-flash", "minimax-m2.5",
    "qwen3-235b", "deepseek-v3", "kimi-k2", "llama-3.1-70b", "gpt-oss-120b", "gemma-3-27b",
    "nemotron-h-56b", "ring-2.5-1t", "paper-1t", "nemotron-3-nano", "nemotron-3-super", "kimi-k3",
}  # fmt: skip


def test_required_presets_exist_and_load() -> None:
    assert set(list_presets()) >= REQUIRED_PRESETS
    for name in list_presets():
        spec = load_model_spec(name)
        assert spec.name == name
        assert spec.num_layers == len(spec.layers) > 0


def test_copies_are_byte_identical_to_upstream(repo_data: Path) -> None:
    """Each shipped config hashes as the file it copies (SHA-256 of the shared model-configs,
    recorded in tests/data/model-configs/upstream_sha256.json)."""
    upstream = json.loads((repo_data / "model-configs" / "upstream_sha256.json").read_text())
    for name, digest in sorted(upstream.items()):
        assert hashlib.sha256(CONFIGS.joinpath(name).read_bytes()).hexdigest() == digest, name
    assert set(upstream) <= set(PRESET_FILES.values())


def test_every_shipped_config_is_a_preset() -> None:
    shipped = {p.name for p in CONFIGS.iterdir() if p.name.endswith(".json")}
    assert shipped == set(PRESET_FILES.values())


def test_sizes_match_independent_table(repo_data: Path) -> None:
    """kv_sizes_computed.json was computed separately from the same configs."""
    table = json.loads((repo_data / "model-configs" / "kv_sizes_computed.json").read_text())
    by_file = {f: n for n, f in PRESET_FILES.items()}
    for row in table["models"]:
        spec = load_model_spec(by_file[row["config_file"]])
        assert spec.kv_bytes_per_token() == row["full_attn_kv_bytes_per_token_bf16"], spec.name
        big = 1 << 20  # past every sliding window
        assert spec.state_bytes(big, state_dtype="float32") == row["fixed_state_bytes_fp32_states"]
        assert spec.state_bytes(big, state_dtype="bfloat16") == row["fixed_state_bytes_bf16_states"]
        for tokens in (1024, 8192, 32768, 131072):
            for dtype, suffix in (("float32", "fp32"), ("bfloat16", "bf16")):
                mib = spec.kv_bytes(tokens, state_dtype=dtype) / MIB
                assert mib == pytest.approx(row[f"total_MiB_at_{tokens}_{suffix}_states"], abs=0.01)


def test_paper_1t_fit_to_table5() -> None:
    """paper-1t is inferred; Table 5 sizes: exact to rounding at 1K/8K, within 2% at 32K/128K."""
    spec = load_model_spec("paper-1t")
    assert "INFERRED" in spec.provenance
    table5 = {1024: 190.8, 8192: 308.9, 32768: 701.3, 131072: 2316.3}
    for tokens, mib in table5.items():
        assert spec.kv_bytes(tokens) / MIB == pytest.approx(mib, rel=0.02)
    assert spec.kv_bytes(1024) / MIB == pytest.approx(190.8, abs=0.05)
    assert spec.kv_bytes(8192) / MIB == pytest.approx(308.9, abs=0.05)


# Published totals from the model cards (language model only; approx. to the card's rounding)
PUBLISHED_TOTAL_PARAMS = {
    "llama-3.1-70b": 70.6e9,
    "qwen3-235b": 235e9,
    "qwen3-next-80b": 80e9,
    "qwen3.5-397b": 397e9,
    "deepseek-v3": 671e9,
    "kimi-k2": 1.04e12,
    "gpt-oss-120b": 116.8e9,
    "mimo-v2-flash": 309e9,
    "minimax-m2.5": 229e9,
    "nemotron-3-nano": 31.6e9,
    "nemotron-3-super": 120e9,
    "nemotron-h-56b": 56e9,
    "gemma-3-27b": 27e9,
    "kimi-linear-48b": 48e9,
}
PUBLISHED_ACTIVE_PARAMS = {"qwen3-235b": 22e9, "deepseek-v3": 37e9, "kimi-k2": 32e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL_PARAMS))
def test_parameter_counts_from_shapes(name: str) -> None:
    spec = load_model_spec(name)
    assert spec.num_total_params == pytest.approx(PUBLISHED_TOTAL_PARAMS[name], rel=0.04)
    if name in PUBLISHED_ACTIVE_PARAMS:
        assert spec.num_active_params == pytest.approx(PUBLISHED_ACTIVE_PARAMS[name], rel=0.04)
    assert 0 < spec.num_active_params <= spec.num_total_params


def test_weight_bytes_follow_quantization() -> None:
    assert load_model_spec("deepseek-v3").weight_bytes_per_param == 1.0
    assert load_model_spec("llama-3.1-70b").weight_bytes_per_param == 2.0
    assert 0.5 < load_model_spec("gpt-oss-120b").weight_bytes_per_param < 0.7


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(REQUIRED_PRESETS)),
    tokens=st.integers(min_value=0, max_value=300_000),
)
def test_footprint_closed_form_equals_kv_bytes(name: str, tokens: int) -> None:
    spec = load_model_spec(name)
    footprint = spec.footprint()
    assert footprint.bytes_for(tokens) == spec.kv_bytes(tokens)
    assert spec.kv_bytes(tokens + 1) >= spec.kv_bytes(tokens)
    big = 1 << 22
    assert footprint.fixed_bytes_per_request == spec.state_bytes(big)


def test_lookup_by_hf_id_and_file_and_dict(tmp_path: Path) -> None:
    assert load_model_spec("Qwen/Qwen3-235B-A22B").name == "qwen3-235b"
    assert load_model_spec("MiniMax-M2.5".lower()).name == "minimax-m2.5"
    src = CONFIGS.joinpath(PRESET_FILES["llama-3.1-70b"]).read_text()
    path = tmp_path / "llama" / "config.json"
    path.parent.mkdir()
    path.write_text(src)
    by_dir = load_model_spec(path.parent)
    assert by_dir.name == "llama" and by_dir.kv_bytes_per_token() == 327680
    assert load_model_spec(json.loads(src)).kv_bytes_per_token() == 327680


def test_unknown_preset_names_the_presets() -> None:
    with pytest.raises(UserError, match=r"not a preset.*llama-3\.1-70b"):
        load_model_spec("llama-9")


def test_unknown_model_type_names_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(UserError, match=r"unsupported model_type 'bert'.*qwen3_next"):
        load_model_spec(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"hidden_size": 8}', "no 'model_type'"),
        ('{"model_type": "llama", "hidden_size": 8}', "lacks required key"),
        ('{"model_type": "llama", "hidden_size": "x", "num_hidden_layers": 1}', "must be a number"),
    ],
)
def test_malformed_configs_are_user_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_model_spec(path)


@pytest.mark.parametrize("name", ["gpt-oss-120b", "nemotron-3-nano", "kimi-linear-48b"])
def test_layer_bytes_sum_to_kv_bytes(name: str) -> None:
    spec = load_model_spec(name)
    for tokens in (0, 100, 5000):
        per_layer = spec.layer_bytes(tokens, state_dtype="bfloat16")
        assert len(per_layer) == spec.num_layers
        assert sum(per_layer) == spec.kv_bytes(tokens, state_dtype="bfloat16")


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-4, max_value=64),
    st.text(max_size=4),
    st.lists(st.integers(min_value=-1, max_value=3), max_size=6),
    st.dictionaries(st.sampled_from(["num_heads", "head_dim", "kda_layers"]), st.integers(0, 4)),
)
_KEYS = st.sampled_from(
    [
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "layer_types", "linear_attn_config", "hybrid_layer_pattern",
        "hybrid_override_pattern", "intermediate_size", "sliding_window", "kv_lora_rank",
        "full_attention_interval", "num_experts", "vocab_size", "layer_group_size",
    ]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    model_type=st.sampled_from(["llama", "qwen3_next", "kimi_linear", "mimo_v2_flash",
                                "nemotron_h", "deepseek_v3", "bailing_moe_v2_5", "jamba"]),
    fields=st.dictionaries(_KEYS, _VALUES, max_size=10),
)  # fmt: skip
def test_garbage_configs_fail_only_with_user_error(
    model_type: str, fields: dict[str, object]
) -> None:
    try:
        spec = load_model_spec({"model_type": model_type, **fields})
    except UserError:
        return
    assert spec.kv_bytes(100) >= 0
