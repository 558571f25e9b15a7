"""Files of Kubernetes objects: parsing, error reporting, and conversion into a Cluster."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from loguru import logger

from ipvsproxy.core.model import IPFamily, Node, Protocol
from ipvsproxy.errors import InputError
from ipvsproxy.k8s.files import Cluster, load_documents, read_cluster

if TYPE_CHECKING:
    from loguru import Record

DATA = Path(__file__).parent / "data"
EXAMPLE = DATA / "k8s_example.yaml"


@pytest.fixture
def warnings_logged() -> Iterator[list[Record]]:
    """Records of every loguru warning logged during the test."""
    records: list[Record] = []
    sink = logger.add(lambda message: records.append(message.record), level="WARNING")
    yield records
    logger.remove(sink)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def svc_yaml(name: str, ip: str = "10.96.0.1", namespace: str = "default") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
    )


# --- load_documents: accepted shapes ---------------------------------------------------------


def test_multi_document_yaml_with_empty_documents(tmp_path: Path) -> None:
    text = "---\n" + svc_yaml("a") + "---\n---\n# only a comment\n---\n" + svc_yaml("b") + "...\n"
    path = write(tmp_path, "multi.yaml", text)
    loaded = load_documents(path)
    assert [obj.obj["metadata"]["name"] for obj in loaded] == ["a", "b"]  # type: ignore[index]
    assert [obj.source for obj in loaded] == [
        f"{path} document 1 (line 2)",
        f"{path} document 4 (line 15)",
    ]


def test_single_document_is_named_by_file(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", svc_yaml("a"))
    (loaded,) = load_documents(path)
    assert loaded.source == f"{path} (line 1)"
    assert loaded.kind == "Service"


def test_kubectl_list_items_get_their_line() -> None:
    loaded = load_documents(EXAMPLE)
    assert len(loaded) == 15
    lines = EXAMPLE.read_text().splitlines()
    for index, item in enumerate(loaded):
        assert item.source.startswith(f"{EXAMPLE} item {index + 1} (line ")
        line = int(item.source.rsplit(" ", 1)[1].rstrip(")"))
        assert lines[line - 1].startswith("- "), item.source  # the item's first line


def test_list_in_a_multi_document_file(tmp_path: Path) -> None:
    text = (
        svc_yaml("a")
        + "---\nkind: List\napiVersion: v1\nitems:\n- "
        + svc_yaml("b").replace("\n", "\n  ")
    )
    path = write(tmp_path, "mixed.yaml", text)
    assert [obj.source for obj in load_documents(path)] == [
        f"{path} document 1 (line 1)",
        f"{path} document 2 item 1 (line 14)",
    ]


def test_typed_list_from_the_raw_api_gets_kind_on_items(tmp_path: Path) -> None:
    # `kubectl get --raw /api/v1/services` leaves kind out of the items.
    raw = {
        "kind": "ServiceList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": [{"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.1"}}],
    }
    path = write(tmp_path, "raw.json", json.dumps(raw))
    (loaded,) = load_documents(path)
    assert loaded.kind == "Service"
    assert loaded.source == f"{path} item 1"


def test_empty_list_and_null_items(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.yaml", "kind: List\nitems: null\n---\nkind: List\nitems: []\n")
    assert load_documents(path) == []


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# nothing here\n", "---\n", "---\n...\n---\n"], ids=repr
)
def test_empty_files(tmp_path: Path, text: str) -> None:
    assert load_documents(write(tmp_path, "empty.yaml", text)) == []


def test_json_object_and_list(tmp_path: Path) -> None:
    service = yaml.safe_load(svc_yaml("a"))
    single = write(tmp_path, "one.json", json.dumps(service, indent=2))
    listed = write(tmp_path, "list.json", json.dumps({"kind": "List", "items": [service, service]}))
    assert [o.obj for o in load_documents(single)] == [service]
    assert [o.source for o in load_documents(listed)] == [f"{listed} item 1", f"{listed} item 2"]


def test_json_content_in_a_yaml_file(tmp_path: Path) -> None:
    path = write(tmp_path, "dump.yaml", '\n  {"kind": "Service", "metadata": {"name": "a"}}')
    (loaded,) = load_documents(path)
    assert loaded.obj == {"kind": "Service", "metadata": {"name": "a"}}


def test_yaml_flow_mapping_is_not_mistaken_for_json(tmp_path: Path) -> None:
    path = write(tmp_path, "flow.yaml", "{kind: Service, metadata: {name: a}}\n")
    (loaded,) = load_documents(path)
    assert loaded.obj == {"kind": "Service", "metadata": {"name": "a"}}


# The fast event-based builder must give exactly what yaml.safe_load gives, and anything it
# does not handle must fall back to PyYAML itself.
YAML_SNIPPETS = {
    "scalars": (
        "kind: X\nint: 42\noctal: 0o17\nhex: 0x1f\nneg: -3\nfloat: 1.5\nexp: 1e3\n"
        "inf: .inf\nyes: yes\nno: off\nbool: true\nnull1: ~\nnull2:\nnull3: null\n"
        "date: 2024-05-01\nstamp: 2024-05-01T10:00:00Z\nquoted: '42'\ndq: \"true\"\n"
        "version: 1.20\nip: 10.0.0.1\ncolon: a:b\nsexagesimal: 1:30\n"
    ),
    "block scalars": "kind: X\nliteral: |\n  line 1\n  line 2\nfolded: >-\n  a\n  b\n",
    "non-string keys": "kind: X\n80: http\ntrue: t\n1.5: f\nnull: n\n",
    "flow collections": "kind: X\nports: [{port: 80}, {port: 443, name: https}]\nempty: {}\n",
    "nested lists": "kind: X\nm:\n- - 1\n  - 2\n- []\n",
    "explicit non-specific tag": "kind: X\na: ! 42\n",
    "anchors and aliases": "kind: X\nbase: &b {a: 1}\ncopy: *b\nlist: &l [1]\nagain: *l\n",
    "merge key": "kind: X\nbase: &b {a: 1, b: 2}\nderived:\n  <<: *b\n  b: 3\n",
    "explicit tags": "kind: X\ns: !!str 42\ni: !!int '7'\nset: !!set {a, b}\n",
    "lone merge tag value": "kind: X\nodd: <<\n",
    "complex key": "kind: X\n? [a, b]\n: c\n",
}


@pytest.mark.parametrize("text", YAML_SNIPPETS.values(), ids=YAML_SNIPPETS.keys())
def test_yaml_values_match_safe_load(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "values.yaml", text + "---\n" + text)
    try:
        expected = [doc for doc in yaml.safe_load_all(text + "---\n" + text)]
    except yaml.YAMLError:
        with pytest.raises(InputError):
            load_documents(path)
        return
    assert [o.obj for o in load_documents(path)] == expected


# --- load_documents: errors ----------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", svc_yaml("a") + "---\nkind: Service\n  metadata: x\n")
    with pytest.raises(InputError, match=rf"^{path}: line 12 column 11: invalid YAML: "):
        load_documents(path)


def test_malformed_yaml_in_fallback_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "kind: X\na: &x 1\nb: *x\nc: [1,\n")
    with pytest.raises(InputError, match=rf"^{path}: line 5 column 1: invalid YAML: "):
        load_documents(path)


def test_unknown_alias(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "kind: X\nb: *nowhere\n")
    with pytest.raises(InputError, match=rf"^{path}: line 2 column 4: invalid YAML: found undef"):
        load_documents(path)


def test_yaml_value_that_cannot_be_built(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "kind: X\nmetadata:\n  created: 2024-02-30\n")
    with pytest.raises(InputError, match=rf"^{path}: line 3: invalid value '2024-02-30': day"):
        load_documents(path)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.json", '{\n  "kind": "Service",\n  "metadata": {\n}\n')
    with pytest.raises(InputError, match=rf"^{path}: line 5 column 1: invalid JSON: "):
        load_documents(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            svc_yaml("a") + "---\n- a\n- b\n",
            "{path} document 2 (line 11): expected a Kubernetes object (a mapping), got a list",
        ),
        (
            "just a string\n",
            "{path} (line 1): expected a Kubernetes object (a mapping), got a string",
        ),
        ("42\n", "{path} (line 1): expected a Kubernetes object (a mapping), got int"),
        ("metadata:\n  name: a\n", "{path} (line 1): object has no kind"),
        ("kind: ''\n", "{path} (line 1): object has no kind"),
        (
            "kind: List\nitems:\n- kind: Service\n- no kind here\n",
            "{path} item 2 (line 4): expected a Kubernetes object (a mapping), got a string",
        ),
        ("kind: List\nitems:\n- metadata: {}\n", "{path} item 1 (line 3): object has no kind"),
        ("kind: List\nitems: {a: 1}\n", "{path}: List items: expected a list, got dict"),
        ("[1, 2]\n", "{path}: expected a Kubernetes object (a mapping), got a list"),
    ],
    ids=[
        "list document",
        "scalar document",
        "number document",
        "no kind",
        "empty kind",
        "scalar item",
        "item without kind in a List",
        "items not a list",
        "JSON array",
    ],
)
def test_documents_that_are_not_objects(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(InputError) as caught:
        load_documents(path)
    assert str(caught.value) == message.format(path=path)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(InputError, match=rf"^{missing}: cannot read: No such file"):
        load_documents(missing)
    with pytest.raises(InputError, match=rf"^{tmp_path}: cannot read: Is a directory"):
        load_documents(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"kind": "Service", "x": "\xe9"}')
    with pytest.raises(InputError, match=rf"^{path}: "):
        load_documents(path)


# --- read_cluster ------------------------------------------------------------------------


def test_example_cluster(warnings_logged: list[Record]) -> None:
    cluster = read_cluster([EXAMPLE])
    assert warnings_logged == []
    assert cluster.skipped == ()
    # headless shop/db and ExternalName shop/payments-api are left out on purpose
    assert [s.key for s in cluster.services] == [
        "default/kubernetes",
        "kube-system/kube-dns",
        "shop/web",
        "telco/sctp-echo",
    ]
    dns = cluster.services[1]
    assert [(p.name, p.protocol, p.port) for p in dns.ports] == [
        ("dns", Protocol.UDP, 53),
        ("dns-tcp", Protocol.TCP, 53),
        ("metrics", Protocol.TCP, 9153),
    ]
    web = cluster.services[2]
    assert web.cluster_ips == (IPv4Address("10.96.120.7"), IPv6Address("fd00:10:96::78"))
    assert web.load_balancer_ips == (IPv4Address("203.0.113.50"), IPv6Address("2001:db8::50"))
    assert (web.affinity_timeout, web.external_traffic_local) == (3600, True)
    assert cluster.services[3].ports[0].protocol is Protocol.SCTP

    web_slices = [s for s in cluster.slices if s.service_key == "shop/web"]
    assert [(s.name, s.family) for s in web_slices] == [
        ("web-h8rtn", IPFamily.V4),
        ("web-zq4lc", IPFamily.V4),
        ("web-6xkfd", IPFamily.V6),
    ]
    conditions = {
        str(e.address): (e.ready, e.serving, e.terminating) for s in web_slices for e in s.endpoints
    }
    assert conditions == {
        "10.244.1.21": (True, True, False),
        "10.244.2.17": (False, False, False),  # not ready
        "10.244.2.30": (False, True, True),  # terminating
        "10.244.3.9": (True, True, False),
        "fd00:10:244:1::15": (True, True, False),
    }
    assert [(n.name, n.addresses) for n in cluster.nodes] == [
        ("worker-1", (IPv4Address("172.18.0.3"), IPv6Address("fc00:f853:ccd:e793::3"))),
    ]


BAD_OBJECTS = """\
apiVersion: v1
kind: List
items:
- kind: Service
  metadata: {name: good, namespace: a}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
