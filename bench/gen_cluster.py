"""Write a synthetic cluster as one `kind: List` JSON file, as `kubectl get -o json` would.

Default: 10,000 ClusterIP Services with 10 ready endpoints each (100,000 endpoints), one in
ten with a second (UDP) port, one in twenty dual-stack. Endpoints are split into slices of
at most 100, like the EndpointSlice controller does.

    python bench/gen_cluster.py --services 10000 --endpoints 10 -o bench/out/cluster-10k.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10, help="ready endpoints per Service")
    parser.add_argument("-o", "--output", default="bench/out/cluster-10k.json")
    args = parser.parse_args()
    cluster = build(args.services, args.endpoints)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as out:
        json.dump(cluster, out)
    slices = sum(1 for item in cluster["items"] if item["kind"] == "EndpointSlice")
    endpoints = sum(
        len(item["endpoints"]) for item in cluster["items"] if item["kind"] == "EndpointSlice"
    )
    size = os.path.getsize(args.output) / 1e6
    print(
        f"wrote {args.output}: {args.services} Services, {slices} EndpointSlices, "
        f"{endpoints} endpoints, {size:.1f} MB"
    )


if __name__ == "__main__":
    main()
