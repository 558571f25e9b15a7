"""The change tracker: what the reflectors report, and which Services a sync must redo."""

from __future__ import annotations

import dataclasses
import threading

from builders import endpoint_slice, service

from ipvsproxy.agent.changes import ChangeTracker
from ipvsproxy.core.model import Node

WEB = service("web", "10.96.0.10")
DNS = service("dns", "10.96.0.53")
WEB_SLICE = endpoint_slice("web", "10.244.1.1")


def listed_tracker() -> tuple[ChangeTracker, list[str]]:
    calls: list[str] = []
    tracker = ChangeTracker(on_change=calls.append)
    tracker.services.replace({WEB.key: WEB, DNS.key: DNS})
    tracker.slices.replace({WEB_SLICE.key: WEB_SLICE})
    tracker.services.listed()
    tracker.slices.listed()
    tracker.take(full=True)
    calls.clear()
    return tracker, calls


def test_ready_only_when_both_kinds_listed_and_signalled_once() -> None:
    calls: list[str] = []
    tracker = ChangeTracker(on_change=calls.append)
    tracker.services.replace({WEB.key: WEB})
    tracker.services.listed()
    assert not tracker.ready
    tracker.slices.replace({})
    assert not tracker.ready
    tracker.slices.listed()
    assert tracker.ready
    tracker.slices.listed()  # a later relist's listed() does not signal again
    assert calls == ["service", "listed"]


def test_service_change_is_taken_once() -> None:
    tracker, calls = listed_tracker()
    changed = dataclasses.replace(WEB, affinity_timeout=60)
    tracker.services.upsert(WEB.key, changed)
    assert calls == ["service"]
    changes = tracker.take(full=False)
    assert set(changes.services) == {WEB.key}
    assert changes.services[WEB.key].service == changed
    assert changes.services[WEB.key].slices == (WEB_SLICE,)
    assert not changes.full
    assert tracker.take(full=False).services == {}


def test_slice_change_marks_its_service_with_all_its_slices() -> None:
    tracker, _ = listed_tracker()
    second = endpoint_slice("web", "10.244.2.2", name="web-2")
    tracker.slices.upsert(second.key, second)
    changes = tracker.take(full=False)
    assert set(changes.services) == {WEB.key}
    assert set(changes.services[WEB.key].slices) == {WEB_SLICE, second}


def test_slice_moving_to_another_service_marks_both() -> None:
    tracker, _ = listed_tracker()
    moved = dataclasses.replace(WEB_SLICE, service_name="dns")
    tracker.slices.upsert(WEB_SLICE.key, moved)
    assert tracker.pending().endpoints == 2
    changes = tracker.take(full=False)
    assert set(changes.services) == {WEB.key, DNS.key}
    assert changes.services[WEB.key].slices == ()
    assert changes.services[DNS.key].slices == (moved,)


def test_deleted_service_is_taken_as_none() -> None:
    tracker, _ = listed_tracker()
    tracker.services.delete(DNS.key)
    changes = tracker.take(full=False)
    assert changes.services[DNS.key].service is None


def test_burst_ending_where_it_started_leaves_nothing_pending() -> None:
    tracker, _ = listed_tracker()
    new = endpoint_slice("web", "10.244.9.9", name="web-9")
    tracker.slices.upsert(new.key, new)
    tracker.slices.upsert(new.key, dataclasses.replace(new, name="web-9"))
    tracker.slices.delete(new.key)
    changed = dataclasses.replace(WEB, affinity_timeout=60)
    tracker.services.upsert(WEB.key, changed)
    tracker.services.upsert(WEB.key, WEB)
    assert tracker.pending().services == 0 and tracker.pending().endpoints == 0
    assert tracker.take(full=False).services == {}


def test_many_events_on_one_key_are_one_pending_change() -> None:
    tracker, _ = listed_tracker()
    for i in range(50):
        tracker.slices.upsert(WEB_SLICE.key, endpoint_slice("web", f"10.244.3.{i + 1}"))
    assert tracker.pending().endpoints == 1
    assert tracker.endpoint_events == 1 + 50  # the first list's slice, then every event
    changes = tracker.take(full=False)
    assert changes.services[WEB.key].slices == (endpoint_slice("web", "10.244.3.50"),)


def test_relist_replace_turns_what_vanished_into_deletions() -> None:
    tracker, _ = listed_tracker()
    tracker.services.replace({WEB.key: WEB})  # dns was deleted while the watch was down
    tracker.slices.replace({})
    changes = tracker.take(full=False)
    assert set(changes.services) == {WEB.key, DNS.key}
    assert changes.services[DNS.key].service is None
    assert changes.services[WEB.key].slices == ()


