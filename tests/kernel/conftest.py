"""Fixtures of the kernel tests that run `ipvsproxy run` as a process (see agentproc.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import AGENT_CONFIG, endpoint_slice, service
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[TestAPIServer, PodNetwork, Path, Path]]:
    """Three pods serving 8080, an API server holding `web` with two of them as endpoints,
    and the agent's kubeconfig and configuration (full sync every 2 s)."""
    with PodNetwork() as pods, TestAPIServer().start() as api:
        for index in (1, 2, 3):
            pods.add_pod(f"web{index}", f"10.244.{index}.1")
        pods.serve(8080)
        api.store.create(SERVICES, "shop", service())
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice("10.244.1.1", "10.244.2.1"))
        kubeconfig_path = tmp_path / "kubeconfig"
        kubeconfig_path.write_text(kubeconfig(api.url))
        config = tmp_path / "kube-proxy.yaml"
        config.write_text(AGENT_CONFIG)
        yield api, pods, kubeconfig_path, config
