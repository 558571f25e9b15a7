"""Fixtures of the kernel tests that run `ipvsproxy run` as a process (see agentproc.py);
and, on the host before the guest boots, the image for test_image_kernel.py."""

from __future__ import annotations

import json
import os
import subprocess
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


IMAGE_TESTS = "tests/kernel/test_image_kernel.py"
IMAGE_ENV = "IPVSPROXY_IMAGE"  # JSON: rootfs, entrypoint, env (the guest inherits it)
IMAGE_ERROR_ENV = "IPVSPROXY_IMAGE_ERROR"


def pytest_collection_finish(session: pytest.Session) -> None:
    """On the host: build the image (or find it, by content) when its tests are selected;
    the guest has no registry or package index to build it from."""
    from ipvsproxy_testkit.sandbox.pytest_plugin import in_guest

    if in_guest() or IMAGE_ENV in os.environ:
        return
    if not any(item.nodeid.startswith(IMAGE_TESTS) for item in session.items):
        return
    from ipvsproxy_testkit.image import ImageError, build, image_info

    try:
        os.environ[IMAGE_ENV] = json.dumps(image_info(build()))
    except (ImageError, OSError, subprocess.SubprocessError) as exc:
        os.environ[IMAGE_ERROR_ENV] = str(exc)[-3000:]
