"""A topology file's TOML and its typed keys: reading the file, one `Table` per key path whose
getters check types, ranges, choices, addresses and files, and `Problems`, which collects every
complaint as one line naming its key so that a whole file is checked before anything is refused.
The schema itself (which keys, what they mean, how they fit together) is `schema.py`'s.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.files import read_text_file

MAX_INTEGER = 2**63 - 1  # TOML integers are 64-bit; tomllib reads larger ones without complaint
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
)


class TopologyError(UserError):
    """Every problem found in one topology, one line each (also in `problems`)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


def parse_host_port(text: str) -> tuple[str, int]:
    """'host:port' or '[ipv6]:port' -> (host, port); ValueError saying what is wrong.

    Strict: the host is non-empty without spaces, an IPv6 host is bracketed, and the port is
    decimal digits in 1..65535 (0, "pick any free port", has no place in a topology).
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("an IPv6 host must be written [host]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("an IPv6 host must be written [host]:port")
    if not host or any(c.isspace() for c in host):
        raise ValueError("the host must be non-empty, without spaces")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"the port must be a number, got {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"the port must be in 1..65535, got {port}")
    return host, port


def _toml_type(value: object) -> str:
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), "datetime")


def show_value(value: object) -> str:
    """A value as a problem line quotes it: strings in quotes, anything else with its type."""
    if isinstance(value, str):
        return repr(value)
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({_toml_type(value)})"


def _one_of(choices: Sequence[str]) -> str:
    """'a or b', 'a, b or c'."""
    return " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)


def _is_kind(value: object, kinds: tuple[type, ...]) -> bool:
    """isinstance, except that a bool counts only where bool itself is asked for."""
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def resolve_path(path_text: str, base_dir: Path) -> Path:
    path = Path(path_text).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


class Problems:
    """The problem lines of one topology, each starting with where the topology came from."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{self.source}: {key}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise TopologyError(self.lines)


