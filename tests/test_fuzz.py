"""Bad input, fuzzed (hypothesis): the object decoder and the netlink and /proc parsers.

- The decoder turns any JSON into a model value, None (skipped on purpose) or
  InvalidObject naming the object; nothing else escapes (an exception of another type
  would end a whole list in the reflector, costing every other Service its update).
- Whatever an object holds, no field reaches an `ipset restore` or `iptables-restore`
  payload as text: fuzzed names, namespaces, port names, labels and annotations that try
  newlines, quotes, `-A` and `COMMIT` leave the payloads exactly as for plain names.
- The kernel parsers turn any bytes into a value, a SkippedEntry / None, or a
  NetlinkDecodeError; nothing else escapes.

Example counts stay modest here (IPVSPROXY_FUZZ_EXAMPLES, default 60 per property);
bench/runs/fuzz.py runs the same properties longer and prints how many cases ran.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvsproxy.agent.full_sync import full_sync
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import EndpointSlice, Protocol, RealServer, Service, VirtualServer
from ipvsproxy.core.operations import (
    AddRealServer,
    AddVirtualServer,
    IPSetOperation,
    RestoreChains,
)
from ipvsproxy.core.rules import restore_payload
from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes
from ipvsproxy.dataplane.ipset import restore_line
from ipvsproxy.dataplane.ipvs_codec import encode_operation
from ipvsproxy.dataplane.ipvs_decode import (
    parse_config,
    parse_dest,
    parse_service,
)
from ipvsproxy.dataplane.ipvs_proc import parse_proc_ip_vs
from ipvsproxy.dataplane.ipvs_stats import parse_service_stats
from ipvsproxy.dataplane.links import parse_address, parse_link_index
from ipvsproxy.dataplane.netlink_codec import (
    NetlinkDecodeError,
    attributes,
    parse_ack,
    parse_done,
    parse_error,
    split_messages,
)
from ipvsproxy.dataplane.stale_udp_conntrack import decode_entry
from ipvsproxy.errors import InvalidObject
from ipvsproxy.k8s.objects import endpoint_slice_from_dict, node_from_dict, service_from_dict

EXAMPLES = int(os.environ.get("IPVSPROXY_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- values ------------------------------------------------------------------------------

MARK = "INJ3CT"
NASTY = [
    f"a\n-A KUBE-SERVICES -j ACCEPT {MARK}",
    f"x\nCOMMIT\n*filter\n-F {MARK}",
    f'"; iptables -F; echo "{MARK}',
    f"' -j DROP --comment '{MARK}",
    f"add KUBE-CLUSTER-IP 1.2.3.4,tcp:1 {MARK}",
    f"{MARK}\r\n\x00\x1b[2J",
    f"--comment {MARK} -j KUBE-MARK-MASQ",
    f"ünïcødé-{MARK}-\u202e\ufeff",
    MARK * 200,
]
weird_text = st.one_of(
    st.sampled_from(NASTY), st.text(max_size=40), st.text(alphabet="\n\r\t\"' -:,", max_size=10)
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 1, 65535, 65536, 2**31, 2**32, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, weird_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(weird_text, inner, max_size=4)
    ),
    max_leaves=20,
)


def valid_service() -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"],
            "externalIPs": ["192.0.2.1"],
            "loadBalancerSourceRanges": ["203.0.113.0/24"],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "ports": [
                {
                    "name": "http",
                    "port": 80,
                    "protocol": "TCP",
                    "targetPort": 8080,
                    "nodePort": 30080,
                },
            ],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}},
    }


def valid_slice() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
            "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": ["10.244.1.1"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": "n1",
                "zone": "a",
                "hints": {"forZones": [{"name": "a"}]},
            }
        ],
    }


def valid_node() -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "a"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
    }


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A valid object with one to three values replaced by arbitrary or adversarial ones."""
    obj = make()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(obj)[1:]))
        parent: Any = obj
        for step in path[:-1]:
            parent = parent[step]
        try:
            parent[path[-1]] = draw(json_values)
        except (TypeError, IndexError, KeyError):
            continue  # the path went through a value replaced earlier
    return obj


DECODERS: list[tuple[Callable[[Any], object], Callable[[], dict[str, Any]]]] = [
    (service_from_dict, valid_service),
    (endpoint_slice_from_dict, valid_slice),
    (node_from_dict, valid_node),
]


def decode(decoder: Callable[[Any], object], obj: Any) -> object:
    """The decoder's answer; only InvalidObject may escape, and it names the object."""
    try:
        return decoder(obj)
    except InvalidObject as exc:
        assert exc.kind and exc.key and exc.reason
        assert str(exc).startswith(f"{exc.kind} {exc.key}")
        return exc


# --- the decoder ---------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(range(len(DECODERS))), json_values)
def test_decoder_on_arbitrary_json(which: int, obj: Any) -> None:
    decode(DECODERS[which][0], obj if isinstance(obj, dict) else {"metadata": obj})


@FUZZ
@given(st.data())
def test_decoder_on_mutated_objects(data: st.DataObject) -> None:
    for decoder, make in DECODERS:
        decode(decoder, data.draw(mutated(make)))


