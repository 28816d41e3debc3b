"""How the operator's commands show things: tables for people, JSON for scripts, and the
verdict that becomes the exit status."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass
class Report:
    data: Any  # what --json prints
    text: str  # what people see
    ok: bool


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    if len(cells) == 1:
        return "(none)"
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def as_json(data: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(data), indent=2).decode()


def note(message: str) -> None:
    print(message, file=sys.stderr)


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def short(ident: str) -> str:
    return ident[:12]


def duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"

