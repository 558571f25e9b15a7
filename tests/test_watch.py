"""The reflector against a scripted transport: list pages, watch streams, errors, stop.

Each test scripts the API server's answers in order; the reflector's sleeps are recorded,
never slept. When the script runs out the reflector is stopped.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from loguru import logger

from ipvsproxy.core.model import Node, Service
from ipvsproxy.errors import ApiError
from ipvsproxy.k8s.ratelimit import Backoff, TokenBucket
from ipvsproxy.k8s.watch import (
    ENDPOINT_SLICES,
    SERVICES,
    Reflector,
    Resource,
    WatchSettings,
    node_resource,
)

# --- objects as the API server sends them ----------------------------------------------------


def svc(
    name: str, ip: str, port: int = 80, *, rv: str = "1", ns: str = "default"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    }


def event(kind: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def bookmark(rv: str) -> bytes:
    return event("BOOKMARK", {"kind": "Service", "metadata": {"resourceVersion": rv}})


def error_event(code: int) -> bytes:
    return event("ERROR", {"kind": "Status", "code": code, "message": f"error {code}"})


def page(items: Sequence[Mapping[str, Any]], rv: str, token: str = "") -> bytes:
    metadata = {"resourceVersion": rv}
    if token:
        metadata["continue"] = token
    return json.dumps({"kind": "ServiceList", "metadata": metadata, "items": list(items)}).encode()


# --- the scripted transport ---------------------------------------------------------------


class FakeResponse:
    def __init__(self, body: bytes = b"", *, chunks: Sequence[bytes] = (), cut: bool = False):
        self._body = body
        self._chunks = list(chunks)
        self._cut = cut
        self.closed = False

    def read(self) -> bytes:
        return self._body

    def chunks(self) -> Iterator[bytes]:
        yield from self._chunks
        if self._cut:
            raise ApiError("connection reset by peer")

    def shutdown(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


Step = FakeResponse | ApiError


@dataclass
class Request:
    path: str
    query: dict[str, str]

    @property
    def watch(self) -> bool:
        return self.query.get("watch") == "true"


@dataclass
class ScriptedTransport:
    steps: list[Step]
    requests: list[Request] = field(default_factory=list)
    slept_after: list[int] = field(default_factory=list)  # request counts at each sleep
    reflector: Reflector[Any] | None = None

    def get(
        self, path: str, query: Sequence[tuple[str, str]], *, timeout: tuple[float, float]
    ) -> FakeResponse:
        self.requests.append(Request(path, dict(query)))
        if not self.steps:
            assert self.reflector is not None
            self.reflector.stop()
            raise ApiError("script finished")
        step = self.steps.pop(0)
        if isinstance(step, ApiError):
            raise step
        return step


@dataclass
class Recorder:
    """A handler that records every call, and the state it would hold."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def replace(self, items: Mapping[str, Any]) -> None:
        self.calls.append(("replace", dict(items)))
        self.state = dict(items)

    def upsert(self, key: str, value: Any) -> None:
        self.calls.append(("upsert", key))
        self.state[key] = value

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        del self.state[key]

    def listed(self) -> None:
        self.calls.append(("listed",))


def run(
    steps: list[Step],
    resource: Resource[Any] = SERVICES,
    *,
    settings: WatchSettings | None = None,
    handler: Recorder | None = None,
) -> tuple[Recorder, ScriptedTransport, list[float], Reflector[Any]]:
    """Run a reflector over the script; returns handler, transport, sleeps, reflector."""
    handler = handler or Recorder()
    transport = ScriptedTransport(list(steps))
    sleeps: list[float] = []
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        transport.slept_after.append(len(transport.requests))
        clock.now += seconds

    reflector = Reflector(
        resource,
        transport,
        handler,
        settings=settings,
        clock=clock,
        sleep=sleep,
        rng=random.Random(7),
    )
    transport.reflector = reflector
    reflector.run()
    return handler, transport, sleeps, reflector


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(*lines: bytes, cut: bool = False) -> FakeResponse:
    return FakeResponse(chunks=lines, cut=cut)


def keys(handler: Recorder) -> list[str]:
    return sorted(handler.state)


# --- list ----------------------------------------------------------------------------------


