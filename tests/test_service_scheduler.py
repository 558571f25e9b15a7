"""A Service's own IPVS scheduler: annotations -> model -> virtual servers, and the
fallback to the node's scheduler when the kernel lacks the Service's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from ipvsproxy.agent.scheduler_probe import ServiceSchedulers
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import (
    IPVS_FLAG_PERSISTENT,
    IPVS_FLAG_SCHED1,
    IPVS_FLAG_SCHED3,
    IPVS_FLAG_SOURCE_HASH,
    Service,
)
from ipvsproxy.dataplane.fake import FakeKernel
from ipvsproxy.k8s.objects import service_from_dict


def annotated(annotations: dict[str, Any], **spec: Any) -> Service:
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            **spec,
        },
    }
    converted = service_from_dict(obj)
    assert converted is not None
    return converted


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


@pytest.mark.parametrize(
    ("annotations", "scheduler", "flags"),
    [
        ({}, None, None),
        ({"ipvsproxy.io/scheduler": "sh"}, "sh", None),
        ({"ipvsproxy.io/scheduler": " WLC "}, "wlc", None),
        ({"kube-router.io/service.scheduler": "lc"}, "lc", None),
        # Ours wins over kube-router's when both are there.
        ({"ipvsproxy.io/scheduler": "dh", "kube-router.io/service.scheduler": "lc"}, "dh", None),
        (
            {"ipvsproxy.io/scheduler": "mh", "ipvsproxy.io/scheduler-flags": "mh-fallback,mh-port"},
            "mh",
            IPVS_FLAG_SCHED1 | IPVS_FLAG_SOURCE_HASH,
        ),
        (
            {"ipvsproxy.io/scheduler": "sh", "ipvsproxy.io/scheduler-flags": "sh-port"},
            "sh",
            IPVS_FLAG_SOURCE_HASH,
        ),
        # kube-router's spelling, spaces and all.
        (
            {
                "kube-router.io/service.scheduler": "mh",
                "kube-router.io/service.schedflags": "flag-1, flag-2 ,flag-3",
            },
            "mh",
            IPVS_FLAG_SCHED1 | IPVS_FLAG_SOURCE_HASH | IPVS_FLAG_SCHED3,
        ),
        # mh without port hashing: said explicitly, by an empty flag list.
        ({"ipvsproxy.io/scheduler": "mh", "ipvsproxy.io/scheduler-flags": ""}, "mh", 0),
    ],
)
def test_annotations_read(annotations: dict[str, Any], scheduler: str | None, flags: int) -> None:
    converted = annotated(annotations)
    assert (converted.scheduler, converted.scheduler_flags) == (scheduler, flags)


def test_unknown_scheduler_is_warned_about_naming_the_service(warnings: list[str]) -> None:
    converted = annotated({"ipvsproxy.io/scheduler": "fastest"})
    assert converted.scheduler is None  # the node's
    assert converted.ports  # the Service itself is kept
    assert len(warnings) == 1
    assert "shop/web" in warnings[0] and "'fastest'" in warnings[0]


def test_bad_flags_are_dropped_with_a_warning(warnings: list[str]) -> None:
    converted = annotated(
        {"ipvsproxy.io/scheduler": "sh", "ipvsproxy.io/scheduler-flags": "sh-port,mh-fallback,x"}
    )
    assert converted.scheduler_flags == IPVS_FLAG_SOURCE_HASH
    assert len(warnings) == 2
    assert all("shop/web" in line for line in warnings)
    warnings.clear()
    plain = annotated({"ipvsproxy.io/scheduler": "rr", "ipvsproxy.io/scheduler-flags": "flag-2"})
    assert (plain.scheduler, plain.scheduler_flags) == ("rr", None)
    assert len(warnings) == 1 and "takes no flags" in warnings[0]


def servers(services: list[Service], scheduler: str = "rr") -> dict[str, tuple[str, int]]:
    state = desired_state(
        services, [], node=NodeInfo(name="n"), settings=DesiredSettings(scheduler=scheduler)
    )
    return {
        f"{key.address}:{key.port}": (server.scheduler, server.flags)
        for key, server in state.virtual_servers.items()
    }


def test_each_service_gets_its_own_scheduler_on_every_frontend() -> None:
    sticky = annotated(
        {"ipvsproxy.io/scheduler": "sh", "ipvsproxy.io/scheduler-flags": "sh-fallback"},
        sessionAffinity="ClientIP",
        externalIPs=["203.0.113.7"],
    )
    plain = annotated({}, clusterIP="10.96.0.11")
    got = servers([sticky, plain], scheduler="wlc")
    assert got == {
        "10.96.0.10:80": ("sh", IPVS_FLAG_PERSISTENT | IPVS_FLAG_SCHED1),
        "203.0.113.7:80": ("sh", IPVS_FLAG_PERSISTENT | IPVS_FLAG_SCHED1),
        "10.96.0.11:80": ("wlc", 0),
    }


def test_mh_defaults_to_port_hashing_unless_the_flags_say_otherwise() -> None:
    assert servers([annotated({"ipvsproxy.io/scheduler": "mh"})]) == {
        "10.96.0.10:80": ("mh", IPVS_FLAG_SOURCE_HASH)
    }
    bare = annotated({"ipvsproxy.io/scheduler": "mh", "ipvsproxy.io/scheduler-flags": ""})
    assert servers([bare]) == {"10.96.0.10:80": ("mh", 0)}
    # Flags alone apply to the node's scheduler when it reads them.
    flags_only = annotated({"ipvsproxy.io/scheduler-flags": "flag-1"})
    assert servers([flags_only], scheduler="sh") == {"10.96.0.10:80": ("sh", IPVS_FLAG_SCHED1)}
    assert servers([flags_only], scheduler="rr") == {"10.96.0.10:80": ("rr", 0)}


def test_a_scheduler_the_kernel_lacks_falls_back_once_warned(
    monkeypatch: pytest.MonkeyPatch, warnings: list[str]
) -> None:
    monkeypatch.setattr("ipvsproxy.dataplane.fake.KNOWN_SCHEDULERS", frozenset({"rr", "sh"}))
    kernel = FakeKernel()
    schedulers = ServiceSchedulers(kernel, "rr")
    wanted = annotated({"ipvsproxy.io/scheduler": "twos"})
    used = schedulers.usable(wanted)
    assert (used.scheduler, used.scheduler_flags) == (None, None)
    assert schedulers.usable(wanted) == used
    assert len(warnings) == 1
    assert "shop/web" in warnings[0]
    writes = kernel.writes
    # Probed once per scheduler: the known answer costs the kernel nothing.
    assert schedulers.usable(annotated({"ipvsproxy.io/scheduler": "sh"})).scheduler == "sh"
    after_sh = kernel.writes
    assert after_sh > writes
    assert schedulers.usable(annotated({"ipvsproxy.io/scheduler": "sh"})).scheduler == "sh"
    assert schedulers.usable(wanted).scheduler is None
    assert kernel.writes == after_sh
    assert kernel.services == {}  # no probe left behind
