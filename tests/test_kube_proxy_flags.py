"""`run` takes kube-proxy's flags, as kube-proxy takes them (config/flags.py).

- Each flag that maps onto a KubeProxyConfiguration field gives the same settings as the
  field in a file; without --config the flags build the settings, with --config the
  file wins and the flags it overrides are named in one warning; --hostname-override
  wins over the file.
- --proxy-mode other than ipvs is an error naming the mode; deprecated and
  iptables-only flags are accepted with one warning each.
- --write-config-to writes what `run` would run with; --version prints the version;
  `verify` exits 2 when the kernel has no IPVS (this host's has none).
- The README's flag table lists every flag of FLAGS with its status, and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from ipvsproxy.cli import EXIT_INPUT, EXIT_OK, main
from ipvsproxy.config.flags import BY_NAME, FLAGS, Status, effective_config, readme_table
from ipvsproxy.config.kubeproxy_file import config_from_dict, load_config
from ipvsproxy.config.settings import API_VERSION, KIND, ProxyConfig
from ipvsproxy.errors import ConfigError
from ipvsproxy.version import build_info

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(
        lambda m: lines.append(f"{m.record['message']} {m.record['extra']}"), level="WARNING"
    )
    yield lines
    logger.remove(sink)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield  # main() points loguru at the captured stderr, which pytest closes after the test
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def settings(*argv: str) -> ProxyConfig:
    """run's settings for `argv` (kube-proxy flags only), as _cmd_run works them out."""
    from ipvsproxy.cli import _parser, _run_config

    return _run_config(_parser().parse_args(["run", *argv]))[0]


def file_config(fields: dict[str, object]) -> ProxyConfig:
    return config_from_dict({"apiVersion": API_VERSION, "kind": KIND, **fields})


# A flag, a value, and the KubeProxyConfiguration fields meaning the same.
SAME_AS_FILE = [
    ("--ipvs-scheduler=lc", {"ipvs": {"scheduler": "lc"}}),
    ("--ipvs-sync-period=10s", {"syncPeriod": "10s"}),
    ("--ipvs-min-sync-period=2s", {"minSyncPeriod": "2s"}),
    (
        "--ipvs-exclude-cidrs=10.1.0.0/16,fd00::/64",
        {"ipvs": {"excludeCIDRs": ["10.1.0.0/16", "fd00::/64"]}},
    ),
    ("--ipvs-strict-arp", {"ipvs": {"strictARP": True}}),
    ("--ipvs-tcp-timeout=15m", {"ipvs": {"tcpTimeout": "15m"}}),
    ("--ipvs-tcpfin-timeout=30s", {"ipvs": {"tcpFinTimeout": "30s"}}),
    ("--ipvs-udp-timeout=5s", {"ipvs": {"udpTimeout": "5s"}}),
    ("--rules-backend=nftables", {"ipvs": {"rulesBackend": "nftables"}}),
    ("--masquerade-all=true", {"iptables": {"masqueradeAll": True}}),
    ("--iptables-masquerade-bit=15", {"iptables": {"masqueradeBit": 15}}),
    ("--cluster-cidr=10.244.0.0/16,fd01::/48", {"clusterCIDR": "10.244.0.0/16,fd01::/48"}),
    ("--detect-local-mode=NodeCIDR", {"detectLocalMode": "NodeCIDR"}),
    ("--nodeport-addresses=primary", {"nodePortAddresses": ["primary"]}),
    ("--conntrack-max-per-core=0", {"conntrack": {"maxPerCore": 0}}),
    ("--conntrack-min=1000", {"conntrack": {"min": 1000}}),
    ("--conntrack-tcp-timeout-established=2h", {"conntrack": {"tcpEstablishedTimeout": "2h"}}),
    ("--conntrack-tcp-timeout-close-wait=30m", {"conntrack": {"tcpCloseWaitTimeout": "30m"}}),
    ("--conntrack-tcp-be-liberal", {"conntrack": {"tcpBeLiberal": True}}),
    ("--conntrack-udp-timeout=30s", {"conntrack": {"udpTimeout": "30s"}}),
    ("--conntrack-udp-timeout-stream=2m", {"conntrack": {"udpStreamTimeout": "2m"}}),
    ("--kube-api-qps=50", {"clientConnection": {"qps": 50}}),
    ("--kube-api-burst=100", {"clientConnection": {"burst": 100}}),
    (
        "--kube-api-content-type=application/vnd.kubernetes.protobuf",
        {"clientConnection": {"contentType": "application/vnd.kubernetes.protobuf"}},
    ),
    ("--kubeconfig=/etc/kubeconfig", {"clientConnection": {"kubeconfig": "/etc/kubeconfig"}}),
    ("--bind-address=10.0.0.5", {"bindAddress": "10.0.0.5"}),
    ("--healthz-bind-address=127.0.0.1:9256", {"healthzBindAddress": "127.0.0.1:9256"}),
    ("--metrics-bind-address=0.0.0.0", {"metricsBindAddress": "0.0.0.0"}),
    ("--oom-score-adj=-500", {"oomScoreAdj": -500}),
    ("--feature-gates=TopologyAwareHints=true", {"featureGates": {"TopologyAwareHints": True}}),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "fields"), SAME_AS_FILE, ids=[f for f, _ in SAME_AS_FILE])
