"""`Engine`: one dockerd's API, on its Unix socket, with aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from pynet.plugin.engine.errors import EngineError, EngineUnavailable, NetworkExists, NetworkInUse
from pynet.plugin.engine.models import (
    Container,
    ContainerSummary,
    Created,
    Event,
    EventDecoder,
    Network,
    NetworkSpec,
    Version,
    decode,
    normalise_container,
)

T = TypeVar("T")

TIMEOUT = 10.0
# 1.41 is Docker 20.10's API, the oldest pynet supports; 1.51 is Docker 28.5's, the newest the
# tests run. A newer dockerd still serves 1.51 (Docker 29's minimum is 1.44).
OLDEST = (1, 41)
NEWEST = (1, 51)


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


def choose_version(server: Version) -> str:
    """The newest API version pynet and dockerd both speak, as "1.NN"."""
    newest, oldest = parse_version(server.ApiVersion), parse_version(server.MinAPIVersion)
    chosen = min(newest, NEWEST)
    if chosen < max(OLDEST, oldest):
        raise EngineError(
            f"Docker {server.Version} speaks API {server.MinAPIVersion} to {server.ApiVersion}, pynet "
            f"{'.'.join(map(str, OLDEST))} to {'.'.join(map(str, NEWEST))}: no version in common"
        )
    return f"{chosen[0]}.{chosen[1]}"


def _reason(err: BaseException) -> str:
    if isinstance(err, aiohttp.ClientConnectorError):
        if isinstance(err.os_error, FileNotFoundError):
            return "its socket does not exist (is dockerd running?)"
        if isinstance(err.os_error, ConnectionRefusedError):
            return "nothing listens on its socket (dockerd stopped or restarting?)"
    return str(err) or type(err).__name__


class Engine:
    """One dockerd, at `unix:///path` or `tcp://127.0.0.1:port` (plain HTTP)."""

    def __init__(self, docker_host: str, timeout: float = TIMEOUT) -> None:
        url = urlsplit(docker_host)
        if url.scheme == "unix" and url.path:
            self._connector: Callable[[], aiohttp.BaseConnector] = lambda: aiohttp.UnixConnector(path=url.path)
            self._base = "http://docker"
        elif url.scheme == "tcp" and url.port:
            self._connector = aiohttp.TCPConnector
            self._base = f"http://{url.netloc}"
        else:
            raise ValueError(f"pynet: --docker-host must be unix:///path or tcp://host:port, got {docker_host!r}")
        self.docker_host = docker_host
        self.timeout = timeout
        self.api_version = ""  # negotiated on the first call after (re)connecting
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Drops the connections and the version: the next call reconnects and negotiates."""
        session, self._session, self.api_version = self._session, None, ""
        if session is not None:
            await session.close()

    async def _prefix(self) -> str:
        if not self.api_version:
            self.api_version = choose_version(await self.version())
        return f"/v{self.api_version}"

    @contextlib.asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """One deadline for what runs inside; dockerd not answering there is EngineUnavailable,
        and drops the session and version (the next call reconnects and negotiates)."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            await self.close()
            reason = f"no answer within {self.timeout:g} s" if isinstance(err, TimeoutError) else _reason(err)
            raise EngineUnavailable(f"Docker at {self.docker_host}: {what}: {reason}") from None

    async def _open(self, method: str, path: str, body: bytes | None = None) -> aiohttp.ClientResponse:
        """The response to METHOD PATH, with a 2xx status and its body unread; else EngineError."""
        if self._session is None:
            # No session-wide deadline: aiohttp's default (300 s in all) would cut the event stream.
            timeout = aiohttp.ClientTimeout(total=None)
            self._session = aiohttp.ClientSession(connector=self._connector(), timeout=timeout)
        headers = {"Content-Type": "application/json"} if body is not None else None
        response = await self._session.request(method, self._base + path, data=body, headers=headers)
        if response.status < 300:
            return response
        text = await response.text()
        response.release()
        if "API version" in text:  # a dockerd restarted as an older release: negotiate again
            await self.close()
        raise _refusal(f"Docker at {self.docker_host}", f"{method} {path.partition('?')[0]}", response.status, text)

    async def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """The body of the reply to METHOD PATH (under the API version unless PATH is /version)."""
        if path != "/version":
            path = await self._prefix() + path
        async with self._guard(f"{method} {path.partition('?')[0]}"):
            return await (await self._open(method, path, body)).read()

    async def _get(self, path: str, type_: type[T]) -> T:
        return decode(await self._call("GET", path), type_)

    async def version(self) -> Version:
        """`GET /version`, unversioned: what dockerd is and which API versions it speaks."""
        return await self._get("/version", Version)

    async def networks(self) -> list[Network]:
        """Every network, without its `Containers` (Docker fills those on inspect only)."""
        return await self._get("/networks", list[Network])

    async def network(self, id_or_name: str) -> Network:
        return await self._get(f"/networks/{quote(id_or_name, safe='')}", Network)

    async def create_network(self, spec: NetworkSpec) -> str:
        """The new network's ID; NetworkExists if dockerd has one of that name. Below API 1.44
        dockerd creates a second network of a taken name unless CheckDuplicate is set; from 1.44
        it always refuses and ignores the field."""
        body = msgspec.json.encode({**msgspec.to_builtins(spec), "CheckDuplicate": True})
        return decode(await self._call("POST", "/networks/create", body), Created).Id

    async def delete_network(self, id_or_name: str) -> None:
        """Removes the network; one already gone is fine. NetworkInUse while it has endpoints."""
        try:
            await self._call("DELETE", f"/networks/{quote(id_or_name, safe='')}")
        except EngineError as err:
            if err.status != 404:
                raise

    async def containers(self) -> list[ContainerSummary]:
        """Every container, running or not."""
        return await self._get("/containers/json?all=1", list[ContainerSummary])

    async def container(self, id_or_name: str) -> Container:
        return normalise_container(await self._get(f"/containers/{quote(id_or_name, safe='')}/json", Container))

    async def events(
        self, filters: Mapping[str, Sequence[str]] | None = None, since: float | None = None
    ) -> AsyncIterator[Event]:
        """Docker's events from SINCE (Unix time; default now) on, matching FILTERS (e.g.
        {"type": ["network"], "event": ["create"]}), until dockerd closes the stream or goes
        away: then the iteration ends, and the caller resyncs before following events again."""
        query = f"?filters={quote(json.dumps(dict(filters or {})))}"
        if since is not None:
            query += f"&since={since:.9f}"
        path = await self._prefix() + "/events"
        async with self._guard(f"GET {path}"):
            response = await self._open("GET", path + query)
        decoder = EventDecoder()
        try:
            async for chunk in response.content.iter_any():
                for event in decoder.feed(chunk):
                    yield event
        except (aiohttp.ClientError, OSError):
            pass  # dockerd went away mid-stream: the end of the events, as when it closes them
        finally:
            response.release()
        await self.close()  # not reached when the caller stops early; dockerd may come back as another release


def _refusal(who: str, what: str, status: int, text: str) -> EngineError:
    """Docker's error reply as an exception: JSON {"message": ...}, or plain text (28.5 answers
    a too old API version that way)."""
    try:
        message = str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        message = text.strip()
    full = f"{who} answered {status} to {what}: {message}"
    if status == 409 and what.endswith("/networks/create"):
        return NetworkExists(full, status)
    if status == 403 and "active endpoints" in message:
        return NetworkInUse(full, status)
    return EngineError(full, status)
