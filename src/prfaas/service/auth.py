"""Authentication of the internal instance APIs (`/internal/*`): the deployment's shared token.

The router (and only it) talks to the instances' internal endpoints, which can start prefills,
stream decodes and abort transfers. When the topology has a transport token, every
`/internal/*` request must carry it as `Authorization: Bearer TOKEN` (compared in constant time),
else 401. A deployment without a token (secured by TLS files alone) serves `/internal/*` to
loopback clients only (403 for any other address), so its instances and router must share a
host; a multi-host deployment needs the token. `/health` and `/metrics` stay open for probes and
scrapers. Every refusal is logged with its reason and the client's address, never the header.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from prfaas.service.limits import client_address, send_error
from prfaas.topology import Topology

INTERNAL_PREFIX = "/internal/"
TOKEN_ENV = "PRFAAS_TRANSPORT_TOKEN"  # the same override the KV transport reads

log = logging.getLogger("prfaas.auth")


def deployment_token(topology: Topology) -> str | None:
    """The deployment's shared token: the environment's, else the topology's (may be None)."""
    return os.environ.get(TOKEN_ENV) or topology.transport.token


def bearer(token: str) -> dict[str, str]:
    """The header the router sends with every internal call."""
    return {"Authorization": f"Bearer {token}"}


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this host (127.0.0.0/8, ::1, or ::ffff:127.x.y.z)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


class InternalAuth:
    """ASGI middleware: 401 for an `/internal/*` request without the right bearer token; with no
    token configured, 403 for an `/internal/*` request from another host."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and path.startswith(INTERNAL_PREFIX):
            refusal = self._refusal(scope)
            if refusal is not None:
                await _refuse(send, scope, path, *refusal)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, code, message) when the request may not pass, else None."""
        if self._expected is None:
            client = scope.get("client")
            if is_loopback(client[0] if client else None):
                return None
            message = "internal API: no deployment token is set, so only loopback clients"
            return 403, "loopback_only", message
        given = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        if hmac.compare_digest(given, self._expected):
            return None
        return 401, "invalid_token", "internal API: missing or wrong bearer token"


async def _refuse(
    send: Send, scope: Scope, path: str, status: int, code: str, message: str
) -> None:
    where = client_address(scope)
    fields = {"event": "rejected", "status": status, "reason": message, "client": where}
    log.warning(json.dumps({**fields, "path": path[:200]}))
    await send_error(send, status, message, "auth_error", code)
