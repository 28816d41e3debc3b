"""One warning per bad key, now and then: how every reader of the store skips a record it cannot use.

Anything can sit under pynet's prefix: garbage bytes, JSON of another shape, keys of another
layout (a newer pynet, a hand-written `etcdctl put`, another program sharing the prefix). A
reader that meets one skips it and goes on with the others (one bad VTEP key must never stop
the programming of every VNI), and says so here. A peer that rewrites a bad record on every
container start would otherwise flood the log: each key warns at most once per `interval`,
and the warning counts the repeats held back since the last one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Keys remembered at most; past it the oldest half is forgotten (they may warn again sooner).
MAX_KEYS = 1024


class Malformed:
    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # key -> (when it last warned, repeats held back)

    def __call__(self, what: str, key: str, error: object) -> None:
        """Warn that the record at `key` (a `what`) was skipped because of `error`."""
        now = time.monotonic()
        last, held = self._last.get(key, (-self.interval, 0))
        if now - last < self.interval:
            self._last[key] = (last, held + 1)
            return
        if len(self._last) >= MAX_KEYS:
            for old in list(self._last)[: MAX_KEYS // 2]:
                del self._last[old]
        self._last.pop(key, None)  # re-inserted last: dicts keep insertion order, oldest first
        self._last[key] = (now, 0)
        self.logger.warning(f"{what} skipped", extra={"key": key, "error": str(error), "suppressed": held})

    def decode(self, what: str, key: str, value: bytes, decode: Callable[[bytes], T]) -> T | None:
        """`decode(value)`, or None (and the warning) when it raises ValueError, as every
        decoder of JSON does (msgspec's errors and UnicodeDecodeError are ValueErrors too)."""
        try:
            return decode(value)
        except ValueError as e:
            self(what, key, e)
            return None
