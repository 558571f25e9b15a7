"""The test API server's store, selectors and patches, without HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ipvsproxy_testkit.testapi import ApiError, Store
from ipvsproxy_testkit.testapi.patch import apply_patch
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, NAMESPACES, NODES, SERVICES
from ipvsproxy_testkit.testapi.selectors import FieldSelector, LabelSelector, SelectorError
from ipvsproxy_testkit.testapi.tables import human_duration, table, wants_table

SMP = "application/strategic-merge-patch+json"


def service(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": 80}], **spec},
    }


# --- selectors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("a=1", {"a": "1"}, True),
        ("a=1", {"a": "2"}, False),
        ("a!=1", {}, True),
        ("a notin (1,2)", {"a": "3"}, True),
        ("a notin (1,2)", {"a": "2"}, False),
        ("a in (1, 2)", {"a": "2"}, True),
        ("a in (1, 2)", {}, False),
        ("a,!b", {"a": ""}, True),
        ("a,!b", {"a": "", "b": "x"}, False),
        ("example.com/key=v.1-x", {"example.com/key": "v.1-x"}, True),
        ("a=", {"a": ""}, True),
    ],
)
def test_label_selector_matches(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", ["a in ()", "a,,b", "a=b c", "-a", "a in (x"])
def test_label_selector_rejects(selector: str) -> None:
    with pytest.raises(SelectorError):
        LabelSelector.parse(selector)


def test_field_selector_reads_any_path() -> None:
    obj = {"metadata": {"name": "web"}, "spec": {"type": "NodePort", "unschedulable": True}}
    assert FieldSelector.parse("spec.type=NodePort,metadata.name!=db").matches(obj)
    assert FieldSelector.parse("spec.unschedulable=true").matches(obj)
    assert not FieldSelector.parse("spec.type==ClusterIP").matches(obj)
    with pytest.raises(SelectorError):
        FieldSelector.parse("spec.type")


# --- patches ------------------------------------------------------------------------------------


def test_strategic_merge_merges_ports_by_port_and_keeps_order() -> None:
    target = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    patch = {
        "spec": {
            "$setElementOrder/ports": [{"port": 443}, {"port": 8080}],
            "ports": [{"port": 80, "$patch": "delete"}, {"port": 8080, "name": "alt"}],
        }
    }
    assert apply_patch(SMP, target, patch) == {
        "spec": {"ports": [{"port": 443, "name": "https"}, {"port": 8080, "name": "alt"}]}
    }


def test_strategic_merge_directives() -> None:
    target = {"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}}
    patch = {
        "metadata": {
            "$deleteFromPrimitiveList/finalizers": ["a"],
            "finalizers": ["c"],
            "labels": {"$patch": "replace", "z": "3"},
        }
    }
    assert apply_patch(SMP, target, patch) == {
        "metadata": {"finalizers": ["b", "c"], "labels": {"z": "3"}}
    }
    retained = apply_patch(SMP, {"spec": {"a": 1, "b": 2}}, {"spec": {"$retainKeys": ["b"]}})
    assert retained == {"spec": {"b": 2}}


def test_merge_patch_replaces_lists_and_null_deletes() -> None:
    target = {"spec": {"ports": [{"port": 80}, {"port": 81}], "type": "NodePort"}}
    patch = {"spec": {"ports": [{"port": 82}], "type": None}}
    assert apply_patch("application/merge-patch+json", target, patch) == {
        "spec": {"ports": [{"port": 82}]}
    }


def test_json_patch_operations() -> None:
    target = {"a": [1, 2], "b": {"c": 1}}
    patch = [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "copy", "from": "/b", "path": "/d"},
        {"op": "move", "from": "/a/0", "path": "/e"},
        {"op": "remove", "path": "/b"},
        {"op": "test", "path": "/d/c", "value": 2},
    ]
    assert apply_patch("application/json-patch+json", target, patch) == {
        "a": [2, 3],
        "d": {"c": 2},
        "e": 1,
    }
    with pytest.raises(ApiError) as caught:
        apply_patch(
            "application/json-patch+json", target, [{"op": "test", "path": "/a", "value": 0}]
        )
    assert caught.value.code == 422
    with pytest.raises(ApiError) as caught:
        apply_patch("application/apply-patch+yaml", target, {})
    assert caught.value.code == 415


# --- store --------------------------------------------------------------------------------------


def test_namespaced_pages_stay_in_their_namespace_and_show_the_snapshot() -> None:
    store = Store()
    for namespace in ("a", "b", "c"):
        for index in range(3):
            store.create(SERVICES, namespace, service(f"s{index}", namespace))
    first, rv, token = store.list_page(SERVICES, namespace="b", limit=2)
    assert [s.key for s in first] == ["b/s0", "b/s1"]
    store.patch(
        SERVICES,
        "b",
        "s2",
        lambda obj: {**obj, "metadata": {**obj["metadata"], "labels": {"new": "1"}}},
    )
    rest, rest_rv, last = store.list_page(SERVICES, namespace="b", limit=2, continue_token=token)
    assert [s.key for s in rest] == ["b/s2"] and rest_rv == rv and last == ""
    assert rest[0].labels == {} and rest[0].rv < store.resource_version  # as it was at rv


def test_a_bad_continue_token_is_400() -> None:
    with pytest.raises(ApiError) as caught:
        Store().list_page(SERVICES, continue_token="not-a-token")
    assert caught.value.code == 400


def test_a_full_event_log_moves_the_horizon() -> None:
    store = Store(history=8)
    start = store.resource_version
    for index in range(20):
        store.create(NODES, "", {"metadata": {"name": f"n{index}"}})
    assert store.horizon > start
    with pytest.raises(ApiError) as caught:
        store.watch_position(str(start))
    assert caught.value.code == 410 and caught.value.reason == "Expired"
    position, _ = store.watch_position(str(store.horizon))
    batch = store.wait_events(position, 0, store.cut_generation)
    assert [event.rv for event in batch.events] == list(
        range(store.horizon + 1, store.resource_version + 1)
    )


def test_a_future_resource_version_is_too_large() -> None:
    store = Store()
    with pytest.raises(ApiError) as caught:
        store.watch_position(str(store.resource_version + 5))
    assert caught.value.code == 504


def test_status_belongs_to_the_status_subresource() -> None:
    store = Store()
    created = service("web")
    created["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    assert "status" not in store.create(SERVICES, "default", created).load()

    lb = {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}
    store.replace(
        SERVICES, "default", "web", {**service("web"), "status": lb}, subresource="status"
    )
    assert store.get(SERVICES, "default", "web").load()["status"] == lb
    # A write to the main resource keeps the status it does not own.
    store.replace(SERVICES, "default", "web", {**service("web", type="NodePort"), "status": {}})
    obj = store.get(SERVICES, "default", "web").load()
    assert obj["status"] == lb and obj["spec"]["type"] == "NodePort"


def test_service_allocation_and_clashes() -> None:
    store = Store()
    first = store.create(SERVICES, "default", service("a", type="NodePort")).load()["spec"]
    node_port = first["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    with pytest.raises(ApiError) as caught:
        store.create(SERVICES, "default", service("b", clusterIP=first["clusterIP"]))
    assert caught.value.code == 422 and "already allocated" in caught.value.message
    clash = service("c", type="NodePort")
    clash["spec"]["ports"][0]["nodePort"] = node_port
    with pytest.raises(ApiError):
        store.create(SERVICES, "default", clash)
    dual = store.create(SERVICES, "default", service("d", ipFamilyPolicy="PreferDualStack"))
    assert dual.load()["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    headless = store.create(SERVICES, "default", service("h", clusterIP="None"))
    assert headless.load()["spec"]["clusterIPs"] == ["None"]
    # Deleting a Service frees its address for another.
    store.delete(SERVICES, "default", "a")
    store.create(SERVICES, "default", service("e", clusterIP=first["clusterIP"]))


def test_put_creates_services_only() -> None:
    store = Store()
    assert store.replace(SERVICES, "default", "web", service("web")).name == "web"
    with pytest.raises(ApiError) as caught:
        store.replace(ENDPOINT_SLICES, "default", "web-1", {"metadata": {}, "addressType": "IPv4"})
    assert caught.value.code == 404


def test_names_generated_and_namespaces_implied_and_cascaded() -> None:
    store = Store()
    made = store.create(SERVICES, "shop", {"metadata": {"generateName": "web-"}, "spec": {}})
    assert made.name.startswith("web-") and len(made.name) == len("web-") + 5
    assert store.get(NAMESPACES, "", "shop").load()["status"] == {"phase": "Active"}
    store.delete(NAMESPACES, "", "shop")
    with pytest.raises(ApiError) as caught:
        store.get(SERVICES, "shop", made.name)
    assert caught.value.code == 404


def test_load_skips_what_it_does_not_serve() -> None:
    store = Store()
    warnings = store.load(
        [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {}},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}},
        ]
    )
    assert len(warnings) == 2 and store.count(NODES) == 1


# --- tables -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (119, "119s"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 3600, "3d1h"),
        (40 * 86400, "40d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
    ],
)
def test_ages_read_as_kubectl_shows_them(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_table_is_asked_for_by_kubectl_get() -> None:
    kubectl = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert wants_table(kubectl)
    assert not wants_table("application/json")
    assert not wants_table("application/json, application/json;as=Table;v=v1;g=meta.k8s.io")


def test_service_table_rows() -> None:
    store = Store(clock=lambda: 1_000_000.0)
    spec = {
        "type": "LoadBalancer",
        "ports": [{"port": 80, "nodePort": 30080}],
        "selector": {"a": "b"},
    }
    stored = store.create(SERVICES, "default", service("web", **spec))
    lb = {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}
    stored = store.replace(
        SERVICES, "default", "web", {**stored.load(), "status": lb}, subresource="status"
    )
    value = json.loads(table(SERVICES, [stored], resource_version=9, now=1_000_030.0))
    assert [c["name"] for c in value["columnDefinitions"]] == [
        "Name",
        "Type",
        "Cluster-IP",
        "External-IP",
        "Port(s)",
        "Age",
        "Selector",
    ]
    [row] = value["rows"]
    ip = stored.load()["spec"]["clusterIP"]
    assert row["cells"] == ["web", "LoadBalancer", ip, "203.0.113.5", "80:30080/TCP", "30s", "a=b"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "web"
    assert value["metadata"] == {"resourceVersion": "9"}