class Table:
    """One TOML table at a key path. Its getters record a problem for a missing or bad value and
    then return a placeholder (the default), so that the rest of the file is still checked."""

    def __init__(
        self,
        problems: Problems,
        data: Mapping[str, Any],
        path: str,
        allowed: Sequence[str],
        base_dir: Path,
    ) -> None:
        self.problems, self.data, self.path, self.base_dir = problems, data, path, base_dir
        for name in data:
            if name not in allowed:
                problems.add(self.key(name), f"unknown key; allowed: {', '.join(allowed)}")

    def key(self, name: str) -> str:
        """The dotted key path of `name` in this table."""
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, message: str) -> None:
        self.problems.add(self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, kinds: tuple[type, ...], what: str, required: bool = False) -> Any:
        """The value if present and of one of `kinds`; None (and a problem if due) otherwise."""
        if name not in self.data:
            if required:
                self.fail(name, f"missing required key ({what})")
            return None
        value = self.data[name]
        if not _is_kind(value, kinds):
            self.fail(name, f"must be {what}, got {show_value(value)}")
            return None
        return value

    def string(self, name: str, default: str = "", *, required: bool = False) -> str:
        """A non-empty string."""
        value = self.raw(name, (str,), "a string", required)
        if value is None:
            return default
        if not value.strip():
            self.fail(name, "must not be empty")
            return default
        return str(value)

    def optional_string(self, name: str) -> str | None:
        """A non-empty string, or None when absent (or bad)."""
        return self.string(name) or None

    def name(self, name: str = "name") -> str:
        """A required name: letters, digits, '.', '_' and '-', starting with a letter or digit."""
        value = self.string(name, required=True)
        if value and not _NAME_PATTERN.fullmatch(value):
            self.fail(name, f"must be letters, digits, '.', '_' or '-', got {value!r}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str = "") -> str:
        """One of `choices`; required when there is no default."""
        what = _one_of(choices)
        value = self.raw(name, (str,), what, required=not default)
        if value is not None and value not in choices:
            self.fail(name, f"must be {what}, got {value!r}")
            return default
        return default if value is None else str(value)

    def integer(self, name: str, default: int, minimum: int, maximum: int = MAX_INTEGER) -> int:
        """An integer in [minimum, maximum] (a bool or a float is refused)."""
        value = self.raw(name, (int,), f"an integer >= {minimum}")
        if value is None:
            return default
        if value < minimum:
            self.fail(name, f"must be an integer >= {minimum}, got {value}")
            return default
        if value > maximum:
            self.fail(name, f"must be an integer <= {maximum:,}, got {value}")
            return default
        return int(value)

    def positive(self, name: str, default: float) -> float:
        """A finite number > 0 (integer or float, not a bool)."""
        return self._finite(name, default, "> 0", lambda value: value > 0)

    def non_negative(self, name: str, default: float) -> float:
        """A finite number >= 0 (integer or float, not a bool)."""
        return self._finite(name, default, ">= 0", lambda value: value >= 0)

    def number(
        self, name: str, default: float, bound: str, is_in_bound: Callable[[float], bool]
    ) -> float:
        """A finite number (integer or float, not a bool) that `is_in_bound`, stated as `bound`
        (e.g. "in [0, 100)") when refused."""
        return self._finite(name, default, bound, is_in_bound)

    def _finite(
        self, name: str, default: float, bound: str, is_in_bound: Callable[[float], bool]
    ) -> float:
        """A finite number (integer or float, not a bool) that `is_in_bound`, e.g. "> 0"."""
        what = f"a finite number {bound}"
        value = self.raw(name, (int, float), what)
        if value is None:
            return default
        if not (math.isfinite(value) and is_in_bound(value)):
            self.fail(name, f"must be {what}, got {value}")
            return default
        return float(value)

    def address(self, name: str, default: str = "", *, required: bool = False) -> str:
        """A strict "host:port" (see `parse_host_port`)."""
        value = self.raw(name, (str,), '"host:port"', required)
        if value is None:
            return default
        try:
            parse_host_port(value)
        except ValueError as exc:
            self.fail(name, f"bad address {value!r}: {exc}")
            return default
        return str(value)

    def file_path(self, name: str) -> Path | None:
        """A path, resolved against the topology file's directory; None when absent or bad."""
        value = self.string(name)
        return resolve_path(value, self.base_dir) if value else None

    def readable_file(self, name: str) -> Path | None:
        """A path naming an existing, readable regular file."""
        path = self.file_path(name)
        if path is None:
            return None
        if not path.is_file():
            problem = "is not a regular file" if path.exists() else "does not exist"
            self.fail(name, f"{path} {problem}")
            return None
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            self.fail(name, f"cannot read {path}: {exc.strerror or exc}")
            return None
        return path

    def table(self, name: str, allowed: Sequence[str], *, required: bool = False) -> Table | None:
        value = self.raw(name, (dict,), "a table", required)
        if value is None:
            return None
        return Table(self.problems, value, self.key(name), allowed, self.base_dir)

    def tables(self, name: str, allowed: Sequence[str]) -> list[Table]:
        """A required, non-empty array of tables (`[[name]]`)."""
        value = self.raw(name, (list,), "an array of tables", required=True)
        if value is None:
            return []
        if not value:
            self.fail(name, "must not be empty")
        tables = []
        for index, item in enumerate(value):
            key = f"{name}[{index}]"
            if not isinstance(item, dict):
                self.fail(key, f"must be a table, got {show_value(item)}")
                continue
            tables.append(Table(self.problems, item, self.key(key), allowed, self.base_dir))
        return tables


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML of `path`; TopologyError for an unreadable, special, oversized, non-UTF-8
    or invalid file (reading is `prfaas.files`', like every other user file)."""
    try:
        text = read_text_file(path)
    except UserError as exc:
        raise TopologyError([str(exc)]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = f"at end of document, line {text.count(chr(10)) + 1}"
        message = str(exc).replace("at end of document", where)
        raise TopologyError([f"{path}: invalid TOML: {message}"]) from None