def test_pending_counts() -> None:
    tracker, _ = listed_tracker()
    tracker.services.upsert(WEB.key, dataclasses.replace(WEB, affinity_timeout=5))
    tracker.services.delete(DNS.key)
    tracker.slices.delete(WEB_SLICE.key)
    pending = tracker.pending()
    assert (pending.services, pending.endpoints) == (2, 1)
    tracker.take(full=False)
    assert tracker.pending().services == tracker.pending().endpoints == 0


def test_trigger_times_of_applied_slice_changes() -> None:
    tracker, _ = listed_tracker()
    a = dataclasses.replace(endpoint_slice("web", "10.244.5.5", name="a"), trigger_time=10.0)
    b = dataclasses.replace(endpoint_slice("dns", "10.244.6.6", name="b"), trigger_time=20.0)
    tracker.slices.upsert(a.key, a)
    tracker.slices.upsert(b.key, b)
    tracker.slices.delete(b.key)  # never synced: its trigger time goes with it
    assert tracker.take(full=False).trigger_times == (10.0,)
    assert tracker.take(full=False).trigger_times == ()


def test_each_trigger_time_comes_with_when_its_change_was_recorded() -> None:
    now = iter([100.5, 101.5])
    tracker = ChangeTracker(wall_clock=lambda: next(now))
    tracker.services.replace({WEB.key: WEB, DNS.key: DNS})
    tracker.services.listed()
    tracker.slices.listed()
    a = dataclasses.replace(endpoint_slice("web", "10.244.5.5", name="a"), trigger_time=100.0)
    b = dataclasses.replace(endpoint_slice("dns", "10.244.6.6", name="b"), trigger_time=101.0)
    tracker.slices.upsert(a.key, a)
    tracker.slices.upsert(b.key, b)
    changes = tracker.take(full=False)
    assert changes.trigger_times == (100.0, 101.0)
    assert changes.received_times == (100.5, 101.5)


def test_full_take_has_every_service_in_first_seen_order() -> None:
    tracker, _ = listed_tracker()
    changes = tracker.take(full=True)
    assert list(changes.services) == [WEB.key, DNS.key] and changes.full


def test_node_change_makes_the_next_take_full() -> None:
    tracker, calls = listed_tracker()
    tracker.node.replace({"n1": Node(name="n1")})
    tracker.node.upsert("n1", Node(name="n1"))  # same value: nothing
    assert calls == ["node"]
    changes = tracker.take(full=False)
    assert changes.full and changes.node_changed and set(changes.services) == {WEB.key, DNS.key}
    assert tracker.current_node() == Node(name="n1")
    tracker.node.delete("n1")
    assert tracker.current_node() is None


def test_callback_runs_outside_the_lock() -> None:
    seen: list[int] = []
    holder: list[ChangeTracker] = []
    # The lock is not reentrant: a callback run under it would hang here.
    tracker = ChangeTracker(on_change=lambda kind: seen.append(holder[0].pending().services))
    holder.append(tracker)
    tracker.services.upsert(WEB.key, WEB)
    assert seen == [1]


def test_concurrent_feeds_and_takes_lose_nothing() -> None:
    tracker, _ = listed_tracker()
    taken: set[str] = set()

    def feed(prefix: str) -> None:
        for i in range(500):
            svc = service(f"{prefix}{i}", f"10.97.{len(prefix)}.{i % 250}")
            tracker.services.upsert(svc.key, svc)

    threads = [threading.Thread(target=feed, args=(p,)) for p in ("a", "bb")]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        taken |= set(tracker.take(full=False).services)
    for thread in threads:
        thread.join()
    taken |= set(tracker.take(full=False).services)
    assert taken == {f"default/{p}{i}" for p in ("a", "bb") for i in range(500)}


def test_trigger_times_from_before_the_start_are_not_measured() -> None:
    tracker = ChangeTracker(started_at=100.0)
    old = dataclasses.replace(WEB_SLICE, trigger_time=50.0)
    tracker.slices.replace({old.key: old})
    assert tracker.take(full=True).trigger_times == ()
    new = dataclasses.replace(WEB_SLICE, trigger_time=150.0)
    tracker.slices.upsert(new.key, new)
    assert tracker.take(full=False).trigger_times == (150.0,)
