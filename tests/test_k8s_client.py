"""The connection to the API server: kubeconfig, --master, in-cluster, token rotation, and
the transport over a real loopback socket (chunked watch streams, error statuses, stop).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from loguru import logger

from ipvsproxy.errors import ApiError, ConfigError
from ipvsproxy.k8s.client import ApiConnection, ClientSettings, TokenFile, connect
from ipvsproxy.k8s.watch import SERVICES, Reflector

# --- a scripted HTTP server on loopback -----------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # sent chunked, one by one
    hold: threading.Event | None = None  # keep the stream open until set


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class ScriptedServer:
    def __init__(self) -> None:
        self.answers: queue.Queue[Answer] = queue.Queue()
        self.seen: list[Seen] = []
        self.arrived = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                headers = {key.lower(): value for key, value in self.headers.items()}
                server.seen.append(Seen(url.path, dict(parse_qsl(url.query)), headers))
                server.arrived.set()
                try:
                    answer = server.answers.get(timeout=5)
                except queue.Empty:
                    answer = Answer(503, b'{"kind":"Status","message":"script finished"}')
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                if answer.chunks or answer.hold:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in answer.chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    if answer.hold is not None:
                        answer.hold.wait(timeout=30)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


@pytest.fixture
def connection(server: ScriptedServer) -> Iterator[ApiConnection]:
    conn = connect(ClientSettings(master=server.url))
    yield conn
    conn.close()


def service_list(rv: str, *names: str) -> bytes:
    items = [
        {
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]},
        }
        for name in names
    ]
    return json.dumps({"metadata": {"resourceVersion": rv}, "items": items}).encode()


# --- choosing the connection ----------------------------------------------------------------


def kubeconfig(tmp_path: Path, server: str, token: str = "kc-token") -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def test_kubeconfig_with_token(tmp_path: Path, server: ScriptedServer) -> None:
    conn = connect(ClientSettings(kubeconfig=kubeconfig(tmp_path, server.url)))
    server.answers.put(Answer(body=service_list("5", "a")))
    body = conn.transport.get("/api/v1/services", [("limit", "500")], timeout=(5, 5)).read()
    assert json.loads(body)["metadata"]["resourceVersion"] == "5"
    request = server.seen[0]
    assert (request.path, request.query) == ("/api/v1/services", {"limit": "500"})
    assert request.headers["authorization"] == "Bearer kc-token"
    assert request.headers["accept"] == "application/json"
    conn.close()


def test_master_overrides_the_kubeconfig_server(tmp_path: Path, server: ScriptedServer) -> None:
    path = kubeconfig(tmp_path, "https://192.0.2.1:6443")
    conn = connect(ClientSettings(kubeconfig=path, master=server.url))
    assert conn.server == server.url
    conn.close()


def test_unusable_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kubeconfig"):
        connect(ClientSettings(kubeconfig=str(tmp_path / "missing")))


def test_in_cluster_needs_the_service_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        connect(ClientSettings(service_account_dir=str(tmp_path)), environ={})


def in_cluster(tmp_path: Path, host: str = "10.96.0.1") -> ApiConnection:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return connect(
        ClientSettings(service_account_dir=str(tmp_path)),
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": "443"},
    )


def authorization(conn: ApiConnection) -> str:
    """The Authorization header the client would send with its next request."""
    configuration = conn.transport._client.configuration
    settings = configuration.auth_settings()
    return str(settings["BearerToken"]["value"])


def test_in_cluster_config_and_token_rotation(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    conn = in_cluster(tmp_path)
    assert conn.server == "https://10.96.0.1:443"
    assert conn.transport._client.configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert authorization(conn) == "Bearer first"
    # kubelet writes the new token beside the old one and renames it into place.
    (tmp_path / "token.new").write_text("second")
    os.replace(tmp_path / "token.new", token)
    assert authorization(conn) == "Bearer second"


def test_in_cluster_ipv6_host(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    assert in_cluster(tmp_path, host="fd00::1").server == "https://[fd00::1]:443"


def test_an_unreadable_rotated_token_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first")
    token = TokenFile(str(path))

    class Configuration:
        def __init__(self) -> None:
            self.api_key: dict[str, str] = {}
            self.api_key_prefix: dict[str, str] = {}

    configuration = Configuration()
    token.refresh(configuration)
    path.write_text("")
    token.refresh(configuration)
    assert configuration.api_key["BearerToken"] == "first"
    path.unlink()
    with pytest.raises(ConfigError, match="token"):
        TokenFile(str(path)).refresh(configuration)


def test_protobuf_is_not_warned_about_but_another_type_is(server: ScriptedServer) -> None:
    # Protobuf is kube-proxy's default, in most clusters' files: JSON serves as well.
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        for content_type in ("application/vnd.kubernetes.protobuf", "application/cbor"):
            connect(ClientSettings(master=server.url, content_type=content_type)).close()
    finally:
        logger.remove(sink)
    assert messages == [
        "clientConnection.contentType application/cbor is not supported; using application/json"
    ]


def test_qps_and_burst_make_a_limiter(server: ScriptedServer) -> None:
    conn = connect(ClientSettings(master=server.url, qps=1.0, burst=2))
    assert conn.limiter is not None
    assert [conn.limiter.reserve() for _ in range(3)][:2] == [0.0, 0.0]
    assert connect(ClientSettings(master=server.url, qps=-1)).limiter is None


# --- the transport --------------------------------------------------------------------------


def test_error_status_carries_the_api_message(
    server: ScriptedServer, connection: ApiConnection
) -> None:
    gone = {"kind": "Status", "code": 410, "message": "too old resource version: 5 (90)"}
    server.answers.put(Answer(410, json.dumps(gone).encode()))
    with pytest.raises(ApiError) as caught:
        connection.transport.get("/api/v1/services", [], timeout=(5, 5))
    assert caught.value.status == 410
    assert "too old resource version" in str(caught.value)


def test_unreachable_server_is_status_zero() -> None:
    conn = connect(ClientSettings(master="http://127.0.0.1:9"))
    with pytest.raises(ApiError) as caught:
        conn.transport.get("/api/v1/services", [], timeout=(2, 2))
    assert caught.value.status == 0


def test_watch_chunks_arrive_as_sent(server: ScriptedServer, connection: ApiConnection) -> None:
    release = threading.Event()
    server.answers.put(Answer(chunks=[b'{"type":"BOOKMARK"', b',"object":{}}\n'], hold=release))
    response = connection.transport.get("/api/v1/services", [("watch", "true")], timeout=(5, 5))
    received = b""
    for chunk in response.chunks():
        received += chunk
        if received.endswith(b"\n"):
            break  # the event arrived while the server still holds the stream open
    release.set()
    response.close()
    assert json.loads(received) == {"type": "BOOKMARK", "object": {}}


def test_reflector_over_http_and_a_prompt_stop(
    server: ScriptedServer, connection: ApiConnection
) -> None:
    server.answers.put(Answer(body=service_list("7", "a", "b")))
    event = {
        "type": "ADDED",
        "object": {
            "metadata": {"name": "c", "namespace": "default", "resourceVersion": "8"},
            "spec": {"clusterIP": "10.0.0.3", "ports": [{"port": 80}]},
        },
    }
    never = threading.Event()  # the server never ends this watch
    server.answers.put(Answer(chunks=[json.dumps(event).encode() + b"\n"], hold=never))

    seen: list[str] = []
    got_c = threading.Event()

    class Handler:
        def replace(self, items: Any) -> None:
            seen.extend(sorted(items))

        def upsert(self, key: str, value: Any) -> None:
            seen.append(key)
            got_c.set()

        def delete(self, key: str) -> None:
            seen.append(f"-{key}")

        def listed(self) -> None:
            pass

    reflector = Reflector(SERVICES, connection.transport, Handler(), limiter=connection.limiter)
    reflector.start()
    assert got_c.wait(timeout=10)
    # The watch is now blocked reading a socket that will not get any more data.
    reflector.stop(timeout=1.0)
    thread = reflector._thread
    assert thread is not None and not thread.is_alive()
    never.set()
    assert seen == ["default/a", "default/b", "default/c"]
    watch = server.seen[1]
    assert watch.query["watch"] == "true" and watch.query["resourceVersion"] == "7"


# kubeadm's kube-proxy ConfigMap, key kubeconfig.conf (cmd/kubeadm/app/phases/addons/proxy),
# with the server it names; deploy/ passes it to the agent with --kubeconfig.
KUBEADM_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: {token}
"""


def test_kubeadm_kube_proxy_kubeconfig_reads_the_token_file_again_when_rotated(
    tmp_path: Path,
) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    token = tmp_path / "token"
    token.write_text("first\n")
    path = tmp_path / "kubeconfig.conf"
    path.write_text(
        KUBEADM_KUBECONFIG.format(
            ca=tmp_path / "ca.crt", server="https://192.0.2.1:6443", token="token"
        )
    )
    conn = connect(ClientSettings(kubeconfig=str(path)))
    assert conn.server == "https://192.0.2.1:6443"
    assert authorization(conn) == "Bearer first"
    (tmp_path / "token.new").write_text("second")
    os.replace(tmp_path / "token.new", token)
    assert authorization(conn) == "Bearer second"
    conn.close()
