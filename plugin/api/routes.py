"""Which handler answers which Docker method: declared on the handler itself.

`@route("CreateNetwork")` above a handler is the whole registration, so a reader finds a
method's code by its Docker name in one search, and app.py only collects the tables. Methods
marked `early` are answered before start-up completes: Docker calls them at registration
(docs/protocol.md §1.1), before the store is open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from pynet.plugin.daemon.daemon import Daemon

Handler = Callable[[Daemon, bytes], Awaitable[msgspec.Struct]]  # the reply, a wire.py struct
H = TypeVar("H", bound=Handler)


class Routes:
    """The methods of one Docker interface (`NetworkDriver`, `IpamDriver`, `Plugin`)."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.early: dict[str, Handler] = {}
        self.ready: dict[str, Handler] = {}

    def __call__(self, *methods: str, early: bool = False) -> Callable[[H], H]:
        def register(handler: H) -> H:
            table = self.early if early else self.ready
            for method in methods:
                table[f"{self.interface}.{method}"] = handler
            return handler

        return register
