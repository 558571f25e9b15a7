"""Each fault the test API server can show, seen from a client: Python calls and HTTP control."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from ipvsproxy_testkit.testapi import Faults, Store, TestAPIServer
from ipvsproxy_testkit.testapi.resources import SERVICES
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


def service(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}


@pytest.fixture
def server() -> Iterator[TestAPIServer]:
    with TestAPIServer(Store()) as running:
        running.store.load(
            {"apiVersion": "v1", "kind": "Service", **service(f"svc-{i}")} for i in range(3)
        )
        yield running


@pytest.fixture
def core(server: TestAPIServer) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = server.url
    configuration.retries = 0  # a refused connection must show, not be retried
    return client.CoreV1Api(client.ApiClient(configuration))


def control(server: TestAPIServer, action: str, **args: object) -> dict[str, Any]:
    """POST a control action (GET for the `state` action)."""
    request = urllib.request.Request(
        f"{server.url}/testapi/{action}",
        data=None if action == "state" else json.dumps(args).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if action == "state" else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


def first_event_then(core: client.CoreV1Api, action: Any) -> list[str]:
    """Watch Services; after the first event run action; return the event types seen."""
    seen: list[str] = []
    for event in watch.Watch().stream(core.list_service_for_all_namespaces, timeout_seconds=10):
        seen.append(event["type"])
        if len(seen) == 1:
            action()
    return seen


@pytest.mark.parametrize("over_http", [False, True])
def test_cut_watches_ends_open_streams_abruptly(
    server: TestAPIServer, core: client.CoreV1Api, over_http: bool
) -> None:
    def cut() -> None:
        if over_http:
            control(server, "faults/cut-watches")
        else:
            server.cut_watches()

    with pytest.raises(urllib3.exceptions.ProtocolError):
        first_event_then(core, cut)
    # New watches and lists work as before.
    assert len(core.list_service_for_all_namespaces().items) == 3


@pytest.mark.parametrize("over_http", [False, True])
def test_delay_holds_every_response(
    server: TestAPIServer, core: client.CoreV1Api, over_http: bool
) -> None:
    if over_http:
        control(server, "faults/delay", seconds=5)
    else:
        server.faults.delay(5)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
        core.list_service_for_all_namespaces(_request_timeout=0.2)
    assert isinstance(caught.value.reason, urllib3.exceptions.ReadTimeoutError)
    control(server, "faults/clear")
    assert len(core.list_service_for_all_namespaces().items) == 3


def test_fail_answers_errors_for_the_next_requests(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    control(server, "faults/fail", count=2)
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            core.list_service_for_all_namespaces()
        assert caught.value.status == 500
        assert json.loads(caught.value.body)["reason"] == "InternalError"
    assert len(core.list_service_for_all_namespaces().items) == 3

    server.faults.fail(count=1, code=503)
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_service("svc-0", "default")
    assert caught.value.status == 503


def test_fail_for_a_while_ends_on_its_clock() -> None:
    now = [100.0]
    faults = Faults(clock=lambda: now[0])
    faults.fail(seconds=5)
    assert faults.take_failure() == 500
    now[0] = 104.9
    assert faults.take_failure() == 500
    now[0] = 105.0
    assert faults.take_failure() is None


def test_fail_for_a_while_over_http(server: TestAPIServer, core: client.CoreV1Api) -> None:
    control(server, "faults/fail", seconds=60, code=500)
    for _ in range(3):
        with pytest.raises(ApiException):
            core.list_node()
    # Control requests are never failed, so the fault can be cleared.
    assert control(server, "state")["faults"]["failSecondsLeft"] > 0
    control(server, "faults/clear")
    assert core.list_node().items == []


@pytest.mark.parametrize("over_http", [False, True])
def test_watch_gone_answers_410_to_the_next_watch(
    server: TestAPIServer, core: client.CoreV1Api, over_http: bool
) -> None:
    if over_http:
        control(server, "faults/watch-gone", count=1)
    else:
        server.faults.watch_gone(1)
    with pytest.raises(ApiException) as caught:
        first_event_then(core, lambda: None)
    assert caught.value.status == 410
    # Lists are not affected, and the next watch works.
    assert len(core.list_service_for_all_namespaces().items) == 3
    seen: list[str] = []
    stream = watch.Watch()
    for event in stream.stream(core.list_service_for_all_namespaces, timeout_seconds=10):
        seen.append(event["type"])
        if len(seen) == 3:
            stream.stop()
    assert seen == ["ADDED"] * 3


def test_go_away_refuses_connections_and_comes_back_with_the_same_state(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    before = core.list_service_for_all_namespaces()
    server.go_away()
    with pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
        core.list_service_for_all_namespaces()
    assert isinstance(caught.value.reason, urllib3.exceptions.NewConnectionError)
    server.come_back()
    after = core.list_service_for_all_namespaces()
    assert after.metadata.resource_version == before.metadata.resource_version
    assert [s.metadata.uid for s in after.items] == [s.metadata.uid for s in before.items]


def test_go_away_cuts_open_watches(server: TestAPIServer, core: client.CoreV1Api) -> None:
    with pytest.raises(urllib3.exceptions.ProtocolError):
        first_event_then(core, server.go_away)
    server.come_back()


def test_go_away_over_http_comes_back_by_itself(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    # The server goes away just after answering the control request, so a quick client
    # may still be served once: wait to see it refuse, then to see it answer again.
    assert control(server, "faults/go-away", seconds=3.0) == {"away": 3.0}
    refused = 0
    for _ in range(400):  # short real waits until it has been away and is back
        try:
            core.list_node(_request_timeout=1)
            if refused:
                break
        except urllib3.exceptions.MaxRetryError:
            refused += 1
        time.sleep(0.05)
    else:
        pytest.fail("the server did not go away and come back")
    assert refused > 0


def test_compact_over_http_expires_old_resource_versions(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    old = core.list_service_for_all_namespaces().metadata.resource_version
    core.create_namespaced_service("default", service("new"))
    answer = control(server, "faults/compact")
    assert answer["horizon"] == server.store.resource_version
    with pytest.raises(ApiException) as caught:
        for _ in watch.Watch().stream(
            core.list_service_for_all_namespaces, resource_version=old, timeout_seconds=10
        ):
            pass
    assert caught.value.status == 410


def test_truncate_cuts_a_response_mid_json(server: TestAPIServer, core: client.CoreV1Api) -> None:
    control(server, "faults/truncate", count=1)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        core.list_service_for_all_namespaces()
    assert len(core.list_service_for_all_namespaces().items) == 3


def test_truncate_cuts_a_watch_event_mid_json(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    response = core.list_service_for_all_namespaces(watch=True, _preload_content=False)
    first = response.readline()  # the stream is open; the next event will be cut
    assert json.loads(first)["type"] == "ADDED"
    server.faults.truncate(1)
    server.store.create(SERVICES, "default", service("cut"))  # not over HTTP: that would be cut
    rest = b""
    with pytest.raises(urllib3.exceptions.ProtocolError):
        while chunk := response.read(1):
            rest += chunk
    response.release_conn()
    with pytest.raises(json.JSONDecodeError):
        json.loads(rest.splitlines()[-1])


def test_empty_list_answers_no_items_once(server: TestAPIServer, core: client.CoreV1Api) -> None:
    control(server, "faults/empty-list", count=1)
    wrong = core.list_service_for_all_namespaces()
    assert wrong.items == [] and wrong.metadata.resource_version == str(
        server.store.resource_version
    )
    assert len(core.list_service_for_all_namespaces().items) == 3


def test_control_rejects_unknown_actions(server: TestAPIServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        control(server, "faults/explode")
    with caught.value:
        assert caught.value.code == 404
        assert json.load(caught.value)["reason"] == "NotFound"


def test_control_rejects_bad_arguments_and_loads_objects(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        control(server, "faults/delay", seconds="soon")
    with caught.value:
        assert caught.value.code == 400
    answer = control(
        server,
        "load",
        kind="List",
        items=[{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}],
    )
    assert answer["warnings"] == [] and answer["resourceVersion"] == server.store.resource_version
    assert [n.metadata.name for n in core.list_node().items] == ["node-1"]
    assert control(server, "state")["counts"]["nodes"] == 1
