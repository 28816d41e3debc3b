"""pynet's version: that of the installed distribution, so pyproject.toml's, or the VERSION a
plugin build was given (packaging/plugin/build.sh writes it into the wheel it builds). A
managed plugin's tag is that version (`make plugin-push`), so `pynet --version`, `pynet status`
and the daemon's first log line name the build that runs, whatever tag it was pulled by."""

from __future__ import annotations

from importlib import metadata

VERSION = metadata.version("pynet")
