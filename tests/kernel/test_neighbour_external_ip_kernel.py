"""An external IP that is a neighbour's own address takes only the Service's ports.

kube-proxy binds external IPs to kube-ipvs0, so a node whose Service lists a neighbour's
address as an external IP can no longer reach that neighbour at all (kubernetes#75290,
#93175, #104679, #127410). ipvsproxy steers just the Service's (address, protocol, port)
to IPVS (ipvsproxy/core/steering.py): everything else still goes to the neighbour, from
the node, from pods and from hosts routed through the node.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agentproc import cli, cluster_file
from ipvsproxy_testkit.sandbox.netns import ip
from ipvsproxy_testkit.sandbox.pods import PodNetwork

pytestmark = pytest.mark.kernel

NODE = "node-a"
NEIGHBOUR_IP = "192.168.60.2"
NODE_LAN_IP = "192.168.60.1"

SERVICE = f"""\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: shop}}
  spec:
    clusterIP: 10.96.0.10
    externalIPs: [{NEIGHBOUR_IP}]
    ports:
    - {{name: tcp, port: 80, protocol: TCP, targetPort: 8080}}
    - {{name: udp, port: 80, protocol: UDP, targetPort: 8080}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-1
    namespace: shop
    labels: {{kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{{name: tcp, port: 8080, protocol: TCP}}, {{name: udp, port: 8080, protocol: UDP}}]
  endpoints:
  - {{addresses: [10.244.1.1], nodeName: {NODE}}}
  - {{addresses: [10.244.2.1], nodeName: {NODE}}}
"""


def test_node_pods_and_outside_still_reach_a_neighbour_whose_address_is_an_external_ip(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    # The neighbour: its own namespace on a link where the node holds 192.168.60.1/24,
    # so its address lies on the node's subnet; it answers on 22 and on the Service port.
    neighbour = pod_network.add_pod("neighbour", NEIGHBOUR_IP)
    ip("address", "add", f"{NODE_LAN_IP}/24", "dev", neighbour.node_link)
    outside = pod_network.add_external_host("outside", "192.168.50.0/24")
    backends = [pod_network.add_pod(f"web{i}", f"10.244.{i}.1") for i in (1, 2)]
    client = pod_network.add_pod("client", "10.244.9.1")
    pod_network.serve(8080, backends)
    pod_network.serve(22, [neighbour])
    pod_network.serve(80, [neighbour])
    assert pod_network.tcp_requests(NEIGHBOUR_IP, 80, 1) == ["neighbour"]

    cluster = cluster_file(tmp_path, SERVICE)
    cli("once", "-f", cluster, "--hostname-override", NODE)

    for source in (None, client, outside):
        where = "the node" if source is None else source.name
        # The neighbour's other ports still reach the neighbour...
        for request in (pod_network.tcp_requests, pod_network.udp_requests):
            assert request(NEIGHBOUR_IP, 22, 2, source=source) == ["neighbour"] * 2, where
        # ...and the Service's ports reach its pods, TCP and UDP.
        tcp = pod_network.tcp_requests(NEIGHBOUR_IP, 80, 4, source=source)
        assert sorted(tcp) == ["web1", "web1", "web2", "web2"], where
        udp = pod_network.udp_requests(NEIGHBOUR_IP, 80, 4, source=source)
        assert sorted(udp) == ["web1", "web1", "web2", "web2"], where

    # Not bound: the node has no local route for the whole address.
    assert NEIGHBOUR_IP not in ip("-4", "address", "show")
    # The fixed objects are there once: one mark rule, one policy rule, one route.
    rules = ip("rule", "show")
    assert rules.count("fwmark 0x2000/0x2000 lookup 19280") == 1, rules
    assert "local default dev lo" in ip("route", "show", "table", "19280")

    # What the kernel holds reads back as planned: a second sync changes nothing.
    again = cli("once", "-f", cluster, "--hostname-override", NODE)
    assert "operations=0" in again.stderr, again.stderr

    # Cleanup takes the steering away: the Service port reaches the neighbour again.
    cli("cleanup")
    assert "19280" not in ip("rule", "show")
    assert pod_network.tcp_requests(NEIGHBOUR_IP, 80, 1) == ["neighbour"]