def test_paginated_list_then_watch_from_its_resource_version() -> None:
    handler, transport, _, reflector = run(
        [
            FakeResponse(page([svc("a", "10.0.0.1")], "50", token="t1")),
            FakeResponse(page([svc("b", "10.0.0.2")], "50")),
            watch(event("ADDED", svc("c", "10.0.0.3", rv="51"))),
        ],
        settings=WatchSettings(page_size=1),
    )
    first, second, third = transport.requests[:3]
    assert first.query == {
        "limit": "1",
        "labelSelector": "!service.kubernetes.io/service-proxy-name",
        "fieldSelector": "spec.clusterIP!=None",
    }
    assert second.query["continue"] == "t1"
    assert third.watch
    assert third.query["resourceVersion"] == "50"
    assert third.query["allowWatchBookmarks"] == "true"
    assert 300 <= int(third.query["timeoutSeconds"]) <= 600
    assert handler.calls[:3] == [
        (
            "replace",
            {"default/a": handler.state["default/a"], "default/b": handler.state["default/b"]},
        ),
        ("listed",),
        ("upsert", "default/c"),
    ]
    assert keys(handler) == ["default/a", "default/b", "default/c"]
    assert isinstance(handler.state["default/c"], Service)
    assert reflector.resource_version == "51"
    assert reflector.has_listed


def test_expired_continue_token_restarts_the_list() -> None:
    handler, transport, _sleeps, _ = run(
        [
            FakeResponse(page([svc("a", "10.0.0.1")], "50", token="t1")),
            ApiError("continue expired", status=410),
            FakeResponse(page([svc("b", "10.0.0.2")], "60", token="t2")),
            FakeResponse(page([svc("c", "10.0.0.3")], "60")),
        ]
    )
    assert [r.query.get("continue") for r in transport.requests[:4]] == [None, "t1", None, "t2"]
    # "a" came from the abandoned snapshot only: the restarted list does not include it.
    assert handler.calls[0] == (
        "replace",
        {k: handler.state[k] for k in ["default/b", "default/c"]},
    )
    assert transport.slept_after == [5]  # only when the script ran out
    assert transport.requests[4].query["resourceVersion"] == "60"


def test_list_errors_back_off_exponentially_with_jitter_and_cap() -> None:
    failures: list[Step] = [ApiError("connection refused") for _ in range(8)]
    handler, _, sleeps, _ = run(
        [*failures, FakeResponse(page([], "5"))],
        settings=WatchSettings(backoff_initial=1.0, backoff_max=10.0),
    )
    assert len(sleeps) >= 8
    bases = [1, 2, 4, 8, 10, 10, 10, 10]
    for delay, base in zip(sleeps[:8], bases, strict=True):
        assert base <= delay <= min(10.0, 2 * base)
    assert len(set(sleeps[:8])) > 2  # jittered, not fixed
    assert handler.calls[:2] == [("replace", {}), ("listed",)]


def test_a_field_selector_the_server_refuses_is_dropped() -> None:
    _, transport, _, _ = run(
        [ApiError("field label not supported", status=400), FakeResponse(page([], "5"))]
    )
    assert "fieldSelector" in transport.requests[0].query
    assert "fieldSelector" not in transport.requests[1].query
    assert "fieldSelector" not in transport.requests[2].query  # the watch too


# --- watch ---------------------------------------------------------------------------------


def test_modify_delete_and_unchanged_modifications() -> None:
    handler, _, _, reflector = run(
        [
            FakeResponse(page([svc("a", "10.0.0.1")], "10")),
            watch(
                event("MODIFIED", svc("a", "10.0.0.1", rv="11")),  # same model value
                event("MODIFIED", svc("a", "10.0.0.1", port=81, rv="12")),
                event("DELETED", svc("a", "10.0.0.1", port=81, rv="13")),
                event("DELETED", svc("never-seen", "10.0.0.9", rv="14")),
            ),
        ]
    )
    assert handler.calls[2:] == [("upsert", "default/a"), ("delete", "default/a")]
    assert reflector.resource_version == "14"


def test_watch_restarts_from_the_last_resource_version_and_bookmarks_advance_it() -> None:
    _, transport, _sleeps, _ = run(
        [
            FakeResponse(page([], "10")),
            watch(event("ADDED", svc("a", "10.0.0.1", rv="11")), bookmark("20")),
            watch(bookmark("30")),
        ]
    )
    watches = [r for r in transport.requests if r.watch]
    assert [w.query["resourceVersion"] for w in watches] == ["10", "20", "30"]
    assert transport.slept_after == [4]  # no backoff between healthy watches
    assert len({w.query["timeoutSeconds"] for w in watches}) > 1  # randomized


