"""Write a synthetic cluster as one `kind: List` JSON file, as `kubectl get -o json` would.

Two profiles:

- ``realistic`` (default): a long-tailed endpoint mix (three in four Services have 1-3
  endpoints, one in six 4-15, a few percent tens, about one percent hundreds, and at least
  two (0.05 %) 1,000-2,500 spread over many slices), 15 % multi-port Services (3 % with a
  UDP port), 10 % dual-stack, 4 % NodePort and 2 % LoadBalancer (a third of those with
  externalTrafficPolicy Local), a sprinkle of not-ready and terminating endpoints, names
  and labels as Helm charts and the EndpointSlice controller write them. About 10
  endpoints per Service on average. Deterministic for a given --seed.
- ``uniform``: every Service ClusterIP with --endpoints ready endpoints, one in ten with a
  second (UDP) port, one in twenty dual-stack (what the older benchmarks use, ``build``).

Endpoints are split into slices of at most 100, like the EndpointSlice controller does.
The file loads into the test API server (``python -m ipvsproxy_testkit.testapi -f FILE``) as well
as into ``ipvsproxy plan``/``once`` (``--cluster FILE``).

    python -m bench.lib.gen_cluster --services 10000 -o bench/out/cluster-10k.json
    python -m bench.lib.gen_cluster --profile uniform --services 10000 --endpoints 10 -o ...
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import string
from typing import Any

SERVICE_NET = ipaddress.ip_network("10.96.0.0/12")
SERVICE_NET6 = ipaddress.ip_network("fd00:96::/108")
POD_NET = ipaddress.ip_network("10.128.0.0/9")
POD_NET6 = ipaddress.ip_network("fd00:128::/64")
SLICE_SIZE = 100


def _ports(index: int) -> list[dict[str, Any]]:
    ports = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
    if index % 10 == 0:
        ports.append({"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353})
    return ports


def build(services: int, endpoints: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    pod = 0
    for i in range(services):
        name = f"svc-{i:05d}"
        namespace = f"ns-{i % 50:02d}"
        cluster_ips = [str(SERVICE_NET[i + 10])]
        if i % 20 == 0:
            cluster_ips.append(str(SERVICE_NET6[i + 10]))
        ports = _ports(i)
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": cluster_ips[0],
                    "clusterIPs": cluster_ips,
                    "ipFamilies": ["IPv4", "IPv6"][: len(cluster_ips)],
                    "ports": ports,
                },
            }
        )
        slice_ports = [
            {"name": p["name"], "protocol": p["protocol"], "port": p["targetPort"]} for p in ports
        ]
        families = [("IPv4", POD_NET)] + ([("IPv6", POD_NET6)] if len(cluster_ips) > 1 else [])
        first_pod = pod
        pod += endpoints
        for family, net in families:
            for start in range(0, endpoints, SLICE_SIZE):
                count = min(SLICE_SIZE, endpoints - start)
                items.append(
                    {
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": {
                            "name": f"{name}-{family.lower()}-{start // SLICE_SIZE}",
                            "namespace": namespace,
                            "labels": {"kubernetes.io/service-name": name},
                        },
                        "addressType": family,
                        "ports": slice_ports,
                        "endpoints": [
                            {
                                "addresses": [str(net[first_pod + start + k + 1])],
                                "conditions": {
                                    "ready": True,
                                    "serving": True,
                                    "terminating": False,
                                },
                                "nodeName": f"node-{(first_pod + start + k) % 500}",
                            }
                            for k in range(count)
                        ],
                    }
                )
    return {"apiVersion": "v1", "kind": "List", "items": items}


# --- the realistic profile ----------------------------------------------------------------

LB_NET = ipaddress.ip_network("198.18.0.0/15")  # benchmarking range (RFC 2544)
NODE_PORTS = range(30000, 32768)
TRIGGER_TIME = "2026-11-01T00:00:00Z"
_TEAMS = (
    "payments",
    "checkout",
    "search",
    "catalog",
    "identity",
    "billing",
    "shipping",
    "ads",
    "media",
    "ml",
    "data",
    "platform",
    "observability",
    "messaging",
    "growth",
    "support",
)
_ENVS = ("prod", "staging", "canary", "batch")
_PARTS = (
    "api",
    "worker",
    "gateway",
    "frontend",
    "backend",
    "cache",
    "db-proxy",
    "grpc",
    "indexer",
    "scheduler",
    "consumer",
    "producer",
    "auth",
    "web",
    "admin",
    "metrics",
    "ingest",
    "export",
)
_ZONES = ("zone-a", "zone-b", "zone-c")
# (share of Services, lowest, highest endpoint count): the long tail
_ENDPOINT_MIX = (
    (0.75, 1, 3),
    (0.17, 4, 15),
    (0.0675, 16, 60),
    (0.012, 100, 500),
    (0.0005, 1000, 2500),
)
_EXTRA_PORTS = (
    {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090},
    {"name": "grpc", "protocol": "TCP", "port": 9000, "targetPort": 9000},
)
_DNS_PORT = {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}


def _endpoint_count(rng: random.Random) -> int:
    draw = rng.random()
    for share, low, high in _ENDPOINT_MIX:
        if draw < share:
            return rng.randint(low, high)
        draw -= share
    return rng.randint(1, 3)


def _suffix(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=5))


def build_realistic(services: int, *, seed: int = 1) -> dict[str, Any]:
    """A cluster of ``services`` Services with the mix described in the module docstring."""
    rng = random.Random(seed)
    counts = [_endpoint_count(rng) for _ in range(services)]
    # "a few" Services with 1,000+ endpoints whatever the size: at least two
    big = sum(count >= 1000 for count in counts)
    for index in rng.sample(range(services), min(services, max(0, 2 - big))):
        counts[index] = rng.randint(1000, 2500)
    nodes = [f"node-{n:04d}" for n in range(max(10, services // 20))]
    node_ports = iter(NODE_PORTS)
    items: list[dict[str, Any]] = []
    pod = 0
    names: dict[str, int] = {}
    for i in range(services):
        team = _TEAMS[i % len(_TEAMS)]
        namespace = f"{team}-{_ENVS[(i // len(_TEAMS)) % len(_ENVS)]}"
        base = f"{team}-{rng.choice(_PARTS)}"
        taken = names.get(f"{namespace}/{base}", 0)
        names[f"{namespace}/{base}"] = taken + 1
        name = base if not taken else f"{base}-{taken + 1}"
        labels = {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/instance": f"{name}-{namespace}",
            "app.kubernetes.io/part-of": team,
            "app.kubernetes.io/managed-by": "Helm",
            "helm.sh/chart": f"{base}-1.{i % 7}.{i % 3}",
        }
        ports: list[dict[str, Any]] = [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}
        ]
        draw = rng.random()
        if draw < 0.03:
            ports.append(dict(_DNS_PORT))
        elif draw < 0.15:
            ports.extend(dict(p) for p in _EXTRA_PORTS[: rng.randint(1, 2)])
        dual = rng.random() < 0.10
        cluster_ips = [str(SERVICE_NET[i + 10])] + ([str(SERVICE_NET6[i + 10])] if dual else [])
        spec: dict[str, Any] = {
            "type": "ClusterIP",
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ipFamilies": ["IPv4", "IPv6"][: len(cluster_ips)],
            "ipFamilyPolicy": "PreferDualStack" if dual else "SingleStack",
            "ports": ports,
            "selector": {"app.kubernetes.io/name": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        }
        status: dict[str, Any] = {"loadBalancer": {}}
        draw = rng.random()
        kind = "LoadBalancer" if draw < 0.02 else "NodePort" if draw < 0.06 else "ClusterIP"
        if kind != "ClusterIP":
            wanted = len(ports) + (1 if kind == "LoadBalancer" else 0)
            assigned = [next(node_ports, None) for _ in range(wanted)]
            if None in assigned:
                kind = "ClusterIP"  # the node port range is full, as it would be
        if kind != "ClusterIP":
            spec["type"] = kind
            for port, node_port in zip(ports, assigned, strict=False):
                port["nodePort"] = node_port
            local = rng.random() < 1 / 3
            spec["externalTrafficPolicy"] = "Local" if local else "Cluster"
            if kind == "LoadBalancer":
                if local:
                    spec["healthCheckNodePort"] = assigned[-1]
                status["loadBalancer"] = {"ingress": [{"ip": str(LB_NET[i + 1])}]}
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": spec,
                "status": status,
            }
        )
        slice_ports = [
            {"name": p["name"], "protocol": p["protocol"], "port": p["targetPort"]} for p in ports
        ]
        count = counts[i]
        first_pod = pod
        pod += count
        replica_set = _suffix(rng) + _suffix(rng)
        families = [("IPv4", POD_NET)] + ([("IPv6", POD_NET6)] if dual else [])
        for family, net in families:
            address_type = type(net.network_address)
            base = int(net.network_address) + first_pod + 1
            for start in range(0, count, SLICE_SIZE):
                endpoints = []
                for k in range(start, min(count, start + SLICE_SIZE)):
                    draw = rng.random()
                    node_index = (first_pod + k) % len(nodes)
                    endpoints.append(
                        {
                            "addresses": [str(address_type(base + k))],
                            "conditions": {
                                "ready": draw >= 0.03,
                                "serving": draw >= 0.02,
                                "terminating": draw < 0.01,
                            },
                            "nodeName": nodes[node_index],
                            "zone": _ZONES[node_index % len(_ZONES)],
                            "targetRef": {
                                "kind": "Pod",
                                "namespace": namespace,
                                "name": f"{name}-{replica_set}-{first_pod + k:05x}",
                            },
                        }
                    )
                items.append(
                    {
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": {
                            "name": f"{name}-{_suffix(rng)}",
                            "namespace": namespace,
                            "labels": {
                                "kubernetes.io/service-name": name,
                                "endpointslice.kubernetes.io/managed-by": (
                                    "endpointslice-controller.k8s.io"
                                ),
                                **labels,
                            },
                            "annotations": {
                                "endpoints.kubernetes.io/last-change-trigger-time": TRIGGER_TIME
                            },
                        },
                        "addressType": family,
                        "ports": slice_ports,
                        "endpoints": endpoints,
                    }
                )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def describe(cluster: dict[str, Any]) -> str:
    """One line of counts: Services by type, endpoints, the tail."""
    services = [item for item in cluster["items"] if item["kind"] == "Service"]
    slices = [item for item in cluster["items"] if item["kind"] == "EndpointSlice"]
    per_service: dict[tuple[str, str], int] = {}
    for item in slices:
        if item["addressType"] == "IPv4":
            key = (item["metadata"]["namespace"], item["metadata"]["labels"][SERVICE_LABEL])
            per_service[key] = per_service.get(key, 0) + len(item["endpoints"])
    types: dict[str, int] = {}
    for item in services:
        kind = item["spec"].get("type", "ClusterIP")
        types[kind] = types.get(kind, 0) + 1
    local = sum(item["spec"].get("externalTrafficPolicy") == "Local" for item in services)
    dual = sum(len(item["spec"]["clusterIPs"]) > 1 for item in services)
    multi = sum(len(item["spec"]["ports"]) > 1 for item in services)
    counts = sorted(per_service.values())
    endpoints = sum(len(item["endpoints"]) for item in slices)
    return (
        f"{len(services)} Services ({', '.join(f'{n} {k}' for k, n in sorted(types.items()))}; "
        f"{local} ETP=Local, {dual} dual-stack, {multi} multi-port), {len(slices)} "
        f"EndpointSlices, {endpoints} endpoints; IPv4 endpoints per Service: median "
        f"{counts[len(counts) // 2] if counts else 0}, {sum(c >= 100 for c in counts)} with "
        f"100+, {sum(c >= 1000 for c in counts)} with 1,000+ (max {max(counts, default=0)})"
    )


SERVICE_LABEL = "kubernetes.io/service-name"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("realistic", "uniform"), default="realistic")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument(
        "--endpoints", type=int, default=10, help="uniform profile: ready endpoints per Service"
    )
    parser.add_argument("--seed", type=int, default=1, help="realistic profile: random seed")
    parser.add_argument("-o", "--output", default="bench/out/cluster-10k.json")
    args = parser.parse_args()
    if args.profile == "realistic":
        cluster = build_realistic(args.services, seed=args.seed)
    else:
        cluster = build(args.services, args.endpoints)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as out:
        out.write(json.dumps(cluster))  # several times faster than json.dump's chunks
    size = os.path.getsize(args.output) / 1e6
    print(f"wrote {args.output} ({size:.1f} MB): {describe(cluster)}")


if __name__ == "__main__":
    main()
