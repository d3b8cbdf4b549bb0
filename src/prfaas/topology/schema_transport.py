"""The topology file's `[transport]` table, read on its own (pass 1 of `load.py`): credentials
(a token, a token file, or mutual-TLS files), connections per destination, the receive pool's
budget, the senders' congestion control and the KV codec of offloaded requests (`compression`).
"""

from __future__ import annotations

from prfaas.errors import UserError
from prfaas.files import read_text_file
from prfaas.models.kv_codec import COMPRESSION_CHOICES, KV_CODEC_NONE
from prfaas.topology.config import SecurityConfig
from prfaas.topology.keys import Problems, Table
from prfaas.transport.config import is_congestion_control_name

TLS_KEYS = ("tls_cert", "tls_key", "tls_ca")
MAX_CONNECTIONS = 64  # KV transport connections per destination

MIN_RECEIVE_POOL_BYTES = 4 << 20  # one payload frame of the sender's default size (4 MiB)
MAX_RECEIVE_POOL_BYTES = 1 << 40  # 1 TiB: past any host's memory, so surely a typo

NO_CREDENTIALS = "set token, token_file or tls_cert/tls_key/tls_ca"

_SECURITY = SecurityConfig()


def read_transport(
    problems: Problems, table: Table | None, is_present: bool, allow_generated_token: bool
) -> SecurityConfig:
    """Credentials are required, except that a launcher generating a token may allow a file
    without any `[transport]` table (the token then stays None). `is_present`: the file has a
    `transport` key (None then means it was not a table, already reported)."""
    if table is None:
        if not (allow_generated_token or is_present):
            problems.add("transport", NO_CREDENTIALS)
        return SecurityConfig()
    if not any(table.has(name) for name in ("token", "token_file", *TLS_KEYS)):
        problems.add("transport", NO_CREDENTIALS)
    tls = _tls_files(table)
    cert, key, ca = tls or (None, None, None)
    return SecurityConfig(
        token=_token(table),
        tls_cert=cert,
        tls_key=key,
        tls_ca=ca,
        num_connections=table.integer(
            "num_connections", _SECURITY.num_connections, 1, MAX_CONNECTIONS
        ),
        receive_pool_bytes=table.integer(
            "receive_pool_bytes",
            _SECURITY.receive_pool_bytes,
            MIN_RECEIVE_POOL_BYTES,
            MAX_RECEIVE_POOL_BYTES,
        ),
        congestion_control=_congestion_control(table),
        compression=table.choice("compression", COMPRESSION_CHOICES, KV_CODEC_NONE),
    )


def _congestion_control(table: Table) -> str | None:
    """A kernel algorithm's name (checked against the kernel where a sender starts)."""
    name = table.optional_string("congestion_control")
    if name is not None and not is_congestion_control_name(name):
        table.fail(
            "congestion_control",
            f"must name a TCP congestion control algorithm (e.g. cubic, bbr), got {name!r}",
        )
        return None
    return name


def _token(table: Table) -> str | None:
    """The inline token, or the stripped content of token_file; not both."""
    if table.has("token") and table.has("token_file"):
        table.fail("token_file", "token and token_file are exclusive")
        return None
    if table.has("token"):
        return table.optional_string("token")
    path = table.readable_file("token_file")
    if path is None:
        return None
    try:
        token = read_text_file(path).strip()
    except UserError as exc:
        table.fail("token_file", str(exc))
        return None
    if not token:
        table.fail("token_file", f"{path} is empty")
        return None
    return token


def _tls_files(table: Table) -> tuple[str, str, str] | None:
    """(cert, key, CA) as absolute paths when all three are given; None when none is."""
    given = [name for name in TLS_KEYS if table.has(name)]
    if not given:
        return None
    missing = [name for name in TLS_KEYS if name not in given]
    if missing:
        table.fail(missing[0], f"tls_cert, tls_key and tls_ca go together; missing {missing[0]}")
        return None
    paths = [table.readable_file(name) for name in TLS_KEYS]
    if any(p is None for p in paths):
        return None
    cert, key, ca = (str(p) for p in paths)
    return cert, key, ca