def test_a_watch_cut_mid_stream_resumes_without_loss_or_duplicates() -> None:
    half = event("ADDED", svc("b", "10.0.0.2", rv="12"))
    handler, transport, _, _ = run(
        [
            FakeResponse(page([], "10")),
            # The stream breaks inside the second event: only the first was whole.
            watch(event("ADDED", svc("a", "10.0.0.1", rv="11")), half[:20], cut=True),
            watch(half, event("ADDED", svc("c", "10.0.0.3", rv="13"))),
        ]
    )
    watches = [r for r in transport.requests if r.watch]
    assert watches[1].query["resourceVersion"] == "11"
    assert handler.calls[2:] == [
        ("upsert", "default/a"),
        ("upsert", "default/b"),
        ("upsert", "default/c"),
    ]


def test_events_split_across_chunks_are_joined() -> None:
    line = event("ADDED", svc("a", "10.0.0.1", rv="11"))
    handler, _, _, _ = run([FakeResponse(page([], "10")), watch(line[:7], line[7:30], line[30:])])
    assert handler.calls[2:] == [("upsert", "default/a")]


@pytest.mark.parametrize("gone", [error_event(410), ApiError("Gone", status=410)])
def test_gone_relists_and_objects_deleted_meanwhile_come_out_of_the_replace(gone: Any) -> None:
    first_watch: Step = watch(gone) if isinstance(gone, bytes) else gone
    handler, transport, _, _ = run(
        [
            FakeResponse(page([svc("a", "10.0.0.1"), svc("b", "10.0.0.2")], "10")),
            first_watch,
            FakeResponse(page([svc("b", "10.0.0.2"), svc("c", "10.0.0.3")], "90")),
        ]
    )
    replaces = [call[1] for call in handler.calls if call[0] == "replace"]
    assert [sorted(r) for r in replaces] == [["default/a", "default/b"], ["default/b", "default/c"]]
    assert handler.calls.count(("listed",)) == 1
    assert [r.watch for r in transport.requests[:4]] == [False, True, False, True]
    assert transport.requests[3].query["resourceVersion"] == "90"
    assert transport.slept_after == [4]  # relisted at once, no backoff


def test_other_watch_errors_back_off_and_keep_the_resource_version() -> None:
    handler, transport, sleeps, _ = run(
        [
            FakeResponse(page([svc("a", "10.0.0.1")], "10")),
            ApiError("connection refused"),
            ApiError("service unavailable", status=503),
            watch(error_event(500)),
            watch(event("ADDED", svc("b", "10.0.0.2", rv="11"))),
        ]
    )
    watches = [r for r in transport.requests if r.watch]
    assert [w.query["resourceVersion"] for w in watches[:4]] == ["10", "10", "10", "10"]
    assert len([r for r in transport.requests if not r.watch]) == 1  # no relist
    assert len(sleeps) >= 3
    assert keys(handler) == ["default/a", "default/b"]


def test_a_watch_that_ends_at_once_without_events_backs_off() -> None:
    _, _, sleeps, _ = run([FakeResponse(page([], "10")), watch(), watch()])
    assert len(sleeps) >= 2 and all(delay > 0 for delay in sleeps)


# --- bad objects ---------------------------------------------------------------------------


def test_a_bad_object_is_skipped_with_one_warning_and_treated_as_absent() -> None:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    bad = svc("bad", "10.0.0.300", rv="12")
    try:
        handler, _, _, _ = run(
            [
                FakeResponse(page([svc("good", "10.0.0.1"), svc("bad", "10.0.0.2")], "10")),
                watch(
                    event("MODIFIED", bad),
                    event(
                        "MODIFIED",
                        {**bad, "metadata": {**bad["metadata"], "resourceVersion": "13"}},
                    ),
                    event("ADDED", svc("late", "10.0.0.3", rv="14")),
                    b"not json at all\n",
                    event("ADDED", svc("lost", "10.0.0.4", rv="15")),
                ),
                watch(event("ADDED", svc("after", "10.0.0.5", rv="16"))),
            ]
        )
    finally:
        logger.remove(sink)
    assert ("delete", "default/bad") in handler.calls
    assert keys(handler) == ["default/after", "default/good", "default/late"]
    invalid = [m for m in messages if "invalid" in m]
    assert invalid == [
        "skipping invalid Service default/bad: spec.clusterIP: invalid IP address '10.0.0.300'"
    ]
    assert any("undecodable event" in m for m in messages)


