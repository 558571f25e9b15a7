"""`python -m ipvsproxy_testkit.testapi`: serve objects from files until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from loguru import logger

from ipvsproxy.errors import InputError
from ipvsproxy.k8s.files import load_documents
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from ipvsproxy_testkit.testapi.store import DEFAULT_HISTORY, Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ipvsproxy_testkit.testapi",
        description="A small Kubernetes API server (Services, EndpointSlices, Nodes) for tests.",
    )
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML or JSON objects to serve (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--kubeconfig-out", metavar="FILE", help="write a kubeconfig for it here")
    parser.add_argument(
        "--history",
        type=int,
        default=DEFAULT_HISTORY,
        help=f"events kept for watches (default {DEFAULT_HISTORY})",
    )
    parser.add_argument(
        "--bookmark-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between watch bookmarks (default 60)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "INFO")
    store = Store(history=args.history)
    try:
        for name in args.filename:
            for warning in store.load((o.obj for o in load_documents(name)), owned=True):
                logger.warning("{}: {}", name, warning)
    except InputError as exc:
        logger.error("{}", exc)
        return 2
    server = TestAPIServer(
        store, host=args.host, port=args.port, bookmark_interval=args.bookmark_interval
    )
    server.start()
    if args.kubeconfig_out:
        with open(args.kubeconfig_out, "w") as stream:
            stream.write(kubeconfig(server.url))
    print(server.url, flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
