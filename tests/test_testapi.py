"""The test API server's list and watch semantics, seen through the real `kubernetes` client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.request import urlopen

import pytest
from ipvsproxy_testkit.testapi import Store, TestAPIServer
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


def service(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"ports": [{"port": 80}]},
    }


def endpoint_slice(name: str, service_name: str, *ips: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        "ports": [{"port": 8080}],
    }


@pytest.fixture
def server() -> Iterator[TestAPIServer]:
    with TestAPIServer(Store(), bookmark_interval=0.05) as running:
        yield running


@pytest.fixture
def core(server: TestAPIServer) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = server.url
    return client.CoreV1Api(client.ApiClient(configuration))


@pytest.fixture
def discovery(core: client.CoreV1Api) -> client.DiscoveryV1Api:
    return client.DiscoveryV1Api(core.api_client)


def events(func: Any, *, count: int, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """The first count events of a watch (type, raw object); the timeout is only a guard."""
    kwargs.setdefault("timeout_seconds", 10)
    stream = watch.Watch()
    seen: list[tuple[str, dict[str, Any]]] = []
    for event in stream.stream(func, **kwargs):
        seen.append((event["type"], event.get("raw_object", event["object"])))
        if len(seen) == count:
            stream.stop()
    return seen


def names(items: list[Any]) -> list[str]:
    return [f"{item.metadata.namespace}/{item.metadata.name}" for item in items]


# --- list ---------------------------------------------------------------------------------------


def test_list_pages_show_the_first_pages_snapshot(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    server.store.load(service(f"svc-{i:02}", "ns-a" if i % 2 else "ns-b") for i in range(25))

    first = core.list_service_for_all_namespaces(limit=10)
    assert len(first.items) == 10
    assert first.metadata._continue
    # Changes after the first page must not show in the later pages.
    core.create_namespaced_service("ns-b", service("svc-99", "ns-b"))
    core.delete_namespaced_service("svc-23", "ns-a")

    pages = [first]
    while pages[-1].metadata._continue:
        pages.append(
            core.list_service_for_all_namespaces(limit=10, _continue=pages[-1].metadata._continue)
        )
    listed = [name for page in pages for name in names(page.items)]

    assert [len(page.items) for page in pages] == [10, 10, 5]
    assert {page.metadata.resource_version for page in pages} == {first.metadata.resource_version}
    assert listed == sorted(listed)
    assert "ns-b/svc-99" not in listed
    assert "ns-a/svc-23" in listed
    assert len(set(listed)) == 25
    # A fresh list sees the changes.
    fresh = names(core.list_service_for_all_namespaces().items)
    assert "ns-b/svc-99" in fresh and "ns-a/svc-23" not in fresh


def test_list_items_omit_kind_and_api_version_as_the_real_api_does(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    core.create_namespaced_service("default", service("web"))
    response = core.list_namespaced_service("default", _preload_content=False)
    body = json.loads(response.data)

    assert body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"] == {"resourceVersion": body["metadata"]["resourceVersion"]}
    [item] = body["items"]
    assert "kind" not in item and "apiVersion" not in item
    assert item["metadata"]["uid"] and item["metadata"]["creationTimestamp"]
    assert item["spec"]["clusterIP"].startswith("10.96.")
    assert item["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    got = core.read_namespaced_service("web", "default", _preload_content=False)
    assert json.loads(got.data)["kind"] == "Service"


def test_continue_token_older_than_the_log_is_410_expired(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    server.store.load(service(f"svc-{i}") for i in range(5))
    first = core.list_namespaced_service("default", limit=2)
    core.create_namespaced_service("default", service("later"))
    server.store.compact()

    with pytest.raises(ApiException) as caught:
        core.list_namespaced_service("default", limit=2, _continue=first.metadata._continue)

    assert caught.value.status == 410
    assert json.loads(caught.value.body)["reason"] == "Expired"


def test_list_with_resource_version_0_ignores_limit(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    server.store.load(service(f"svc-{i}") for i in range(5))
    listed = core.list_namespaced_service("default", limit=2, resource_version="0")
    assert len(listed.items) == 5 and not listed.metadata._continue


def test_label_selectors(server: TestAPIServer, core: client.CoreV1Api) -> None:
    server.store.load(
        [
            service("plain"),
            service("other-proxy", **{"service.kubernetes.io/service-proxy-name": "x"}),
            service("headless", **{"service.kubernetes.io/headless": ""}),
            service("web", app="web", tier="front"),
            service("db", app="db", tier="back"),
        ]
    )

    def selected(selector: str) -> list[str]:
        return sorted(
            s.metadata.name
            for s in core.list_service_for_all_namespaces(label_selector=selector).items
        )

    kube_proxy = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
    assert selected(kube_proxy) == ["db", "plain", "web"]
    assert selected("app=web") == ["web"]
    assert selected("app==web") == ["web"]
    assert selected("app!=web") == ["db", "headless", "other-proxy", "plain"]
    assert selected("app in (web, db)") == ["db", "web"]
    assert selected("app notin (web)") == ["db", "headless", "other-proxy", "plain"]
    assert selected("tier") == ["db", "web"]
    assert selected("app=web,tier=back") == []
    with pytest.raises(ApiException) as caught:
        selected("app in (")
    assert caught.value.status == 400


def test_field_selector_on_name(server: TestAPIServer, core: client.CoreV1Api) -> None:
    server.store.load(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}} for name in ("a", "b")
    )
    nodes = core.list_node(field_selector="metadata.name=b").items
    assert [n.metadata.name for n in nodes] == ["b"]
    assert len(core.list_node(field_selector="metadata.name!=b").items) == 1


# --- watch --------------------------------------------------------------------------------------


def test_watch_replays_changes_after_a_resource_version(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    core.create_namespaced_service("default", service("before"))
    start = core.list_namespaced_service("default").metadata.resource_version
    core.create_namespaced_service("default", service("web"))
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"v": "2"}}})
    core.delete_namespaced_service("web", "default")

    seen = events(
        core.list_namespaced_service, namespace="default", count=3, resource_version=start
    )

    assert [(kind, obj["metadata"]["name"]) for kind, obj in seen] == [
        ("ADDED", "web"),
        ("MODIFIED", "web"),
        ("DELETED", "web"),
    ]
    versions = [int(obj["metadata"]["resourceVersion"]) for _, obj in seen]
    assert versions == sorted(versions) and versions[0] > int(start)
    assert seen[1][1]["metadata"]["labels"] == {"v": "2"}
    assert all(obj["kind"] == "Service" for _, obj in seen)


def test_watch_without_resource_version_starts_with_the_current_objects(
    server: TestAPIServer, discovery: client.DiscoveryV1Api
) -> None:
    server.store.load([endpoint_slice("web-1", "web", "10.0.0.1")])

    seen = events(discovery.list_endpoint_slice_for_all_namespaces, count=1)

    assert seen[0][0] == "ADDED" and seen[0][1]["metadata"]["name"] == "web-1"


def test_watch_sees_writes_made_while_it_is_open(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    start = core.list_service_for_all_namespaces().metadata.resource_version
    core.create_namespaced_service("default", service("first"))
    stream = watch.Watch()
    seen: list[str] = []
    for event in stream.stream(
        core.list_service_for_all_namespaces, resource_version=start, timeout_seconds=10
    ):
        seen.append(f"{event['type']} {event['object'].metadata.name}")
        if len(seen) == 1:  # replayed; the next one is written while the stream is open
            core.create_namespaced_service("default", service("second"))
        else:
            stream.stop()
    assert seen == ["ADDED first", "ADDED second"]


def test_bytes_sent_count_list_bodies_and_watch_events(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    core.create_namespaced_service("default", service("first"))
    listed = urlopen(server.url + "/api/v1/services").read()
    assert server.bytes_sent() == {"list": len(listed), "watch": 0}
    events(core.list_service_for_all_namespaces, count=1, resource_version="0")
    watched = server.bytes_sent()["watch"]
    # One ADDED line carrying the object, nothing else.
    assert watched > len(b'{"type":"ADDED","object":}')
    state = json.loads(urlopen(server.url + "/testapi/state").read())
    assert state["bytesSent"] == {"list": len(listed), "watch": watched}


def test_watch_from_a_compacted_resource_version_is_410_expired(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    start = core.list_service_for_all_namespaces().metadata.resource_version
    core.create_namespaced_service("default", service("web"))
    server.store.compact()

    with pytest.raises(ApiException) as caught:
        events(core.list_service_for_all_namespaces, count=1, resource_version=start)

    assert caught.value.status == 410
    assert "Expired" in str(caught.value.reason)


def test_bookmarks_carry_only_the_resource_version(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    start = core.list_service_for_all_namespaces().metadata.resource_version
    core.create_namespaced_service("default", service("web"))

    seen = events(
        core.list_service_for_all_namespaces,
        count=2,
        resource_version=start,
        allow_watch_bookmarks=True,
        deserialize=False,
    )

    assert seen[0][0] == "ADDED"
    kind, bookmark = seen[1]
    assert kind == "BOOKMARK"
    assert bookmark == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(server.store.resource_version)},
    }


def test_timeout_seconds_ends_the_stream(server: TestAPIServer, core: client.CoreV1Api) -> None:
    start = core.list_service_for_all_namespaces().metadata.resource_version
    seen = events(
        core.list_service_for_all_namespaces, count=1, resource_version=start, timeout_seconds=1
    )
    assert seen == []


def test_objects_entering_and_leaving_a_selector_are_added_and_deleted(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    core.create_namespaced_service("default", service("web", app="web"))
    start = core.list_service_for_all_namespaces().metadata.resource_version
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"app": "other"}}})
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"app": "web"}}})

    seen = events(
        core.list_service_for_all_namespaces,
        count=2,
        resource_version=start,
        label_selector="app=web",
    )

    assert [kind for kind, _ in seen] == ["DELETED", "ADDED"]
    # DELETED carries the last state that matched, at the change's resourceVersion.
    assert seen[0][1]["metadata"]["labels"] == {"app": "web"}
    assert int(seen[0][1]["metadata"]["resourceVersion"]) == int(start) + 1


def test_field_selector_watches_one_node(server: TestAPIServer, core: client.CoreV1Api) -> None:
    start = core.list_node().metadata.resource_version
    for name in ("a", "b"):
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    seen = events(core.list_node, count=1, resource_version=start, field_selector="metadata.name=b")
    assert [(kind, obj["metadata"]["name"]) for kind, obj in seen] == [("ADDED", "b")]


# --- writes -------------------------------------------------------------------------------------


def status_of(caught: pytest.ExceptionInfo[ApiException]) -> tuple[int, str]:
    body = json.loads(caught.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    return body["code"], body["reason"]


def test_write_errors_are_status_objects(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service("default", service("web"))
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_service("default", service("web"))
    assert status_of(caught) == (409, "AlreadyExists")

    stale = service("web")
    stale["metadata"]["resourceVersion"] = created.metadata.resource_version
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_service("web", "default", stale)
    assert status_of(caught) == (409, "Conflict")

    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_service("missing", "default")
    assert status_of(caught) == (404, "NotFound")


def test_replace_keeps_allocated_cluster_ip_and_an_unchanged_write_is_no_event(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    created = core.create_namespaced_service("default", service("web"))
    replaced = core.replace_namespaced_service("web", "default", service("web", app="web"))
    assert replaced.spec.cluster_ip == created.spec.cluster_ip
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)

    before = server.store.resource_version
    again = core.replace_namespaced_service("web", "default", service("web", app="web"))
    assert again.metadata.resource_version == replaced.metadata.resource_version
    assert server.store.resource_version == before


def test_protobuf_bodies_are_refused_as_unsupported(server: TestAPIServer) -> None:
    request = urllib.request.Request(
        f"{server.url}/api/v1/namespaces",
        data=b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace",
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value:
        assert caught.value.code == 415
        assert json.load(caught.value)["reason"] == "UnsupportedMediaType"


def test_serves_ipv6_loopback() -> None:
    with TestAPIServer(host="::1") as server:
        assert server.url.startswith("http://[::1]:")
        with urllib.request.urlopen(f"{server.url}/version", timeout=10) as response:
            assert json.load(response)["major"] == "1"


def test_a_table_watch_sends_one_row_per_event_and_columns_once(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    server.store.load([service("a"), service("b")])
    request = urllib.request.Request(
        f"{server.url}/api/v1/namespaces/default/services?watch=1&timeoutSeconds=10",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        first, second = json.loads(response.readline()), json.loads(response.readline())
    assert first["type"] == second["type"] == "ADDED"
    assert first["object"]["kind"] == "Table" and first["object"]["columnDefinitions"]
    assert second["object"]["columnDefinitions"] is None
    assert [event["object"]["rows"][0]["cells"][0] for event in (first, second)] == ["a", "b"]


def test_list_at_a_resource_version_with_a_limit_is_exact(
    server: TestAPIServer, core: client.CoreV1Api
) -> None:
    core.create_namespaced_service("default", service("old"))
    then = core.list_namespaced_service("default").metadata.resource_version
    core.create_namespaced_service("default", service("new"))
    core.delete_namespaced_service("old", "default")

    exact = core.list_namespaced_service("default", limit=10, resource_version=then)
    assert names(exact.items) == ["default/old"] and exact.metadata.resource_version == then
    # Without a limit the answer is anything not older: the latest.
    latest = core.list_namespaced_service("default", resource_version=then)
    assert names(latest.items) == ["default/new"]
    server.store.compact()
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_service("default", limit=10, resource_version=then)
    assert caught.value.status == 410
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_service("default", resource_version="999999")
    assert caught.value.status == 504