def test_a_failing_handler_does_not_stop_the_watch() -> None:
    class Failing(Recorder):
        def upsert(self, key: str, value: Any) -> None:
            super().upsert(key, value)
            if key == "default/a":
                raise RuntimeError("handler bug")

    handler, _, _, _ = run(
        [
            FakeResponse(page([], "10")),
            watch(
                event("ADDED", svc("a", "10.0.0.1", rv="11")),
                event("ADDED", svc("b", "10.0.0.2", rv="12")),
            ),
        ],
        handler=Failing(),
    )
    assert keys(handler) == ["default/a", "default/b"]


# --- resources -----------------------------------------------------------------------------


def test_node_resource_asks_for_one_node_and_keys_by_name() -> None:
    node = {
        "metadata": {
            "name": "n1",
            "resourceVersion": "3",
            "labels": {"topology.kubernetes.io/zone": "z1"},
        },
        "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
    }
    handler, transport, _, _ = run([FakeResponse(page([node], "3"))], node_resource("n1"))
    assert transport.requests[0].path == "/api/v1/nodes"
    assert transport.requests[0].query["fieldSelector"] == "metadata.name=n1"
    value = handler.state["n1"]
    assert isinstance(value, Node)
    assert (value.zone, value.to_be_deleted, value.eligible) == ("z1", True, False)


def test_endpoint_slices_use_kube_proxys_selector() -> None:
    _, transport, _, _ = run([FakeResponse(page([], "3"))], ENDPOINT_SLICES)
    assert transport.requests[0].path == "/apis/discovery.k8s.io/v1/endpointslices"
    assert transport.requests[0].query["labelSelector"] == "!service.kubernetes.io/headless"
    assert "fieldSelector" not in transport.requests[0].query


# --- backoff, rate limit, stop ----------------------------------------------------------------


def test_backoff_starts_over_after_a_quiet_period() -> None:
    clock = FakeClock()
    backoff = Backoff(initial=1.0, cap=30.0, reset_after=120.0, clock=clock, rng=random.Random(1))
    first = [backoff.delay() for _ in range(4)]
    assert first[3] >= 8.0
    clock.now += 121
    assert backoff.delay() <= 2.0


def test_token_bucket_allows_a_burst_then_spaces_requests() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=5.0, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.2)
    assert bucket.reserve() == pytest.approx(0.4)  # booked behind the previous one
    clock.now += 10
    assert bucket.reserve() == 0.0


def test_requests_wait_for_the_rate_limiter() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=2.0, burst=1, clock=clock)
    sleeps: list[float] = []
    transport = ScriptedTransport([FakeResponse(page([], "1")), watch(bookmark("2"))])
    reflector = Reflector(
        SERVICES, transport, Recorder(), limiter=bucket, clock=clock, sleep=sleeps.append
    )
    transport.reflector = reflector
    reflector.run()
    assert sleeps[:2] == [pytest.approx(0.5), pytest.approx(1.0)]


class BlockingResponse(FakeResponse):
    """A watch that blocks until shut down, like a socket with nothing to read."""

    def __init__(self) -> None:
        super().__init__()
        self.woken = threading.Event()
        self.reading = threading.Event()

    def chunks(self) -> Iterator[bytes]:
        self.reading.set()
        self.woken.wait(timeout=30)
        raise ApiError("socket shut down")

    def shutdown(self) -> None:
        self.woken.set()


def test_stop_wakes_a_blocked_watch() -> None:
    blocked = BlockingResponse()
    transport = ScriptedTransport([FakeResponse(page([], "1")), blocked])
    reflector = Reflector(SERVICES, transport, Recorder())
    transport.reflector = reflector
    reflector.start()
    assert blocked.reading.wait(timeout=5)
    reflector.stop(timeout=5)
    assert blocked.woken.is_set() and blocked.closed
    assert reflector._thread is not None and not reflector._thread.is_alive()


