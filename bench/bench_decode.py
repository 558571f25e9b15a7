"""Decoding API answers: raw JSON into our frozen model values vs. the kubernetes client's models.

The reflectors read list pages and watch events as raw JSON and convert each object with
`ipvsproxy.k8s.objects`; the alternative is what the `kubernetes` package does when asked
for its models (`ApiClient.deserialize` into V1ServiceList / V1EndpointSliceList, and, for
watch events, one V1Service / V1EndpointSlice per event as `kubernetes.watch` does). This
script decodes the same bytes both ways and prints, per kind and path, the median of
--repeat runs: time per object, objects per second, the peak memory allocated while
decoding (tracemalloc, measured in a separate run so it does not slow the timed ones),
and the ratio of the two. It checks that both ways decoded every object, and agree on
the cluster IPs and endpoint addresses.

    .venv/bin/python -m bench.bench_decode                       # 10k Services, ~10k slices
    .venv/bin/python -m bench.bench_decode --services 2000 --repeat 3
    .venv/bin/python -m bench.bench_decode --file bench/out/cluster-10k.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.lib.gen_cluster import build
from ipvsproxy.k8s.objects import endpoint_slice_from_dict, service_from_dict

JSON = "application/json"


@dataclass(frozen=True)
class Kind:
    name: str
    list_kind: str
    api_version: str
    model: str  # the client's model class name
    convert: Callable[[Mapping[str, object]], object]


SERVICE = Kind("Service", "ServiceList", "v1", "V1Service", service_from_dict)
SLICE = Kind(
    "EndpointSlice",
    "EndpointSliceList",
    "discovery.k8s.io/v1",
    "V1EndpointSlice",
    endpoint_slice_from_dict,
)


def list_body(kind: Kind, items: Sequence[Mapping[str, Any]]) -> bytes:
    document = {
        "apiVersion": kind.api_version,
        "kind": kind.list_kind,
        "metadata": {"resourceVersion": "12345"},
        "items": list(items),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def event_lines(items: Sequence[Mapping[str, Any]]) -> list[bytes]:
    return [
        json.dumps({"type": "MODIFIED", "object": item}, separators=(",", ":")).encode()
        for item in items
    ]


# --- the two ways ---------------------------------------------------------------------------


def ours_list(kind: Kind, body: bytes) -> list[object]:
    page = json.loads(body)
    return [kind.convert(item) for item in page["items"]]


def ours_events(kind: Kind, lines: Sequence[bytes]) -> list[object]:
    return [kind.convert(json.loads(line)["object"]) for line in lines]


def client_list(api: Any, kind: Kind, body: bytes) -> list[object]:
    return list(api.deserialize(body.decode(), f"V1{kind.list_kind}", JSON).items)


def client_events(api: Any, kind: Kind, lines: Sequence[bytes]) -> list[object]:
    # kubernetes.watch.Watch.unmarshal_event: parse the line, then deserialize the object
    # from its JSON text into the model class.
    decoded = []
    for line in lines:
        event = json.loads(line)
        decoded.append(api.deserialize(json.dumps(event["object"]), kind.model, JSON))
    return decoded


# --- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    seconds: float  # median
    peak_bytes: int
    result: list[object]


def measure(decode: Callable[[], list[object]], repeat: int) -> Figures:
    times = []
    result: list[object] = []
    for _ in range(repeat):
        result = []
        gc.collect()
        start = time.perf_counter()
        result = decode()
        times.append(time.perf_counter() - start)
    result = []
    gc.collect()
    tracemalloc.start()
    result = decode()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Figures(statistics.median(times), peak, result)


def check(kind: Kind, ours: list[object], theirs: list[object], expected: int) -> None:
    if len(ours) != expected or len(theirs) != expected:
        raise SystemExit(f"{kind.name}: decoded {len(ours)} and {len(theirs)} of {expected}")
    for mine, model in zip(
        ours[:: max(1, expected // 100)], theirs[:: max(1, expected // 100)], strict=True
    ):
        if kind is SERVICE:
            same = [str(ip) for ip in mine.cluster_ips] == model.spec.cluster_ips  # type: ignore[attr-defined]
        else:
            same = [str(e.address) for e in mine.endpoints] == [  # type: ignore[attr-defined]
                e.addresses[0] for e in model.endpoints
            ]
        if not same:
            raise SystemExit(f"{kind.name}: the two decoders disagree on {mine!r}")


def row(label: str, figures: Figures, count: int) -> str:
    per_object = figures.seconds / count * 1e6
    rate = count / figures.seconds
    peak = figures.peak_bytes / 2**20
    return (
        f"  {label:<22} {per_object:8.1f} us/object {rate:12,.0f} objects/s   peak {peak:8.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10, help="ready endpoints per Service")
    parser.add_argument("--file", help="a kind: List JSON file (bench/lib/gen_cluster.py output)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement")
    args = parser.parse_args()

    if args.file:
        with open(args.file, encoding="utf-8") as stream:
            document = json.load(stream)
    else:
        document = build(args.services, args.endpoints)
    items = document["items"]

    from kubernetes import client  # imported here: it is what is being compared

    api = client.ApiClient()
    print(f"median of {args.repeat} runs; peak = memory allocated while decoding (tracemalloc)")
    for kind in (SERVICE, SLICE):
        objects = [item for item in items if item.get("kind") == kind.name]
        count = len(objects)
        body = list_body(kind, objects)
        lines = event_lines(objects)
        print(f"{kind.name}: {count:,} objects, list body {len(body) / 2**20:.1f} MiB")
        for path, ours_fn, theirs_fn in paths(api, kind, body, lines):
            ours = measure(ours_fn, args.repeat)
            theirs = measure(theirs_fn, args.repeat)
            check(kind, ours.result, theirs.result, count)
            print(row(f"{path}, ours", ours, count))
            print(row(f"{path}, client models", theirs, count))
            print(
                f"  {path}: client models take {theirs.seconds / ours.seconds:.2f}x the time"
                f" and {theirs.peak_bytes / max(1, ours.peak_bytes):.1f}x the peak memory"
            )


def paths(
    api: Any, kind: Kind, body: bytes, lines: list[bytes]
) -> list[tuple[str, Callable[[], list[object]], Callable[[], list[object]]]]:
    return [
        ("list", lambda: ours_list(kind, body), lambda: client_list(api, kind, body)),
        ("watch events", lambda: ours_events(kind, lines), lambda: client_events(api, kind, lines)),
    ]


if __name__ == "__main__":
    main()