- kind: Service
  metadata: {name: bad-ip, namespace: a}
  spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}
- kind: EndpointSlice
  metadata: {name: no-label, namespace: a}
  addressType: IPv4
- kind: EndpointSlice
  metadata: {name: good-abc, namespace: a, labels: {kubernetes.io/service-name: good}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.0.5]}]
- kind: Service
  metadata: {namespace: a}
  spec: {clusterIP: 10.96.0.2}
- kind: Endpoints
  metadata: {name: good, namespace: a}
- kind: ConfigMap
  metadata: {name: x, namespace: a}
"""


def test_invalid_objects_are_logged_once_and_skipped(
    tmp_path: Path, warnings_logged: list[Record]
) -> None:
    path = write(tmp_path, "cluster.yaml", BAD_OBJECTS)
    cluster = read_cluster([path])
    assert [s.key for s in cluster.services] == ["a/good"]
    assert [s.key for s in cluster.slices] == ["a/good-abc"]
    assert [(e.kind, e.key, e.reason) for e in cluster.skipped] == [
        ("Service", "a/bad-ip", "spec.clusterIP: invalid IP address '10.96.0.999'"),
        ("EndpointSlice", "a/no-label", "metadata.labels: no kubernetes.io/service-name label"),
        ("Service", "a/<no name>", "metadata.name: missing"),
    ]
    assert [r["message"] for r in warnings_logged] == [
        f"skipping invalid Service a/bad-ip at {path} item 2 (line 7):"
        " spec.clusterIP: invalid IP address '10.96.0.999'",
        f"skipping invalid EndpointSlice a/no-label at {path} item 3 (line 10):"
        " metadata.labels: no kubernetes.io/service-name label",
        f"skipping invalid Service a/<no name> at {path} item 5 (line 17): metadata.name: missing",
    ]
    # Structured fields for log processors.
    assert warnings_logged[0]["extra"] == {
        "kind": "Service",
        "key": "a/bad-ip",
        "source": f"{path} item 2 (line 7)",
        "reason": "spec.clusterIP: invalid IP address '10.96.0.999'",
    }


def test_later_duplicate_wins(tmp_path: Path, warnings_logged: list[Record]) -> None:
    first = write(tmp_path, "first.yaml", svc_yaml("a", "10.96.0.1") + "---\n" + svc_yaml("b"))
    second = write(tmp_path, "second.yaml", svc_yaml("a", "10.96.0.2", namespace="default"))
    cluster = read_cluster([first, second])
    assert [(s.key, str(s.cluster_ips[0])) for s in cluster.services] == [
        ("default/a", "10.96.0.2"),
        ("default/b", "10.96.0.1"),
    ]
    assert [r["message"] for r in warnings_logged] == [
        f"duplicate Service default/a at {second} (line 1)"
        f" replaces the one at {first} document 1 (line 1)"
    ]


def test_later_invalid_duplicate_removes_the_earlier(
    tmp_path: Path, warnings_logged: list[Record]
) -> None:
    text = svc_yaml("a") + "---\n" + svc_yaml("a", "bogus")
    cluster = read_cluster([write(tmp_path, "dup.yaml", text)])
    assert cluster.services == ()
    assert len(cluster.skipped) == 1
    assert len(warnings_logged) == 2  # the duplicate, then the invalid object


def test_later_headless_duplicate_removes_the_earlier(tmp_path: Path) -> None:
    text = svc_yaml("a") + "---\n" + svc_yaml("a", "None")
    assert read_cluster([write(tmp_path, "dup.yaml", text)]).services == ()


def test_same_name_in_other_namespace_or_kind_is_no_duplicate(
    tmp_path: Path, warnings_logged: list[Record]
) -> None:
    text = (
        svc_yaml("a")
        + "---\n"
        + svc_yaml("a", namespace="other")
        + "---\nkind: Node\nmetadata: {name: a}\n"
    )
    cluster = read_cluster([write(tmp_path, "c.yaml", text)])
    assert len(cluster.services) == 2
    assert cluster.nodes == (Node(name="a"),)
    assert warnings_logged == []


def test_read_cluster_of_nothing() -> None:
    assert read_cluster([]) == Cluster()


def test_read_cluster_stops_at_a_malformed_file(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", svc_yaml("a"))
    bad = write(tmp_path, "bad.yaml", "kind: [\n")
    with pytest.raises(InputError, match=rf"^{bad}: line"):
        read_cluster([good, bad])


def test_json_and_yaml_give_the_same_cluster(tmp_path: Path) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    as_json = write(tmp_path, "example.json", json.dumps(document))
    from_yaml, from_json = read_cluster([EXAMPLE]), read_cluster([as_json])
    assert (from_yaml.services, from_yaml.slices, from_yaml.nodes) == (
        from_json.services,
        from_json.slices,
        from_json.nodes,
    )


def test_garbage_collector_state_is_restored(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", svc_yaml("a"))
    bad = write(tmp_path, "bad.yaml", "kind: [\n")
    assert gc.isenabled()
    read_cluster([good])
    assert gc.isenabled()
    with pytest.raises(InputError):
        read_cluster([bad])
    assert gc.isenabled()
    gc.disable()
    try:
        read_cluster([good])
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
