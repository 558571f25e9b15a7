"""A real Linux kernel with IPVS for tests and demos: a user-mode-linux guest.

``run_in_guest`` boots the guest on the host's filesystem and runs one payload in it
(``python -m ipvsproxy_testkit.sandbox -- CMD`` from a shell). ``netns`` and ``pods`` are
helpers for code running inside the guest; ``pytest_plugin`` runs the tests marked ``kernel`` in one
guest per pytest session.
"""

from ipvsproxy_testkit.sandbox.uml import GuestResult, run_in_guest, shared_tempdir, uml_kernel

__all__ = ["GuestResult", "run_in_guest", "shared_tempdir", "uml_kernel"]