def test_a_flag_means_what_its_field_means(flag: str, fields: dict[str, object]) -> None:
    # Flags only: kube-proxy's flags-only minSyncPeriod default is 1s, the file's 0s.
    base = {} if "minSyncPeriod" in fields else {"minSyncPeriod": "1s"}
    expected = file_config({**base, **fields})
    assert settings(flag) == expected
    assert settings(flag) != settings(), flag  # the flag changed something


def test_every_field_flag_is_covered_above() -> None:
    covered = {flag.split("=")[0].lstrip("-") for flag, _ in SAME_AS_FILE}
    mapped = {
        f.name
        for f in FLAGS
        if f.field
        and f.status in (Status.SAME, Status.DIFFERS)
        and not f.field.startswith("logging.")
        and f.name not in ("proxy-mode", "pod-bridge-interface", "pod-interface-name-prefix")
    }
    assert mapped <= covered, mapped - covered


def test_flags_only_defaults_are_kube_proxys() -> None:
    config = settings()
    assert config.min_sync_period == 1.0  # kube-proxy without --config
    assert config.sync_period == 30.0
    assert str(config.metrics_bind_address) == "127.0.0.1:10249"
    assert str(config.healthz_bind_address) == "0.0.0.0:10256"
    assert config.oom_score_adj == -999


def test_pod_interface_flags_with_their_mode() -> None:
    config = settings("--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=cali")
    assert config.local_interface == "cali+"
    config = settings("--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0")
    assert config.local_interface == "cbr0"


def test_go_bool_forms() -> None:
    assert settings("--masquerade-all").masquerade_all
    assert settings("--masquerade-all=T").masquerade_all
    assert not settings("--masquerade-all=false").masquerade_all
    assert main(["run", "--masquerade-all=maybe"]) == EXIT_INPUT


def test_underscores_in_flag_names_are_dashes(tmp_path: Path) -> None:
    out = tmp_path / "written.yaml"
    argv = ["run", "--ipvs_scheduler=lc", "--write_config_to", str(out)]
    assert main(argv) == EXIT_OK
    assert load_config(out).scheduler == "lc"


def test_list_flags_accumulate_as_pflag_does() -> None:
    config = settings("--ipvs-exclude-cidrs=10.1.0.0/16", "--ipvs-exclude-cidrs=10.2.0.0/16")
    assert [str(n) for n in config.exclude_cidrs] == ["10.1.0.0/16", "10.2.0.0/16"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--ipvs-sync-period=soon"],
        ["--iptables-masquerade-bit=40"],
        ["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"],
        ["--detect-local-mode=Everything"],
        ["--kube-api-burst=lots"],
        ["--oom-score-adj=5000"],
        ["--bind-address=node-a"],
        ["--metrics-bind-address=nonsense:1"],
        ["--hostname-override=   "],
    ],
)
def test_bad_values_exit_2_before_anything_runs(argv: list[str]) -> None:
    assert main(["run", "--master", "http://127.0.0.1:1", *argv]) == EXIT_INPUT


