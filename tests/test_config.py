"""ProxyConfig defaults, KubeProxyConfiguration files, and every way a value can be wrong."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from loguru import logger

from ipvsproxy.config.kubeproxy_file import config_from_dict, load_config, parse_duration
from ipvsproxy.config.settings import (
    BindAddress,
    ConntrackSettings,
    ProxyConfig,
    with_overrides,
)
from ipvsproxy.errors import ConfigError

DATA = Path(__file__).parent / "data"
HEADER = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


def kpc(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration"} | (
        fields
    )


def test_defaults() -> None:
    config = ProxyConfig()
    assert config.hostname_override is None
    assert config.scheduler == "rr"
    assert config.exclude_cidrs == ()
    assert (config.sync_period, config.min_sync_period) == (30.0, 0.0)
    assert (config.masquerade_all, config.masquerade_bit, config.masquerade_mark) == (
        False,
        14,
        0x4000,
    )
    assert config.cluster_cidrs == ()
    assert config.node_port_addresses == ()
    assert config.node_port_all_addresses
    assert config.strict_arp is False
    assert config.ipvs_timeouts is None
    assert str(config.metrics_bind_address) == "127.0.0.1:10249"
    assert str(config.healthz_bind_address) == "0.0.0.0:10256"


def test_minimal_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "kpc.yaml"
    path.write_text(HEADER)
    assert load_config(path) == ProxyConfig()


def test_kubeadm_defaults_give_defaults(warnings_logged: list[str]) -> None:
    # Every field kubeadm writes, with its empty or null value: all mean "default".
    document = yaml.safe_load((DATA / "kpc_full.yaml").read_text())
    for section in ("ipvs", "iptables"):
        document[section] = {key: None for key in document[section]}
    for key in ("clusterCIDR", "nodePortAddresses", "metricsBindAddress", "mode"):
        document[key] = None
    document["clientConnection"]["kubeconfig"] = ""
    assert config_from_dict(document) == ProxyConfig()
    assert warnings_logged == []


def test_full_realistic_file(warnings_logged: list[str]) -> None:
    config = load_config(DATA / "kpc_full.yaml")
    assert warnings_logged == []
    assert config == ProxyConfig(
        scheduler="lc",
        exclude_cidrs=(ip_network("10.200.0.0/16"), ip_network("2001:db8:ffff::/48")),
        strict_arp=True,
        tcp_timeout=900,
        tcp_fin_timeout=30,
        udp_timeout=300,
        sync_period=90.0,
        min_sync_period=1.0,
        cluster_cidrs=(ip_network("10.244.0.0/16"), ip_network("fd00:10:244::/56")),
        node_port_addresses=(ip_network("172.18.0.0/16"), ip_network("fc00:f853:ccd:e793::/64")),
        metrics_bind_address=BindAddress(IPv4Address("0.0.0.0"), 10249),
        kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
    )
    assert config.ipvs_timeouts == (900, 30, 300)
    assert not config.node_port_all_addresses


def test_conntrack_defaults_are_kube_proxys() -> None:
    conntrack = config_from_dict(kpc()).conntrack
    assert conntrack == ConntrackSettings()
    assert (conntrack.max_per_core, conntrack.min) == (32768, 131072)
    assert conntrack.netfilter_values() == (
        ("nf_conntrack_tcp_timeout_established", 86400),
        ("nf_conntrack_tcp_timeout_close_wait", 3600),
    )


def test_conntrack_fields() -> None:
    conntrack = config_from_dict(
        kpc(
            conntrack={
                "maxPerCore": 0,
                "min": 1000,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "90s",
                "tcpBeLiberal": True,
                "udpTimeout": "30s",
                "udpStreamTimeout": "2m",
            }
        )
    ).conntrack
    assert conntrack == ConntrackSettings(
        max_per_core=0,
        min=1000,
        tcp_established_timeout=0,
        tcp_close_wait_timeout=90,
        tcp_be_liberal=True,
        udp_timeout=30,
        udp_stream_timeout=120,
    )
    assert conntrack.table_size(64) == 0  # maxPerCore 0: the table size is left alone
    assert conntrack.netfilter_values() == (
        ("nf_conntrack_tcp_timeout_close_wait", 90),
        ("nf_conntrack_tcp_be_liberal", 1),
        ("nf_conntrack_udp_timeout", 30),
        ("nf_conntrack_udp_timeout_stream", 120),
    )


@pytest.mark.parametrize(
    ("max_per_core", "minimum", "cpus", "size"),
    [
        (32768, 131072, 1, 131072),  # min wins on small nodes
        (32768, 131072, 8, 262144),  # per core wins on big ones
        (32768, 131072, 64, 1 << 20),  # capped at 1M, as the newest kube-proxy does
        (32768, 2 << 20, 64, 1 << 20),  # the cap wins over min too
        (1000, 0, 2, 2000),
        (0, 131072, 8, 0),  # off
    ],
)
def test_conntrack_table_size(max_per_core: int, minimum: int, cpus: int, size: int) -> None:
    settings = ConntrackSettings(max_per_core=max_per_core, min=minimum)
    assert settings.table_size(cpus) == size


def test_configmap_as_kubectl_shows_it() -> None:
    config = load_config(DATA / "kpc_configmap.yaml")
    assert (config.scheduler, config.masquerade_all, config.masquerade_mark) == (
        "mh",
        True,
        0x8000,
    )
    assert config.cluster_cidrs == (ip_network("10.244.0.0/16"),)


def test_configmap_without_a_configuration(tmp_path: Path) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text("kind: ConfigMap\napiVersion: v1\ndata:\n  other: x\n")
    with pytest.raises(ConfigError, match=r"cm\.yaml: ConfigMap has no data entry holding"):
        load_config(path)


@pytest.mark.parametrize(
    ("fields", "attribute", "expected"),
    [
        ({"hostnameOverride": "  Worker-1 "}, "hostname_override", "worker-1"),
        ({"hostnameOverride": ""}, "hostname_override", None),
        ({"ipvs": {"scheduler": "wrr"}}, "scheduler", "wrr"),
        ({"ipvs": {"scheduler": "my-own"}}, "scheduler", "my-own"),  # passed on as is
        ({"ipvs": {"syncPeriod": "0s"}}, "sync_period", 30.0),  # zero means default
        ({"ipvs": {"syncPeriod": "500ms"}}, "sync_period", 0.5),
        ({"ipvs": {"syncPeriod": "1h", "minSyncPeriod": "1m30s"}}, "min_sync_period", 90.0),
        ({"syncPeriod": "45s", "ipvs": {"syncPeriod": "1h"}}, "sync_period", 45.0),
        ({"minSyncPeriod": "2s", "ipvs": {"minSyncPeriod": "1s"}}, "min_sync_period", 2.0),
        ({"ipvs": {"minSyncPeriod": "1s"}}, "min_sync_period", 1.0),
        ({"ipvs": {"tcpTimeout": "1500ms"}}, "tcp_timeout", 1),  # whole seconds, as kube-proxy
        ({"ipvs": {"udpTimeout": "300ms"}}, "udp_timeout", 0),  # ... so this keeps the kernel's
        ({}, "graceful_termination_timeout", 900.0),
        ({"ipvs": {"gracefulTerminationTimeout": "2m"}}, "graceful_termination_timeout", 120.0),
        ({"ipvs": {"gracefulTerminationTimeout": "0s"}}, "graceful_termination_timeout", 0.0),
        ({"iptables": {"masqueradeBit": 0}}, "masquerade_mark", 1),
        ({"iptables": {"masqueradeBit": 31}}, "masquerade_mark", 1 << 31),
        (
            {"clusterCIDR": "fd00::/48, 10.0.0.0/8"},
            "cluster_cidrs",
            (
                ip_network("fd00::/48"),
                ip_network("10.0.0.0/8"),
            ),
        ),
        ({"clusterCIDR": "10.0.0.1/8"}, "cluster_cidrs", (ip_network("10.0.0.0/8"),)),
        ({}, "detect_local_mode", "ClusterCIDR"),
        ({"detectLocalMode": ""}, "detect_local_mode", "ClusterCIDR"),  # kube-proxy's default
        ({"detectLocalMode": "NodeCIDR"}, "detect_local_mode", "NodeCIDR"),
        ({"detectLocalMode": "NodeCIDR"}, "local_interface", ""),
        (
            {"detectLocalMode": "BridgeInterface", "detectLocal": {"bridgeInterface": "cbr0"}},
            "local_interface",
            "cbr0",
        ),
        (
            {
                "detectLocalMode": "InterfaceNamePrefix",
                "detectLocal": {"interfaceNamePrefix": "veth"},
            },
            "local_interface",
            "veth+",
        ),
        # The other mode's field is kept but not used.
        (
            {"detectLocalMode": "ClusterCIDR", "detectLocal": {"bridgeInterface": "cbr0"}},
            "local_interface",
            "",
        ),
        ({"nodePortAddresses": ["primary"]}, "node_port_primary", True),
        ({"nodePortAddresses": ["primary"]}, "node_port_all_addresses", False),
        ({"nodePortAddresses": ["all"]}, "node_port_all_addresses", True),
        ({"nodePortAddresses": ["0.0.0.0/0"]}, "node_port_all_addresses", True),
        (
            {"nodePortAddresses": ["localhost", "10.0.0.0/8"]},
            "node_port_addresses",
            (
                ip_network("127.0.0.0/8"),
                ip_network("::1/128"),
                ip_network("10.0.0.0/8"),
            ),
        ),
        ({"metricsBindAddress": "10.0.0.1"}, "metrics_bind_address", "10.0.0.1:10249"),
        ({"metricsBindAddress": "[::1]:9000"}, "metrics_bind_address", "[::1]:9000"),
        ({"healthzBindAddress": "::"}, "healthz_bind_address", "[::]:10256"),
        ({"bindAddress": "::"}, "metrics_bind_address", "[::1]:10249"),
        ({"bindAddress": "::"}, "healthz_bind_address", "[::]:10256"),
        ({"mode": "ipvs"}, "scheduler", "rr"),
        ({"clientConnection": {"kubeconfig": "/etc/kc"}}, "kubeconfig", "/etc/kc"),
        ({"clientConnection": {"qps": 0}}, "api_qps", 5.0),  # zero means default
        ({"clientConnection": {"qps": 20}}, "api_qps", 20.0),
        ({"clientConnection": {"qps": 0.5}}, "api_qps", 0.5),
        ({"clientConnection": {"qps": -1}}, "api_qps", -1.0),  # no client-side limit
        ({"clientConnection": {"burst": 0}}, "api_burst", 10),
        ({"clientConnection": {"burst": 50}}, "api_burst", 50),
        (
            {"clientConnection": {"contentType": "application/vnd.kubernetes.protobuf"}},
            "api_content_type",
            "application/vnd.kubernetes.protobuf",  # kept; the client warns and uses JSON
        ),
        ({"clientConnection": {"contentType": ""}}, "api_content_type", "application/json"),
    ],
    ids=lambda value: None if not isinstance(value, dict) else str(value),
)
def test_fields(fields: dict[str, Any], attribute: str, expected: object) -> None:
    value = getattr(config_from_dict(kpc(**fields)), attribute)
    assert (str(value) if isinstance(value, BindAddress) else value) == expected


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"iptables": {"masqueradeBit": 40}}, "iptables.masqueradeBit: invalid value 40: must be"),
    ({"iptables": {"masqueradeBit": -1}}, "iptables.masqueradeBit: invalid value -1: must be"),
    ({"iptables": {"masqueradeBit": "14"}}, "iptables.masqueradeBit: invalid value '14'"),
    ({"iptables": {"masqueradeAll": "yes"}}, "iptables.masqueradeAll: invalid value 'yes'"),
    ({"ipvs": {"syncPeriod": "30"}}, "ipvs.syncPeriod: invalid value '30': '30' is not a dur"),
    ({"ipvs": {"syncPeriod": 30}}, "ipvs.syncPeriod: invalid value 30: expected a duration"),
    ({"ipvs": {"syncPeriod": "30 s"}}, "ipvs.syncPeriod: invalid value '30 s'"),
    ({"ipvs": {"syncPeriod": "-5s"}}, "ipvs.syncPeriod: invalid value '-5s': must be > 0"),
    ({"ipvs": {"minSyncPeriod": "-1s"}}, "ipvs.minSyncPeriod: invalid value '-1s': must be >= 0"),
    (
        {"ipvs": {"minSyncPeriod": "1m"}},
        "ipvs.minSyncPeriod: invalid value '1m': must not exceed ipvs.syncPeriod (30s)",
    ),
    ({"ipvs": {"tcpTimeout": "-1s"}}, "ipvs.tcpTimeout: invalid value '-1s': must be >= 0"),
    ({"ipvs": {"udpTimeout": "5d"}}, "ipvs.udpTimeout: invalid value '5d'"),
    (
        {"ipvs": {"gracefulTerminationTimeout": "-1m"}},
        "ipvs.gracefulTerminationTimeout: invalid value '-1m': must be >= 0",
    ),
    (
        {"ipvs": {"excludeCIDRs": ["10.0.0.0/8", "10.0.0.0/33"]}},
        "ipvs.excludeCIDRs[1]: invalid value '10.0.0.0/33': not a CIDR",
    ),
    ({"ipvs": {"excludeCIDRs": "10.0.0.0/8"}}, "ipvs.excludeCIDRs: invalid value '10.0.0.0/8'"),
    ({"ipvs": "fast"}, "ipvs: invalid value 'fast': expected a mapping"),
    ({"clusterCIDR": "10.0.0.0/8,10.1.0.0/16"}, "clusterCIDR: invalid value '10.0.0.0/8,10.1"),
    ({"clusterCIDR": "pods"}, "clusterCIDR: invalid value 'pods': not a CIDR"),
    (
        {"clusterCIDR": "10.0.0.0/8,fd00::/48,10.1.0.0/16"},
        "clusterCIDR: invalid value '10.0.0.0/8,fd00::/48,10.1.0.0/16': at most one CIDR",
    ),
    ({"nodePortAddresses": ["eth0"]}, "nodePortAddresses[0]: invalid value 'eth0': not a CIDR"),
    ({"detectLocalMode": "Magic"}, "detectLocalMode: invalid value 'Magic': must be one of"),
    (
        {"detectLocalMode": "BridgeInterface"},
        "detectLocal.bridgeInterface: invalid value '': must be set with detectLocalMode",
    ),
    (
        {"detectLocalMode": "InterfaceNamePrefix", "detectLocal": {}},
        "detectLocal.interfaceNamePrefix: invalid value '': must be set with detectLocalMode",
    ),
    (
        {"detectLocal": {"interfaceNamePrefix": "a-very-long-name"}},
        "detectLocal.interfaceNamePrefix: invalid value 'a-very-long-name': not an interface",
    ),
    (
        {"detectLocal": {"bridgeInterface": "br 0"}},
        "detectLocal.bridgeInterface: invalid value 'br 0': not an interface name",
    ),
    ({"metricsBindAddress": "localhost:10249"}, "metricsBindAddress: invalid value 'localhost"),
    ({"metricsBindAddress": "1.2.3.4:0"}, "metricsBindAddress: invalid value '1.2.3.4:0'"),
    ({"healthzBindAddress": "::1:10256"}, "healthzBindAddress: invalid value '::1:10256'"),
    ({"healthzBindAddress": "1.2.3.4:http"}, "healthzBindAddress: invalid value '1.2.3.4:http'"),
    ({"bindAddress": "node-1"}, "bindAddress: invalid value 'node-1': not an IP address"),
    ({"hostnameOverride": 5}, "hostnameOverride: invalid value 5: expected a string"),
    ({"clientConnection": {"qps": "5"}}, "clientConnection.qps: invalid value '5': expected a n"),
    ({"clientConnection": {"qps": True}}, "clientConnection.qps: invalid value True: expected"),
    ({"clientConnection": {"burst": -1}}, "clientConnection.burst: invalid value -1: must be non"),
    ({"clientConnection": {"burst": 2.5}}, "clientConnection.burst: invalid value 2.5: expected"),
    ({"clientConnection": {"kubeconfig": 7}}, "clientConnection.kubeconfig: invalid value 7: exp"),
    ({"clientConnection": "kc"}, "clientConnection: invalid value 'kc': expected a mapping"),
    ({"conntrack": {"maxPerCore": -1}}, "conntrack.maxPerCore: invalid value -1: must be an"),
    ({"conntrack": {"min": "128k"}}, "conntrack.min: invalid value '128k': must be an integer"),
    ({"conntrack": {"min": 1 << 31}}, "conntrack.min: invalid value 2147483648: must be an"),
    (
        {"conntrack": {"tcpCloseWaitTimeout": "-1h"}},
        "conntrack.tcpCloseWaitTimeout: invalid value '-1h': must be >= 0",
    ),
    ({"conntrack": {"udpTimeout": 30}}, "conntrack.udpTimeout: invalid value 30: expected a dur"),
]


@pytest.mark.parametrize(("fields", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_values(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(kpc(**fields), source="kpc.yaml")
    assert str(caught.value).startswith(f"kpc.yaml: {message}")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"kind": "KubeProxyConfiguration"}, "apiVersion: invalid value None: only kubeproxy"),
        (
            {"apiVersion": "kubeproxy.config.k8s.io/v1alpha2", "kind": "KubeProxyConfiguration"},
            "apiVersion: invalid value 'kubeproxy.config.k8s.io/v1alpha2': only",
        ),
        (
            {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeletConfiguration"},
            "kind: invalid value 'KubeletConfiguration': expected KubeProxyConfiguration",
        ),
        ("ipvs", "expected a KubeProxyConfiguration mapping, got str"),
        (None, "expected a KubeProxyConfiguration mapping, got an empty file"),
    ],
)
def test_not_a_configuration(document: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(document, source="kpc.yaml")
    assert str(caught.value).startswith(f"kpc.yaml: {message}")


def test_unknown_fields_are_warned_by_name(warnings_logged: list[str]) -> None:
    document = kpc(
        schedular="lc",
        ipvs={"scheduler": "lc", "stritcARP": True, "ipSet": {"hashSize": 1}},
        iptables={"masqueradeAll": True, "masqueradeBits": 3},
        conntrack={"maxPerCore": 0, "tcpTimeout": "1h"},
        logging={"anything": {"goes": 1}},
        featureGates={"SomeGate": True},
    )
    config = config_from_dict(document, source="kpc.yaml")
    assert (config.scheduler, config.masquerade_all) == ("lc", True)
    assert warnings_logged == [
        "kpc.yaml: unknown field schedular ignored",
        "kpc.yaml: unknown field ipvs.stritcARP ignored",
        "kpc.yaml: unknown field iptables.masqueradeBits ignored",
        "kpc.yaml: unknown field conntrack.tcpTimeout ignored",
    ]


@pytest.mark.parametrize(
    ("fields", "warning"),
    [
        ({"mode": "iptables"}, "kpc.yaml: mode 'iptables' ignored: only ipvs mode is implemented"),
        ({"mode": "nftables"}, "kpc.yaml: mode 'nftables' ignored: only ipvs mode is implemented"),
    ],
)
def test_warned_settings(fields: dict[str, Any], warning: str, warnings_logged: list[str]) -> None:
    assert config_from_dict(kpc(**fields), source="kpc.yaml") == ProxyConfig()
    assert warnings_logged == [warning]


# --- files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/nope\.yaml: cannot read: No such file"):
        load_config(tmp_path / "nope.yaml")


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "kpc.yaml"
    path.write_text(HEADER + "ipvs:\n  scheduler: [rr\n")
    with pytest.raises(ConfigError, match=rf"^{path}: line 5: invalid YAML: "):
        load_config(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "kpc.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match=rf"^{path}: expected a KubeProxyConfiguration mapping"):
        load_config(path)


# --- durations, bind addresses, overrides --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h2m3s", 3723.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("1s500ms", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        ("-2s", -2.0),
        ("+2s", 2.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1d", "1 s", "1.s.5", "--1s", "1m 30s", "1S"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_bind_address_parse() -> None:
    parse = BindAddress.parse
    assert parse("0.0.0.0:10256", default_port=1) == BindAddress(IPv4Address("0.0.0.0"), 10256)
    assert parse("[fd00::1]:80", default_port=1) == BindAddress(IPv6Address("fd00::1"), 80)
    assert parse("fd00::1", default_port=9) == BindAddress(IPv6Address("fd00::1"), 9)
    assert parse("[fd00::1]", default_port=9) == BindAddress(IPv6Address("fd00::1"), 9)
    with pytest.raises(ConfigError):
        BindAddress(IPv4Address("1.2.3.4"), 70000)


def test_with_overrides() -> None:
    base = load_config(DATA / "kpc_full.yaml")
    config = with_overrides(
        base,
        hostname_override="Node-A",
        scheduler="sh",
        masquerade_all=True,
        cluster_cidrs=[ip_network("10.1.0.0/16")],
        sync_period=10.0,
        min_sync_period=2.0,
        metrics_bind_address=BindAddress(IPv4Address("127.0.0.1"), 9999),
        kubeconfig="/root/.kube/config",
    )
    assert config == dataclasses.replace(
        base,
        hostname_override="node-a",
        scheduler="sh",
        masquerade_all=True,
        cluster_cidrs=(ip_network("10.1.0.0/16"),),
        sync_period=10.0,
        min_sync_period=2.0,
        metrics_bind_address=BindAddress(IPv4Address("127.0.0.1"), 9999),
        kubeconfig="/root/.kube/config",
    )
    assert with_overrides(base) == base


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sync_period": 0.0}, "sync_period: must be > 0 seconds, got 0"),
        ({"min_sync_period": 40.0}, "min_sync_period: must be between 0 and sync_period (30)"),
        ({"masquerade_bit": 32}, "masquerade_bit: must be 0-31, got 32"),
        ({"tcp_timeout": -1}, "tcp_timeout: must be >= 0 seconds, got -1"),
        ({"scheduler": ""}, "scheduler: must not be empty"),
        ({"api_burst": 0}, "api_burst: must be >= 1, got 0"),
        ({"api_qps": float("nan")}, "api_qps: must be a finite number, got nan"),
        ({"detect_local_mode": "nodecidr"}, "detect_local_mode: must be one of ClusterCIDR,"),
        (
            {"detect_local_mode": "BridgeInterface"},
            "bridge_interface: must be set with detectLocalMode BridgeInterface",
        ),
        ({"interface_name_prefix": "veth+"}, "interface_name_prefix: not an interface name"),
        (
            {"cluster_cidrs": (ip_network("10.0.0.0/8"), ip_network("10.1.0.0/16"))},
            "cluster_cidrs: at most one network per IP family, got 10.0.0.0/8,10.1.0.0/16",
        ),
    ],
)
def test_invalid_config_values_from_code(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        dataclasses.replace(ProxyConfig(), **changes)
    assert str(caught.value).startswith(message)


def test_config_is_frozen_and_hashable() -> None:
    config = ProxyConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.scheduler = "lc"  # type: ignore[misc]
    assert hash(config) == hash(ProxyConfig())
