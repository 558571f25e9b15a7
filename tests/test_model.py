"""Model values made fast by hand: hand-written equality, memoized real servers."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address

from ipvsproxy.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPFamily,
    Protocol,
    RealServer,
    RealServerKey,
)


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


def test_a_slices_real_servers_are_built_once_and_not_carried_by_replace() -> None:
    one = Endpoint(ip_address("10.0.0.1"))
    two = Endpoint(ip_address("10.0.0.2"), ready=False)
    endpoint_slice = EndpointSlice(
        "ns", "s-1", "s", IPFamily.V4, (EndpointPort("http", Protocol.TCP, 8080),), (one, two)
    )
    keys, servers = endpoint_slice.real_servers(8080)
    assert keys == (
        RealServerKey(one.address, 8080),
        RealServerKey(two.address, 8080),
    )
    assert servers == (RealServer(one.address, 8080), RealServer(two.address, 8080))
    assert endpoint_slice.real_servers(8080)[1] is servers  # the same objects again
    assert endpoint_slice.real_servers(9090)[1] == (
        RealServer(one.address, 9090),
        RealServer(two.address, 9090),
    )
    # A changed slice is another value: nothing of the old one's real servers carries over,
    # and equality never looks at them.
    moved = dataclasses.replace(endpoint_slice, endpoints=(one,))
    assert moved.real_servers(8080) == ((keys[0],), (servers[0],))
    assert dataclasses.replace(endpoint_slice) == endpoint_slice
