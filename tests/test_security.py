"""Security: what the agent exposes, what it logs, and how it takes hostile configuration.

- /metrics listens on loopback by default; the health and metrics servers answer their
  own paths and nothing else.
- A bearer token, from a kubeconfig or the in-cluster token file, never appears in the
  logs, even at the highest verbosity and while requests fail.
- A kubeconfig path or configuration value that is wrong or hostile gives one clear
  error line naming it and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonrig import free_port, metric, svc, wait_for
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import SERVICES as SERVICE_TYPE
from loguru import logger

from ipvsproxy.cli import EXIT_INPUT, main
from ipvsproxy.config.kubeproxy_file import load_config
from ipvsproxy.config.settings import BindAddress, ProxyConfig
from ipvsproxy.k8s.client import ClientSettings, connect
from ipvsproxy.k8s.watch import SERVICES, Reflector, WatchSettings
from ipvsproxy.serve.metrics import ProxyMetrics, serve_metrics
from ipvsproxy.serve.proxy_health import ProxyHealth, serve_health

TOKEN = "tok3n-s3cr3t-5f1c2b7e9d"


@pytest.fixture
def trace_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="TRACE", format="{message} {extra}")
    yield lines
    logger.remove(sink)


def status(port: int, method: str, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_metrics_listen_on_loopback_by_default(tmp_path: Path) -> None:
    assert str(ProxyConfig().metrics_bind_address.host) == "127.0.0.1"
    config = tmp_path / "kube-proxy.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
    )
    assert str(load_config(config).metrics_bind_address.host) == "127.0.0.1"


STRAY_PATHS = [
    "/",
    "/metrics/../healthz/x",
    "/healthz/extra",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/debug/pprof/",
    "/configz",
    "/flagz",
]


def test_health_and_metrics_servers_answer_only_their_paths() -> None:
    health_port, metrics_port = free_port(), free_port()
    synced = ProxyHealth(health_timeout=60)
    synced.updated()
    health = serve_health(
        synced,
        BindAddress.parse(f"127.0.0.1:{health_port}", default_port=0),
    )
    metrics = serve_metrics(
        ProxyMetrics().registry, BindAddress.parse(f"127.0.0.1:{metrics_port}", default_port=0)
    )
    try:
        for path in ("/healthz", "/livez"):
            assert status(health_port, "GET", path) == 200, path
        for path in ("/metrics", "/proxyMode"):
            assert status(metrics_port, "GET", path) == 200, path
        for port in (health_port, metrics_port):
            for path in [*STRAY_PATHS, "/metrics" if port == health_port else "/livez"]:
                assert status(port, "GET", path) == 404, (port, path)
            for method in ("POST", "PUT", "DELETE"):
                assert status(port, method, "/healthz") >= 400, (port, method)
    finally:
        health.close()
        metrics.close()


def test_no_token_from_a_kubeconfig_in_logs_at_the_highest_verbosity(tmp_path: Path) -> None:
    with TestAPIServer(bookmark_interval=0.2) as api:
        api.store.create(SERVICE_TYPE, "default", svc("web", "10.96.0.10"))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: c\n  cluster:\n    server: {api.url}\n"
            f"users:\n- name: u\n  user:\n    token: {TOKEN}\n"
            "contexts:\n- name: x\n  context: {cluster: c, user: u}\n"
            "current-context: x\n"
        )
        metrics_port = free_port()
        log = tmp_path / "agent.log"
        with log.open("w") as out:
            agent = subprocess.Popen(
                [
                    sys.executable, "-m", "ipvsproxy.cli", "run", "--v", "10",
                    "--logging-format", "console",  # names the levels
                    "--dataplane", "fake", "--kubeconfig", str(kubeconfig),
                    "--hostname-override", "n1",
                    "--healthz-bind-address", f"127.0.0.1:{free_port()}",
                    "--metrics-bind-address", f"127.0.0.1:{metrics_port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:

                def synced() -> bool:
                    assert agent.poll() is None, log.read_text()
                    try:
                        url = f"http://127.0.0.1:{metrics_port}/metrics"
                        text = __import__("urllib.request").request.urlopen(url).read().decode()
                    except OSError:
                        return False
                    return metric(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0

                wait_for(synced, timeout=60, what="the agent's first sync")
                # Requests that fail (refused, cut) are logged with their details.
                api.faults.fail(count=6, code=401)
                api.faults.truncate(count=2)
                api.cut_watches()
                wait_for(lambda: api.faults.state()["failCount"] == 0, what="the failures")
                time.sleep(0.5)  # the reflectors' retries, logged
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(10)
    text = log.read_text()
    assert "TRACE" in text or "DEBUG" in text, text[-2000:]
    assert "401" in text  # the failures were logged
    assert TOKEN not in text


def test_no_in_cluster_token_in_logs_while_requests_fail(
    tmp_path: Path, trace_logs: list[str]
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    (account / "ca.crt").write_text("not a certificate\n")
    with TestAPIServer() as api:  # plain HTTP: every https request fails
        connection = connect(
            ClientSettings(service_account_dir=str(account)),
            environ={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(api.port),
            },
        )
        reflector = Reflector(
            SERVICES,
            connection.transport,
            _Discard(),
            settings=WatchSettings(backoff_initial=0.01, backoff_max=0.05),
        )
        reflector.start()
        try:
            wait_for(lambda: sum("failed" in line for line in trace_logs) >= 1)
            (account / "token").write_text(TOKEN + "-rotated\n")  # kubelet rotates it
            time.sleep(0.3)
        finally:
            reflector.stop()
            connection.close()
    assert any("failed" in line for line in trace_logs)
    assert not any(TOKEN in line for line in trace_logs)


class _Discard:
    def replace(self, items: object) -> None: ...

    def upsert(self, key: str, value: object) -> None: ...

    def delete(self, key: str) -> None: ...

    def listed(self) -> None: ...


def _config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "kube-proxy.yaml"
    path.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n" + body
    )
    return str(path)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda d: ["--kubeconfig", str(d / "missing" / ".." / ".." / "etc" / "x")], "kubeconfig"),
        (lambda d: ["--kubeconfig", str(d)], "kubeconfig"),
        (lambda d: ["--kubeconfig", _write(d / "k", "- just\n- a list\n")], "kubeconfig"),
        (lambda d: ["--kubeconfig", _write(d / "k", "\x00\xff\x07garbage: [")], "kubeconfig"),
        (lambda d: ["--kubeconfig", _write(d / "k", "a: &a [*a, *a, *a]\n")], "kubeconfig"),
        (
            lambda d: ["--config", _config(d, 'metricsBindAddress: "0.0.0.0:99999"\n')],
            "metricsBindAddress",
        ),
        (
            lambda d: ["--config", _config(d, 'clusterCIDR: "10.0.0.0/8\\n-A INPUT -j ACCEPT"\n')],
            "clusterCIDR",
        ),
        (lambda d: ["--config", _config(d, "iptables: {masqueradeBit: 99}\n")], "masqueradeBit"),
        (lambda d: ["--config", _config(d, "mode: 'ipvs; reboot'\n")], "mode"),
        (lambda d: ["--config", str(d / "no-such.yaml")], "no-such.yaml"),
    ],
)
def test_hostile_kubeconfig_or_config_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, named: str
) -> None:
    assert callable(make)
    code = main(["run", "--dataplane", "fake", *make(tmp_path)])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT, err
    assert named in err, err
    assert "Traceback" not in err


def _write(path: Path, text: str) -> str:
    path.write_text(text, errors="surrogateescape")
    return str(path)
