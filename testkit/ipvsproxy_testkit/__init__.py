"""Test kit for ipvsproxy: the sandbox kernels and a Kubernetes API server for tests.

Kept apart from the product package (and out of its wheel and image), as kube-proxy keeps its
fakes in `testing/` packages and its scale tooling in another repository. The tests, the demo
and the benchmarks use it.
"""
