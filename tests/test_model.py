"""Model values made fast by hand: hand-written equality, fast real servers, memos."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address

from ipvsproxy.core.model import (
    EndpointPort,
    EndpointSlice,
    IPFamily,
    Protocol,
    RealServer,
    RealServerKey,
    VirtualServerKey,
    address_number,
    real_servers_at,
)
from ipvsproxy.core.operations import AddRealServer, add_real_servers


def test_real_server_keys_are_equal_by_address_family_and_port() -> None:
    key = RealServerKey(ip_address("10.0.0.1"), 80)
    assert key == RealServerKey(ip_address("10.0.0.1"), 80)
    assert hash(key) == hash(RealServerKey(ip_address("10.0.0.1"), 80))
    assert key != RealServerKey(ip_address("10.0.0.2"), 80)
    assert key != RealServerKey(ip_address("10.0.0.1"), 81)
    # The same number in the other family is another address.
    assert RealServerKey(ip_address("0.0.0.1"), 80) != RealServerKey(ip_address("::1"), 80)
    assert key != (ip_address("10.0.0.1"), 80)
    assert len({key, RealServerKey(ip_address("10.0.0.1"), 80)}) == 1


def test_real_servers_at_builds_what_the_constructors_build() -> None:
    addresses = [ip_address("10.0.0.1"), ip_address("fd00::1"), ip_address("10.0.0.1")]
    built = real_servers_at(addresses, 8080)
    assert list(built) == [RealServerKey(a, 8080) for a in addresses[:2]]
    for address, (key, server) in zip(addresses, built.items(), strict=False):
        built_key, built_server = RealServerKey(address, 8080), RealServer(address, 8080)
        # Every field, those outside equality too: a field added later must be set here.
        for made, expected in ((key, built_key), (server, built_server)):
            assert type(made) is type(expected)
            for f in dataclasses.fields(expected):
                assert getattr(made, f.name) == getattr(expected, f.name), f.name
        assert key == built_key and hash(key) == hash(built_key)
        assert server == built_server and server.key == key


def test_address_number_is_int_of_the_address() -> None:
    for text in ("0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "fd00::1", "2001:db8::ff"):
        address = ip_address(text)
        number = address_number(address)
        assert number == int(address) and type(number) is int


def test_add_real_servers_builds_what_the_constructor_builds() -> None:
    virtual = VirtualServerKey(ip_address("10.96.0.1"), Protocol.TCP, 80)
    servers = [RealServer(ip_address("10.0.0.1"), 8080), RealServer(ip_address("fd00::1"), 80)]
    built = add_real_servers(virtual, servers)
    expected = [AddRealServer(virtual, server) for server in servers]
    assert built == expected
    for made, wanted in zip(built, expected, strict=True):
        assert type(made) is AddRealServer
        for f in dataclasses.fields(wanted):
            assert getattr(made, f.name) is getattr(wanted, f.name), f.name
    assert add_real_servers(virtual, []) == []


def test_a_slices_memo_is_its_own_and_not_carried_by_replace() -> None:
    endpoint_slice = EndpointSlice(
        "ns", "s-1", "s", IPFamily.V4, (EndpointPort("http", Protocol.TCP, 8080),), ()
    )
    memo = endpoint_slice.memo()
    assert endpoint_slice.memo() is memo
    memo["x"] = 1
    copy = dataclasses.replace(endpoint_slice)
    assert copy == endpoint_slice  # equality never looks at the memo
    assert copy.memo() == {}
