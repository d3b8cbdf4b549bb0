"""The router's answers to bad requests, without instances (the app on a test client): OpenAI's
error body names the field at fault in `param`, and a completion prompt may be a list holding one
list of token ids while a batch of several is refused with one line."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from prfaas.errors import UserError
from prfaas.router.intake import RequestIntake
from prfaas.service.text import load_codec
from prfaas.topology import Topology
from topologies import ROUTER_API_KEY


def _error(client: TestClient, body: dict[str, Any], status: int = 400) -> dict[str, Any]:
    reply = client.post(
        "/v1/completions", json=body, headers={"Authorization": f"Bearer {ROUTER_API_KEY}"}
    )
    assert reply.status_code == status, reply.text
    error: dict[str, Any] = reply.json()["error"]
    return error


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"n": 2}, "n"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"prompt": [999999]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_an_error_naming_a_field_carries_it_as_param(
    client: TestClient, extra: dict[str, Any], param: str
) -> None:
    error = _error(client, {"model": "qwen3_next", "prompt": "x", **extra})
    assert error["param"] == param, error


def test_an_error_naming_no_field_has_a_null_param(client: TestClient) -> None:
    body = {"model": "qwen3_next", "prompt": "x", "max_tokens": 200_000}
    error = _error(client, body)
    assert error["code"] == "context_length_exceeded" and error["param"] is None, error


def test_a_batch_of_token_id_lists_is_refused_with_one_clear_line(client: TestClient) -> None:
    error = _error(client, {"model": "qwen3_next", "prompt": [[1, 2], [3, 4]]})
    assert error["message"] == (
        "prompt: a batch of 2 prompts is not supported (send one per request)"
    ), error
    assert error["param"] == "prompt"


def test_a_wrong_prompt_shape_lists_the_accepted_shapes(client: TestClient) -> None:
    error = _error(client, {"model": "qwen3_next", "prompt": [["a"]]})
    assert error["message"].startswith("prompt: expected a string, a list of strings"), error


def test_one_list_of_token_ids_in_a_list_is_one_prompt(topology: Topology) -> None:
    intake = RequestIntake(topology, load_codec(topology.model))
    body = {"model": "qwen3_next", "prompt": [[72, 105]], "max_tokens": 1}
    assert intake.prepare(body, is_chat=False).request.prompt_token_ids == (72, 105)
    with pytest.raises(UserError, match="outside"):
        intake.prepare({**body, "prompt": [[999999]]}, is_chat=False)
