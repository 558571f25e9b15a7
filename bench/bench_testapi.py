"""The test API server at benchmark scale: loading, listing and watching 10k-30k Services.

For each size it builds a cluster with gen_cluster (Services with 10 endpoints each, slices
of at most 100), loads it into a Store, then over HTTP on loopback (one keep-alive
connection; answers are decoded and checked after the timed runs) prints the median of
--repeat runs of: a full list of Services, the same list in pages of 500, a list with
kube-proxy's label selector, a full list of EndpointSlices; and how long --watchers
watches take to receive --events changes. It checks every answer's item count, that
pages neither skip nor repeat, and that every watcher saw every event. Times per object
that stay flat from the smaller size to the larger show the lists are linear.

    .venv/bin/python -m bench.bench_testapi                        # 10k and 30k Services
    .venv/bin/python -m bench.bench_testapi --sizes 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ipvsproxy_testkit.testapi import Store, TestAPIServer
from ipvsproxy_testkit.testapi.resources import SERVICES

from bench.lib.gen_cluster import build

KUBE_PROXY_SELECTOR = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"


def median_time(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def get(connection: http.client.HTTPConnection, path: str) -> bytes:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
    return body


_CONTINUE = re.compile(rb'"continue":"([^"]*)"')


def fetch_all(connection: http.client.HTTPConnection, path: str, limit: int = 0) -> list[bytes]:
    """The bodies of a list, following continue tokens (read from the head, unparsed)."""
    bodies: list[bytes] = []
    token = ""
    separator = "&" if "?" in path else "?"
    while True:
        query = f"{separator}limit={limit}" if limit else ""
        if token:
            query += f"&continue={quote(token)}"
        bodies.append(get(connection, path + query))
        match = _CONTINUE.search(bodies[-1], 0, 400)
        if not match:
            return bodies
        token = match.group(1).decode()


def check_pages(label: str, bodies: list[bytes], expected: int) -> int:
    """Items in the pages, checked: all there, none twice, one resourceVersion."""
    pages = [json.loads(body) for body in bodies]
    names = {
        f"{item['metadata']['namespace']}/{item['metadata']['name']}"
        for page in pages
        for item in page["items"]
    }
    items = sum(len(page["items"]) for page in pages)
    versions = {page["metadata"]["resourceVersion"] for page in pages}
    if items != expected or len(names) != items or len(versions) != 1:
        raise SystemExit(f"{label}: {items} items, {len(names)} names, expected {expected}")
    return items


def watch_fanout(server: TestAPIServer, watchers: int, events: int) -> float:
    """Seconds from the first of `events` writes until every watcher has read them all."""
    start_rv = server.store.resource_version
    ready = threading.Barrier(watchers + 1)
    counts = [0] * watchers
    done = threading.Event()

    def watch(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("GET", f"/api/v1/services?watch=1&resourceVersion={start_rv}")
        response = connection.getresponse()
        ready.wait()
        while counts[index] < events:
            line = response.readline()
            if not line:
                break
            counts[index] += 1
        connection.close()
        if all(count >= events for count in counts):
            done.set()

    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(watchers)]
    for thread in threads:
        thread.start()
    ready.wait()
    begin = time.perf_counter()
    for index in range(events):
        server.store.patch(
            SERVICES,
            "bench",
            f"svc-{index % 100:05d}",
            lambda obj, index=index: {
                **obj,
                "metadata": {**obj["metadata"], "labels": {"n": str(index)}},
            },
        )
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - begin
    if counts != [events] * watchers:
        raise SystemExit(f"watchers saw {counts}, expected {events} each")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,30000", help="Service counts, comma separated")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--watchers", type=int, default=4)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()

    for size in (int(s) for s in args.sizes.split(",")):
        cluster = build(size, args.endpoints)
        for item in cluster["items"]:
            item["metadata"]["namespace"] = "bench"
            if item["kind"] == "Service":
                item["metadata"]["name"] = f"svc-{int(item['metadata']['name'].split('-')[-1]):05d}"
        services = sum(1 for i in cluster["items"] if i["kind"] == "Service")
        slices = len(cluster["items"]) - services
        store = Store(history=max(100_000, len(cluster["items"]) + args.events))
        start = time.perf_counter()
        warnings = store.load(cluster["items"], owned=True)
        load = time.perf_counter() - start
        if warnings:
            raise SystemExit(f"load warnings: {warnings[:3]}")
        print(
            f"{services} Services, {slices} EndpointSlices: load {load:.2f} s "
            f"({load / len(cluster['items']) * 1e6:.0f} us/object)"
        )
        with TestAPIServer(store) as server:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            cases = [
                ("services, one list", "/api/v1/services", 0, services),
                ("services, pages of 500", "/api/v1/services", 500, services),
                (
                    "services, kube-proxy selector",
                    "/api/v1/services?labelSelector=" + quote(KUBE_PROXY_SELECTOR),
                    0,
                    services,
                ),
                ("endpointslices, one list", "/apis/discovery.k8s.io/v1/endpointslices", 0, slices),
            ]
            for label, path, limit, expected in cases:
                elapsed, bodies = median_time(
                    args.repeat,
                    lambda path=path, limit=limit, c=connection: fetch_all(c, path, limit),
                )
                items = check_pages(label, bodies, expected)
                size = sum(len(body) for body in bodies)
                print(
                    f"  {label:32} {elapsed * 1000:8.1f} ms  {elapsed / items * 1e6:6.1f} us/object"
                    f"  {size / 2**20:7.1f} MiB in {len(bodies)} response(s)"
                )
            connection.close()
            fanout = watch_fanout(server, args.watchers, args.events)
            print(
                f"  watch: {args.events} changes to {args.watchers} watchers in {fanout:.2f} s, "
                f"{args.events * args.watchers / fanout:,.0f} events/s delivered"
            )


if __name__ == "__main__":
    main()