@pytest.mark.parametrize("mode", ["iptables", "nftables", "kernelspace"])
def test_another_proxy_mode_is_an_error_naming_it(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.conf"
    config.write_text(f"apiVersion: {API_VERSION}\nkind: {KIND}\nmode: ipvs\n")
    for argv in ([f"--proxy-mode={mode}"], [f"--config={config}", "--proxy-mode", mode]):
        assert main(["run", *argv]) == EXIT_INPUT
        err = capsys.readouterr().err
        assert f"--proxy-mode={mode}" in err and err.startswith("E"), err
    assert settings("--proxy-mode=ipvs") == settings()


def test_with_config_the_file_wins_but_hostname_override(
    tmp_path: Path, warnings: list[str]
) -> None:
    config = tmp_path / "config.conf"
    config.write_text(
        f"apiVersion: {API_VERSION}\nkind: {KIND}\nmode: ipvs\nhostnameOverride: from-file\n"
        "ipvs: {scheduler: wlc}\nmetricsBindAddress: 127.0.0.1:19249\n"
    )
    got = settings(
        f"--config={config}",
        "--ipvs-scheduler=lc",
        "--metrics-bind-address=",
        "--hostname-override=  Node-A ",
    )
    assert got.scheduler == "wlc"
    assert str(got.metrics_bind_address) == "127.0.0.1:19249"
    assert got.hostname_override == "node-a"  # trimmed and lower-cased, as kube-proxy
    assert got == dataclasses.replace(load_config(config), hostname_override="node-a")
    (line,) = [w for w in warnings if "ignored because --config" in w]
    assert "--ipvs-scheduler" in line and "--metrics-bind-address" in line
    assert "--hostname-override" not in line


@pytest.mark.parametrize(
    "flag",
    [
        f"--{f.name}" + ("" if f.kind == "bool" else f"={f.default or '1'}")
        for f in FLAGS
        if f.warns
    ],
)
def test_inert_flags_are_accepted_with_one_warning(flag: str, warnings: list[str]) -> None:
    settings(flag)
    name = flag.split("=")[0].lstrip("-")
    assert sum(f"--{name} " in w or f"--{name}=" in w for w in warnings) == 1, warnings
    assert BY_NAME[name].note


def test_empty_bind_address_or_port_0_turns_a_server_off() -> None:
    assert settings("--metrics-bind-address=").metrics_bind_address is None
    assert settings("--healthz-bind-address=").healthz_bind_address is None
    assert settings("--metrics-port=0").metrics_bind_address is None
    port_less = settings("--healthz-bind-address=10.0.0.1", "--healthz-port=1234")
    assert str(port_less.healthz_bind_address) == "10.0.0.1:1234"
    # a port already given stays, as AppendPortIfNeeded leaves it
    assert (
        settings("--metrics-port=9999").metrics_bind_address == ProxyConfig().metrics_bind_address
    )


def test_feature_gates_are_named_as_ignored(warnings: list[str]) -> None:
    got = settings("--feature-gates=Foo=true,TopologyAwareHints=true", "--feature-gates=Bar=false")
    assert got.feature_gates == (("Bar", False), ("Foo", True), ("TopologyAwareHints", True))
    (line,) = [w for w in warnings if "feature gates" in w]
    assert "Foo=true" in line and "Bar=false" in line and "TopologyAwareHints" not in line


def test_write_config_to_writes_the_effective_configuration(tmp_path: Path) -> None:
    out = tmp_path / "written.yaml"
    argv = ["--ipvs-scheduler=sh", "--cluster-cidr=10.244.0.0/16", "--conntrack-min=99"]
    assert main(["run", *argv, f"--write-config-to={out}"]) == EXIT_OK
    assert load_config(out) == settings(*argv)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--version"], ["run", "--version"], ["run", "--config=/nowhere", "--version"]):
        assert main(argv) == EXIT_OK
        assert capsys.readouterr().out == f"ipvsproxy {build_info().git_version}\n"
    assert main(["run", "--version=raw"]) == EXIT_OK
    assert "gitCommit=" in capsys.readouterr().out


def test_verify_cannot_tell_without_ipvs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ipvsproxy.dataplane.ipvs import IpvsSocket
    from ipvsproxy.errors import KernelError

    try:
        IpvsSocket().close()
    except KernelError:
        pass
    else:
        pytest.skip("this kernel has IPVS")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    assert main(["verify", "-f", str(cluster)]) == 2
    assert "cannot read the kernel" in capsys.readouterr().err


def test_hostname_override_rules() -> None:
    with pytest.raises(ConfigError, match="empty hostname-override"):
        effective_config({"hostname-override": " "}, None, source="x")
    assert settings("--hostname-override=").hostname_override is None  # empty: unset


# --- the README's table --------------------------------------------------------------------


def test_readme_lists_every_flag_with_its_status() -> None:
    text = README.read_text()
    start = text.index("<!-- kube-proxy flags: begin -->\n") + len(
        "<!-- kube-proxy flags: begin -->\n"
    )
    end = text.index("<!-- kube-proxy flags: end -->")
    assert text[start:end] == readme_table(), "README's table: paste readme_table()'s output"
    rows = [line for line in readme_table().splitlines()[2:]]
    assert len(rows) == len(FLAGS)
    for row in rows:
        status = row.split(" | ")[1]
        assert status.startswith(("same", "differs: ", "not applicable in IPVS mode")), row


def test_user_agent_is_client_gos_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipvsproxy.version import user_agent

    monkeypatch.setenv("IPVSPROXY_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    build_info.cache_clear()
    try:
        agent = user_agent()
        info = build_info()
    finally:
        build_info.cache_clear()
    assert re.fullmatch(r"ipvsproxy/v\d+\.\d+\.\d+ \(linux/\w+\) kubernetes/0123456", agent)
    assert info.git_commit == "0123456789abcdef0123456789abcdef01234567"
    assert (info.major, info.minor) == tuple(info.git_version.lstrip("v").split(".")[:2])


def test_the_files_logging_section_counts_unless_a_flag_says_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.conf"
    config.write_text(
        f"apiVersion: {API_VERSION}\nkind: {KIND}\nmode: ipvs\nlogging: {{format: json}}\n"
    )
    out = tmp_path / "written.yaml"
    assert main(["run", f"--config={config}", f"--write-config-to={out}"]) == EXIT_OK
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["msg"] == "Wrote configuration"  # the file's json format
    argv = ["run", f"--config={config}", "--logging-format=text", f"--write-config-to={out}"]
    assert main(argv) == EXIT_OK
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("I") and '] "Wrote configuration"' in line  # the flag wins
