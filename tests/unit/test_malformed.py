"""store/malformed.py: the one warning every reader gives for a record it skips."""

from __future__ import annotations

import logging

import pytest

from pynet.store import malformed
from pynet.store.malformed import Malformed

log = logging.getLogger("pynet.test-malformed")


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int]]:
    return [(r.getMessage(), r.key, r.suppressed) for r in caplog.records]  # type: ignore[attr-defined]


def test_each_key_warns_once_per_interval_and_counts_the_repeats(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, log.name)
    now = [1000.0]
    monkeypatch.setattr(malformed.time, "monotonic", lambda: now[0])
    warn = Malformed(log, interval=60)
    for _ in range(5):
        warn("VTEP record", "/p/vxlan/1/vteps/a", ValueError("not JSON"))
    warn("VTEP record", "/p/vxlan/1/vteps/b", ValueError("not JSON"))
    assert messages(caplog) == [
        ("VTEP record skipped", "/p/vxlan/1/vteps/a", 0),
        ("VTEP record skipped", "/p/vxlan/1/vteps/b", 0),
    ]
    caplog.clear()
    now[0] += 61
    warn("VTEP record", "/p/vxlan/1/vteps/a", ValueError("not JSON"))
    assert messages(caplog) == [("VTEP record skipped", "/p/vxlan/1/vteps/a", 4)]


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    warn = Malformed(log)
    for i in range(malformed.MAX_KEYS * 3):
        warn("record", f"/k/{i}", "bad")
    assert len(warn._last) <= malformed.MAX_KEYS
