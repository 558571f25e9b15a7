"""Shared test configuration.

Tests marked ``@pytest.mark.kernel`` run inside a user-mode-linux guest kernel (one boot per
session); see ipvsproxy/sandbox/pytest_plugin.py for the fixtures it provides.
"""

pytest_plugins = ["ipvsproxy.sandbox.pytest_plugin", "pytester"]
