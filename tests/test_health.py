"""ProxyHealth transitions on an injected clock, and /healthz and /livez over real HTTP."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from ipvsproxy.core.model import Node
from ipvsproxy.serve.httpserve import HttpServer, Request, Response
from ipvsproxy.serve.proxy_health import ProxyHealth, format_time, serve_health

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_healthz_fails_until_the_first_sync_livez_does_not() -> None:
    clock = Clock()
    health = ProxyHealth(health_timeout=60, clock=clock)
    assert health.healthz() == (
        503,
        {
            "lastUpdated": "0001-01-01T00:00:00Z",
            "currentTime": "2023-11-14T22:13:20Z",
            "nodeEligible": True,
            "healthy": False,
        },
    )
    clock.now += 3600  # however long it waits for the API server
    code, body = health.livez()
    assert code == 200 and "nodeEligible" not in body and body["healthy"] is True
    assert health.healthz()[0] == 503
    health.updated()
    assert health.healthz()[0] == 200


def test_healthy_after_a_sync_and_lastupdated_reads_now() -> None:
    health = ProxyHealth(health_timeout=60, clock=Clock())
    health.updated()
    assert health.healthz() == (
        200,
        {
            "lastUpdated": "2023-11-14T22:13:20Z",
            "currentTime": "2023-11-14T22:13:20Z",
            "nodeEligible": True,
            "healthy": True,
        },
    )
    code, body = health.livez()
    assert code == 200 and "nodeEligible" not in body


def test_a_queued_change_turns_stale_after_the_timeout_until_a_sync_succeeds() -> None:
    clock = Clock()
    health = ProxyHealth(health_timeout=60, clock=clock)
    health.updated()  # a first sync at T0
    health.queued_update(T0 + 10)
    health.queued_update(T0 + 50)  # only the oldest pending change counts
    assert health.healthz(T0 + 69.9)[0] == 200
    code, body = health.healthz(T0 + 70)
    assert code == 503
    assert body["lastUpdated"] == format_time(T0)  # the last success, not now
    assert body["healthy"] is False
    assert health.livez(T0 + 70)[0] == 503
    health.updated(T0 + 75)
    assert health.healthz(T0 + 75)[0] == 200
    assert health.livez(T0 + 500)[0] == 200  # nothing pending: never stale


def test_stale_before_any_sync_reports_go_zero_time() -> None:
    health = ProxyHealth(health_timeout=30, clock=Clock())
    health.queued_update(T0)
    code, body = health.livez(T0 + 30)
    assert code == 503
    assert body == {
        "lastUpdated": "0001-01-01T00:00:00Z",
        "currentTime": "2023-11-14T22:13:50Z",
        "healthy": False,
    }


def test_an_ineligible_node_fails_healthz_but_not_livez() -> None:
    health = ProxyHealth(health_timeout=60, clock=Clock())
    health.updated()
    health.set_node_eligible(Node("n1", to_be_deleted=True).eligible)
    code, body = health.healthz()
    assert code == 503
    assert body["nodeEligible"] is False and body["healthy"] is True
    assert health.livez()[0] == 200
    health.set_node_eligible(Node("n1").eligible)
    assert health.healthz()[0] == 200


def test_format_time_matches_go_rfc3339nano() -> None:
    assert format_time(T0 + 0.5) == "2023-11-14T22:13:20.5Z"
    assert format_time(T0 + 0.25) == "2023-11-14T22:13:20.25Z"
    assert format_time(None) == "0001-01-01T00:00:00Z"


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_health_server_answers_over_http_and_counts_probes() -> None:
    clock = Clock()
    health = ProxyHealth(health_timeout=60, clock=clock)
    probes: list[tuple[str, int]] = []
    with serve_health(health, ("127.0.0.1", 0), on_probe=lambda p, c: probes.append((p, c))) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        health.updated()
        status, headers, body = get(base + "/healthz")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert json.loads(body)["nodeEligible"] is True

        health.queued_update()
        clock.now += 61
        status, _, body = get(base + "/livez")
        assert status == 503
        assert json.loads(body)["currentTime"] == format_time(clock.now)

        assert get(base + "/metrics")[0] == 404
    assert probes == [("/healthz", 200), ("/livez", 503)]


def test_closed_server_releases_its_port() -> None:
    server = HttpServer(("127.0.0.1", 0), {})
    port = server.port
    server.close()
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_handler_failure_is_a_500_and_the_server_keeps_serving() -> None:
    def broken(_request: Request) -> Response:
        raise RuntimeError("boom")

    def fine(request: Request) -> Response:
        return Response(200, f"fine {request.query}".encode())

    with HttpServer(("127.0.0.1", 0), {"/broken": broken, "/fine": fine}) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert get(base + "/broken")[0] == 500
        status, _, body = get(base + "/fine?x=1")
        assert (status, body) == (200, b"fine x=1")
