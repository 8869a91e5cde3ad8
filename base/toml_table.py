"""Strict reading of one TOML table: typed values, error messages naming the key path and the value received,
unknown keys rejected. Errors are collected (not raised) so one run reports every problem of a file.
The agent config and the gateway config both read through Table."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

Check = Callable[[Any], "str | None"]
# How a TOML type is named in an error message (installers read these).
TYPE_WORDS: dict[type, str] = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                               list: "a list", dict: "a table"}


class Table:
    """Reads typed values out of one TOML table, collecting errors with their key path."""

    def __init__(self, data: Any, path: str, errors: list[str]) -> None:
        self.path, self.errors = path, errors
        if not isinstance(data, Mapping):
            errors.append(f"{path}: must be a table (got {type(data).__name__})")
            data = {}
        self.data = dict(data)
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, msg: str, value: Any, *, secret: bool = False) -> None:
        """Record `key: msg (got value)`; a secret's value is never echoed (error messages reach logs)."""
        self.errors.append(f"{self._key(key)}: {msg}" + ("" if secret else f" (got {value!r})"))

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = ..., *, check: Check | None = None,
            secret: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                self.errors.append(f"{self._key(key)}: required key is missing")
                return None
            return default
        value = self.data[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            names = " or ".join(TYPE_WORDS.get(t, t.__name__) for t in types)
            self.fail(key, f"must be {names}", value, secret=secret)
            return None if default is ... else default
        if check is not None:
            msg = check(value)
            if msg:
                self.fail(key, msg, value, secret=secret)
                return None if default is ... else default
        return value

    def done(self, known: Iterable[str] = ()) -> None:
        """Every key not read is an error; `known` (the keys this table may have) is listed in the message."""
        hint = f" (known: {', '.join(sorted(known))})" if known else ""
        for key in sorted(set(self.data) - self.seen):
            self.errors.append(f"{self._key(key)}: unknown key{hint}")


def between(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else "must be one of " + ", ".join(str(c) for c in choices)


def path_or_none(t: Table, key: str, base: Path, *, must_exist: bool) -> Path | None:
    raw = t.get(key, str, "")
    if not raw:
        return None
    p = base / raw
    if must_exist and not p.is_file():
        t.fail(key, "file does not exist", str(p))
    return p
