"""The name publisher's pure parts: which keys a container should have, and the diff."""

from __future__ import annotations

from pynet.plugin.cluster.names import changes, records
from pynet.plugin.engine.models import Container, Endpoint, NetworkSettings, State

ROOT = "/pynet/dns/"


def container(running: bool = True, **networks: Endpoint) -> Container:
    return Container(Id="c" * 64, Name="alpine1", State=State(Running=running), NetworkSettings=NetworkSettings(networks))


def test_one_key_per_eligible_network_with_name_and_aliases() -> None:
    c = container(
        blue=Endpoint(NetworkID="n1", IPAddress="10.1.0.2", Aliases=["web", "alpine1"]),
        red=Endpoint(NetworkID="n2", IPAddress="10.2.0.2", GlobalIPv6Address="fd00::2"),
        other=Endpoint(NetworkID="docker-bridge", IPAddress="172.17.0.2"),
    )
    got = records(ROOT, "h1", c, {"n1", "n2"})
    assert got == {
        f"{ROOT}blue/h1/{'c' * 64}": {"names": ["alpine1", "web"], "ipv4": "10.1.0.2", "ipv6": ""},
        f"{ROOT}red/h1/{'c' * 64}": {"names": ["alpine1"], "ipv4": "10.2.0.2", "ipv6": "fd00::2"},
    }


def test_a_stopped_container_or_one_without_address_has_none() -> None:
    assert records(ROOT, "h1", container(False, blue=Endpoint(NetworkID="n1", IPAddress="10.1.0.2")), {"n1"}) == {}
    assert records(ROOT, "h1", container(blue=Endpoint(NetworkID="n1")), {"n1"}) == {}


def test_changes_puts_what_differs_and_deletes_what_is_not_wanted() -> None:
    a, b = {"names": ["a"], "ipv4": "10.0.0.1", "ipv6": ""}, {"names": ["b"], "ipv4": "10.0.0.2", "ipv6": ""}
    ch = changes({"k1": a, "k2": b}, stored={"k1": a, "k2": a, "k3": a}, published={"k1": a, "k2": a, "k4": b})
    assert ch.puts == {"k2": b}
    assert ch.deletes == {"k3", "k4"}


def test_changes_puts_again_what_an_earlier_run_stored() -> None:
    """Its lease is expiring: the key must go under this run's."""
    a = {"names": ["a"], "ipv4": "10.0.0.1", "ipv6": ""}
    assert changes({"k1": a}, stored={"k1": a}, published={}).puts == {"k1": a}
    assert changes({"k1": a}, stored={"k1": a}, published={"k1": a}).puts == {}
