"""Reflectors against the test API server on loopback, through the real `kubernetes` client.

Each test starts the server, one reflector per resource and a handler that mirrors what
the rest of the program would hold; it then changes objects (or breaks the server) and
waits for the mirror to show the expected state. Backoff delays are shrunk, never slept
on purpose; waits are for conditions, with a generous guard timeout.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from ipvsproxy_testkit.testapi import Store, TestAPIServer, resources
from loguru import logger

from ipvsproxy.core.model import EndpointSlice, Node, Service
from ipvsproxy.k8s.client import ApiConnection, ClientSettings, connect
from ipvsproxy.k8s.watch import (
    ENDPOINT_SLICES,
    SERVICES,
    Reflector,
    Resource,
    Response,
    WatchSettings,
    node_resource,
)

GUARD = 20.0  # seconds; only reached when a test fails

FAST = WatchSettings(
    page_size=2,
    connect_timeout=2.0,
    list_read_timeout=5.0,
    backoff_initial=0.02,
    backoff_max=0.1,
)


def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait until predicate() holds, checking every 10 ms; fail after GUARD seconds."""
    pause = threading.Event()
    for _ in range(int(GUARD / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError(f"never happened: {what}")


# --- what the consumer would hold ---------------------------------------------------------------


@dataclass
class Mirror:
    """A handler that keeps the state the protocol describes, and logs every call."""

    state: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    is_listed: bool = False
    changed: threading.Condition = field(default_factory=threading.Condition)

    def replace(self, items: Mapping[str, Any]) -> None:
        with self.changed:
            for key in self.state.keys() - items.keys():
                self.calls.append(("delete", key))  # computed by the consumer, as documented
            self.calls.append(("replace", ",".join(sorted(items))))
            self.state = dict(items)
            self.changed.notify_all()

    def upsert(self, key: str, value: Any) -> None:
        with self.changed:
            self.calls.append(("upsert", key))
            self.state[key] = value
            self.changed.notify_all()

    def delete(self, key: str) -> None:
        with self.changed:
            self.calls.append(("delete", key))
            del self.state[key]
            self.changed.notify_all()

    def listed(self) -> None:
        with self.changed:
            self.is_listed = True
            self.changed.notify_all()

    def wait(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.is_listed and predicate(self.state), GUARD):
                raise AssertionError(f"state never matched; it is {sorted(self.state)}")


class RecordingTransport:
    """The real transport, with every request's query recorded."""

    def __init__(self, connection: ApiConnection) -> None:
        self._inner = connection.transport
        self.queries: list[dict[str, str]] = []

    def get(
        self, path: str, query: Sequence[tuple[str, str]], *, timeout: tuple[float, float]
    ) -> Response:
        self.queries.append(dict(query))
        return self._inner.get(path, query, timeout=timeout)

    def lists(self) -> list[dict[str, str]]:
        return [q for q in self.queries if q.get("watch") != "true"]

    def relists(self) -> int:
        """How many lists were started (first pages)."""
        return len([q for q in self.lists() if "continue" not in q])

    def watches(self) -> list[dict[str, str]]:
        return [q for q in self.queries if q.get("watch") == "true"]


@dataclass
class Cluster:
    server: TestAPIServer
    transport: RecordingTransport
    reflectors: list[Reflector[Any]] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.server.store

    def reflect(self, resource: Resource[Any], settings: WatchSettings = FAST) -> Mirror:
        mirror = Mirror()
        reflector = Reflector(resource, self.transport, mirror, settings=settings)
        self.reflectors.append(reflector)
        reflector.start()
        return mirror


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    server = TestAPIServer(Store(), bookmark_interval=0.05).start()
    connection = connect(ClientSettings(master=server.url))
    running = Cluster(server, RecordingTransport(connection))
    yield running
    for reflector in running.reflectors:
        reflector.stop()
    connection.close()
    server.stop()


# --- objects --------------------------------------------------------------------------------


def service(name: str, *, port: int = 80, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }


def endpoint_slice(name: str, service_name: str, *ips: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name, **labels},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        "ports": [{"name": "http", "port": 8080}],
    }


def create(store: Store, obj: dict[str, Any]) -> None:
    kind = resources.SERVICES if obj["kind"] == "Service" else resources.ENDPOINT_SLICES
    store.create(kind, "default", copy.deepcopy(obj))


def replace(store: Store, obj: dict[str, Any]) -> None:
    kind = resources.SERVICES if obj["kind"] == "Service" else resources.ENDPOINT_SLICES
    store.replace(kind, "default", obj["metadata"]["name"], copy.deepcopy(obj))


def delete(store: Store, kind: str, name: str) -> None:
    resource = resources.SERVICES if kind == "Service" else resources.ENDPOINT_SLICES
    store.delete(resource, "default", name)


def addresses(value: EndpointSlice) -> list[str]:
    return [str(endpoint.address) for endpoint in value.endpoints]


# --- scenarios ------------------------------------------------------------------------------


@pytest.mark.parametrize("service_first", [True, False], ids=["service first", "slice first"])
def test_service_and_its_endpoints_in_either_order(cluster: Cluster, service_first: bool) -> None:
    services = cluster.reflect(SERVICES)
    slices = cluster.reflect(ENDPOINT_SLICES)
    objects = [service("web"), endpoint_slice("web-1", "web", "10.244.0.5")]
    for obj in objects if service_first else reversed(objects):
        create(cluster.store, obj)
    services.wait(lambda state: "default/web" in state)
    slices.wait(lambda state: "default/web-1" in state)
    assert isinstance(services.state["default/web"], Service)
    assert addresses(slices.state["default/web-1"]) == ["10.244.0.5"]


def test_scale_up_and_down_then_delete_until_empty(cluster: Cluster) -> None:
    create(cluster.store, service("web"))
    create(cluster.store, endpoint_slice("web-1", "web", "10.244.0.1"))
    slices = cluster.reflect(ENDPOINT_SLICES)
    services = cluster.reflect(SERVICES)
    slices.wait(lambda state: "default/web-1" in state)

    ips = [f"10.244.0.{i}" for i in range(1, 6)]
    replace(cluster.store, endpoint_slice("web-1", "web", *ips))
    slices.wait(lambda state: addresses(state["default/web-1"]) == ips)
    replace(cluster.store, endpoint_slice("web-1", "web", "10.244.0.3"))
    slices.wait(lambda state: addresses(state["default/web-1"]) == ["10.244.0.3"])

    delete(cluster.store, "EndpointSlice", "web-1")
    delete(cluster.store, "Service", "web")
    slices.wait(lambda state: not state)
    services.wait(lambda state: not state)
    assert slices.calls[-1] == ("delete", "default/web-1")
    assert services.calls[-1] == ("delete", "default/web")


def test_selectors_leave_out_other_proxies_and_headless_slices(cluster: Cluster) -> None:
    create(cluster.store, service("mine"))
    create(cluster.store, service("theirs", **{"service.kubernetes.io/service-proxy-name": "x"}))
    create(cluster.store, endpoint_slice("mine-1", "mine", "10.244.0.1"))
    headless = {"service.kubernetes.io/headless": ""}
    create(cluster.store, endpoint_slice("dns-1", "dns", "10.244.0.2", **headless))
    services = cluster.reflect(SERVICES)
    slices = cluster.reflect(ENDPOINT_SLICES)
    services.wait(lambda state: bool(state))
    slices.wait(lambda state: bool(state))
    assert sorted(services.state) == ["default/mine"]
    assert sorted(slices.state) == ["default/mine-1"]


def test_pagination_is_used(cluster: Cluster) -> None:
    for i in range(7):
        create(cluster.store, service(f"svc-{i}"))
    services = cluster.reflect(SERVICES)
    services.wait(lambda state: len(state) == 7)
    pages = cluster.transport.lists()
    assert len(pages) == 4  # 2 + 2 + 2 + 1 with a limit of 2
    assert [("continue" in q) for q in pages] == [False, True, True, True]
    assert services.calls[0][0] == "replace" and services.calls.count(("replace", "")) == 0


def test_a_watch_cut_mid_stream_resumes_from_the_last_resource_version(cluster: Cluster) -> None:
    services = cluster.reflect(SERVICES)
    services.wait(lambda state: True)
    create(cluster.store, service("a"))
    services.wait(lambda state: "default/a" in state)
    # The next event is cut halfway through its JSON; the one after goes through.
    cluster.server.faults.truncate(1)
    create(cluster.store, service("b"))
    create(cluster.store, service("c"))
    services.wait(lambda state: {"default/b", "default/c"} <= state.keys())
    cluster.server.cut_watches()
    create(cluster.store, service("d"))
    services.wait(lambda state: "default/d" in state)

    assert [call for call in services.calls if call[0] != "replace"] == [
        ("upsert", "default/a"),
        ("upsert", "default/b"),
        ("upsert", "default/c"),
        ("upsert", "default/d"),
    ]
    assert cluster.transport.relists() == 1  # resumed, never relisted
    assert len(cluster.transport.watches()) >= 3


def test_gone_relists_and_objects_deleted_meanwhile_become_deletions(cluster: Cluster) -> None:
    for name in ("a", "b", "c"):
        create(cluster.store, service(name))
    services = cluster.reflect(SERVICES)
    services.wait(lambda state: len(state) == 3)

    cluster.server.go_away()
    delete(cluster.store, "Service", "a")
    delete(cluster.store, "Service", "b")
    create(cluster.store, service("d"))
    cluster.store.compact()  # the watch's resourceVersion is now too old: 410 Gone
    cluster.server.come_back()

    services.wait(lambda state: sorted(state) == ["default/c", "default/d"])
    assert ("delete", "default/a") in services.calls
    assert ("delete", "default/b") in services.calls
    assert cluster.transport.relists() == 2


def test_gone_as_an_error_event_relists(cluster: Cluster) -> None:
    create(cluster.store, service("a"))
    services = cluster.reflect(SERVICES)
    services.wait(lambda state: "default/a" in state)
    cluster.server.faults.watch_gone(1)
    cluster.server.cut_watches()
    create(cluster.store, service("b"))
    services.wait(lambda state: "default/b" in state)
    assert cluster.transport.relists() == 2


def test_api_server_down_for_a_while_keeps_state_and_catches_up(cluster: Cluster) -> None:
    create(cluster.store, service("a"))
    services = cluster.reflect(SERVICES)
    services.wait(lambda state: "default/a" in state)

    cluster.server.go_away()
    create(cluster.store, service("b"))
    # Several attempts fail while the server is away; the state stays as it was.
    before = len(cluster.transport.watches())
    eventually(lambda: len(cluster.transport.watches()) >= before + 3, "three failed watches")
    assert sorted(services.state) == ["default/a"]
    assert services.calls == [("replace", "default/a")]
    cluster.server.come_back()
    services.wait(lambda state: sorted(state) == ["default/a", "default/b"])
    assert cluster.transport.relists() == 1  # caught up by watching, not relisting


def test_a_bad_object_among_good_ones(cluster: Cluster) -> None:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        create(cluster.store, endpoint_slice("good-1", "good", "10.244.0.1"))
        create(cluster.store, endpoint_slice("bad-1", "bad", "10.244.0.300"))
        slices = cluster.reflect(ENDPOINT_SLICES)
        slices.wait(lambda state: "default/good-1" in state)
        create(cluster.store, endpoint_slice("good-2", "good", "10.244.0.2"))
        replace(cluster.store, endpoint_slice("bad-1", "bad", "10.244.0.301"))
        create(cluster.store, endpoint_slice("good-3", "good", "10.244.0.3"))
        slices.wait(lambda state: "default/good-3" in state)
    finally:
        logger.remove(sink)
    assert sorted(slices.state) == ["default/good-1", "default/good-2", "default/good-3"]
    bad = [m for m in messages if "bad-1" in m]
    assert bad == [
        "skipping invalid EndpointSlice default/bad-1: endpoints[0].addresses[0]:"
        " invalid IP address '10.244.0.300'",
        "skipping invalid EndpointSlice default/bad-1: endpoints[0].addresses[0]:"
        " invalid IP address '10.244.0.301'",
    ]


def test_bookmarks_advance_the_resource_version(cluster: Cluster) -> None:
    create(cluster.store, service("a"))
    services = cluster.reflect(SERVICES)
    services.wait(lambda state: "default/a" in state)
    reflector = cluster.reflectors[0]
    listed = int(reflector.resource_version)
    # Writes to other resources move the server's resourceVersion; bookmarks carry it.
    for i in range(3):
        cluster.store.create(resources.NODES, "", {"metadata": {"name": f"n{i}"}})
    target = cluster.store.resource_version
    assert target > listed
    eventually(lambda: int(reflector.resource_version) >= target, "a bookmark at the newest rv")
    assert services.calls == [("replace", "default/a")]


def test_this_nodes_node(cluster: Cluster) -> None:
    labels = {"topology.kubernetes.io/zone": "z1"}
    cluster.store.create(resources.NODES, "", {"metadata": {"name": "n1", "labels": labels}})
    cluster.store.create(resources.NODES, "", {"metadata": {"name": "n2"}})
    nodes = cluster.reflect(node_resource("n1"))
    nodes.wait(lambda state: "n1" in state)
    assert sorted(nodes.state) == ["n1"]
    node = nodes.state["n1"]
    assert isinstance(node, Node) and node.zone == "z1" and node.eligible
    taint = {"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}
    cluster.store.replace(
        resources.NODES,
        "",
        "n1",
        {"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": [taint]}},
    )
    nodes.wait(lambda state: not state["n1"].eligible)


def test_stop_is_prompt_while_a_watch_waits(cluster: Cluster) -> None:
    services = cluster.reflect(SERVICES, WatchSettings(min_watch_timeout=600))
    services.wait(lambda state: True)
    reflector = cluster.reflectors[0]
    eventually(lambda: bool(cluster.transport.watches()), "a watch request")
    reflector.stop(timeout=1.0)
    assert reflector._thread is not None and not reflector._thread.is_alive()
