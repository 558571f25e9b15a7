"""One list of a resource, for commands that need the cluster's state once (`verify`).

A `Reflector` does the list, so paging, selectors, expired continue tokens and the
conversion of objects (an invalid one warned about and left out) are the agent's own;
it is stopped before it watches, and on the first failure instead of backing off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from ipvsproxy.errors import ApiError
from ipvsproxy.k8s.watch import RateLimiter, Reflector, Resource, Transport

__all__ = ["list_once"]

V = TypeVar("V")


class _Snapshot(Generic[V]):
    """Keeps the first complete list and stops its reflector."""

    def __init__(self) -> None:
        self.items: dict[str, V] | None = None
        self.reflector: Reflector[V] | None = None

    def replace(self, items: Mapping[str, V]) -> None:
        self.items = dict(items)

    def upsert(self, key: str, value: V) -> None:  # never called: stopped before watching
        pass

    def delete(self, key: str) -> None:
        pass

    def listed(self) -> None:
        if self.reflector is not None:
            self.reflector.stop()


def list_once(
    resource: Resource[V], transport: Transport, *, limiter: RateLimiter | None = None
) -> dict[str, V]:
    """Every object of the resource now, by key; ApiError when the list fails."""
    snapshot: _Snapshot[V] = _Snapshot()
    failed: list[float] = []

    def give_up(seconds: float) -> None:
        # Called instead of the backoff's wait: the first failure ends the attempt.
        failed.append(seconds)
        reflector.stop()

    reflector = Reflector(resource, transport, snapshot, limiter=limiter, sleep=give_up)
    snapshot.reflector = reflector
    reflector.run()
    if snapshot.items is None:
        raise ApiError(f"cannot list {resource.kind}s from the API server (see the log above)")
    return snapshot.items
