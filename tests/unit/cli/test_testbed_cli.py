"""`prfaas testbed`: one line and exit status 2 where namespaces are unavailable or flags are bad
(no namespace is made in these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prfaas.cli import main


@pytest.fixture
def no_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "prfaas.transport.netns.netns_unavailable_reason", lambda: "network namespaces need root"
    )


@pytest.mark.parametrize("action", [["up"], ["down"], ["status"], ["link", "--gbps", "10"]])
def test_without_namespaces_every_action_says_so_in_one_line(
    no_namespaces: None, action: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["testbed", *action, "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need root" in err and err.startswith("prfaas testbed: error:")
    assert not (tmp_path / "prfaas-tb").exists()  # nothing written before the check


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--payload-scale", "2"], "must be <= 1"),
        (["--time-scale", "0"], "must be > 0"),
        (["--time-scale", "0.0001"], "wire rate"),
        (["--engine", "torch", "--payload-scale", "0.5"], "emulated only"),
        (["--threshold", "lots"], "auto"),
        (["--name", "Bad_Name"], "testbed name"),
        (["--pd-decode", "0"], "PD decode"),
    ],
)
def test_bad_up_flags_are_refused_with_their_reason(
    flags: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["testbed", "up", "--state-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err
    assert not (tmp_path / "prfaas-tb").exists()


def test_link_needs_a_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["testbed", "link", "--state-dir", str(tmp_path)]) == 2
    assert "--gbps, --down or --up" in capsys.readouterr().err
