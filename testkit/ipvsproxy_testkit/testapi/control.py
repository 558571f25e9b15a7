"""Control requests under /testapi/: faults and loading, for tests in other processes.

POST /testapi/faults/<action> with a JSON object: cut-watches, delay {"seconds"},
fail {"count" | "seconds", "code"}, watch-gone {"count"}, truncate {"count"},
empty-list {"count"}, compact {"resourceVersion"?}, go-away {"seconds"}, clear.
POST /testapi/load with an object or a List adds objects; GET /testapi/state shows the
resourceVersion, the log's horizon, the faults and how many objects of each kind there are.
Control requests themselves never see a fault.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ipvsproxy_testkit.testapi import resources
from ipvsproxy_testkit.testapi.interface import ServedAPI
from ipvsproxy_testkit.testapi.status import ApiError

__all__ = ["CONTROL_PREFIX", "ControlAnswer", "control"]

CONTROL_PREFIX: Final = "/testapi/"


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    body: dict[str, object]
    # Run with the request's connection once the answer is sent; the connection then closes.
    after: Callable[[socket.socket], None] | None = None


def control(api: ServedAPI, method: str, action: str, args: object) -> ControlAnswer:
    """Answer the control request `method /testapi/<action>` with the JSON body args."""
    if method == "GET" and action in ("faults", "state"):
        return ControlAnswer(
            {
                "resourceVersion": api.store.resource_version,
                "horizon": api.store.horizon,
                "faults": api.faults.state(),
                "counts": {r.plural: api.store.count(r) for r in resources.RESOURCES},
                "bytesSent": api.bytes_sent(),
            }
        )
    if method != "POST":
        raise ApiError(405, "control requests are POSTs")
    if action == "load":
        objects = args.get("items", [args]) if isinstance(args, dict) else args
        if not isinstance(objects, list):
            raise ApiError(400, "load takes an object, a List or a JSON array of objects")
        warnings = api.store.load(o for o in objects if isinstance(o, dict))
        return ControlAnswer({"warnings": warnings, "resourceVersion": api.store.resource_version})
    args = args if args is not None else {}
    if not isinstance(args, dict):
        raise ApiError(400, "control requests take a JSON object")
    try:
        return _fault(api, action, args)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"{action}: bad argument: {exc}") from None


def _fault(api: ServedAPI, action: str, args: dict[str, Any]) -> ControlAnswer:
    faults = api.faults
    result: dict[str, object] = {}
    if action == "faults/cut-watches":
        api.cut_watches()
    elif action == "faults/delay":
        faults.delay(float(args.get("seconds", 0)))
    elif action == "faults/fail":
        faults.fail(
            count=int(args.get("count", 0)),
            seconds=float(args.get("seconds", 0)),
            code=int(args.get("code", 500)),
        )
    elif action == "faults/watch-gone":
        faults.watch_gone(int(args.get("count", 1)))
    elif action == "faults/truncate":
        faults.truncate(int(args.get("count", 1)))
    elif action == "faults/empty-list":
        faults.empty_list(int(args.get("count", 1)))
    elif action == "faults/compact":
        rv = args.get("resourceVersion")
        result["horizon"] = api.store.compact(int(rv) if rv is not None else None)
    elif action == "faults/clear":
        faults.clear()
    elif action == "faults/go-away":
        seconds = float(args.get("seconds", 0))
        if seconds <= 0:
            raise ApiError(400, "go-away needs seconds > 0: nothing could bring it back")

        def go_away(connection: socket.socket) -> None:
            # From another thread: shutting the server down waits for this request to end.
            threading.Thread(
                target=api.go_away, args=(seconds,), kwargs={"keep": connection}, daemon=True
            ).start()

        return ControlAnswer({"away": seconds}, after=go_away)
    else:
        raise ApiError(404, f"no control action {action!r}")
    result["resourceVersion"] = api.store.resource_version
    return ControlAnswer(result)
