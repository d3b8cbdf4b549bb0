"""Authentication of the internal instance APIs (`/internal/*`): the deployment's shared token.

The router (and only it) talks to the instances' internal endpoints, which can start prefills,
stream decodes and abort transfers. When the topology has a transport token, every
`/internal/*` request must carry it as `Authorization: Bearer TOKEN` (compared in constant time);
`/health` and `/metrics` stay open for probes and scrapers. A deployment secured by TLS files
alone has no token, and its instances must then be bound where clients cannot reach them
(docs/serving.md, "Internal APIs").
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

from prfaas.nodes.topology import Topology

INTERNAL_PREFIX = "/internal/"
TOKEN_ENV = "PRFAAS_TRANSPORT_TOKEN"  # the same override the KV transport reads


def deployment_token(topology: Topology) -> str | None:
    """The deployment's shared token: the environment's, else the topology's (may be None)."""
    return os.environ.get(TOKEN_ENV) or topology.transport.token


def bearer(token: str) -> dict[str, str]:
    """The header the router sends with every internal call."""
    return {"Authorization": f"Bearer {token}"}


class InternalAuth:
    """ASGI middleware: 401 for an `/internal/*` request without the right bearer token."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self._expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._needs_check(scope) and not self._is_authorized(scope):
            await _refuse(send)
            return
        await self.app(scope, receive, send)

    def _needs_check(self, scope: dict[str, Any]) -> bool:
        is_internal = str(scope.get("path", "")).startswith(INTERNAL_PREFIX)
        return scope["type"] == "http" and self._expected is not None and is_internal

    def _is_authorized(self, scope: dict[str, Any]) -> bool:
        assert self._expected is not None
        given = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        return hmac.compare_digest(given, self._expected)


async def _refuse(send: Any) -> None:
    error = {"message": "internal API: missing or wrong bearer token", "type": "auth_error"}
    body = json.dumps({"error": {**error, "code": "invalid_token", "param": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
