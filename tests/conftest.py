"""Shared test configuration.

Tests marked ``@pytest.mark.kernel`` run inside a user-mode-linux guest kernel (one boot per
session); see testkit/ipvsproxy_testkit/sandbox/pytest_plugin.py for the fixtures it provides.
"""

import pytest

pytest_plugins = ["ipvsproxy_testkit.sandbox.pytest_plugin", "pytester"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked first_in_guest go first (in order), so that no other test of their
    guest has loaded the kernel modules they check."""
    items.sort(key=lambda item: item.get_closest_marker("first_in_guest") is None)