def test_decoder_on_huge_and_deep_objects() -> None:
    many = valid_service()
    many["spec"]["ports"] = [
        {"name": f"p{i}", "port": 1 + i, "protocol": "TCP", "targetPort": 1 + i}
        for i in range(10_000)
    ]
    many["spec"]["type"] = "ClusterIP"
    del many["spec"]["healthCheckNodePort"]
    service = decode(service_from_dict, many)
    assert isinstance(service, Service) and len(service.ports) == 10_000
    deep: Any = "x"
    for _ in range(400):  # json.loads itself refuses much deeper
        deep = {"a": [deep]}
    for decoder, make in DECODERS:
        for path in paths(make())[1:]:
            obj = make()
            parent: Any = obj
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = deep
            decode(decoder, obj)


# --- nothing reaches the restore payloads -------------------------------------------------


def payloads(services: list[Service], slices: list[EndpointSlice]) -> list[str]:
    """Every `ipset restore` line and `iptables-restore` payload a cold sync would send."""
    state = desired_state(services, slices, node=NodeInfo(name="n1"), settings=DesiredSettings())
    kernel = FakeKernel()
    dataplanes = fake_dataplanes(kernel)
    result = full_sync(state, dataplanes)
    assert result.result.ok
    sent: list[str] = []
    for op in result.plan.operations:
        if isinstance(op, RestoreChains):
            sent.append(restore_payload(op.ruleset, op.missing_jumps))
        elif isinstance(op, IPSetOperation):
            sent.append(restore_line(op))
    return sent


BASELINE = payloads(
    [s for s in [service_from_dict(valid_service())] if s is not None],
    [s for s in [endpoint_slice_from_dict(valid_slice())] if s is not None],
)


@FUZZ
@given(
    name=weird_text,
    namespace=weird_text,
    port_name=weird_text,
    label=weird_text,
    annotation=weird_text,
)
def test_no_field_reaches_a_restore_payload(
    name: str, namespace: str, port_name: str, label: str, annotation: str
) -> None:
    service_obj, slice_obj = valid_service(), valid_slice()
    for obj in (service_obj, slice_obj):
        obj["metadata"]["namespace"] = namespace
        obj["metadata"]["labels"]["evil"] = label
        obj["metadata"].setdefault("annotations", {})["evil"] = annotation
    service_obj["metadata"]["name"] = name
    slice_obj["metadata"]["labels"]["kubernetes.io/service-name"] = name
    service_obj["spec"]["ports"][0]["name"] = port_name
    slice_obj["ports"][0]["name"] = port_name
    service, slice_ = (
        decode(service_from_dict, service_obj),
        decode(endpoint_slice_from_dict, slice_obj),
    )
    services = [service] if isinstance(service, Service) else []
    slices = [slice_] if isinstance(slice_, EndpointSlice) else []
    sent = payloads(services, slices)
    assert not any(MARK in text for text in sent)
    if services and slices:
        assert sent == BASELINE  # the same bytes as for plain names
    else:
        assert set(sent) <= set(BASELINE) | set(payloads([], []))


# --- the kernel parsers ------------------------------------------------------------------

_SERVICE = VirtualServer(ip_address("10.96.0.10"), Protocol.TCP, 80, scheduler="rr")
_DEST = RealServer(ip_address("10.244.1.1"), 8080, weight=1)
VALID_PAYLOADS = [
    encode_operation(AddVirtualServer(_SERVICE), family_id=30, seq=1)[16:],
    encode_operation(AddRealServer(_SERVICE.key, _DEST), family_id=30, seq=2)[16:],
]


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A real IPVS payload, cut, extended or with bytes overwritten."""
    data = bytearray(draw(st.sampled_from(VALID_PAYLOADS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=8))


PARSERS: list[Callable[[bytes], object]] = [
    parse_service,
    lambda payload: parse_dest(payload, service_af=2),
    lambda payload: parse_dest(payload, service_af=10),
    parse_service_stats,
    parse_config,
    parse_address,
    parse_link_index,
    split_messages,
    parse_error,
    lambda payload: parse_ack(payload, 0),
    lambda payload: parse_ack(payload, 0x200),
    parse_done,
    lambda payload: attributes(payload, 0),
    decode_entry,
]


def parse_all(payload: bytes) -> None:
    for parser in PARSERS:
        with contextlib.suppress(NetlinkDecodeError):
            parser(payload)


@FUZZ
@given(st.one_of(st.binary(max_size=300), corrupted()))
def test_netlink_parsers_on_arbitrary_bytes(payload: bytes) -> None:
    parse_all(payload)


def test_netlink_parsers_at_their_limits() -> None:
    header = struct.pack("=IHHII", 0xFFFFFFFF, 2, 0, 1, 0)
    for payload in (b"", header, header * 3, b"\xff" * 4096, struct.pack("=HH", 4, 0) * 100):
        parse_all(payload)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.text(max_size=80),
            st.sampled_from(
                [
                    "TCP  0A60000A:0050 rr",
                    "  -> 0AF40101:1F90      Masq    1      0          0",
                    "UDP  [fd00::1]:0035 rr",
                    "  -> [zz::1]:99999      Route   -1     x          y",
                    "FWM  00000001 rr",
                ]
            ),
        ),
        max_size=12,
    )
)
def test_proc_ip_vs_parser_on_arbitrary_text(lines: list[str]) -> None:
    text = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler\n"
    text += "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n" + "\n".join(lines)
    with contextlib.suppress(NetlinkDecodeError):
        parse_proc_ip_vs(text)
