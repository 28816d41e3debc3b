"""Host port reservation (drivers/ports.py) with real sockets, on loopback only."""

from __future__ import annotations

import socket

import pytest

from pynet.drivers.base import PortMap
from pynet.drivers.ports import EPHEMERAL_PORTS, HostPorts, PortRequest
from pynet.store.errors import Conflict, InvalidRequest
from tests.sockets import LOOPBACK, bindable, free_ports

EP = "e" * 64


def request(port: int, end: int = 0, proto: str = "tcp", container: int = 80) -> PortRequest:
    return PortRequest(proto, LOOPBACK, port, end or port, container)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"proto": "icmp"}, "'icmp'"),
        ({"host_ip": "nonsense"}, "'nonsense'"),
        ({"host_port": 70000, "host_port_end": 70000}, "70000"),
        ({"host_port": 8102, "host_port_end": 8100}, "8102-8100"),
    ],
)
def test_bad_requests_are_named(kwargs: dict[str, object], named: str) -> None:
    fields: dict[str, object] = {
        "proto": "tcp", "host_ip": "", "host_port": 8100, "host_port_end": 8100, "container_port": 80
    }
    with pytest.raises(InvalidRequest, match=named):
        PortRequest(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_candidates_prefer_the_previous_port_then_the_range_in_order() -> None:
    assert list(request(8100, 8102).candidates(None)) == [8100, 8101, 8102]
    assert list(request(8100, 8102).candidates(8102)) == [8102, 8100, 8101]
    assert list(request(8100, 8102).candidates(9000)) == [8100, 8101, 8102], "a port outside the range is not kept"
    anywhere = list(request(0).candidates(None))
    assert sorted(anywhere) == list(EPHEMERAL_PORTS)


def test_claim_is_all_or_nothing() -> None:
    ports = HostPorts()
    first = free_ports(2)
    with socket.socket() as server:
        server.bind((LOOPBACK, first + 1))
        server.listen()
        with pytest.raises(Conflict, match=f"{LOOPBACK}:{first + 1}/tcp is already in use"):
            ports.claim(EP, [request(first), request(first + 1, container=81)], "10.1.0.2/24", "", set(), [])
    assert bindable(first) and bindable(first + 1)


def test_a_full_range_names_the_range() -> None:
    ports = HostPorts()
    first = free_ports(3)
    with socket.socket() as a, socket.socket() as b:
        for s, port in ((a, first), (b, first + 1)):
            s.bind((LOOPBACK, port))
            s.listen()
        with pytest.raises(Conflict) as e:
            ports.claim(EP, [request(first, first + 2)], "10.1.0.2/24", "", {("tcp", first + 2)}, [])
    assert str(e.value) == (
        f"pynet: no free host port in {LOOPBACK}:{first}-{first + 2}/tcp: 2 in use "
        f"({LOOPBACK}:{first}: Address already in use), 1 published by other containers"
    )


def test_udp_port_is_exclusive_even_against_reuseaddr() -> None:
    ports = HostPorts()
    port = free_ports(1)
    ports.claim(EP, [request(port, proto="udp")], "10.1.0.2/24", "", set(), [])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):
            other.bind((LOOPBACK, port))
    ports.release(EP)
    assert bindable(port, socket.SOCK_DGRAM)


def test_tcp_port_listened_on_keeps_a_reuseaddr_server_out() -> None:
    ports = HostPorts()
    port = free_ports(1)
    ports.claim(EP, [request(port)], "10.1.0.2/24", "", set(), [])
    ports.listen(EP)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):
            server.bind((LOOPBACK, port))
            server.listen()
    ports.release(EP)


def test_no_address_of_the_family_publishes_nothing() -> None:
    assert HostPorts().claim(EP, [PortRequest("tcp", "::1", 8100, 8100, 80)], "10.1.0.2/24", "", set(), []) == []


def test_retake_reports_ports_taken_meanwhile() -> None:
    ports = HostPorts()
    first = free_ports(2)
    published = [PortMap("tcp", LOOPBACK, first, "10.1.0.2", 80), PortMap("tcp", LOOPBACK, first + 1, "10.1.0.2", 81)]
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, first + 1))
        squatter.listen()
        lost = ports.retake(EP, published)
    assert lost == [f"{first + 1}/tcp ({LOOPBACK}:{first + 1}: Address already in use)"]
    assert not bindable(first), "the other port is held again"
    ports.release(EP)


def test_a_dual_stack_port_reads_as_docker_ps_shows_it() -> None:
    """One DNAT per family: the log and `pynet endpoints` printed `*:8080->80/tcp` twice."""
    shown = [
        PortMap("tcp", "", 8080, "10.1.0.2", 80).describe(),
        PortMap("tcp", "", 8080, "fd00::2", 80).describe(),
        PortMap("udp", "127.0.0.1", 53, "10.1.0.2", 5353).describe(),
        PortMap("tcp", "::1", 8081, "fd00::2", 80).describe(),
    ]
    assert shown == ["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp", "127.0.0.1:53->5353/udp", "[::1]:8081->80/tcp"]
