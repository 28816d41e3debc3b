"""System tools a test needs and the machine may lack (etcd, Prometheus): the test is skipped
saying which package to install, or fails under CI=true, where nothing may be skipped."""

from __future__ import annotations

import os
import shutil

import pytest


def require(*binaries: str, package: str) -> list[str]:
    """The paths of BINARIES, each on the PATH."""
    found = [shutil.which(b) for b in binaries]
    missing = [b for b, path in zip(binaries, found, strict=True) if path is None]
    if missing:
        hint = f"needs {', '.join(missing)} (Debian's {package}): run make install"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must not skip this test: {hint}", pytrace=False)
        pytest.skip(hint)
    return [path for path in found if path]
