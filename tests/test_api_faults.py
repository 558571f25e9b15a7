"""API server faults against `run`'s wiring in one process (test API server, real client
and reflectors, the agent on the fake kernel; see daemonrig.py).

In each: the Services the node already serves never lose a real server while the fault
lasts (an `Outages` monitor samples the kernel the whole time, as a client sending
traffic would), /healthz answers 200 (nothing the agent was asked to do is left undone:
kube-proxy's meaning), and a change made during the fault lands once it ends, or while it
lasts when the server still answers, slowly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from daemonrig import Daemon, Outages, eps, metric, running_daemon, serving, svc, wait_for
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, NODES, SERVICES
from loguru import logger

WEB, CART = "10.96.0.10", "10.96.0.11"
WEB_SERVERS = {"10.244.1.1:8080", "10.244.2.2:8080"}
FAULT_WINDOW = 1.0  # seconds a fault lasts before the test checks the node and ends it


@pytest.fixture
def logs() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="DEBUG", format="{message}")
    yield messages
    logger.remove(sink)


@pytest.fixture
def api() -> Iterator[TestAPIServer]:
    with TestAPIServer(bookmark_interval=0.2) as server:
        store = server.store
        store.create(NODES, "", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        store.create(SERVICES, "default", svc("web", WEB))
        store.create(ENDPOINT_SLICES, "default", eps("web-1", "web", "10.244.1.1", "10.244.2.2"))
        store.create(SERVICES, "default", svc("cart", CART))
        store.create(ENDPOINT_SLICES, "default", eps("cart-1", "cart", "10.244.3.3"))
        yield server


@pytest.fixture
def daemon(api: TestAPIServer, tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(api, tmp_path) as running:
        wait_for(lambda: serving(running.kernel, WEB) == WEB_SERVERS, what="web served")
        wait_for(lambda: serving(running.kernel, CART) == {"10.244.3.3:8080"}, what="cart")
        yield running


def move_cart(api: TestAPIServer, ip: str) -> None:
    api.store.replace(ENDPOINT_SLICES, "default", "cart-1", eps("cart-1", "cart", ip))


def cart_lands(daemon: Daemon, ip: str, timeout: float = 15.0) -> None:
    wait_for(lambda: serving(daemon.kernel, CART) == {f"{ip}:8080"}, timeout, f"cart on {ip}")


def during_fault(daemon: Daemon) -> None:
    """What must hold while the API server misbehaves: the node keeps what it had."""
    time.sleep(FAULT_WINDOW)  # the fault's duration, not a wait on the code's timers
    assert serving(daemon.kernel, WEB) == WEB_SERVERS
    assert serving(daemon.kernel, CART) == {"10.244.3.3:8080"}
    status, body = daemon.healthz()
    assert status == 200 and body["healthy"] is True


Fault = tuple[Callable[[TestAPIServer], None], Callable[[TestAPIServer], None]]

FAULTS: dict[str, Fault] = {
    "down": (lambda api: api.go_away(), lambda api: api.come_back()),
    "500s": (
        lambda api: (api.faults.fail(seconds=600, code=500), api.cut_watches()),
        lambda api: api.faults.fail(),
    ),
    "503s": (
        lambda api: (api.faults.fail(seconds=600, code=503), api.cut_watches()),
        lambda api: api.faults.fail(),
    ),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_api_server_unavailable_keeps_the_node_and_catches_up(
    api: TestAPIServer, daemon: Daemon, name: str
) -> None:
    begin, end = FAULTS[name]
    with Outages(daemon.kernel, {WEB: WEB_SERVERS}) as outages:
        begin(api)
        move_cart(api, "10.244.3.4")  # made while the agent cannot see it
        during_fault(daemon)
        end(api)
        cart_lands(daemon, "10.244.3.4")
    assert outages.failures == [] and outages.samples > 10
    assert daemon.healthz()[0] == 200


def test_slow_answers_still_land(api: TestAPIServer, daemon: Daemon) -> None:
    with Outages(daemon.kernel, {WEB: WEB_SERVERS}) as outages:
        api.faults.delay(1.5)  # seconds per response
        api.cut_watches()
        move_cart(api, "10.244.3.4")
        cart_lands(daemon, "10.244.3.4")  # while every answer is still slow
        api.faults.delay(0)
    assert outages.failures == []
    assert daemon.healthz()[0] == 200


def test_watches_cut_every_few_hundred_milliseconds_lose_no_change(
    api: TestAPIServer, daemon: Daemon
) -> None:
    cutting = threading.Event()

    def cut() -> None:
        while not cutting.wait(0.25):
            api.cut_watches()

    cutter = threading.Thread(target=cut, daemon=True)
    with Outages(daemon.kernel, {WEB: WEB_SERVERS}) as outages:
        cutter.start()
        for step in range(40):
            move_cart(api, f"10.244.4.{step + 1}")
            time.sleep(0.05)  # a change every 50 ms, while watches are cut
        cart_lands(daemon, "10.244.4.40")
        cutting.set()
        cutter.join()
    assert outages.failures == []


def test_gone_in_a_loop_relists_backs_off_and_catches_up(
    api: TestAPIServer, daemon: Daemon
) -> None:
    with Outages(daemon.kernel, {WEB: WEB_SERVERS}) as outages:
        api.faults.watch_gone(count=15)  # about 5 per reflector, each straight after a list
        api.cut_watches()
        move_cart(api, "10.244.3.4")
        cart_lands(daemon, "10.244.3.4")
        wait_for(lambda: api.faults.state()["watchGone"] == 0, what="the fault used up")
        move_cart(api, "10.244.3.5")
        cart_lands(daemon, "10.244.3.5")
    assert outages.failures == []


def test_answers_cut_mid_json(api: TestAPIServer, daemon: Daemon, logs: list[str]) -> None:
    with Outages(daemon.kernel, {WEB: WEB_SERVERS}) as outages:
        api.faults.truncate(count=6)
        api.cut_watches()
        move_cart(api, "10.244.3.4")
        cart_lands(daemon, "10.244.3.4")
        wait_for(lambda: api.faults.state()["truncate"] == 0, what="the fault used up")
        move_cart(api, "10.244.3.5")
        cart_lands(daemon, "10.244.3.5")
    assert outages.failures == []
    assert not any("Traceback" in line for line in logs)


def test_an_empty_relist_by_mistake_wipes_nothing(
    api: TestAPIServer, daemon: Daemon, logs: list[str]
) -> None:
    with Outages(daemon.kernel, {WEB: WEB_SERVERS, CART: {"10.244.3.3:8080"}}) as outages:
        api.faults.empty_list(count=3)  # the next list of each reflector comes back empty
        api.faults.watch_gone(count=3)  # and each relists
        api.cut_watches()
        wait_for(lambda: api.faults.state()["emptyList"] == 0, what="the empty lists served")
        time.sleep(FAULT_WINDOW)  # past the confirm delay: the good lists are in
    assert outages.failures == [] and outages.samples > 10
    held = [line for line in logs if "keeping them and listing again" in line]
    assert len(held) >= 2, held  # Services and EndpointSlices, each held back once
    assert not any("list confirmed" in line for line in logs)
    move_cart(api, "10.244.3.4")  # and the watches are back
    cart_lands(daemon, "10.244.3.4")
    assert serving(daemon.kernel, WEB) == WEB_SERVERS


def test_a_true_mass_deletion_is_confirmed_then_applied(
    api: TestAPIServer, daemon: Daemon, logs: list[str]
) -> None:
    api.go_away()
    for name in ("web", "cart"):
        api.store.delete(ENDPOINT_SLICES, "default", f"{name}-1")
        api.store.delete(SERVICES, "default", name)
    api.store.compact()  # the reflectors must relist when they come back
    api.come_back()
    wait_for(lambda: not daemon.kernel.services, what="every virtual server gone")
    assert any("list confirmed" in line for line in logs)
    assert daemon.healthz()[0] == 200


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_trigger_times_from_skewed_clocks_keep_the_latency_metric_sane(
    api: TestAPIServer, daemon: Daemon
) -> None:
    name = "kubeproxy_network_programming_duration_seconds"
    family = '{ip_family="IPv4"}'  # one series per family, as kube-proxy's two proxiers
    before = metric(daemon.metrics(), f"{name}_count{family}")
    now = time.time()
    # The controller's clock an hour ahead, then a day behind (before the proxy started).
    for step, trigger in enumerate((now + 3600, now - 86400)):
        slice_ = eps(
            "cart-1",
            "cart",
            f"10.244.5.{step + 1}",
            annotations={"endpoints.kubernetes.io/last-change-trigger-time": _rfc3339(trigger)},
        )
        api.store.replace(ENDPOINT_SLICES, "default", "cart-1", slice_)
        cart_lands(daemon, f"10.244.5.{step + 1}")
    text = daemon.metrics()
    # The future one counts as 0 s; the one before the start is not this proxy's to count.
    assert metric(text, f"{name}_count{family}") - before == 1
    total = metric(text, f"{name}_sum{family}")
    assert 0 <= total < 60, total