def test_an_error_event_after_good_events_still_backs_off() -> None:
    handler, transport, sleeps, _ = run(
        [
            FakeResponse(page([], "10")),
            watch(event("ADDED", svc("a", "10.0.0.1", rv="11")), error_event(500)),
            watch(event("ADDED", svc("b", "10.0.0.2", rv="12"))),
        ]
    )
    assert transport.slept_after[0] == 2  # backed off after the failed watch
    assert transport.requests[2].query["resourceVersion"] == "11"
    assert keys(handler) == ["default/a", "default/b"]
    assert sleeps[0] > 0


# --- suspicious relists ----------------------------------------------------------------------


def test_an_empty_relist_is_held_back_until_a_second_list_and_a_good_one_wins() -> None:
    held = [svc("a", "10.0.0.1"), svc("b", "10.0.0.2")]
    handler, transport, sleeps, _ = run(
        [
            FakeResponse(page(held, "10")),
            watch(error_event(410)),
            FakeResponse(page([], "20")),  # by mistake
            FakeResponse(page([*held, svc("c", "10.0.0.3")], "30")),
        ],
        settings=WatchSettings(confirm_delay=7.0),
    )
    assert keys(handler) == ["default/a", "default/b", "default/c"]
    replaces = [sorted(call[1]) for call in handler.calls if call[0] == "replace"]
    assert [] not in replaces
    assert sleeps[0] == 7.0 and transport.slept_after[0] == 3
    assert transport.requests[4].query["resourceVersion"] == "30"


def test_an_empty_relist_confirmed_by_a_second_one_is_believed() -> None:
    handler, _, sleeps, _ = run(
        [
            FakeResponse(page([svc("a", "10.0.0.1")], "10")),
            watch(error_event(410)),
            FakeResponse(page([], "20")),
            FakeResponse(page([], "21")),
        ],
        settings=WatchSettings(confirm_delay=7.0),
    )
    assert keys(handler) == []
    assert sleeps[0] == 7.0


def test_a_relist_removing_most_of_many_objects_is_held_back_but_not_a_few() -> None:
    many = [svc(f"s{i}", f"10.0.1.{i}") for i in range(30)]
    settings = WatchSettings(confirm_delay=5.0, suspicious_fraction=0.5, suspicious_min=20)
    handler, _, sleeps, _ = run(
        [
            FakeResponse(page(many, "10")),
            watch(error_event(410)),
            FakeResponse(page(many[:10], "20")),  # 20 of 30 gone: suspicious
            FakeResponse(page(many, "30")),
            watch(error_event(410)),
            FakeResponse(page(many[:20], "40")),  # 10 of 30 gone: believed at once
        ],
        settings=settings,
    )
    assert len(handler.state) == 20
    assert sleeps[0] == 5.0 and 5.0 not in sleeps[1:]
    assert [len(call[1]) for call in handler.calls if call[0] == "replace"] == [30, 30, 20]


def test_the_first_list_may_be_empty() -> None:
    handler, _, sleeps, _ = run([FakeResponse(page([], "10"))])
    assert handler.calls[:2] == [("replace", {}), ("listed",)]
    assert 10.0 not in sleeps


def test_gone_in_a_loop_backs_off_after_the_first_relist() -> None:
    steps: list[Step] = [FakeResponse(page([svc("a", "10.0.0.1")], "10"))]
    for version in range(11, 16):
        steps += [watch(error_event(410)), FakeResponse(page([svc("a", "10.0.0.1")], str(version)))]
    steps.append(watch(event("ADDED", svc("b", "10.0.0.2", rv="20")), error_event(410)))
    steps.append(FakeResponse(page([svc("a", "10.0.0.1"), svc("b", "10.0.0.2")], "30")))
    handler, transport, sleeps, _ = run(steps)
    assert keys(handler) == ["default/a", "default/b"]
    # The first 410 relists at once; each further one right after a list backs off,
    # growing; a watch that read events starts the count over (relist at once).
    assert len(sleeps) == 4 + 1  # 4 backoffs, the script's end
    assert sleeps[1] > sleeps[0] and sleeps[3] > sleeps[2]
    assert sleeps[4] < sleeps[3]  # started over after the watch that read an event
    assert transport.slept_after[:4] == [4, 6, 8, 10]  # after each second 410
