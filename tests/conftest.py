"""Shared test configuration.

Tests marked ``@pytest.mark.kernel`` run inside a user-mode-linux guest kernel (one boot per
session); see testkit/ipvsproxy_testkit/sandbox/pytest_plugin.py for the fixtures it provides.
"""

pytest_plugins = ["ipvsproxy_testkit.sandbox.pytest_plugin", "pytester"]
