"""The shipped alerting rules (packaging/prometheus/pynet-rules.yml), read by Debian's own
promtool: valid rules, and each alert silent, pending and firing on synthetic series
(tests/unit/pynet-rules-test.yml). tests/kernel/test_prometheus.py fires them for real."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging/prometheus/pynet-rules.yml"
RULE_TESTS = Path(__file__).with_name("pynet-rules-test.yml")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Debian's promtool; skipped without it, except under CI=true, where it fails."""
    argv = [*require("promtool", package="prometheus"), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_rules_pass_promtool_check() -> None:
    done = run("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_each_alert_fires_on_its_synthetic_cause_and_only_then() -> None:
    done = run("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_for_a_severity_and_a_summary_naming_its_target() -> None:
    """What `promtool check rules` does not require, but an operator needs; read as text, since
    the project has no YAML parser and the file's layout is fixed (one rule per `- alert:`)."""
    rules = RULES.read_text().split("- alert: ")[1:]
    assert len(rules) == 4
    for rule in rules:
        name = rule.split()[0]
        assert "\n        for: " in rule, f"{name}: no for:"
        assert any(f"severity: {s}\n" in rule for s in ("critical", "warning")), f"{name}: no severity"
        summary = next(line for line in rule.splitlines() if line.strip().startswith("summary:"))
        assert "{{ $labels.instance }}" in summary, f"{name}: the summary names no host"
