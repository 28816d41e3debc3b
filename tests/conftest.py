"""Test tiers (docs/design.md, Tests): a test's tier is the folder it lives in.

unit/ and api/ need nothing; kernel/ needs root; docker/ needs root and docker.io; multihost/
also needs etcd. A tier whose requirements are missing is skipped with what to install, except
under CI=true, where a missing requirement fails the run instead: CI skips nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TIERS: dict[str, list[str]] = {
    "unit": [],
    "api": [],
    "kernel": ["root", "ip", "iptables-restore"],
    "docker": ["root", "ip", "iptables-restore", "dockerd", "busybox"],
    "multihost": ["root", "ip", "iptables-restore", "dockerd", "busybox", "etcd"],
}
INSTALL_HINT = "run `make install` (apt-get install docker.io iptables etcd-server busybox-static iperf3)"


def missing_requirements(tier: str) -> list[str]:
    missing = []
    for req in TIERS.get(tier, []):
        if req == "root":
            if os.geteuid() != 0:
                missing.append("root")
        elif shutil.which(req) is None and not Path(f"/usr/sbin/{req}").exists():
            missing.append(req)
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).relative_to(root).parts[0]
        if tier in ("kernel", "docker", "multihost"):
            item.add_marker(getattr(pytest.mark, tier))
        missing = missing_requirements(tier)
        if not missing:
            continue
        if os.environ.get("CI") == "true":
            pytest.exit(f"CI must not skip the {tier} tier: missing {', '.join(missing)}", returncode=3)
        else:
            item.add_marker(
                pytest.mark.skip(reason=f"{tier} tier needs {', '.join(missing)}: {INSTALL_HINT}")
            )
