"""The Docker Engine API client of the cluster agent and gc: aiohttp on dockerd's socket.

`Engine(docker_host)` negotiates the API version on its first call (`GET /version`,
unversioned) and prefixes every later call with it. A failure to reach dockerd drops the
session and the version, so the next call reconnects and negotiates again (a restarted dockerd
may be another release). Every call has a deadline; every failure is an `EngineError` whose
message says what went wrong. Why aiohttp and not aiodocker: docs/dependencies.md.

Imports no other room of pynet but pynet.store.errors.
"""

from pynet.plugin.engine.client import NEWEST, OLDEST, Engine, choose_version
from pynet.plugin.engine.errors import EngineError, EngineUnavailable, NetworkExists, NetworkInUse
from pynet.plugin.engine.models import (
    Container,
    ContainerSummary,
    Endpoint,
    Event,
    EventDecoder,
    Ipam,
    IpamConfig,
    Network,
    NetworkEndpoint,
    NetworkSpec,
    Version,
)

__all__ = [
    "NEWEST",
    "OLDEST",
    "Container",
    "ContainerSummary",
    "Endpoint",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "Event",
    "EventDecoder",
    "Ipam",
    "IpamConfig",
    "Network",
    "NetworkEndpoint",
    "NetworkExists",
    "NetworkInUse",
    "NetworkSpec",
    "Version",
    "choose_version",
]
