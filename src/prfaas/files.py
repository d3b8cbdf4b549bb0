"""Reading small text inputs (configs, profiles) safely: only regular files, with a size cap,
and a `UserError` naming the file for anything unreadable or not UTF-8."""

from __future__ import annotations

import stat
from pathlib import Path

from prfaas.errors import UserError

CONFIG_MAX_BYTES = 16 * 2**20  # a config or profile larger than this is not one


def check_regular_file(path: Path, max_bytes: int = CONFIG_MAX_BYTES) -> None:
    """UserError unless `path` is an existing regular file of at most `max_bytes`."""
    try:
        info = path.stat()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: cannot read: Is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: cannot read: not a regular file")
    if info.st_size > max_bytes:
        raise UserError(f"{path} is larger than the {max_bytes // 2**20} MiB allowed")


def read_text_file(path: Path, max_bytes: int = CONFIG_MAX_BYTES) -> str:
    """The UTF-8 text of the regular file `path`, at most `max_bytes` long."""
    check_regular_file(path, max_bytes)
    try:
        with path.open("rb") as file:
            raw = file.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise UserError(f"{path} is larger than the {max_bytes // 2**20} MiB allowed")
    return decode_utf8(raw, path)


def decode_utf8(raw: bytes, path: Path) -> str:
    """`raw` decoded as UTF-8; UserError naming `path` and the line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not UTF-8 text ({exc.reason})") from None
