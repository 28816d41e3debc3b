"""The Engine API client's pure parts: which API version it picks, how it cuts the event
stream into events, how it evens out what API versions answer, and its errors without a dockerd."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from pynet.plugin.engine import (
    Container,
    Engine,
    EngineError,
    EngineUnavailable,
    EventDecoder,
    Version,
    choose_version,
)
from pynet.plugin.engine.models import decode, normalise_container


@pytest.mark.parametrize(
    ("api", "minimum", "chosen"),
    [
        ("1.41", "1.12", "1.41"),  # Docker 20.10
        ("1.45", "1.24", "1.45"),  # Docker 26.1
        ("1.51", "1.24", "1.51"),  # Docker 28.5
        ("1.52", "1.44", "1.51"),  # Docker 29: pynet's newest, above dockerd's minimum
    ],
)
def test_the_newest_version_both_speak(api: str, minimum: str, chosen: str) -> None:
    assert choose_version(Version(ApiVersion=api, MinAPIVersion=minimum)) == chosen


@pytest.mark.parametrize(("api", "minimum"), [("1.40", "1.12"), ("1.60", "1.52")])
def test_no_version_in_common_says_both_ranges(api: str, minimum: str) -> None:
    with pytest.raises(EngineError, match=f"API {minimum} to {api}, pynet 1.41 to 1.51"):
        choose_version(Version(ApiVersion=api, MinAPIVersion=minimum, Version="x"))


def test_versions_compare_as_numbers_not_text() -> None:
    assert choose_version(Version(ApiVersion="1.100", MinAPIVersion="1.9")) == "1.51"


EVENTS = (
    b'{"Type":"network","Action":"create","Actor":{"ID":"n1","Attributes":{"name":"a","type":"bridge"}},'
    b'"scope":"local","time":1,"timeNano":100}\n'
    b'{"status":"start","id":"c1","Type":"container","Action":"start","Actor":{"ID":"c1","Attributes":null},'
    b'"timeNano":200}\n'
)


@pytest.mark.parametrize("size", [1, 7, 64, len(EVENTS)])
def test_event_lines_split_across_reads(size: int) -> None:
    decoder = EventDecoder()
    events = [e for i in range(0, len(EVENTS), size) for e in decoder.feed(EVENTS[i : i + size])]
    assert [(e.Type, e.Action, e.Actor.ID, e.timeNano) for e in events] == [
        ("network", "create", "n1", 100),
        ("container", "start", "c1", 200),
    ]
    assert events[0].Actor.Attributes == {"name": "a", "type": "bridge"}
    assert events[1].Actor.Attributes == {}  # null in the stream


def test_an_unfinished_line_waits_and_blank_lines_are_skipped() -> None:
    decoder = EventDecoder()
    assert decoder.feed(b'\n{"Type":"network"') == []
    assert [e.Type for e in decoder.feed(b"}\n\n")] == ["network"]


def test_a_line_that_is_not_an_event_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="does not parse as Event"):
        EventDecoder().feed(b"not json\n")


CID = "754a6b5887fda3cc17257cca992f694a078b78f26ce149588eaca6458835403c"


def container(endpoint: bytes) -> Container:
    body = b'{"Id":"%s","Name":"/c1","State":{"Running":true},"Config":{"Hostname":"754a6b5887fd"},' % CID.encode()
    return normalise_container(decode(body + b'"NetworkSettings":{"Networks":{"n1":%s}}}' % endpoint, Container))


def test_api_141_aliases_lose_the_short_id_and_dns_names_are_filled() -> None:
    # Docker 20.10 at API 1.41: the short ID among the aliases, no DNSNames.
    c = container(b'{"Aliases":["al1","754a6b5887fd"],"IPAddress":"10.77.0.2","IPAMConfig":null}')
    e = c.NetworkSettings.Networks["n1"]
    assert (c.Name, c.State.Running, e.IPAddress) == ("c1", True, "10.77.0.2")
    assert e.Aliases == ["al1"]
    assert e.DNSNames == ["c1", "al1", "754a6b5887fd"]


def test_api_145_replies_stay_as_they_are() -> None:
    # Docker 26.1 and 28.5 at their own API version.
    e = container(b'{"Aliases":["al1"],"DNSNames":["c1","al1","754a6b5887fd"]}').NetworkSettings.Networks["n1"]
    assert (e.Aliases, e.DNSNames) == (["al1"], ["c1", "al1", "754a6b5887fd"])


def test_null_maps_and_lists_read_as_empty() -> None:
    e = container(b'{"Aliases":null,"DNSNames":null,"DriverOpts":null}').NetworkSettings.Networks["n1"]
    assert e.Aliases == []


async def test_a_missing_socket_is_unavailable_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    async with Engine(f"unix://{tmp_path}/docker.sock") as engine:
        with pytest.raises(EngineUnavailable, match="socket does not exist"):
            await engine.networks()
    assert time.monotonic() - started < 1


async def test_a_socket_nobody_listens_on_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: connect() is refused
        async with Engine(f"unix://{path}") as engine:
            with pytest.raises(EngineUnavailable, match="nothing listens"):
                await engine.version()


async def test_a_silent_dockerd_times_out(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    server = await asyncio.start_unix_server(lambda r, w: None, path=str(path))  # accepts, never answers
    async with server, Engine(f"unix://{path}", timeout=0.2) as engine:
        with pytest.raises(EngineUnavailable, match=r"GET /version: no answer within 0.2 s"):
            await engine.version()


def test_docker_host_must_be_a_socket_or_tcp() -> None:
    with pytest.raises(ValueError, match="unix:///path or tcp://host:port"):
        Engine("ssh://somewhere")
