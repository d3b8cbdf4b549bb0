"""`prfaas up --model DIR`: the embedded topology is written to a folder of its own, so a relative
checkpoint directory is made absolute against the working directory before it is written."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from prfaas.launch.local import EmbeddedOptions, embedded_topology


def _written_model_name(directory: Path, model: str) -> str:
    path = embedded_topology(directory, EmbeddedOptions(model=model, router_port=8000))
    with path.open("rb") as f:
        return str(tomllib.load(f)["model"]["name"])


def test_relative_checkpoint_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "mymodel" / "config.json").write_text("{}")
    out = tmp_path / "generated"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    assert _written_model_name(out, "mymodel") == str(tmp_path / "mymodel")


def test_preset_name_is_kept(tmp_path: Path) -> None:
    assert _written_model_name(tmp_path, "qwen3_next") == "qwen3_next"
