"""Model values whose equality is hand-written for speed."""

from __future__ import annotations

from ipaddress import ip_address

from ipvsproxy.model import RealServerKey


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
